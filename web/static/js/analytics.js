// The studio's analytics /studio/analytics?stream={id} (the channel's owner): one
// broadcast's GET /api/streams/{id}/analytics as charts (Chart.js 4, served from this
// server's npm install at /static/vendor/chart.umd.min.js) and figures:
// * concurrent viewers every 10 s, WebRTC and LL-HLS stacked; peak, unique, watch time;
// * chat messages per minute;
// * ingest bitrate and frame rate over time, and the latest ingest sample;
// * quality of experience per tier (join time, latency, stalls, switches, errors).
// The broadcast is picked from the live one (GET /api/channels/{name}) and the past ones
// (GET /api/channels/{name}/videos, plus the channel's ended broadcasts from
// GET /api/streams/search?live=false, which also lists broadcasts without a recording);
// a live broadcast is read again every REFRESH_MS.

import { ApiError, api, el, formatCount, formatDate, formatDuration, showError } from "./api.js";
import { renderIngestFigures } from "./ingest-figures.js";
import { requireUser } from "./shell.js";

const REFRESH_MS = 10000;
const COLORS = { webrtc: "#1f5fbf", llhls: "#d9822b", chat: "#1b7a2f", bitrate: "#5b2a86", fps: "#c62828" };
const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const ui = {
  room: $("room"), link: $("channel-link"), modLink: $("moderation-link"), select: $("stream-select"),
  state: $("stream-state"), error: $("analytics-error"), empty: $("analytics-empty"), body: $("analytics"),
  peak: $("stat-peak"), unique: $("stat-unique"), watch: $("stat-watch"), average: $("stat-average"),
  chat: $("stat-chat"), followers: $("stat-followers"), viewersSummary: $("viewers-summary"),
  chatSummary: $("chat-summary"), qoe: $("qoe").querySelector("tbody"),
  ingest: {
    bitrate: $("ingest-bitrate"), fps: $("ingest-fps"), resolution: $("ingest-resolution"),
    keyframe: $("ingest-keyframe"), loss: $("ingest-loss"), rtt: $("ingest-rtt"), jitter: $("ingest-jitter"),
  },
};
const charts = {};
let channel = "";
let timer = 0;
let latest = null; // the last analytics document shown

