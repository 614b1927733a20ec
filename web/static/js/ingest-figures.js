// The SFU's view of a publisher's ingest (an Ingest object of GET /api/channels/{name}/ingest
// or of a stream's analytics: {at, bitrate_bps, fps, width, height, keyframe_interval_s,
// loss (fraction), rtt_ms (null when unknown), jitter_ms}; the live Ingest also has
// dropped_frames, the running total of video frames the RTMP/SRT ingest dropped before the
// SFU, null when not reported) as text, for the studio and the analytics page.

const COUNT = new Intl.NumberFormat("en");

/**
 * The latest ingest sample into ``out`` ({bitrate, fps, resolution, keyframe, loss, dropped,
 * rtt, jitter} elements; those missing from ``out`` are skipped).
 */
export function renderIngestFigures(s, out) {
  const set = (key, text) => { if (out[key]) out[key].textContent = text; };
  if (!s) {
    for (const key of Object.keys(out)) set(key, "–");
    return;
  }
  set("bitrate", s.bitrate_bps == null ? "–" : `${Math.round(s.bitrate_bps / 1000)} kbps`);
  set("fps", s.fps == null ? "–" : String(Math.round(s.fps)));
  set("resolution", s.width && s.height ? `${s.width}×${s.height}` : "–");
  set("keyframe", s.keyframe_interval_s == null ? "–" : `${Number(s.keyframe_interval_s).toFixed(1)} s`);
  set("loss", s.loss == null ? "–" : `${(s.loss * 100).toFixed(1)} %`);
  set("dropped", Number.isSafeInteger(s.dropped_frames) && s.dropped_frames >= 0
    ? COUNT.format(s.dropped_frames) : "–");
  set("rtt", s.rtt_ms == null ? "n/a" : `${Math.round(s.rtt_ms)} ms`);
  set("jitter", s.jitter_ms == null ? "–" : `${Math.round(s.jitter_ms)} ms`);
}
