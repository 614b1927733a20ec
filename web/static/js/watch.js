// Watch page: play room R with WHEP (draft-ietf-wish-whep) from POST /whep/{room},
// plus the "chat" data channel; fall back to LL-HLS (/hls/{room}/index.m3u8 with
// hls.js, see hls-player.js) when WebRTC is missing or does not connect.
//
// Chat (chat.js) runs on the data channel while the WebRTC path has one open, and over
// the pages' Socket.IO connection otherwise (LL-HLS, before playback, without WebRTC):
// one conversation, one panel. chat-moderation.js adds the moderator's and reporter's
// actions; qoe.js sends the quality-of-experience beacons of each playback.
//
// Paths: "webrtc" and "hls". Mode (?path=auto|webrtc|hls, or the switch on the
// page): "auto" starts with WebRTC and moves to LL-HLS by itself when the browser
// has no RTCPeerConnection, when the WHEP request fails, or when the session is not
// connected within ?fallback_s= seconds (default 5). "409 no publisher yet" is not
// a failure: there is no stream at all, so LL-HLS would not exist either, and the
// page keeps waiting on WebRTC. Nor are 401/403/404/429 (token, room or rate
// problems that LL-HLS cannot solve; see fallbackHelps). Once on LL-HLS the page
// stays there until the viewer switches. A manual choice is kept: no automatic
// switch away from it.
//
// Adaptive delivery (docs/web.md "Adaptive delivery"): once a WHEP session is up the
// page reports its video element's size in device pixels (video-size.js: POST
// <session>/video-size) so the SFU picks a simulcast layer no larger than needed; a
// failing connection first tries an ICE restart (PATCH, RFC 9725 §4.3.3) before a new
// session.
import { attachChat, connectSocketChat, mountChat } from "./chat.js";
import { enableChatActions } from "./chat-moderation.js";
import { HlsPlayer, hlsSupport } from "./hls-player.js";
import { QoeBeacons } from "./qoe.js";
import { session as userSession } from "./shell.js";
import { VideoSizeReporter } from "./video-size.js";
import {
  HttpError, backoffDelay, closeSession, rtcConfiguration, negotiate, pollStats,
  restartSessionIce, roomFromPath, setState, sleep, watchConnection,
} from "./webrtc.js";

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const ui = {
  room: $("room"), video: $("video"), notice: $("notice"), state: $("state"),
  viewers: $("viewers"), unmute: $("unmute"), stats: $("stats"), chat: $("chat"),
  path: $("path"), pathReason: $("path-reason"), latency: $("latency"),
  latencyMethod: $("latency-method"), pathWebrtc: $("path-webrtc"), pathHls: $("path-hls"),
};
const params = new URLSearchParams(location.search);
const room = roomFromPath();
const token = params.get("token") || null;
const DEFAULT_RETRY_AFTER_S = 3;
const DEFAULT_FALLBACK_S = 5;
const PATH_NAMES = { webrtc: "WebRTC", hls: "LL-HLS" };
const MODES = ["auto", "webrtc", "hls"];

const hasWebRTC = typeof window.RTCPeerConnection === "function";
const fallbackMs = secondsParam("fallback_s", DEFAULT_FALLBACK_S) * 1000;
let mode = MODES.includes(params.get("path")) ? params.get("path") : "auto";
let current = null; // the path that is running: "webrtc" | "hls" | null
let switching = Promise.resolve(); // path switches run one after another
let hlsUnavailable = ""; // why LL-HLS cannot play here, once known

// WebRTC path
// {pc, dc, location, etag, sizes (VideoSizeReporter), iceRestarts, cleanup[]} of the
// current WHEP session
let session = null;
let run = null; // AbortController for the connect/reconnect loop
let connected = false;
let live = null; // from chat welcome/presence; null = unknown
let webrtcLatency = null; // {ms, method} from getStats

// LL-HLS path
let hlsPlayer = null;
let hlsGeneration = 0; // bumped by every start/stop: a stale start gives up

let chatPanel = null;
const qoe = new QoeBeacons(ui.video, room, { latency: () => currentLatency()?.ms ?? null });

function secondsParam(name, fallback) {
  const value = Number(params.get(name));
  return params.has(name) && Number.isFinite(value) && value > 0 ? value : fallback;
}

function notice(text) {
  ui.notice.textContent = text;
  ui.notice.hidden = !text;
}