function clock(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function streamLabel(s) {
  const title = s.title || "Untitled broadcast";
  return s.live ? `Live now: ${title}` : `${formatDate(s.started_at)} · ${title}`;
}

/** The channel's broadcasts, live first, then newest first. */
async function listStreams() {
  const path = `/api/channels/${encodeURIComponent(channel)}`;
  const [info, videos, ended] = await Promise.all([
    api(path),
    api(`${path}/videos`, { query: { limit: 50 } }).catch(() => ({ videos: [] })),
    api("/api/streams/search", { query: { q: channel, live: "false", sort: "recent", limit: 50 } })
      .catch(() => ({ streams: [] })),
  ]);
  const byId = new Map();
  if (info.live && info.stream_id) {
    byId.set(info.stream_id, { id: info.stream_id, title: info.title, started_at: null, live: true });
  }
  for (const v of videos.videos ?? []) {
    if (!byId.has(v.stream_id)) byId.set(v.stream_id, { id: v.stream_id, title: v.title, started_at: v.started_at });
  }
  for (const s of ended.streams ?? []) {
    if (s.channel === channel && !byId.has(s.id)) byId.set(s.id, { id: s.id, title: s.title, started_at: s.started_at });
  }
  const live = [...byId.values()].filter((s) => s.live);
  const past = [...byId.values()].filter((s) => !s.live)
    .sort((a, b) => String(b.started_at ?? "").localeCompare(String(a.started_at ?? "")));
  return [...live, ...past];
}

function lineOptions(extra = {}) {
  return {
    responsive: true, maintainAspectRatio: false, animation: false,
    interaction: { mode: "index", intersect: false },
    plugins: { legend: { position: "bottom" } },
    scales: { x: { ticks: { maxTicksLimit: 8, autoSkip: true } }, ...extra },
  };
}

function chart(name, config) {
  const canvas = $(`chart-${name}`);
  if (!window.Chart) return null;
  if (!charts[name]) charts[name] = new window.Chart(canvas, config);
  return charts[name];
}

/** New data for chart ``c``; points are drawn while there are few (one sample is no line). */
function setData(c, labels, datasets) {
  if (!c) return;
  c.data.labels = labels;
  const radius = labels.length < 2 ? 4 : labels.length <= 60 ? 2 : 0;
  c.data.datasets.forEach((d, i) => {
    d.data = datasets[i];
    d.pointRadius = radius;
  });
  c.update("none");
}

function renderViewers(viewers) {
  const samples = viewers.samples ?? [];
  const c = chart("viewers", {
    type: "line",
    data: { labels: [], datasets: [
      { label: "WebRTC", data: [], borderColor: COLORS.webrtc, backgroundColor: `${COLORS.webrtc}55`, fill: true, stepped: true },
      { label: "LL-HLS", data: [], borderColor: COLORS.llhls, backgroundColor: `${COLORS.llhls}55`, fill: true, stepped: true },
    ] },
    options: lineOptions({ y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } } }),
  });
  setData(c, samples.map((s) => clock(s.at)), [samples.map((s) => s.webrtc), samples.map((s) => s.llhls)]);
  const canvas = $("chart-viewers");
  canvas.dataset.samples = String(samples.length);
  canvas.dataset.max = String(Math.max(0, ...samples.map((s) => (s.webrtc ?? 0) + (s.llhls ?? 0))));
  ui.viewersSummary.textContent = samples.length
    ? `${samples.length} samples, every 10 s; at most ${canvas.dataset.max} at once.`
    : "No viewer samples yet.";
  ui.peak.textContent = formatCount(viewers.peak);
  ui.unique.textContent = formatCount(viewers.unique);
  ui.watch.textContent = formatDuration(viewers.watch_time_s);
  ui.average.textContent = formatDuration(viewers.average_watch_s);
}

function renderChat(chatStats) {
  const minutes = chatStats.per_minute ?? [];
  const c = chart("chat", {
    type: "bar",
    data: { labels: [], datasets: [{ label: "Messages", data: [], backgroundColor: COLORS.chat }] },
    options: { ...lineOptions({ y: { beginAtZero: true, ticks: { precision: 0 } } }), plugins: { legend: { display: false } } },
  });
  setData(c, minutes.map((m) => clock(m.minute)), [minutes.map((m) => m.messages)]);
  $("chart-chat").dataset.samples = String(minutes.length);
  ui.chat.textContent = formatCount(chatStats.total);
  ui.chatSummary.textContent = minutes.length
    ? `Busiest minute: ${Math.max(...minutes.map((m) => m.messages))} messages.`
    : "No chat messages.";
}

function renderIngest(ingest) {
  const samples = ingest.samples ?? [];
  const c = chart("ingest", {
    type: "line",
    data: { labels: [], datasets: [
      { label: "Bitrate (kbit/s)", data: [], borderColor: COLORS.bitrate, yAxisID: "y" },
      { label: "Frame rate (fps)", data: [], borderColor: COLORS.fps, yAxisID: "fps" },
    ] },
    options: lineOptions({
      y: { beginAtZero: true, title: { display: true, text: "kbit/s" } },
      fps: { beginAtZero: true, position: "right", grid: { drawOnChartArea: false }, title: { display: true, text: "fps" } },
    }),
  });
  setData(c, samples.map((s) => clock(s.at)),
    [samples.map((s) => (s.bitrate_bps == null ? null : Math.round(s.bitrate_bps / 1000))), samples.map((s) => s.fps)]);
  $("chart-ingest").dataset.samples = String(samples.length);
  renderIngestFigures(ingest.latest, ui.ingest);
}

