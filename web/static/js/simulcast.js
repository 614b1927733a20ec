// Simulcast for the publishing pages (publisher.js): which RTP encodings to send, and
// what to do when the other side does not take them. Pure functions (no DOM, no
// RTCPeerConnection), so the tests run them in Node too.
//
// The page publishes up to three spatial layers of its camera as one m=video section
// with three rids (RFC 8851 a=rid, RFC 8853 a=simulcast:send q;h;f), each its own SSRC
// whose packets carry the RTP stream id header extension (RFC 8852). The SFU orders the
// layers by their key frames' picture size, so the rids are only names: "q" a quarter of
// the source's width and height, "h" a half, "f" full — for a source of 960x540 and up;
// a smaller one sends fewer layers, lowest rids first (see layerCount). Each layer is asked for VP8
// temporal scalability "L1T3" (three temporal layers, webrtc-svc §4), so an SFU consumer
// can also drop to 1/2 or 1/4 of the frame rate without a key frame.

/** The layers, lowest first (libwebrtc wants simulcast encodings in ascending size).
 * ``maxBitrate`` in bps: enough for 320x180, 640x360 and 1280x720 at 30 fps. */
export const SIMULCAST_LAYERS = Object.freeze([
  Object.freeze({ rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 }),
  Object.freeze({ rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 }),
  Object.freeze({ rid: "f", scaleResolutionDownBy: 1, maxBitrate: 2_500_000 }),
]);

/** How many simulcast layers libwebrtc sends for a source of ``width`` x ``height``: its
 * simulcast format table (video/config/simulcast.cc kSimulcastFormats) allows 3 from
 * 960x540 up, 2 from 480x270 up, else 1, by pixel count. It drops the encodings above that
 * count by index — with q/4, h/2, f/1 and a 640x360 source it sends 160x90 and 320x180 and
 * not the full picture — so the page plans within that limit. Unknown size: 3. */
export function layerCount(width, height) {
  if (!(width > 0 && height > 0)) return SIMULCAST_LAYERS.length;
  const pixels = width * height;
  if (pixels >= 960 * 540) return 3;
  if (pixels >= 480 * 270) return 2;
  return 1;
}

/**
 * The simulcast encodings for a source of ``width`` x ``height``: always the three rids of
 * SIMULCAST_LAYERS (so a later, larger source can use all three without renegotiating),
 * the first :func:`layerCount` of them active, scaled so the last active one is the full
 * picture (3: q/4, h/2, f/1; 2: q/2, h/1, f off; 1: q/1, h and f off), each capped at the
 * maxBitrate of the layer of its size (full picture: f's, half: h's, quarter: q's).
 * An inactive encoding keeps scale 1 and f's cap: a pure placeholder.
 */
export function simulcastEncodings(width, height) {
  const n = Math.min(layerCount(width, height), SIMULCAST_LAYERS.length);
  const top = SIMULCAST_LAYERS.length - 1;
  return SIMULCAST_LAYERS.map((layer, i) => {
    if (i >= n) return { rid: layer.rid, active: false, scaleResolutionDownBy: 1, maxBitrate: SIMULCAST_LAYERS[top].maxBitrate };
    const like = SIMULCAST_LAYERS[top - (n - 1 - i)]; // the layer of the same picture size
    return { rid: layer.rid, active: true, scaleResolutionDownBy: like.scaleResolutionDownBy, maxBitrate: like.maxBitrate };
  });
}

/** Temporal scalability asked of every encoding (webrtc-svc §4: 1 spatial, 3 temporal). */
export const TEMPORAL_MODE = "L1T3";

/**
 * The ``sendEncodings`` for ``addTransceiver`` (webrtc-pc §5.2 RTCRtpEncodingParameters).
 *
 * @param {number|null} width the camera track's width in px (null: unknown)
 * @param {number|null} height its height in px (null: unknown: three layers)
 * @param {{simulcast?: boolean, temporal?: boolean}} options ``simulcast`` false: one
 *   encoding; ``temporal`` false: no scalabilityMode
 * @returns {object[]|null} three encodings (:func:`simulcastEncodings`), or one without a rid
 *   (simulcast off, or a source too small for two layers), or null for the browser's
 *   default single encoding (that, and no temporal layers)
 */
