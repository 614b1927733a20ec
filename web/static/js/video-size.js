// Viewer size hints for WHEP (docs/web.md "Adaptive delivery"): the watch page tells the
// server how large its <video> element is on screen, in device pixels, so the SFU never
// sends a simulcast layer much larger than that (the consumer's max size).
//
// POST <WHEP session URL>/video-size with {"width": int, "height": int} (1..16384 each)
// → 204. Sent when the session is up, then when the element's size changes by 10 % or more
// (ResizeObserver, debounced 500 ms). While the page is hidden it reports HIDDEN_SIZE (the
// lowest layer is enough for a tab nobody looks at; audio is unaffected) and the real size
// again as soon as it is visible. A 404/405 (a server without hints, or the session is
// gone) stops the reporter silently; other failures are retried on the next change.

export const DEBOUNCE_MS = 500;
export const MIN_CHANGE = 0.1;
export const HIDDEN_SIZE = Object.freeze({ width: 160, height: 90 });
const MAX_SIDE = 16384;

/** ``el``'s rendered size in device pixels (clientWidth/Height × devicePixelRatio, rounded,
 * at most 16384), or null while it has no layout box (0 × 0). */
export function renderedSize(el, dpr = globalThis.devicePixelRatio || 1) {
  const width = Math.min(MAX_SIDE, Math.round(el.clientWidth * dpr));
  const height = Math.min(MAX_SIDE, Math.round(el.clientHeight * dpr));
  return width > 0 && height > 0 ? { width, height } : null;
}

/** Whether ``next`` differs from ``prev`` by at least ``minChange`` (relative) in width or
 * height; always true without a ``prev``. */
export function changedEnough(prev, next, minChange = MIN_CHANGE) {
  if (!prev) return true;
  return Math.abs(next.width - prev.width) >= minChange * prev.width
    || Math.abs(next.height - prev.height) >= minChange * prev.height;
}

/** ``<sessionUrl>/video-size`` (the session URL is absolute: postOffer resolves it). */
export function videoSizeUrl(sessionUrl) {
  const url = new URL(sessionUrl);
  url.pathname = `${url.pathname.replace(/\/$/, "")}/video-size`;
  return url.href;
}

/**
 * Reports one WHEP session's video element size. ``start()`` sends the current size and
 * starts watching; ``stop()`` ends it (idempotent). ``last`` is the last size the server
 * accepted ({width, height} or null); ``unsupported`` true after a 404/405.
 */
export class VideoSizeReporter {
  constructor(video, sessionUrl, { debounceMs = DEBOUNCE_MS, minChange = MIN_CHANGE, hiddenSize = HIDDEN_SIZE } = {}) {
    this.video = video;
    this.url = videoSizeUrl(sessionUrl);
    this.debounceMs = debounceMs;
    this.minChange = minChange;
    this.hiddenSize = hiddenSize;
    this.last = null;
    this.unsupported = false;
    this.sent = 0; // requests the server answered 2xx
    this.stopped = false;
    this.timer = null;
    this.inflight = null;
    this.observer = null;
    this.onVisibility = () => this.update({ force: true });
  }

  start() {
    if (typeof ResizeObserver === "function") {
      this.observer = new ResizeObserver(() => this.schedule());
      this.observer.observe(this.video);
    }
    document.addEventListener("visibilitychange", this.onVisibility);
    this.update({ force: true });
    return this;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.observer?.disconnect();
    document.removeEventListener("visibilitychange", this.onVisibility);
  }

  schedule() {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.update(), this.debounceMs);
  }

  /** The size to report now: HIDDEN_SIZE while hidden, else the element's (null: none). */
  wanted() {
    if (document.visibilityState === "hidden") return { ...this.hiddenSize };
    return renderedSize(this.video);
  }

  async update({ force = false } = {}) {
    if (this.stopped || this.unsupported) return;
    if (this.inflight) { // one request at a time; look again when it is answered
      await this.inflight;
      return this.update({ force });
    }
    const size = this.wanted();
    if (!size) return;
    if (this.last && size.width === this.last.width && size.height === this.last.height) return;
    if (!force && !changedEnough(this.last, size, this.minChange)) return;
    this.inflight = this.post(size);
    try {
      await this.inflight;
    } finally {
      this.inflight = null;
    }
  }

  async post(size) {
    let res;
    try {
      res = await fetch(this.url, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(size),
        signal: AbortSignal.timeout(5000),
      });
    } catch {
      return; // network trouble: the next change tries again
    }
    if (res.status === 404 || res.status === 405) {
      this.unsupported = true; // a server without hints, or the session is gone
      this.stop();
    } else if (res.ok) {
      this.last = size;
      this.sent += 1;
    }
  }
}
