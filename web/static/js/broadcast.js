// Broadcast studio: capture camera + microphone and publish them with WHIP
// (RFC 9725) to POST /whip/{room}, plus the "chat" data channel.
import { attachChat, mountChat } from "./chat.js";
import {
  HttpError, backoffDelay, closeSession, rtcConfiguration, negotiate, pollStats,
  roomFromPath, setState, sleep, watchConnection,
} from "./webrtc.js";

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const ui = {
  room: $("room"), preview: $("preview"), state: $("state"), viewers: $("viewers"),
  stats: $("stats"), controls: $("controls"), camera: $("camera"), mic: $("microphone"),
  resolution: $("resolution"), key: $("stream-key"), goLive: $("go-live"), stop: $("stop"),
  chat: $("chat"),
};
const RESOLUTIONS = { "360p": [640, 360], "720p": [1280, 720], "1080p": [1920, 1080] };
const room = roomFromPath();
const keyStorage = `relaycast:stream-key:${room}`;

let stream = null; // local MediaStream: preview and publish source
let session = null; // {pc, dc, location, token, cleanup[]} of the current WHIP session
let run = null; // AbortController spanning "Go live" .. "Stop"

// ---- stream key: typed into the page, kept in sessionStorage (per room, per tab) ----
// Never taken from the URL: a key there would sit in the history, in bookmarks and in
// the logs of every proxy on the way.
function initStreamKey() {
  ui.key.value = sessionStorage.getItem(keyStorage) || "";
  ui.key.addEventListener("input", () => sessionStorage.setItem(keyStorage, ui.key.value));
}

// ---- media capture -------------------------------------------------------
function mediaConstraints() {
  const [width, height] = RESOLUTIONS[ui.resolution.value] ?? RESOLUTIONS["720p"];
  const pick = (sel) => (sel.value ? { exact: sel.value } : undefined);
  return {
    video: { deviceId: pick(ui.camera), width: { ideal: width }, height: { ideal: height }, frameRate: { ideal: 30 } },
    audio: { deviceId: pick(ui.mic), echoCancellation: true, noiseSuppression: true },
  };
}

async function getUserMediaWithFallback() {
  const c = mediaConstraints();
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

async function acquireMedia() {
  let next;
  try {
    next = await getUserMediaWithFallback();
  } catch (err) {
    if (!stream) throw err;
    stream.getTracks().forEach((t) => t.stop()); // device may be exclusive: release and retry
    stream = null;
    next = await getUserMediaWithFallback();
  }
  const old = stream;
  stream = next;
  ui.preview.srcObject = next;
  // While live, swap tracks in place: replaceTrack needs no renegotiation,
  // which WHIP could not do anyway (one offer/answer per session).
  for (const tr of session?.pc.getTransceivers() ?? []) {
    const kind = tr.receiver.track.kind;
    const track = kind === "video" ? next.getVideoTracks()[0] : next.getAudioTracks()[0];
    if (track) await tr.sender.replaceTrack(track);
  }
  old?.getTracks().forEach((t) => t.stop());
  await populateDevices();
}

async function populateDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  const fill = (select, kind, label, track) => {
    const current = track?.getSettings().deviceId || select.value;
    const list = devices.filter((d) => d.kind === kind && d.deviceId);
    select.replaceChildren(...list.map((d, i) => new Option(d.label || `${label} ${i + 1}`, d.deviceId)));
    if (list.some((d) => d.deviceId === current)) select.value = current;
    select.disabled = list.length === 0;
  };
  fill(ui.camera, "videoinput", "Camera", stream?.getVideoTracks()[0]);
  fill(ui.mic, "audioinput", "Microphone", stream?.getAudioTracks()[0]);
}

function hasLiveMedia() {
  return stream?.getTracks().some((t) => t.readyState === "live");
}

// ---- WHIP session ------------------------------------------------------------
async function publish(signal, token) {
  const pc = new RTCPeerConnection(await rtcConfiguration());
  for (const track of stream.getTracks()) {
    pc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
  }
  // The chat channel must exist before createOffer so the offer carries the
  // m=application (SCTP) section: WHIP sessions are never renegotiated.
  const dc = pc.createDataChannel("chat", { ordered: true });
  const s = { pc, dc, token, location: null, cleanup: [] };
  const chat = attachChat(dc, ui.chat, { onPresence });
  s.cleanup.push(() => chat.detach());
  try {
    await negotiate(s, `/whip/${encodeURIComponent(room)}`, token, signal);
  } catch (err) {
    await teardown(s);
    throw err;
  }
  s.cleanup.push(pollStats(pc, renderStats));
  return s;
}

/** DELETE the session resource (RFC 9725 §4.2), then close the pc. Idempotent. */
async function teardown(s, { keepalive = false } = {}) {
  if (!s || s.closed) return;
  s.closed = true;
  s.cleanup.forEach((fn) => fn());
  if (session === s) session = null;
  await closeSession(s, s.token, { keepalive });
}

