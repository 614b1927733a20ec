// The studio /studio (logged in): go live from the browser on your own channel, set
// the stream's title, category and tags, manage the channel's stream keys and watch
// the ingest health.
//
// Going live: POST /api/streams/start {title, category, tags} opens (or updates) the
// channel's pending stream; the page then publishes with WHIP to /whip/{channel}
// (publisher.js) with the channel's "Browser studio" stream key as Bearer token. The
// pages' session is in HttpOnly cookies, so the page cannot hand its access token to
// WHIP; it holds a key of its own instead: the one it created (or rotated) in this
// tab, kept in sessionStorage, else a fresh one from POST /api/channels/{name}/keys
// (or .../keys/{id}/rotate when a "Browser studio" key exists: one such key per
// channel). Stop: the WHIP session is deleted and POST /api/streams/{id}/stop ends
// the stream.
//
// Keys: GET/POST /api/channels/{name}/keys, DELETE .../keys/{id}; a new key is shown
// once, with the OBS settings and an FFmpeg command line to copy. Health: bitrate,
// frame rate and resolution from the peer connection's outbound-rtp stats; viewers
// from the chat presence and GET /api/channels/{name} every VIEWERS_MS; while the channel
// is live (from this page or any encoder), the SFU's view of the ingest from
// GET /api/channels/{name}/ingest (bitrate, fps, resolution, key-frame interval, loss,
// dropped frames, RTT, jitter) every VIEWERS_MS — dropped frames are those the RTMP/SRT
// ingest counted before the SFU, "–" for an encoder it does not republish — and its advice
// for the encoder, when it has one, as a warning line (the RTMP/SRT ingest's: it transcodes
// a stream with B-frames).
//
// Chat: over the pages' Socket.IO connection, and over the WHIP session's data channel
// while live (chat.js); the broadcaster moderates from it (chat-moderation.js). Links go
// to the analytics (/studio/analytics) and the moderation panel (/moderation/{channel}).

import { ApiError, api, el, formatDate, showError } from "./api.js";
import { renderIngestFigures } from "./ingest-figures.js";
import { connectSocketChat, mountChat } from "./chat.js";
import { enableChatActions } from "./chat-moderation.js";
import { WhipPublisher } from "./publisher.js";
import { requireUser } from "./shell.js";
import { HttpError } from "./webrtc.js";

const STUDIO_KEY_LABEL = "Browser studio";
const VIEWERS_MS = 5000;
const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const ui = {
  room: $("room"), channelLink: $("channel-link"), preview: $("preview"), state: $("state"),
  viewers: $("viewers"), stats: $("stats"), controls: $("controls"), camera: $("camera"),
  mic: $("microphone"), resolution: $("resolution"), goLive: $("go-live"), stop: $("stop"),
  chat: $("chat"), liveError: $("live-error"), bitrate: $("health-bitrate"), fps: $("health-fps"),
  size: $("health-resolution"), info: $("info-form"), title: $("title"), category: $("category"),
  tags: $("tags"), description: $("description"), infoResult: $("info-result"), keyForm: $("key-form"),
  keyLabel: $("key-label"), newKey: $("new-key"), keys: $("keys").querySelector("tbody"),
  keysError: $("keys-error"), copyResult: $("copy-result"), simulcast: $("simulcast"),
};

let channel = ""; // the user's channel name
let stream = null; // the Stream of POST /api/streams/start
// Each connected session marks its key used: show it.
const publisher = new WhipPublisher(ui, { onHealth: renderHealth, onLive: () => loadKeys() });
const keyStorage = () => `relaycast:studio-key:${channel}`;
const channelPath = () => `/api/channels/${encodeURIComponent(channel)}`;

// ---- stream info ---------------------------------------------------------------
function parseTags(text) {
  const tags = text.split(",").map((t) => t.trim()).filter(Boolean);
  return [...new Set(tags)].slice(0, 10).map((t) => t.slice(0, 32));
}

function info() {
  const body = { title: ui.title.value.trim(), tags: parseTags(ui.tags.value) };
  if (ui.category.value) body.category = ui.category.value;
  return body;
}

async function loadInfo() {
  const [channelInfo, categories] = await Promise.all([
    api(channelPath()),
    api("/api/categories").then((b) => b.categories ?? []).catch(() => []),
  ]);
  ui.category.replaceChildren(new Option("No category", ""),
    ...categories.map((c) => new Option(c.name, c.slug)));
  ui.title.value = channelInfo.title ?? "";
  ui.category.value = channelInfo.category ?? "";
  ui.tags.value = (channelInfo.tags ?? []).join(", ");
  ui.description.value = channelInfo.description ?? "";
}

