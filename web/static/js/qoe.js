// Quality-of-experience beacons of the watch page: POST /api/beacons with
// navigator.sendBeacon (W3C Beacon §3.1: it outlives the page, so "end" arrives on
// pagehide too) and a Blob of type application/json: {"beacons": [Beacon, ...]}, at most
// 50 per request (community/beacons.py has the fields and their ranges).
//
// One playback session per path start (a fresh random id, so that the counters of a
// session belong to one tier): "join" once the first frame is shown (join_ms from page
// load, or from the viewer's click on a path, or from the moment the stream became
// available when the page had to wait for the broadcaster), "heartbeat" every 10 s
// (latency_ms and the totals), "stall" when a stall ends ("waiting" → "playing"),
// "switch" when the video's height changes, "error", and "end" when the path stops or the
// page is hidden. stalls, stall_ms and switches are cumulative over the session, so a lost
// beacon loses nothing. Beacons wait in a queue sent with each heartbeat (or at once
// for join, error and end, or when 50 are waiting).
//
// latency_ms comes from the page (watch.js): WebRTC — the receiver's jitter-buffer delay
// (jitterBufferDelay / jitterBufferEmittedCount) and decode time per frame over the last
// second of getStats() plus half the ICE round-trip time (currentRoundTripTime / 2) of the
// selected candidate pair: the receive side only, capture, encode and the publisher's
// uplink are not visible to a viewer; LL-HLS — now minus the EXT-X-PROGRAM-DATE-TIME of
// the frame on screen (hls.js playingDate), i.e. glass-to-glass when the clocks agree.

export const BEACON_URL = "/api/beacons";
export const HEARTBEAT_MS = 10000;
const MAX_BATCH = 50;
const MAX_TIME_MS = 120000;
const MAX_ERROR_CHARS = 200;
const TIER = { webrtc: "webrtc", hls: "llhls" };

/** A random playback session id (^[A-Za-z0-9_-]{8,64}$): 16 random bytes, base64url. */
export function newSessionId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function timeMs(value) {
  const ms = Math.round(Number(value));
  return Number.isFinite(ms) && ms >= 0 && ms <= MAX_TIME_MS ? ms : undefined;
}

/**
 * Beacons for the playback in ``video`` of ``channel``. ``latency()`` → ms or null (the
 * current path's estimate). ``send(url, blob)`` defaults to navigator.sendBeacon.
 */
export class QoeBeacons {
  constructor(video, channel, { latency = () => null, send = null } = {}) {
    this.video = video;
    this.channel = channel;
    this.latency = latency;
    this.send = send ?? ((url, blob) => navigator.sendBeacon?.(url, blob));
    this.queue = [];
    this.session = null; // {id, tier, since, joined, stalls, stallMs, switches, stallSince, height}
    this.sent = 0; // beacons handed to sendBeacon (for the tests)
    this.timer = setInterval(() => this.heartbeat(), HEARTBEAT_MS);
    const on = (type, fn) => video.addEventListener(type, fn);
    on("playing", () => this.onPlaying());
    on("waiting", () => this.onWaiting());
    on("resize", () => this.onResize());
    addEventListener("pagehide", () => this.stop());
  }

  /**
   * A new playback session on ``path`` ("webrtc" | "hls"). ``since``: performance.now()
   * of the play request; by default the page load (0) for the first session and, for a
   * later one, the start of a previous session that never showed a frame (an automatic
   * fallback keeps the viewer's wait), else now.
   */
  start(path, since = undefined) {
    const previous = this.session;
    this.stop();
    let from = since;
    if (from === undefined) from = !previous ? 0 : (previous.joined ? performance.now() : previous.since);
    this.session = {
      id: newSessionId(), tier: TIER[path], since: from, joined: false,
      stalls: 0, stallMs: 0, switches: 0, stallSince: 0, height: 0,
    };
    if (this.video.videoHeight && !this.video.paused) this.onPlaying();
  }

  /** The stream is not there yet (no broadcaster): count join time from now on. */
  waiting() {
    if (this.session && !this.session.joined) this.session.since = performance.now();
  }

  /** A playback error (``text``: short, at most 200 characters sent). */
  error(text) {
    if (!this.session) return;
    this.push("error", { error: String(text).slice(0, MAX_ERROR_CHARS) });
    this.flush();
  }

  /** End the current session ("end" with the totals), sent at once. */
  stop() {
    if (!this.session) return;
    this.endStall();
    this.push("end", this.totals());
    this.flush();
    this.session = null;
  }

  totals() {
    const s = this.session;
    const out = { stalls: s.stalls, stall_ms: Math.round(s.stallMs), switches: s.switches };
    if (s.height) out.height = s.height;
    return out;
  }

  push(event, fields = {}) {
    const s = this.session;
    const beacon = { session: s.id, channel: this.channel, tier: s.tier, event };
    for (const [key, value] of Object.entries(fields)) if (value !== undefined && value !== null) beacon[key] = value;
    this.queue.push(beacon);
    if (this.queue.length >= MAX_BATCH) this.flush();
  }

  flush() {
    while (this.queue.length) {
      const batch = this.queue.splice(0, MAX_BATCH);
      const blob = new Blob([JSON.stringify({ beacons: batch })], { type: "application/json" });
      try {
        if (this.send(BEACON_URL, blob)) this.sent += batch.length;
      } catch {
        /* best effort: a beacon never breaks playback */
      }
    }
  }

  heartbeat() {
    const s = this.session;
    if (!s?.joined || document.visibilityState === "hidden") return;
    this.push("heartbeat", { latency_ms: timeMs(this.latency()), ...this.totals() });
    this.flush();
  }

  onPlaying() {
    const s = this.session;
    if (!s) return;
    if (!s.joined) {
      if (!this.video.videoHeight) return; // audio only so far: wait for a frame
      s.joined = true;
      s.height = this.video.videoHeight;
      this.push("join", { join_ms: timeMs(performance.now() - s.since), height: s.height });
      this.flush();
      return;
    }
    if (this.endStall()) this.push("stall", this.totals());
  }

  onWaiting() {
    const s = this.session;
    if (s?.joined && !s.stallSince) s.stallSince = performance.now();
  }

  /** A stall that was going on has ended: count it; true when there was one. */
  endStall() {
    const s = this.session;
    if (!s?.stallSince) return false;
    s.stalls += 1;
    s.stallMs += performance.now() - s.stallSince;
    s.stallSince = 0;
    return true;
  }

  onResize() {
    const s = this.session;
    const height = this.video.videoHeight;
    if (!s || !height) return;
    if (!s.joined) {
      if (!this.video.paused) this.onPlaying();
      return;
    }
    if (height === s.height) return;
    s.height = height;
    s.switches += 1;
    this.push("switch", this.totals());
  }
}