function showPlayState() {
  if (!connected || current !== "webrtc") return;
  if (live === false) {
    setState(ui.state, "waiting");
    notice("The broadcaster is offline. Waiting for the broadcaster…");
  } else {
    setState(ui.state, "playing");
    notice("");
  }
}

// ------------------------------------------------------------------ WebRTC (WHEP)

async function play(signal) {
  const pc = new RTCPeerConnection(await rtcConfiguration());
  // WHEP: the client sends the offer, with receive-only media sections.
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  // Created before the offer so it is negotiated in this single offer/answer.
  const dc = pc.createDataChannel("chat", { ordered: true });
  const s = { pc, dc, location: null, cleanup: [] };
  // Collect tracks into our own stream: the server may put audio and video in
  // different (or no) MediaStreams (msid), but we want one <video> element.
  const remote = new MediaStream();
  pc.addEventListener("track", (ev) => {
    if (s.closed || signal.aborted) return; // the page moved to LL-HLS meanwhile
    remote.addTrack(ev.track);
    if (ui.video.srcObject !== remote) ui.video.srcObject = remote;
    ui.video.play().catch(() => {}); // muted, so autoplay is allowed
  });
  const chat = attachChat(dc, ui.chat, { onPresence });
  s.cleanup.push(() => chat.detach());
  try {
    await negotiate(s, `/whep/${encodeURIComponent(room)}`, token, signal);
  } catch (err) {
    await teardown(s);
    throw err;
  }
  s.cleanup.push(pollStats(pc, renderStats));
  s.sizes = new VideoSizeReporter(ui.video, s.location).start();
  s.cleanup.push(() => s.sizes.stop());
  return s;
}

/** DELETE the WHEP session resource, then close the pc. Idempotent. */
async function teardown(s, { keepalive = false } = {}) {
  if (!s || s.closed) return;
  s.closed = true;
  s.cleanup.forEach((fn) => fn());
  if (session === s) session = null;
  await closeSession(s, token, { keepalive });
}

function untilLost(s, signal, onConnectedExtra) {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve("stopped");
    const onConnected = () => {
      connected = true;
      onConnectedExtra();
      showPlayState();
    };
    const unwatch = watchConnection(s.pc, {
      channel: s.dc, onConnected, onLost: resolve,
      restart: () => restartSessionIce(s, token),
      onRestart: (reason) => {
        connected = false;
        setState(ui.state, "reconnecting");
        notice(`Connection interrupted (${reason}); restarting ICE…`);
      },
    });
    signal.addEventListener("abort", () => { unwatch(); resolve("stopped"); }, { once: true });
  });
}

/**
 * Whether LL-HLS may work where this WHEP attempt failed: yes for network errors,
 * 5xx and an offer the server could not use (400/415/422: e.g. no common codec);
 * no for 404 (no such room), 429 (slow down: Retry-After is honoured) and 401/403
 * and 409 (handled before this).
 */
function fallbackHelps(err) {
  return !(err instanceof HttpError) || ![401, 403, 404, 409, 429].includes(err.status);
}

/** In auto mode: move to LL-HLS unless the attempt connects within fallbackMs. */
function fallbackTimer() {
  if (mode !== "auto") return { clear() {} };
  const timer = setTimeout(
    () => fallBack(`WebRTC did not connect within ${fallbackMs / 1000} s`), fallbackMs,
  );
  return { clear: () => clearTimeout(timer) };
}