async function saveInfo(ev) {
  ev.preventDefault();
  const result = ui.infoResult;
  result.hidden = true;
  try {
    const body = { ...info(), description: ui.description.value, category: ui.category.value || null };
    await api(channelPath(), { method: "PATCH", body });
    result.textContent = "Saved.";
    result.className = "ok";
  } catch (err) {
    showError(result, err);
    result.className = "error";
  }
  result.hidden = false;
}

// ---- going live --------------------------------------------------------------------
/** A stream key for the browser's own WHIP session (see the module comment). */
async function studioKey({ fresh = false } = {}) {
  const kept = fresh ? "" : sessionStorage.getItem(keyStorage());
  if (kept) return kept;
  const { keys = [] } = await api(`${channelPath()}/keys`);
  const old = keys.find((k) => k.label === STUDIO_KEY_LABEL && !k.revoked_at);
  const made = old
    ? await api(`${channelPath()}/keys/${encodeURIComponent(old.id)}/rotate`, { method: "POST", body: {} })
    : await api(`${channelPath()}/keys`, { method: "POST", body: { label: STUDIO_KEY_LABEL } });
  sessionStorage.setItem(keyStorage(), made.key);
  loadKeys();
  return made.key;
}

async function goLive(ev) {
  ev.preventDefault();
  if (publisher.running) return;
  ui.liveError.hidden = true;
  if (!ui.info.reportValidity()) return;
  const endpoint = `/whip/${encodeURIComponent(channel)}`;
  try {
    ({ stream } = await api("/api/streams/start", { method: "POST", body: info() }));
    try {
      await publisher.goLive(endpoint, await studioKey());
    } catch (err) {
      // The kept key was revoked or rotated elsewhere: one more try with a new one.
      if (!(err instanceof HttpError && (err.status === 401 || err.status === 403))) throw err;
      await publisher.goLive(endpoint, await studioKey({ fresh: true }));
    }
  } catch (err) {
    if (err instanceof ApiError) showError(ui.liveError, err);
  }
}

async function stop() {
  await publisher.stop();
  renderHealth(null);
  if (stream?.id) {
    try {
      await api(`/api/streams/${encodeURIComponent(stream.id)}/stop`, { method: "POST", body: {} });
    } catch (err) {
      if (!(err instanceof ApiError && [404, 409].includes(err.status))) showError(ui.liveError, err);
    }
    stream = null;
  }
}

function renderHealth(health) {
  ui.bitrate.textContent = health ? `${health.kbps} kbps` : "–";
  ui.fps.textContent = health ? String(Math.round(health.fps)) : "–";
  ui.size.textContent = health?.width ? `${health.width}×${health.height}` : "–";
}

const ingestUi = Object.fromEntries(["bitrate", "fps", "resolution", "keyframe", "loss", "dropped", "rtt", "jitter"]
  .map((key) => [key, $(`ingest-${key}`)]));

async function pollViewers() {
  let live = publisher.running;
  try {
    const body = await api(channelPath(), { login: "optional" });
    live = Boolean(body.live);
    if (body.live && publisher.running) ui.viewers.textContent = String(Number(body.viewers) || 0);
  } catch {
    /* presence over the data channel still updates the count */
  }
  await pollIngest(live);
}

/**
 * The ingest's advice for the encoder (an Ingest's `advice`: one line, at most 200
 * characters, or null) as the warning line's text; "" for none. The one advice given today
 * is the RTMP ingest's when it transcodes B-frames ("set bframes=0 / profile baseline for
 * lower latency and no transcoding"): it is said why.
 */
function adviceText(advice) {
  const said = typeof advice === "string" ? advice.trim() : "";
  if (!said) return "";
  const text = /[.!?]$/.test(said) ? said : `${said}.`;
  return /\bb-?frames\b/i.test(said)
    ? `Your encoder sends B-frames, so relaycast transcodes the video for WebRTC viewers: ${text}`
    : `Advice for your encoder: ${text}`;
}

function renderAdvice(sample) {
  const line = $("ingest-advice");
  line.textContent = adviceText(sample?.advice);
  line.hidden = !line.textContent;
}

/** The SFU's view of the ingest while the channel is live (any encoder). */
async function pollIngest(live) {
  const state = $("ingest-state");
  if (!live) {
    renderIngestFigures(null, ingestUi);
    renderAdvice(null);
    state.textContent = "(not live)";
    return;
  }
  try {
    const sample = await api(`${channelPath()}/ingest`, { login: "optional" });
    renderIngestFigures(sample, ingestUi);
    renderAdvice(sample);
    state.textContent = sample?.at ? `(at ${new Date(sample.at).toLocaleTimeString()})` : "";
  } catch (err) {
    renderIngestFigures(null, ingestUi);
    renderAdvice(null);
    state.textContent = err instanceof ApiError && err.status === 404 ? "(no ingest yet)" : "(unavailable)";
  }
}