export function planEncodings(width, height, { simulcast = true, temporal = true } = {}) {
  const extra = temporal ? { scalabilityMode: TEMPORAL_MODE } : {};
  if (simulcast && layerCount(width, height) >= 2) {
    return simulcastEncodings(width, height).map((e) => ({ ...e, ...extra }));
  }
  return temporal ? [{ ...extra }] : null;
}

/**
 * The encodings of a live simulcast sender re-planned for a new source size (the
 * resolution changed while live; no renegotiation): :func:`simulcastEncodings`' rid
 * activity, scales and caps applied to ``encodings`` (from ``getParameters()``), everything
 * else kept. Null when the sender has fewer than two encodings or nothing changes.
 */
export function rescaleEncodings(encodings, width, height) {
  if (!encodings || encodings.length < 2) return null;
  const plan = new Map(simulcastEncodings(width, height).map((e) => [e.rid, e]));
  let changed = false;
  const out = encodings.map((e) => {
    const p = plan.get(e.rid);
    if (!p) return e;
    const next = { ...e, active: p.active, scaleResolutionDownBy: p.scaleResolutionDownBy, maxBitrate: p.maxBitrate };
    changed ||= next.active !== e.active || next.scaleResolutionDownBy !== e.scaleResolutionDownBy
      || next.maxBitrate !== e.maxBitrate;
    return next;
  });
  return changed ? out : null;
}

/** Whether ``getCapabilities`` denies ``mode`` for VP8: true only when the browser lists
 * scalability modes for VP8 and ``mode`` is not among them (Chromium lists none at all
 * unless asked; then the mode is tried and a refusal caught). */
export function vp8RefusesMode(capabilities, mode = TEMPORAL_MODE) {
  const vp8 = (capabilities?.codecs ?? []).find((c) => /^video\/vp8$/i.test(c.mimeType));
  if (!vp8) return true;
  return Array.isArray(vp8.scalabilityModes) && vp8.scalabilityModes.length > 0
    && !vp8.scalabilityModes.includes(mode);
}

/** The SDP's m=video section (text up to the next m= line), or "" when there is none. */
export function videoSection(sdp) {
  const lines = sdp.split(/\r?\n/);
  const start = lines.findIndex((l) => l.startsWith("m=video"));
  if (start < 0) return "";
  const end = lines.findIndex((l, i) => i > start && l.startsWith("m="));
  return lines.slice(start, end < 0 ? undefined : end).join("\r\n");
}

/** The rids of the m=video section's ``a=simulcast:<direction>`` line (RFC 8853 §5.1), in
 * order, alternatives flattened and paused (``~``) ones included; [] when there is none. */
export function simulcastRids(sdp, direction) {
  const match = videoSection(sdp).match(new RegExp(`^a=simulcast:${direction} (\\S+)`, "m"));
  if (!match) return [];
  return match[1].split(/[;,]/).map((r) => r.replace(/^~/, "")).filter(Boolean);
}

/**
 * The encoding parameters to set once the answer is applied and simulcast was refused (the
 * answer has no ``a=simulcast:recv``): the browser then keeps only the first encoding
 * (webrtc-pc §4.4.1.5), our quarter-size one, so it becomes the full picture without a
 * per-layer cap (the server's ``x-google-max-bitrate`` and the estimator rule instead).
 *
 * @param {object[]} encodings ``sender.getParameters().encodings`` after the answer
 * @param {string} codecMime the negotiated codec (``getParameters().codecs[0].mimeType``)
 * @returns {object[]|null} the new encodings, or null when nothing needs to change
 */
export function encodingsAfterAnswer(encodings, codecMime) {
  let changed = false;
  const out = encodings.map((e) => {
    const next = { ...e };
    if (encodings.length === 1 && e.rid && (e.scaleResolutionDownBy ?? 1) !== 1) {
      next.scaleResolutionDownBy = 1;
      delete next.maxBitrate;
      changed = true;
    }
    if (e.scalabilityMode && e.scalabilityMode !== "L1T1" && codecMime && !/^video\/vp8$/i.test(codecMime)) {
      next.scalabilityMode = "L1T1"; // temporal layers are asked of VP8 only (the contract)
      changed = true;
    }
    return next;
  });
  return changed ? out : null;
}