async function watchLoop() {
  if (run) return;
  run = new AbortController();
  const { signal } = run;
  let attempt = 0;
  setState(ui.state, "connecting");
  while (!signal.aborted) {
    const deadline = fallbackTimer();
    try {
      session = await play(signal);
    } catch (err) {
      deadline.clear();
      if (signal.aborted) break;
      if (err instanceof HttpError && err.status === 409) {
        // Room exists but is not live: poll again after Retry-After. No fallback:
        // without a publisher there is no LL-HLS stream either.
        setState(ui.state, "waiting");
        notice("Waiting for the broadcaster…");
        qoe.waiting();
        await sleep(Math.max(1, err.retryAfterS ?? DEFAULT_RETRY_AFTER_S) * 1000, signal);
        continue;
      }
      const detail = err instanceof HttpError ? err.message : `${err.name}: ${err.message}`;
      setState(ui.state, `error: ${detail}`);
      qoe.error(`WebRTC: ${detail}`);
      if (err instanceof HttpError && (err.status === 401 || err.status === 403)) {
        notice("Not allowed to watch this room.");
        break; // retrying with the same token cannot help
      }
      if (mode === "auto" && fallbackHelps(err) && (await fallBack(`WebRTC failed: ${detail}`))) break;
      notice("Could not connect; retrying…");
      const delay = err.retryAfterS != null ? err.retryAfterS * 1000 : backoffDelay(attempt++);
      await sleep(delay, signal);
      continue;
    }
    if (signal.aborted) {
      // Switched away while the answer was being applied.
      deadline.clear();
      await teardown(session);
      break;
    }
    const reason = await untilLost(session, signal, () => { attempt = 0; deadline.clear(); });
    deadline.clear();
    connected = false;
    if (signal.aborted) break;
    // Lost: ICE failed / disconnected too long, or the server ended the session.
    setState(ui.state, "reconnecting");
    notice(`Connection lost (${reason}); reconnecting…`);
    teardown(session); // DELETE in the background
    await sleep(backoffDelay(attempt++), signal);
  }
  if (run?.signal === signal) run = null;
}

/** Stop the WebRTC path: end the loop, DELETE the WHEP session, release the video. */
async function stopWebrtc() {
  run?.abort();
  run = null;
  connected = false;
  live = null;
  webrtcLatency = null;
  const s = session;
  session = null;
  await teardown(s);
  ui.video.srcObject = null;
}

function onPresence({ viewers, live: isLive }) {
  if (Number.isFinite(viewers)) ui.viewers.textContent = String(viewers);
  if (typeof isLive === "boolean") {
    live = isLive;
    showPlayState();
  }
}

function renderStats(report, prev) {
  let rttS = null;
  for (const st of report.values()) {
    const pair = st.type === "transport" && report.get(st.selectedCandidatePairId);
    if (pair?.currentRoundTripTime != null) rttS = pair.currentRoundTripTime;
  }
  for (const st of report.values()) {
    if (st.type !== "inbound-rtp" || st.kind !== "video") continue;
    const before = prev?.get(st.id);
    let fps = st.framesPerSecond;
    const dt = before ? (st.timestamp - before.timestamp) / 1000 : 0;
    if (fps == null && dt > 0) fps = Math.round((st.framesDecoded - before.framesDecoded) / dt);
    const jb = st.jitterBufferEmittedCount
      ? Math.round((st.jitterBufferDelay / st.jitterBufferEmittedCount) * 1000)
      : 0;
    ui.stats.textContent =
      `frames ${st.framesDecoded ?? 0} · ${fps ?? 0} fps · lost ${st.packetsLost ?? 0} · jitter buffer ${jb} ms`;
    webrtcLatency = estimateWebrtcLatency(st, before, rttS);
  }
}

/**
 * Receive-side latency estimate in ms from inbound-rtp video stats: the average
 * jitter-buffer delay and decode time over the last poll (whole-session averages
 * until there are two polls) plus half the ICE round-trip time. Capture, encode
 * and the publisher's uplink are not visible to the viewer and are not included.
 */
function estimateWebrtcLatency(st, before, rttS) {
  const d = (key) => (st[key] ?? 0) - (before?.[key] ?? 0);
  const emitted = d("jitterBufferEmittedCount");
  const decoded = d("framesDecoded");
  if (!(emitted > 0)) return null;
  const jitterS = d("jitterBufferDelay") / emitted;
  const decodeS = decoded > 0 && st.totalDecodeTime != null ? d("totalDecodeTime") / decoded : 0;
  const ms = (jitterS + decodeS + (rttS ?? 0) / 2) * 1000;
  const parts = ["jitter buffer", "decode", rttS != null ? "RTT/2" : null].filter(Boolean);
  return { ms, method: `${parts.join(" + ")}, receive side only` };
}

// ------------------------------------------------------------------ LL-HLS

function hlsUrl() {
  return `/hls/${encodeURIComponent(room)}/index.m3u8`;
}