// ---- stream keys -------------------------------------------------------------------
function keyRow(key) {
  const revoke = el("button", { type: "button", "data-testid": "revoke-key",
    "aria-label": `Revoke key ${key.label || key.hint}` }, "Revoke");
  revoke.addEventListener("click", () => revokeKey(key));
  return el("tr", { "data-testid": "key-row", "data-key-id": key.id },
    el("td", {}, key.label || "(no label)"),
    el("td", {}, el("code", {}, key.hint ?? "")),
    el("td", { className: "wide-only" }, formatDate(key.created_at)),
    el("td", {}, key.last_used_at ? formatDate(key.last_used_at) : "never"),
    el("td", {}, revoke));
}

async function loadKeys() {
  try {
    const { keys = [] } = await api(`${channelPath()}/keys`);
    const active = keys.filter((k) => !k.revoked_at);
    ui.keys.replaceChildren(...active.map(keyRow));
    if (!active.length) ui.keys.append(el("tr", {}, el("td", { colSpan: 5, className: "muted" }, "No keys yet.")));
    ui.keysError.hidden = true;
  } catch (err) {
    showError(ui.keysError, err);
  }
}

async function revokeKey(key) {
  if (!confirm(`Revoke the key "${key.label || key.hint}"? An encoder live with it stops.`)) return;
  try {
    await api(`${channelPath()}/keys/${encodeURIComponent(key.id)}`, { method: "DELETE" });
    if (key.label === STUDIO_KEY_LABEL) sessionStorage.removeItem(keyStorage());
    await loadKeys();
  } catch (err) {
    showError(ui.keysError, err);
  }
}

function showNewKey(made) {
  const server = new URL(`/whip/${encodeURIComponent(channel)}`, location.origin).href;
  $("new-key-value").textContent = made.key;
  $("obs-server").textContent = server;
  $("obs-token").textContent = made.key;
  $("ffmpeg-command").textContent = [
    "ffmpeg -re -i input.mp4",
    "-c:v libx264 -profile:v baseline -preset veryfast -tune zerolatency -bf 0 -g 60",
    "-c:a libopus -ar 48000 -ac 2",
    `-f whip -authorization "${made.key}" ${server}`,
  ].join(" ");
  ui.copyResult.textContent = "";
  ui.newKey.hidden = false;
  ui.newKey.focus();
}

async function createKey(ev) {
  ev.preventDefault();
  try {
    const label = ui.keyLabel.value.trim();
    const made = await api(`${channelPath()}/keys`, { method: "POST", body: label ? { label } : {} });
    ui.keyLabel.value = "";
    showNewKey(made);
    await loadKeys();
  } catch (err) {
    showError(ui.keysError, err);
  }
}

async function copy(button) {
  const text = $(button.dataset.copy).textContent;
  try {
    await navigator.clipboard.writeText(text);
    ui.copyResult.textContent = "Copied.";
  } catch {
    // No clipboard permission: select the text so Ctrl+C copies it.
    getSelection().selectAllChildren($(button.dataset.copy));
    ui.copyResult.textContent = "Selected: press Ctrl+C (⌘C) to copy.";
  }
}

function hideNewKey() {
  for (const id of ["new-key-value", "obs-token", "ffmpeg-command"]) $(id).textContent = "";
  ui.newKey.hidden = true;
  ui.keyLabel.focus();
}

// Debug/test hook, as on the broadcast page.
window.__relaycast = { get pc() { return publisher.pc; } };

async function init() {
  const user = await requireUser();
  channel = user.channel || user.username;
  ui.room.textContent = channel;
  ui.channelLink.href = `/watch/${encodeURIComponent(channel)}`;
  $("moderation-link").href = `/moderation/${encodeURIComponent(channel)}`;
  connectSocketChat(ui.chat, channel);
  enableChatActions(mountChat(ui.chat), channel, user);
  ui.controls.addEventListener("submit", goLive);
  ui.stop.addEventListener("click", stop);
  ui.info.addEventListener("submit", saveInfo);
  ui.keyForm.addEventListener("submit", createKey);
  ui.newKey.addEventListener("click", (ev) => { if (ev.target.dataset.copy) copy(ev.target); });
  $("hide-key").addEventListener("click", hideNewKey);
  setInterval(pollViewers, VIEWERS_MS);
  await Promise.all([loadInfo().catch((err) => showError(ui.infoResult, err)), loadKeys(), publisher.preview()]);
}

init();
