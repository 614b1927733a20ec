// Watch page: play room R with WHEP (draft-ietf-wish-whep) from POST /whep/{room},
// plus the "chat" data channel.
import { attachChat, mountChat } from "./chat.js";
import {
  HttpError, backoffDelay, closeSession, fetchIceServers, negotiate, pollStats,
  roomFromPath, setState, sleep, watchConnection,
} from "./webrtc.js";

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const ui = {
  room: $("room"), video: $("video"), notice: $("notice"), state: $("state"),
  viewers: $("viewers"), unmute: $("unmute"), stats: $("stats"), chat: $("chat"),
};
const room = roomFromPath();
const token = new URLSearchParams(location.search).get("token") || null;
const DEFAULT_RETRY_AFTER_S = 3;

let session = null; // {pc, dc, location, cleanup[]} of the current WHEP session
let run = null; // AbortController for the connect/reconnect loop
let connected = false;
let live = null; // from chat welcome/presence; null = unknown

function notice(text) {
  ui.notice.textContent = text;
  ui.notice.hidden = !text;
}

function showPlayState() {
  if (!connected) return;
  if (live === false) {
    setState(ui.state, "waiting");
    notice("The broadcaster is offline. Waiting for the broadcaster…");
  } else {
    setState(ui.state, "playing");
    notice("");
  }
}

async function play(signal) {
  const pc = new RTCPeerConnection({ iceServers: await fetchIceServers() });
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
    const onConnected = () => {
      connected = true;
      onConnectedExtra();
      showPlayState();
    };
    const unwatch = watchConnection(s.pc, { channel: s.dc, onConnected, onLost: resolve });
    signal.addEventListener("abort", () => { unwatch(); resolve("stopped"); }, { once: true });
  });
}

async function watchLoop() {
  if (run) return;
  run = new AbortController();
  const { signal } = run;
  let attempt = 0;
  setState(ui.state, "connecting");
  while (!signal.aborted) {
    try {
      session = await play(signal);
    } catch (err) {
      if (signal.aborted) break;
      if (err instanceof HttpError && err.status === 409) {
        // Room exists but is not live: poll again after Retry-After.
        setState(ui.state, "waiting");
        notice("Waiting for the broadcaster…");
        await sleep(Math.max(1, err.retryAfterS ?? DEFAULT_RETRY_AFTER_S) * 1000, signal);
        continue;
      }
      const detail = err instanceof HttpError ? err.message : `${err.name}: ${err.message}`;
      setState(ui.state, `error: ${detail}`);
      if (err instanceof HttpError && (err.status === 401 || err.status === 403)) {
        notice("Not allowed to watch this room.");
        break; // retrying with the same token cannot help
      }
      notice("Could not connect; retrying…");
      const delay = err.retryAfterS != null ? err.retryAfterS * 1000 : backoffDelay(attempt++);
      await sleep(delay, signal);
      continue;
    }
    const reason = await untilLost(session, signal, () => { attempt = 0; });
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

function onPresence({ viewers, live: isLive }) {
  if (Number.isFinite(viewers)) ui.viewers.textContent = String(viewers);
  if (typeof isLive === "boolean") {
    live = isLive;
    showPlayState();
  }
}

function renderStats(report, prev, dt) {
  for (const st of report.values()) {
    if (st.type !== "inbound-rtp" || st.kind !== "video") continue;
    const before = prev?.get(st.id);
    let fps = st.framesPerSecond;
    if (fps == null && before && dt > 0) fps = Math.round((st.framesDecoded - before.framesDecoded) / dt);
    const jb = st.jitterBufferEmittedCount
      ? Math.round((st.jitterBufferDelay / st.jitterBufferEmittedCount) * 1000)
      : 0;
    ui.stats.textContent =
      `frames ${st.framesDecoded ?? 0} · ${fps ?? 0} fps · lost ${st.packetsLost ?? 0} · jitter buffer ${jb} ms`;
  }
}

function syncUnmute() {
  ui.unmute.hidden = !ui.video.muted;
}

// Debug/test hook: the current WHEP session's RTCPeerConnection (null between
// sessions), for getStats() from devtools or the end-to-end tests.
window.__relaycast = { get pc() { return session?.pc ?? null; } };

function init() {
  ui.room.textContent = room;
  mountChat(ui.chat);
  document.title = `Watch ${room} · relaycast`;
  ui.video.muted = true; // start muted so autoplay is permitted
  syncUnmute();
  ui.unmute.addEventListener("click", () => {
    ui.video.muted = false;
    ui.video.play().catch(() => {});
  });
  ui.video.addEventListener("volumechange", syncUnmute);
  // Leaving the page: tell the server right away instead of waiting for ICE
  // timeouts. keepalive lets the DELETE outlive the document.
  addEventListener("pagehide", () => {
    run?.abort();
    run = null;
    teardown(session, { keepalive: true });
  });
  addEventListener("pageshow", (ev) => {
    if (ev.persisted) watchLoop(); // restored from the back/forward cache
  });
  watchLoop();
}

init();