function pair(p, unit = "ms") {
  if (!p) return "–";
  const f = (v) => (v == null ? "–" : unit === "ms" && v >= 1000 ? `${(v / 1000).toFixed(1)} s` : `${Math.round(v)} ${unit}`);
  return `${f(p.p50)} / ${f(p.p95)}`;
}

function renderQoe(qoe) {
  const rows = [["webrtc", "WebRTC"], ["llhls", "LL-HLS"]].map(([key, name]) => {
    const q = qoe?.[key] ?? {};
    return el("tr", { "data-testid": `qoe-${key}` },
      el("th", { scope: "row" }, name),
      el("td", {}, String(q.sessions ?? 0)),
      el("td", {}, pair(q.join_ms)),
      el("td", {}, pair(q.latency_ms)),
      el("td", {}, String(q.stalls ?? 0)),
      el("td", {}, `${Number(q.stall_s ?? 0).toFixed(1)} s`),
      el("td", { className: "wide-only" }, String(q.switches ?? 0)),
      el("td", { className: "wide-only" }, String(q.errors ?? 0)));
  });
  ui.qoe.replaceChildren(...rows);
}

function render(doc) {
  latest = doc;
  ui.body.hidden = false;
  const started = doc.started_at ? formatDate(doc.started_at) : "not started";
  const length = doc.started_at
    ? formatDuration(((doc.ended_at ? Date.parse(doc.ended_at) : Date.now()) - Date.parse(doc.started_at)) / 1000)
    : "";
  ui.state.textContent = `${doc.status}${doc.status === "live" ? " · updated every 10 s" : ""} · started ${started}${length ? ` · ${length}` : ""}`;
  ui.state.dataset.status = doc.status;
  renderViewers(doc.viewers ?? {});
  renderChat(doc.chat ?? {});
  renderIngest(doc.ingest ?? {});
  renderQoe(doc.qoe);
  ui.followers.textContent = formatCount(doc.followers_gained);
}

async function load(id) {
  clearTimeout(timer);
  if (!id) return;
  try {
    const doc = await api(`/api/streams/${encodeURIComponent(id)}/analytics`);
    if (ui.select.value !== id) return; // another broadcast was picked meanwhile
    ui.error.hidden = true;
    render(doc);
    if (doc.status === "live" || doc.status === "pending") timer = setTimeout(() => load(id), REFRESH_MS);
  } catch (err) {
    showError(ui.error, err);
    if (!(err instanceof ApiError && [403, 404].includes(err.status))) timer = setTimeout(() => load(id), REFRESH_MS);
  }
}

function pick(id) {
  const url = new URL(location.href);
  url.searchParams.set("stream", id);
  history.replaceState(history.state, "", url);
  load(id);
}

async function init() {
  const user = await requireUser();
  channel = user.channel || user.username;
  ui.room.textContent = channel;
  ui.link.href = `/watch/${encodeURIComponent(channel)}`;
  ui.modLink.href = `/moderation/${encodeURIComponent(channel)}`;
  if (!window.Chart) {
    ui.error.textContent = "The charts are unavailable: Chart.js is not installed on this server (npm ci --prefix web). The figures are below.";
    ui.error.hidden = false;
  }
  let streams = [];
  try {
    streams = await listStreams();
  } catch (err) {
    showError(ui.error, err);
  }
  const wanted = new URLSearchParams(location.search).get("stream");
  if (wanted && !streams.some((s) => s.id === wanted)) streams.unshift({ id: wanted, title: "This broadcast", started_at: null });
  ui.select.replaceChildren(...streams.map((s) => new Option(streamLabel(s), s.id)));
  ui.empty.hidden = streams.length > 0;
  if (!streams.length) return;
  ui.select.value = wanted || streams[0].id;
  ui.select.addEventListener("change", () => pick(ui.select.value));
  load(ui.select.value);
}

// Test/devtools hook: the charts and the document shown.
window.relaycastAnalytics = { charts, get latest() { return latest; } };

init();
