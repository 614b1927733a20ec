// The channel side of the watch page /watch/{channel} (the player is watch.js):
// channel, followers and live state from GET /api/channels/{name} (refreshed every
// REFRESH_MS); while live, the title, category and tags are the stream's (GET
// /api/streams/{stream_id}), else the channel's defaults; the follow button (POST/DELETE
// /api/channels/{name}/follow; whether the user follows is GET /api/channels/{name}'s
// `following`) and past broadcasts (GET /api/channels/{name}/videos),
// played in the page with hls.js (or native HLS) from their VOD playlists, with their
// chat replayed in step with the recording (chat-replay.js).

import { ApiError, api, el, formatDate, formatDuration, goToLogin, showError } from "./api.js";
import { ChatReplay, fetchReplay } from "./chat-replay.js";
import { session } from "./shell.js";
import { hlsSupport } from "./hls-player.js";
import { roomFromPath } from "./webrtc.js";

const REFRESH_MS = 20000;
const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const ui = {
  title: $("stream-title"), link: $("channel-link"), live: $("live-badge"), category: $("channel-category"),
  followers: $("followers"), followersUnit: $("followers-unit"), follow: $("follow"), studio: $("studio-link"), error: $("channel-error"),
  about: $("about"), description: $("description"), tags: $("tags"), videos: $("videos"),
  videosStatus: $("videos-status"), viewers: $("viewers"), replay: $("replay"),
  replayVideo: $("replay-video"), replayTitle: $("replay-title"), replayError: $("replay-error"),
};
const name = roomFromPath();
const path = `/api/channels/${encodeURIComponent(name)}`;
let following = false;
let replayHls = null; // the hls.js instance playing a recording
let replayChat = null; // the ChatReplay of the recording
let replayGeneration = 0;
let user = null;

function renderFollow() {
  ui.follow.textContent = following ? "Following" : "Follow";
  ui.follow.setAttribute("aria-pressed", String(following));
  ui.follow.setAttribute("aria-label", following ? `Unfollow ${name}` : `Follow ${name}`);
}

function renderFollowers(count) {
  const n = Number(count) || 0;
  ui.followers.textContent = String(n);
  ui.followersUnit.textContent = n === 1 ? "follower" : "followers";
}

function renderChannel(channel) {
  const owner = channel.owner ?? {};
  const display = owner.display_name || owner.username || channel.name;
  ui.title.textContent = channel.title || `${display}'s channel`;
  ui.link.href = `/watch/${encodeURIComponent(channel.name)}`;
  ui.link.title = display;
  ui.live.hidden = !channel.live;
  ui.live.classList.toggle("live", Boolean(channel.live));
  ui.category.hidden = !channel.category;
  if (channel.category) {
    ui.category.href = `/category/${encodeURIComponent(channel.category)}`;
    ui.category.textContent = channel.category_name || channel.category;
  }
  renderFollowers(channel.followers);
  // The data channel's presence is the live figure; the API's is the start value.
  if (ui.viewers.textContent === "–" && channel.live) ui.viewers.textContent = String(Number(channel.viewers) || 0);
  const tags = Array.isArray(channel.tags) ? channel.tags : [];
  ui.description.textContent = channel.description || "";
  ui.tags.replaceChildren(...tags.map((t) => el("li", {}, t)));
  ui.about.hidden = !channel.description && tags.length === 0;
  document.title = `${ui.title.textContent} · ${display} · relaycast`;
  const mine = user && owner.id === user.id;
  if (typeof channel.following === "boolean") {
    following = channel.following;
    renderFollow();
  }
  ui.studio.hidden = !mine;
  ui.follow.hidden = Boolean(mine);
}

/** The channel, with the live stream's title, category and tags over its defaults. */
async function fetchChannel() {
  const channel = await api(path, { login: "optional" });
  if (!channel.live || !channel.stream_id) return channel;
  try {
    const stream = await api(`/api/streams/${encodeURIComponent(channel.stream_id)}`, { login: "optional" });
    return { ...channel, title: stream.title || channel.title, category: stream.category,
      category_name: stream.category_name, tags: stream.tags ?? channel.tags };
  } catch {
    return channel; // ended meanwhile: the defaults
  }
}

