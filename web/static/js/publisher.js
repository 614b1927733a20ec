// Publishing from the browser: capture camera + microphone and send them with WHIP
// (RFC 9725) to POST /whip/{channel}, plus the "chat" data channel. Used by the
// broadcast page (/broadcast/{room}, a stream key typed in) and the studio
// (/studio, the channel's own key).
//
// States shown in ui.state (data-state = first word): idle, connecting, live,
// reconnecting, stopped, "error: <why>".
//
// Adaptive delivery (docs/web.md "Adaptive delivery"): the camera goes out as three
// simulcast layers (rids q/h/f, simulcast.js) with VP8 temporal layers, unless the
// page's "Simulcast" box (ui.simulcast) is unticked, the browser refuses, or the source
// is too small; the server's answer without a=simulcast leaves one full-size encoding.
// A failing connection first tries an ICE restart (PATCH, RFC 9725 §4.3.3) before a new
// session.

import { attachChat, mountChat } from "./chat.js";
import {
  encodingsAfterAnswer, planEncodings, rescaleEncodings, simulcastRids, vp8RefusesMode,
} from "./simulcast.js";
import {
  HttpError, backoffDelay, closeSession, rtcConfiguration, negotiate, pollStats,
  restartSessionIce, setState, sleep, watchConnection,
} from "./webrtc.js";

const RESOLUTIONS = { "360p": [640, 360], "720p": [1280, 720], "1080p": [1920, 1080] };

/** Worth retrying while reconnecting: network errors, conflicts (our previous session may
 * not be reaped yet), rate limits and server errors. */
function retryable(err) {
  if (!(err instanceof HttpError)) return err.name !== "AbortError";
  return err.status === 408 || err.status === 409 || err.status === 429 || err.status >= 500;
}

export function describe(err) {
  return err instanceof HttpError ? err.message : `${err.name}: ${err.message}`;
}

/**
 * Outgoing video figures from two getStats() reports: {kbps, fps, width, height, layers}.
 * With simulcast there is one outbound-rtp per layer (paused ones left out): ``kbps`` is their sum, ``fps``/
 * ``width``/``height`` the largest layer's, ``layers`` [{rid, kbps, fps, width, height}]
 * each (lowest first; one entry without a rid when not simulcast).
 */
export function videoHealth(report, prev, dt) {
  const layers = [];
  for (const st of report.values()) {
    // A paused simulcast layer (active false) keeps its last frame size: not sent now.
    if (st.type !== "outbound-rtp" || st.kind !== "video" || st.active === false) continue;
    const before = prev?.get(st.id);
    const kbps = before && dt > 0 ? Math.round(((st.bytesSent - before.bytesSent) * 8) / dt / 1000) : 0;
    layers.push({
      rid: st.rid ?? null, kbps, fps: st.framesPerSecond ?? 0, width: st.frameWidth ?? 0, height: st.frameHeight ?? 0,
    });
  }
  if (!layers.length) return null;
  layers.sort((a, b) => a.height - b.height || a.kbps - b.kbps);
  const top = layers[layers.length - 1];
  const kbps = layers.reduce((sum, l) => sum + l.kbps, 0);
  return { kbps, fps: top.fps, width: top.width, height: top.height, layers };
}

/**
 * ``pc.addTransceiver`` for the camera track with the simulcast/temporal encodings of
 * :func:`planEncodings`, falling back step by step when the browser throws (no temporal
 * scalability, then no simulcast, then its default single encoding).
 * @returns {RTCRtpTransceiver}
 */
function addVideoTransceiver(pc, track, init, simulcast) {
  const { width = null, height = null } = track.getSettings?.() ?? {};
  const temporal = !vp8RefusesMode(globalThis.RTCRtpSender?.getCapabilities?.("video"));
  const attempts = [
    planEncodings(width, height, { simulcast, temporal }),
    planEncodings(width, height, { simulcast, temporal: false }),
    planEncodings(width, height, { simulcast: false, temporal: false }),
  ];
  for (const encodings of attempts) {
    try {
      return pc.addTransceiver(track, encodings ? { ...init, sendEncodings: encodings } : init);
    } catch (err) {
      if (!encodings) throw err;
      console.warn("relaycast: sendEncodings refused, trying fewer", encodings, err);
    }
  }
  throw new Error("unreachable");
}

/**
 * One publisher on a page. ``ui``: {preview, state, stats, viewers, camera, mic,
 * resolution, chat, goLive, stop, lockWhileLive?: [inputs]} elements. ``onHealth(figures)`` gets
 * :func:`videoHealth` once a second while live; ``onLive()`` each time a session connects.
 */
