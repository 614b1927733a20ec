// LL-HLS playback for the watch page's fallback path.
//
// hls.js (served from this server at /static/vendor/hls.min.js, out of the npm
// install in web/node_modules: never a CDN) in lowLatencyMode, which uses the
// bridge's parts, preload hints and blocking playlist reload (RFC 8216bis §4.4.3.7,
// §6.2.5.2). Browsers without Media Source Extensions but with native HLS (Safari
// on iOS) play the playlist directly. hls.js is loaded on first use only, so
// viewers who stay on WebRTC never download it.

export const HLS_SCRIPT = "/static/vendor/hls.min.js";
const HLS_MIME = "application/vnd.apple.mpegurl";
const RETRY_MS = 3000; // no stream yet / stream ended: ask again this often
const MAX_MEDIA_RECOVERIES = 2;
// Live latency. hls.js's target latency is the bridge's PART-HOLD-BACK (3 parts,
// 0.6 s), plus STALL_INCREASE_S per stall (hls.js's default, 1 s per stall, would keep
// the page a second further behind for good after one stall).
// Catching up is the page's job, not hls.js's (maxLiveSyncPlaybackRate stays 1): hls.js
// speeds up only while more than 1 s is buffered ahead, which never happens near the
// 0.6 s target, so it would stay ~1 s behind. The page plays faster (at most
// CATCHUP_MAX_RATE) while more than CATCHUP_BEHIND_S behind the target with more than
// CATCHUP_MIN_AHEAD_S buffered ahead, once playback has run CATCHUP_SETTLE_MS without
// a stall (a starting bridge, or one that just stalled, is the likeliest to be late
// again); when more than JUMP_BEHIND_S behind (a slow start, a long stall) it jumps
// to the live sync position, at most once per JUMP_INTERVAL_MS.
const JUMP_BEHIND_S = 1.5;
const JUMP_INTERVAL_MS = 10000;
const STALL_INCREASE_S = 0.2; // hls.js liveSyncOnStallIncrease
const CATCHUP_BEHIND_S = 0.1;
const CATCHUP_MIN_AHEAD_S = 0.4;
const CATCHUP_MAX_RATE = 1.25;
const CATCHUP_SETTLE_MS = 3000;

let loading = null; // Promise<Hls | null> while/after loading hls.js

/** Load hls.js once (a classic script that defines window.Hls); null when it cannot be loaded. */
export function loadHlsJs(src = HLS_SCRIPT) {
  if (window.Hls) return Promise.resolve(window.Hls);
  if (!loading) {
    loading = new Promise((resolve) => {
      const script = document.createElement("script");
      script.src = src;
      script.async = true;
      script.addEventListener("load", () => resolve(window.Hls ?? null));
      script.addEventListener("error", () => {
        script.remove();
        loading = null; // a later switch may try again
        resolve(null);
      });
      document.head.append(script);
    });
  }
  return loading;
}

/**
 * Which HLS engine this browser can use: {engine: "hls.js", Hls} when hls.js
 * loads and Media Source Extensions work, else {engine: "native"} when the video
 * element plays HLS itself, else {engine: null, reason}.
 */
export async function hlsSupport(video) {
  const Hls = await loadHlsJs();
  if (Hls?.isSupported()) return { engine: "hls.js", Hls };
  if (video.canPlayType(HLS_MIME)) return { engine: "native" };
  const reason = Hls
    ? "this browser has neither Media Source Extensions nor native HLS"
    : "the HLS player (hls.js) is not installed on this server";
  return { engine: null, reason };
}

/**
 * Plays ``url`` (a multivariant playlist) in ``video`` until destroy().
 *
 * onStatus({state, detail}) reports "loading", "playing", "waiting" (no stream
 * yet, or it ended: retried every 3 s), "buffering" and "error". latency() gives
 * the current estimate; details() a one-line description of what is playing.
 */