async function loadChannel() {
  try {
    renderChannel(await fetchChannel());
    ui.error.hidden = true;
    return true;
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      ui.title.textContent = name;
      ui.error.textContent = "There is no channel by this name.";
      ui.error.hidden = false;
      ui.follow.hidden = true;
      return false;
    }
    showError(ui.error, err);
    return true;
  }
}

async function toggleFollow() {
  if (!user) {
    goToLogin();
    return;
  }
  ui.follow.disabled = true;
  try {
    const body = await api(`${path}/follow`, { method: following ? "DELETE" : "POST", body: following ? undefined : {} });
    following = Boolean(body.following);
    renderFollowers(body.followers);
    renderFollow();
  } catch (err) {
    showError(ui.error, err);
  } finally {
    ui.follow.disabled = false;
  }
}

function closeReplay() {
  replayGeneration += 1;
  replayChat?.destroy();
  replayChat = null;
  replayHls?.destroy();
  replayHls = null;
  ui.replayVideo.removeAttribute("src");
  ui.replayVideo.load();
  ui.replay.hidden = true;
}

/** Play a recording's VOD playlist in the replay player. */
async function replay(video) {
  closeReplay();
  ui.replay.hidden = false;
  ui.replayError.hidden = true;
  ui.replayTitle.textContent = video.title || "Untitled broadcast";
  ui.replay.scrollIntoView({ block: "nearest" });
  const support = await hlsSupport(ui.replayVideo);
  if (support.engine === "hls.js") {
    replayHls = new support.Hls();
    replayHls.loadSource(video.url);
    replayHls.attachMedia(ui.replayVideo);
  } else if (support.engine === "native") {
    ui.replayVideo.src = video.url;
  } else {
    ui.replayError.textContent = `This recording cannot play here: ${support.reason}.`;
    ui.replayError.hidden = false;
    return;
  }
  ui.replayVideo.play().catch(() => {}); // the viewer presses play where autoplay is refused
  ui.replayVideo.focus();
  startChatReplay(video.stream_id);
}

async function startChatReplay(streamId) {
  const generation = replayGeneration;
  const status = $("replay-chat-status");
  status.textContent = "(loading…)";
  try {
    const messages = await fetchReplay(streamId);
    if (generation !== replayGeneration) return; // closed or another recording meanwhile
    replayChat = new ChatReplay(ui.replayVideo, $("replay-chat"), messages);
    status.textContent = messages.length ? `(${messages.length} messages)` : "(no messages)";
  } catch {
    if (generation === replayGeneration) status.textContent = "(unavailable)";
  }
}

function videoItem(video) {
  const title = video.title || "Untitled broadcast";
  const link = video.url
    ? el("a", { href: video.url, "data-testid": "past-video-link" }, title)
    : el("span", {}, title);
  if (video.url) {
    link.addEventListener("click", (ev) => {
      ev.preventDefault();
      replay(video);
    });
  }
  return el("li", { "data-testid": "past-video", "data-stream-id": video.stream_id },
    el("strong", {}, link),
    el("span", { className: "when" }, formatDate(video.started_at)),
    el("span", { className: "when" }, formatDuration(video.duration_s)),
    video.category ? el("span", { className: "when" }, video.category) : null);
}

async function loadVideos() {
  try {
    const body = await api(`${path}/videos`, { query: { limit: 10 }, login: "optional" });
    const videos = body.videos ?? [];
    ui.videos.replaceChildren(...videos.map(videoItem));
    ui.videosStatus.textContent = videos.length ? "" : "No past broadcasts yet.";
    ui.videosStatus.hidden = videos.length > 0;
  } catch (err) {
    showError(ui.videosStatus, err);
  }
}

async function init() {
  renderFollow();
  ui.follow.addEventListener("click", toggleFollow);
  $("replay-close").addEventListener("click", closeReplay);
  user = await session;
  if (!(await loadChannel())) {
    ui.videosStatus.textContent = "";
    return;
  }
  await loadVideos();
  setInterval(() => { if (document.visibilityState === "visible") loadChannel(); }, REFRESH_MS);
}

init();