/**
 * Why this page cannot capture, or null when it can: browsers expose getUserMedia only in a
 * secure context — HTTPS, or localhost (W3C Secure Contexts; Media Capture and Streams
 * §9.2) — so the studio opened as http://HOST/ from another machine has no camera.
 */
export function captureBlocked() {
  if (window.isSecureContext && navigator.mediaDevices?.getUserMedia) return null;
  return { https: `https://${location.host}${location.pathname}${location.search}` };
}

/** The "HTTPS needed" notice above the preview, with a link to the page over HTTPS. */
function showHttpsNeeded(ui, blocked) {
  const note = document.createElement("p");
  note.className = "https-needed";
  note.dataset.testid = "https-needed";
  note.setAttribute("role", "alert");
  const link = document.createElement("a");
  link.href = blocked.https;
  link.textContent = "open this page over HTTPS";
  const code = (text) => Object.assign(document.createElement("code"), { textContent: text });
  note.append("HTTPS needed: browsers let only https:// pages (or localhost) use the camera and microphone — ",
    link, ". The server needs a certificate for that: ", code("relaycast serve --self-signed"), ", or ",
    code("--tls-cert"), " and ", code("--tls-key"), ".");
  ui.preview.before(note);
}

export class WhipPublisher {
  constructor(ui, { onHealth = null, onLive = null } = {}) {
    this.ui = ui;
    this.onHealth = onHealth;
    this.onLive = onLive;
    this.blocked = captureBlocked();
    if (this.blocked) showHttpsNeeded(ui, this.blocked);
    this.stream = null; // local MediaStream: preview and publish source
    // {pc, dc, location, etag, token, video (transceiver), simulcast: {offered, answered}
    // (rids), iceRestarts, cleanup[]} of the current WHIP session
    this.session = null;
    this.run = null; // AbortController spanning goLive() .. stop()
    mountChat(ui.chat);
    ui.preview.muted = true;
    ui.camera.addEventListener("change", () => this.onDeviceChange());
    ui.mic.addEventListener("change", () => this.onDeviceChange());
    ui.resolution.addEventListener("change", () => this.onResolutionChange());
    navigator.mediaDevices?.addEventListener("devicechange", () => this.populateDevices().catch(() => {}));
    // Best effort: end the WHIP session when the tab goes away.
    addEventListener("pagehide", () => {
      this.run?.abort();
      this.run = null;
      this.teardown(this.session, { keepalive: true });
    });
  }

  get pc() {
    return this.session?.pc ?? null;
  }

  get running() {
    return this.run !== null;
  }

  /** Simulcast wanted: the page's "Simulcast" box when it has one, else on. */
  get simulcastWanted() {
    return this.ui.simulcast ? this.ui.simulcast.checked : true;
  }

  // ---- media capture -------------------------------------------------------
  mediaConstraints() {
    const [width, height] = RESOLUTIONS[this.ui.resolution.value] ?? RESOLUTIONS["720p"];
    const pick = (sel) => (sel.value ? { exact: sel.value } : undefined);
    return {
      video: { deviceId: pick(this.ui.camera), width: { ideal: width }, height: { ideal: height }, frameRate: { ideal: 30 } },
      audio: { deviceId: pick(this.ui.mic), echoCancellation: true, noiseSuppression: true },
    };
  }

  async getUserMediaWithFallback() {
    const c = this.mediaConstraints();
    try {
      return await navigator.mediaDevices.getUserMedia(c);
    } catch (err) {
      if (err.name !== "NotFoundError" && err.name !== "OverconstrainedError") throw err;
      // One of the two kinds is missing: publish whatever we have.
      try {
        return await navigator.mediaDevices.getUserMedia({ video: c.video });
      } catch {
        return await navigator.mediaDevices.getUserMedia({ audio: c.audio });
      }
    }
  }

  async acquireMedia() {
    let next;
    try {
      next = await this.getUserMediaWithFallback();
    } catch (err) {
      if (!this.stream) throw err;
      this.stream.getTracks().forEach((t) => t.stop()); // device may be exclusive: release and retry
      this.stream = null;
      next = await this.getUserMediaWithFallback();
    }
    const old = this.stream;
    this.stream = next;
    this.ui.preview.srcObject = next;
    // While live, swap tracks in place: replaceTrack needs no renegotiation,
    // which WHIP could not do anyway (one offer/answer per session).
    for (const tr of this.session?.pc.getTransceivers() ?? []) {
      const kind = tr.receiver.track.kind;
      const track = kind === "video" ? next.getVideoTracks()[0] : next.getAudioTracks()[0];
      if (track) await tr.sender.replaceTrack(track);
    }
    if (this.session) await this.rescaleLayers(); // the new camera may be another size
    old?.getTracks().forEach((t) => t.stop());
    await this.populateDevices();
  }