async function startHls() {
  const generation = ++hlsGeneration;
  setState(ui.state, "connecting");
  notice("Loading the LL-HLS player…");
  const support = await hlsSupport(ui.video);
  if (generation !== hlsGeneration) return; // switched away while hls.js was loading
  if (!support.engine) {
    markHlsUnavailable(support.reason);
    setState(ui.state, "error: LL-HLS unavailable");
    notice(`The LL-HLS fallback is unavailable: ${support.reason}.`);
    renderPath();
    return;
  }
  hlsPlayer = new HlsPlayer(ui.video, hlsUrl(), support, { onStatus: onHlsStatus });
  renderPath();
  hlsPlayer.start();
}

function onHlsStatus({ state, detail }) {
  if (state === "error") qoe.error(detail);
  else if (state === "waiting") qoe.waiting();
  if (state === "playing") {
    setState(ui.state, "playing");
    notice("");
  } else if (state === "buffering") {
    setState(ui.state, "buffering");
  } else if (state === "loading") {
    if (!ui.state.dataset.state.startsWith("waiting")) setState(ui.state, "connecting");
  } else {
    setState(ui.state, state === "error" ? `error: ${detail}` : state);
    notice(detail);
  }
}

function stopHls() {
  hlsGeneration += 1;
  hlsPlayer?.destroy();
  hlsPlayer = null;
}

function markHlsUnavailable(reason) {
  hlsUnavailable = reason;
  ui.pathHls.disabled = true;
  ui.pathHls.title = `LL-HLS is unavailable: ${reason}`;
}

// ------------------------------------------------------------------ path switching

/**
 * Run ``path`` ("webrtc" | "hls"), tearing the other one down first. Serialized.
 * ``since``: performance.now() of the viewer's click (join time counts from there).
 */
function usePath(path, reason = "", since = undefined) {
  switching = switching.then(() => switchTo(path, reason, since)).catch((err) => console.warn("path switch", err));
  return switching;
}

async function switchTo(path, reason, since) {
  ui.pathReason.textContent = reason;
  if (path === current) return;
  const previous = current;
  current = path;
  renderPath();
  if (previous === "webrtc") await stopWebrtc();
  if (previous === "hls") stopHls();
  if (current !== path) return;
  qoe.start(path, since);
  webrtcLatency = null;
  showLatency(null);
  ui.stats.textContent = "–";
  ui.viewers.textContent = "–";
  // Not awaited: a slow hls.js download must not hold up a switch back.
  if (path === "webrtc") watchLoop();
  else startHls();
}

/**
 * Automatic fallback to LL-HLS (auto mode only). Returns false, staying on
 * WebRTC, when this browser or server cannot play LL-HLS.
 */
async function fallBack(reason) {
  if (mode !== "auto" || current !== "webrtc" || hlsUnavailable) return false;
  const support = await hlsSupport(ui.video);
  if (!support.engine) {
    markHlsUnavailable(support.reason);
    ui.pathReason.textContent = `${reason}; LL-HLS fallback unavailable: ${support.reason}`;
    return false;
  }
  if (mode !== "auto" || current !== "webrtc" || connected) return false; // changed meanwhile
  usePath("hls", `auto fallback: ${reason}`);
  return true;
}

/** The switch on the page (and window.relaycastWatch.select): an explicit choice. */
function select(path) {
  mode = path;
  const url = new URL(location.href);
  url.searchParams.set("path", path);
  history.replaceState(history.state, "", url);
  return usePath(path, "", performance.now());
}

function renderPath() {
  const path = current ?? "none";
  ui.path.dataset.path = path;
  let name = current ? PATH_NAMES[current] : "–";
  if (current === "hls" && hlsPlayer) name += ` (${hlsPlayer.engine})`; // "hls.js" | "native"
  else if (current === "hls" && hlsUnavailable) name += " (unavailable)";
  ui.path.textContent = name;
  for (const [button, p] of [[ui.pathWebrtc, "webrtc"], [ui.pathHls, "hls"]]) {
    button.setAttribute("aria-pressed", String(current === p));
  }
}

function showLatency(value) {
  if (!value) {
    ui.latency.textContent = "–";
    ui.latency.dataset.latencyMs = "";
    ui.latencyMethod.textContent = "";
    return;
  }
  if (value.ms == null) {
    ui.latency.textContent = "unknown";
    ui.latency.dataset.latencyMs = "";
    ui.latencyMethod.textContent = `(${value.method})`;
    return;
  }
  const ms = Math.round(value.ms);
  ui.latency.textContent = ms < 1000 ? `≈ ${ms} ms` : `≈ ${(ms / 1000).toFixed(1)} s`;
  ui.latency.dataset.latencyMs = String(ms);
  ui.latencyMethod.textContent = `(${value.method})`;
}