export class HlsPlayer {
  constructor(video, url, support, { onStatus = () => {} } = {}) {
    this.video = video;
    this.url = url;
    this.support = support;
    this.engine = support.engine;
    this.onStatus = onStatus;
    this.hls = null;
    this.destroyed = false;
    this.retryTimer = 0;
    this.mediaRecoveries = 0;
    this.listeners = [];
    this.lastJump = 0;
    this.streamEnded = false;
    this.lastTime = -1;
    this.liveTimer = setInterval(() => this.keepLive(), 1000);
    this.playingSince = 0; // performance.now() of the last "playing", 0 while stalled
    this.listen("playing", () => {
      this.playingSince = performance.now();
      this.status("playing");
    });
    this.listen("waiting", () => {
      this.playingSince = 0;
      this.status("buffering");
    });
    this.listen("timeupdate", () => this.catchUp());
    // ENDLIST reached (the publisher left): poll until a new stream starts.
    this.listen("ended", () => this.retryLater("waiting", "The broadcast ended. Waiting for the broadcaster…"));
  }

  listen(type, fn) {
    this.video.addEventListener(type, fn);
    this.listeners.push([type, fn]);
  }

  status(state, detail = "") {
    if (!this.destroyed) this.onStatus({ state, detail });
  }

  start() {
    if (this.destroyed) return;
    this.streamEnded = false;
    this.status("loading");
    if (this.engine === "hls.js") this.startHlsJs();
    else this.startNative();
  }

  startHlsJs() {
    const { Hls } = this.support;
    const hls = new Hls({
      lowLatencyMode: true,
      liveDurationInfinity: true,
      backBufferLength: 30,
      maxLiveSyncPlaybackRate: 1, // the page catches up itself (catchUp)
      liveSyncOnStallIncrease: STALL_INCREASE_S,
    });
    this.hls = hls;
    hls.on(Hls.Events.MANIFEST_PARSED, () => {
      this.video.play().catch(() => {}); // muted, so autoplay is allowed
    });
    hls.on(Hls.Events.FRAG_BUFFERED, () => {
      this.mediaRecoveries = 0;
    });
    hls.on(Hls.Events.LEVEL_UPDATED, (_event, data) => {
      // EXT-X-ENDLIST: the publisher left. Played out (or stalled) -> "ended".
      this.streamEnded = !data.details.live;
    });
    hls.on(Hls.Events.ERROR, (_event, data) => {
      if (!data.fatal || hls !== this.hls) return;
      const code = data.response?.code;
      if (data.type === Hls.ErrorTypes.MEDIA_ERROR && this.mediaRecoveries < MAX_MEDIA_RECOVERIES) {
        this.mediaRecoveries += 1;
        hls.recoverMediaError();
        return;
      }
      if (data.type === Hls.ErrorTypes.NETWORK_ERROR && code === 404) {
        // The room is not live (its bridge is still starting, or stopped when the
        // publisher left).
        this.retryLater("waiting", "Waiting for the broadcaster…");
        return;
      }
      if (data.type === Hls.ErrorTypes.NETWORK_ERROR && code === 503) {
        // The room is live but its LL-HLS stream is not ready yet (a bridge starting, its
        // transcoder busy, or no CPU to start one): the origin says so with Retry-After.
        this.retryLater("waiting", "Waiting for the LL-HLS stream…");
        return;
      }
      const what = code ? `${data.details} (HTTP ${code})` : data.details;
      this.retryLater("error", `LL-HLS playback failed: ${what}; retrying…`);
    });
    hls.attachMedia(this.video);
    hls.loadSource(this.url);
  }

  startNative() {
    const onError = () => this.retryLater("waiting", "Waiting for the LL-HLS stream…");
    this.video.addEventListener("error", onError, { once: true });
    this.nativeError = onError;
    this.video.src = this.url;
    this.video.play().catch(() => {});
  }