  async populateDevices() {
    const devices = await navigator.mediaDevices.enumerateDevices();
    const fill = (select, kind, label, track) => {
      const current = track?.getSettings().deviceId || select.value;
      const list = devices.filter((d) => d.kind === kind && d.deviceId);
      select.replaceChildren(...list.map((d, i) => new Option(d.label || `${label} ${i + 1}`, d.deviceId)));
      if (list.some((d) => d.deviceId === current)) select.value = current;
      select.disabled = list.length === 0;
    };
    fill(this.ui.camera, "videoinput", "Camera", this.stream?.getVideoTracks()[0]);
    fill(this.ui.mic, "audioinput", "Microphone", this.stream?.getAudioTracks()[0]);
  }

  hasLiveMedia() {
    return this.stream?.getTracks().some((t) => t.readyState === "live");
  }

  /** Capture once at start-up: device labels/ids are only exposed after a first grant. */
  async preview() {
    if (this.blocked) {
      setState(this.ui.state, "error: HTTPS needed to use the camera and microphone");
      return;
    }
    setState(this.ui.state, "idle");
    try {
      await this.acquireMedia();
    } catch (err) {
      setState(this.ui.state, `error: camera/microphone unavailable (${describe(err)})`);
    }
  }

  // ---- WHIP session ------------------------------------------------------------
  async publish(endpoint, signal, token) {
    const pc = new RTCPeerConnection(await rtcConfiguration());
    let video = null;
    for (const track of this.stream.getTracks()) {
      const init = { direction: "sendonly", streams: [this.stream] };
      if (track.kind === "video") video = addVideoTransceiver(pc, track, init, this.simulcastWanted);
      else pc.addTransceiver(track, init);
    }
    // The chat channel must exist before createOffer so the offer carries the
    // m=application (SCTP) section: WHIP sessions are never renegotiated.
    const dc = pc.createDataChannel("chat", { ordered: true });
    const s = { pc, dc, token, location: null, etag: null, video, simulcast: null, cleanup: [] };
    const chat = attachChat(dc, this.ui.chat, { onPresence: (p) => this.onPresence(p) });
    s.cleanup.push(() => chat.detach());
    try {
      await negotiate(s, endpoint, token, signal);
      await this.adaptEncodings(s);
    } catch (err) {
      await this.teardown(s);
      throw err;
    }
    s.cleanup.push(pollStats(pc, (report, prev, dt) => this.renderStats(report, prev, dt)));
    return s;
  }

  /**
   * After the answer: note which rids were offered and answered (RFC 8853 §5.1), and when
   * the server took no simulcast (or another codec than VP8) fix the encoding the browser
   * kept (:func:`encodingsAfterAnswer`). A refused setParameters leaves the encoding as is.
   */
  async adaptEncodings(s) {
    if (!s.video) return;
    s.simulcast = {
      offered: simulcastRids(s.pc.localDescription.sdp, "send"),
      answered: simulcastRids(s.pc.remoteDescription.sdp, "recv"),
    };
    const params = s.video.sender.getParameters();
    const encodings = encodingsAfterAnswer(params.encodings ?? [], params.codecs?.[0]?.mimeType ?? "");
    if (!encodings) return;
    try {
      await s.video.sender.setParameters({ ...params, encodings });
    } catch (err) {
      console.warn("relaycast: could not adjust the video encoding", err);
    }
  }

  /** DELETE the session resource (RFC 9725 §4.2), then close the pc. Idempotent. */
  async teardown(s, { keepalive = false } = {}) {
    if (!s || s.closed) return;
    s.closed = true;
    s.cleanup.forEach((fn) => fn());
    if (this.session === s) this.session = null;
    await closeSession(s, s.token, { keepalive });
  }

  /** Resolves with a reason once the session is lost (an ICE restart, RFC 9725 §4.3.3,
   * tried first), or "stopped" on abort. */
  untilLost(s, signal, onConnected) {
    return new Promise((resolve) => {
      const unwatch = watchConnection(s.pc, {
        channel: s.dc, onConnected, onLost: resolve,
        restart: () => restartSessionIce(s, s.token),
        onRestart: (reason) => {
          setState(this.ui.state, "reconnecting");
          this.ui.stats.textContent = `restarting ICE (${reason})`;
        },
      });
      signal.addEventListener("abort", () => { unwatch(); resolve("stopped"); }, { once: true });
    });
  }