/** The latency estimate of the path that plays ({ms, method} or null). */
function currentLatency() {
  if (current === "hls") return ui.video.paused ? null : hlsPlayer?.latency() ?? null;
  return current === "webrtc" && connected ? webrtcLatency : null;
}

/** Once a second: the latency of whichever path plays, and the LL-HLS stats line. */
function tick() {
  if (current === "hls" && hlsPlayer) {
    showLatency(ui.video.paused ? null : hlsPlayer.latency());
    ui.stats.textContent = hlsPlayer.details() || "–";
  } else if (current === "webrtc") {
    showLatency(connected ? webrtcLatency : null);
  }
}

function syncUnmute() {
  ui.unmute.hidden = !ui.video.muted;
}

/** The room's state over Socket.IO (join ack, "room" events): live state and viewers off WebRTC. */
function onRoomState({ live: isLive, viewers }) {
  if (current !== "webrtc" && Number.isFinite(viewers)) ui.viewers.textContent = String(viewers);
  if (current === "webrtc" && typeof isLive === "boolean" && live === null) onPresence({ live: isLive });
}

/** The chat panel: Socket.IO until a data channel opens; moderation once the user is known. */
function mountChatPanel() {
  chatPanel = mountChat(ui.chat);
  connectSocketChat(ui.chat, room, { onRoom: onRoomState, token });
  userSession.then((user) => enableChatActions(chatPanel, room, user)).catch(() => {});
}

// Debug/test hooks: the current WHEP session's RTCPeerConnection (null between
// sessions), for getStats() from devtools or the end-to-end tests, and the
// playback path state.
window.__relaycast = {
  get pc() { return session?.pc ?? null; },
  // The WHEP session's adaptive-delivery state: its URL, the last size hint the server
  // took, and how many ICE restarts it went through.
  get session() {
    return session && {
      location: session.location, etag: session.etag ?? null, iceRestarts: session.iceRestarts ?? 0,
      videoSize: session.sizes?.last ?? null, videoSizeUnsupported: session.sizes?.unsupported ?? false,
    };
  },
};
window.relaycastWatch = {
  get mode() { return mode; },
  get path() { return current; },
  get engine() { return current === "hls" ? hlsPlayer?.engine ?? null : current; },
  get latency() { return current === "hls" ? hlsPlayer?.latency() ?? null : webrtcLatency; },
  get hls() { return hlsPlayer?.hls ?? null; },
  get hlsUnavailable() { return hlsUnavailable; },
  get chat() { return chatPanel; },
  get qoe() { return qoe; },
  select,
};

function init() {
  ui.room.textContent = room;
  mountChatPanel();
  document.title = `Watch ${room} · relaycast`;
  ui.video.muted = true; // start muted so autoplay is permitted
  syncUnmute();
  ui.unmute.addEventListener("click", () => {
    ui.video.muted = false;
    ui.video.play().catch(() => {});
  });
  ui.video.addEventListener("volumechange", syncUnmute);
  ui.pathWebrtc.addEventListener("click", () => select("webrtc"));
  ui.pathHls.addEventListener("click", () => select("hls"));
  if (!hasWebRTC) {
    ui.pathWebrtc.disabled = true;
    ui.pathWebrtc.title = "This browser has no WebRTC (RTCPeerConnection)";
  }
  // Leaving the page: tell the server right away instead of waiting for ICE
  // timeouts. keepalive lets the DELETE outlive the document.
  addEventListener("pagehide", () => {
    run?.abort();
    run = null;
    teardown(session, { keepalive: true });
  });
  addEventListener("pageshow", (ev) => {
    if (ev.persisted && current === "webrtc") watchLoop(); // restored from the back/forward cache
  });
  setInterval(tick, 1000);
  if (mode === "hls") usePath("hls");
  else if (hasWebRTC) usePath("webrtc");
  else if (mode === "auto") usePath("hls", "auto fallback: this browser has no WebRTC");
  else {
    setState(ui.state, "error: no WebRTC");
    notice("This browser has no WebRTC. Choose LL-HLS to watch.");
    renderPath();
  }
}

init();