  /** Drop the current engine instance and start again after RETRY_MS. */
  retryLater(state, detail) {
    if (this.destroyed) return;
    this.status(state, detail);
    this.detachEngine();
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.start(), RETRY_MS);
  }

  detachEngine() {
    if (this.hls) {
      this.hls.destroy(); // detaches the MediaSource and aborts every request
      this.hls = null;
    }
    if (this.nativeError) {
      this.video.removeEventListener("error", this.nativeError);
      this.nativeError = null;
      this.video.removeAttribute("src");
      this.video.load();
    }
  }

  /**
   * Once a second: after EXT-X-ENDLIST, a playback that no longer advances has
   * ended (the bridge may stop serving the tail: do not wait for hls.js's retries);
   * otherwise seek to hls.js's live sync position when far behind the target latency.
   */
  keepLive() {
    const hls = this.hls;
    const v = this.video;
    const stuck = v.currentTime === this.lastTime;
    this.lastTime = v.currentTime;
    if (hls && this.streamEnded && stuck) {
      this.retryLater("waiting", "The broadcast ended. Waiting for the broadcaster…");
      return;
    }
    if (!hls || v.paused || v.seeking || Date.now() - this.lastJump < JUMP_INTERVAL_MS) return;
    const target = hls.liveSyncPosition;
    if (!Number.isFinite(target) || target - v.currentTime < JUMP_BEHIND_S) return;
    this.lastJump = Date.now();
    v.currentTime = target;
  }

  /**
   * On every timeupdate (~4 Hz): play faster (1 + half the distance, at most
   * CATCHUP_MAX_RATE) while behind hls.js's target latency (the bridge's
   * PART-HOLD-BACK, plus STALL_INCREASE_S per stall) with enough buffered ahead and
   * CATCHUP_SETTLE_MS of playback since the start or the last stall; normal speed
   * otherwise.
   */
  catchUp() {
    const hls = this.hls;
    const v = this.video;
    if (!hls || v.paused || v.seeking || this.streamEnded) return;
    const behind = hls.latency - hls.targetLatency;
    const b = v.buffered;
    const ahead = b.length ? b.end(b.length - 1) - v.currentTime : 0;
    const settled = this.playingSince > 0 && performance.now() - this.playingSince > CATCHUP_SETTLE_MS;
    let rate = 1;
    if (settled && Number.isFinite(behind) && behind > CATCHUP_BEHIND_S && ahead > CATCHUP_MIN_AHEAD_S) {
      rate = Math.min(CATCHUP_MAX_RATE, Math.round((1 + behind / 2) * 20) / 20);
    }
    if (v.playbackRate !== rate) v.playbackRate = rate;
  }

  /**
   * Latency estimate: {ms, method} or null while unknown ({ms: null, method} when
   * it cannot be measured at all).
   * With a program date time (the bridge stamps each segment with the wall clock at
   * which its first frame reached the bridge, EXT-X-PROGRAM-DATE-TIME) it is
   * now − date of the frame on screen; otherwise hls.js's distance to the live edge.
   */
  latency() {
    let playing = null;
    if (this.hls) playing = this.hls.playingDate;
    else if (this.engine === "native" && this.video.getStartDate) {
      const start = this.video.getStartDate().getTime();
      if (Number.isFinite(start)) playing = new Date(start + this.video.currentTime * 1000);
    }
    if (playing && Number.isFinite(playing.getTime())) {
      return { ms: Math.max(0, Date.now() - playing.getTime()), method: "now − program date time of the frame on screen" };
    }
    const edge = this.hls?.latency;
    if (Number.isFinite(edge) && edge > 0) return { ms: edge * 1000, method: "behind the live edge (hls.js)" };
    const seekable = this.video.seekable;
    if (this.engine === "native" && seekable.length) {
      const behind = seekable.end(seekable.length - 1) - this.video.currentTime;
      if (behind > 0) return { ms: behind * 1000, method: "behind the seekable live edge (native player)" };
    }
    if (this.engine === "native" && this.video.currentTime > 0) {
      return { ms: null, method: "not measurable: this native player exposes no program date time" };
    }
    return null;
  }

  /** "640x360 · 0.8 Mbit/s · buffer 1.2 s · dropped 0", or "" before playback. */
  details() {
    const v = this.video;
    if (!v.videoWidth) return "";
    const parts = [`${v.videoWidth}x${v.videoHeight}`];
    const level = this.hls?.levels?.[this.hls.currentLevel];
    if (level?.bitrate) parts.push(`${(level.bitrate / 1e6).toFixed(1)} Mbit/s`);
    const b = v.buffered;
    if (b.length) parts.push(`buffer ${Math.max(0, b.end(b.length - 1) - v.currentTime).toFixed(1)} s`);
    const quality = v.getVideoPlaybackQuality?.();
    if (quality) parts.push(`dropped ${quality.droppedVideoFrames}`);
    return parts.join(" · ");
  }

  destroy() {
    if (this.destroyed) return;
    this.destroyed = true;
    clearTimeout(this.retryTimer);
    clearInterval(this.liveTimer);
    this.detachEngine();
    for (const [type, fn] of this.listeners) this.video.removeEventListener(type, fn);
    this.listeners = [];
  }
}