  /**
   * Publish to ``endpoint`` (a /whip/{channel} URL) with ``token`` (Bearer) until
   * stop(); re-publishes with backoff when a session that was live is lost.
   * @throws the first attempt's error (e.g. HttpError 401 for a bad key); the state
   *   line says it too.
   */
  async goLive(endpoint, token) {
    if (this.run) return;
    if (this.blocked) {
      setState(this.ui.state, "error: HTTPS needed to use the camera and microphone");
      return;
    }
    this.run = new AbortController();
    const { signal } = this.run;
    this.setControls(true);
    setState(this.ui.state, "connecting");
    let attempt = 0;
    let everPublished = false;
    try {
      if (!this.hasLiveMedia()) await this.acquireMedia();
      while (!signal.aborted) {
        try {
          this.session = await this.publish(endpoint, signal, token);
        } catch (err) {
          if (signal.aborted) break;
          if (!everPublished || !retryable(err)) throw err;
          this.ui.stats.textContent = `retrying: ${describe(err)}`;
          await sleep(backoffDelay(attempt++), signal);
          continue;
        }
        everPublished = true;
        const reason = await this.untilLost(this.session, signal, () => {
          attempt = 0;
          setState(this.ui.state, "live");
          this.ui.stats.textContent = "–";
          this.onLive?.();
        });
        if (signal.aborted) break;
        // Lost while live: drop this session and publish again with backoff.
        setState(this.ui.state, "reconnecting");
        this.ui.stats.textContent = `connection lost (${reason})`;
        this.teardown(this.session); // DELETE in the background so the server frees the slot
        await sleep(backoffDelay(attempt++), signal);
      }
    } catch (err) {
      if (!signal.aborted) {
        setState(this.ui.state, `error: ${describe(err)}`);
        this.run = null;
        this.setControls(false);
        throw err;
      }
    }
  }

  async stop() {
    this.run?.abort();
    this.run = null;
    const s = this.session;
    this.session = null;
    this.stream?.getTracks().forEach((t) => t.stop());
    this.stream = null;
    this.ui.preview.srcObject = null;
    this.setControls(false);
    setState(this.ui.state, "stopped");
    this.ui.stats.textContent = "–";
    this.ui.viewers.textContent = "–";
    await this.teardown(s);
  }

  // ---- UI ------------------------------------------------------------------
  setControls(running) {
    this.ui.goLive.disabled = running;
    this.ui.stop.disabled = !running;
    for (const input of this.ui.lockWhileLive ?? []) input.disabled = running;
    if (this.ui.simulcast) this.ui.simulcast.disabled = running; // fixed per session (one offer)
  }

  onPresence({ viewers }) {
    if (Number.isFinite(viewers)) this.ui.viewers.textContent = String(viewers);
  }

  renderStats(report, prev, dt) {
    const health = videoHealth(report, prev, dt);
    if (!health) return;
    const res = health.width ? `${health.width}×${health.height}` : "–";
    const sent = health.layers.filter((l) => l.rid && l.height > 0);
    const layers = sent.length > 1 ? ` · ${sent.length} layers (${sent.map((l) => `${l.rid} ${l.height}p`).join(", ")})` : "";
    this.ui.stats.textContent = `video ${health.kbps} kbps · ${health.fps} fps · ${res}${layers}`;
    this.onHealth?.(health);
  }

  async onDeviceChange() {
    if (!this.stream && !this.run) return; // nothing captured: leave it for "Go live"
    try {
      await this.acquireMedia();
    } catch (err) {
      setState(this.ui.state, `error: ${describe(err)}`);
    }
  }

  onResolutionChange() {
    const [width, height] = RESOLUTIONS[this.ui.resolution.value];
    const track = this.stream?.getVideoTracks()[0];
    track?.applyConstraints({ width: { ideal: width }, height: { ideal: height }, frameRate: { ideal: 30 } })
      .then(() => this.rescaleLayers())
      .catch(() => this.onDeviceChange());
  }

  /** While live with simulcast: re-plan the layers for the camera's new size
   * (:func:`rescaleEncodings`), so the top active layer stays the full picture. */
  async rescaleLayers() {
    const sender = this.session?.video?.sender;
    const settings = sender?.track?.getSettings();
    if (!sender || !settings) return;
    const params = sender.getParameters();
    const encodings = rescaleEncodings(params.encodings, settings.width, settings.height);
    if (!encodings) return;
    try {
      await sender.setParameters({ ...params, encodings });
    } catch (err) {
      console.warn("relaycast: could not re-plan the simulcast layers", err);
    }
  }
}