/** Resolves with a reason once the session is lost, or "stopped" on abort. */
function untilLost(s, signal, onConnected) {
  return new Promise((resolve) => {
    const unwatch = watchConnection(s.pc, { channel: s.dc, onConnected, onLost: resolve });
    signal.addEventListener("abort", () => { unwatch(); resolve("stopped"); }, { once: true });
  });
}

// Worth retrying while reconnecting: network errors, conflicts (our previous
// session may not be reaped yet), rate limits and server errors.
function retryable(err) {
  if (!(err instanceof HttpError)) return err.name !== "AbortError";
  return err.status === 408 || err.status === 409 || err.status === 429 || err.status >= 500;
}

function describe(err) {
  return err instanceof HttpError ? err.message : `${err.name}: ${err.message}`;
}

async function goLive() {
  if (run) return;
  const token = ui.key.value.trim();
  if (!token) {
    setState(ui.state, "error: a stream key is required");
    ui.key.focus();
    return;
  }
  sessionStorage.setItem(keyStorage, token);
  run = new AbortController();
  const { signal } = run;
  setControls(true);
  setState(ui.state, "connecting");
  let attempt = 0;
  let everPublished = false;
  try {
    if (!hasLiveMedia()) await acquireMedia();
    while (!signal.aborted) {
      try {
        session = await publish(signal, token);
      } catch (err) {
        if (signal.aborted) break;
        if (!everPublished || !retryable(err)) throw err;
        ui.stats.textContent = `retrying: ${describe(err)}`;
        await sleep(backoffDelay(attempt++), signal);
        continue;
      }
      everPublished = true;
      const reason = await untilLost(session, signal, () => {
        attempt = 0;
        setState(ui.state, "live");
        ui.stats.textContent = "–";
      });
      if (signal.aborted) break;
      // Lost while live: drop this session and publish again with backoff.
      setState(ui.state, "reconnecting");
      ui.stats.textContent = `connection lost (${reason})`;
      teardown(session); // DELETE in the background so the server frees the slot
      await sleep(backoffDelay(attempt++), signal);
    }
  } catch (err) {
    if (!signal.aborted) {
      setState(ui.state, `error: ${describe(err)}`);
      run = null;
      setControls(false);
    }
  }
}

async function stop() {
  run?.abort();
  run = null;
  const s = session;
  session = null;
  stream?.getTracks().forEach((t) => t.stop());
  stream = null;
  ui.preview.srcObject = null;
  setControls(false);
  setState(ui.state, "stopped");
  ui.stats.textContent = "–";
  ui.viewers.textContent = "–";
  await teardown(s);
}

// ---- UI ------------------------------------------------------------------
function setControls(running) {
  ui.goLive.disabled = running;
  ui.stop.disabled = !running;
  ui.key.disabled = running;
}

function onPresence({ viewers }) {
  if (Number.isFinite(viewers)) ui.viewers.textContent = String(viewers);
}

function renderStats(report, prev, dt) {
  for (const st of report.values()) {
    if (st.type !== "outbound-rtp" || st.kind !== "video") continue;
    const before = prev?.get(st.id);
    const kbps = before && dt > 0 ? Math.round(((st.bytesSent - before.bytesSent) * 8) / dt / 1000) : 0;
    const fps = st.framesPerSecond ?? 0;
    const res = st.frameWidth ? `${st.frameWidth}×${st.frameHeight}` : "–";
    ui.stats.textContent = `video ${kbps} kbps · ${fps} fps · ${res}`;
  }
}

async function onDeviceChange() {
  if (!stream && !run) return; // nothing captured: leave it for "Go live"
  try {
    await acquireMedia();
  } catch (err) {
    setState(ui.state, `error: ${describe(err)}`);
  }
}

function onResolutionChange() {
  const [width, height] = RESOLUTIONS[ui.resolution.value];
  const track = stream?.getVideoTracks()[0];
  track?.applyConstraints({ width: { ideal: width }, height: { ideal: height }, frameRate: { ideal: 30 } })
    .catch(onDeviceChange);
}

// Debug/test hook: the current WHIP session's RTCPeerConnection (null between
// sessions), for getStats() from devtools or the end-to-end tests.
window.__relaycast = { get pc() { return session?.pc ?? null; } };

async function init() {
  ui.room.textContent = room;
  mountChat(ui.chat);
  document.title = `Broadcast ${room} · relaycast`;
  ui.preview.muted = true;
  initStreamKey();
  ui.controls.addEventListener("submit", (ev) => { ev.preventDefault(); goLive(); });
  ui.stop.addEventListener("click", stop);
  ui.camera.addEventListener("change", onDeviceChange);
  ui.mic.addEventListener("change", onDeviceChange);
  ui.resolution.addEventListener("change", onResolutionChange);
  navigator.mediaDevices?.addEventListener("devicechange", () => populateDevices().catch(() => {}));
  // Best effort: end the WHIP session when the tab goes away.
  addEventListener("pagehide", () => {
    run?.abort();
    run = null;
    teardown(session, { keepalive: true });
  });
  setState(ui.state, "idle");
  try {
    // Device labels/ids are only exposed after a first getUserMedia grant.
    await acquireMedia();
  } catch (err) {
    setState(ui.state, `error: camera/microphone unavailable (${describe(err)})`);
  }
}

init();
