// Broadcast page /broadcast/{room}: publish camera + microphone to POST /whip/{room}
// (RFC 9725) with a stream key typed into the page (publisher.js does the capture
// and the WHIP session).
import { WhipPublisher } from "./publisher.js";
import { roomFromPath, setState } from "./webrtc.js";

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const ui = {
  room: $("room"), preview: $("preview"), state: $("state"), viewers: $("viewers"),
  stats: $("stats"), controls: $("controls"), camera: $("camera"), mic: $("microphone"),
  resolution: $("resolution"), key: $("stream-key"), goLive: $("go-live"), stop: $("stop"),
  chat: $("chat"), simulcast: $("simulcast"),
};
ui.lockWhileLive = [ui.key];
const room = roomFromPath();
const keyStorage = `relaycast:stream-key:${room}`;
const publisher = new WhipPublisher(ui);

// ---- stream key: typed into the page, kept in sessionStorage (per room, per tab) ----
// Never taken from the URL: a key there would sit in the history, in bookmarks and in
// the logs of every proxy on the way.
function initStreamKey() {
  ui.key.value = sessionStorage.getItem(keyStorage) || "";
  ui.key.addEventListener("input", () => sessionStorage.setItem(keyStorage, ui.key.value));
}

async function goLive() {
  if (publisher.running) return;
  const token = ui.key.value.trim();
  if (!token) {
    setState(ui.state, "error: a stream key is required");
    ui.key.focus();
    return;
  }
  sessionStorage.setItem(keyStorage, token);
  // The state line shows a failure; nothing more to do with it here.
  await publisher.goLive(`/whip/${encodeURIComponent(room)}`, token).catch(() => {});
}

// Debug/test hook: the current WHIP session's RTCPeerConnection (null between
// sessions), for getStats() from devtools or the end-to-end tests.
window.__relaycast = {
  get pc() { return publisher.pc; },
  // The WHIP session's adaptive-delivery state: rids offered/answered, ICE restarts.
  get session() {
    const s = publisher.session;
    return s && { location: s.location, etag: s.etag, simulcast: s.simulcast, iceRestarts: s.iceRestarts ?? 0 };
  },
};

async function init() {
  ui.room.textContent = room;
  document.title = `Broadcast ${room} · relaycast`;
  initStreamKey();
  ui.controls.addEventListener("submit", (ev) => { ev.preventDefault(); goLive(); });
  ui.stop.addEventListener("click", () => publisher.stop());
  await publisher.preview();
}

init();
