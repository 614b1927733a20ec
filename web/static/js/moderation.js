// The moderation panel /moderation/{channel} (moderators: the broadcaster, appointed
// moderators, admins; GET /api/channels/{name}/chat/me says who is one):
// * queue — GET .../chat/reports?status= (user reports and held messages), resolved with
//   POST .../chat/reports/{id}/resolve {action: dismiss | delete | approve (held only)};
// * chat settings — GET/PATCH .../chat/settings {slow_mode_s, followers_only_s (null = off),
//   guests_allowed, links_allowed};
// * blocked terms — GET/POST .../chat/blocked-terms {term, action: block | hold}, DELETE .../{id};
// * bans and time-outs — GET/POST .../chat/bans {user, duration_s?}, DELETE .../bans/{target};
// * moderators (the broadcaster and admins) — GET .../moderators, PUT/DELETE .../moderators/{username};
// * the moderation log — GET .../moderation/log?cursor=, newest first;
// * clear the chat — POST .../chat/clear.
// The queue, the bans and the log are read again every REFRESH_MS.

import { ApiError, api, el, formatDate, showError } from "./api.js";
import { requireUser } from "./shell.js";
import { roomFromPath } from "./webrtc.js";

const REFRESH_MS = 10000;
const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const channel = roomFromPath();
const base = `/api/channels/${encodeURIComponent(channel)}`;
const ui = {
  room: $("room"), link: $("channel-link"), error: $("mod-error"), status: $("mod-status"), panels: $("mod-panels"),
  queue: $("queue"), queueEmpty: $("queue-empty"), queueStatus: $("queue-status"), queueMore: $("queue-more"),
  settings: $("settings-form"), slow: $("slow-mode"), followersOnly: $("followers-only"), followersMin: $("followers-min"),
  guests: $("guests-allowed"), links: $("links-allowed"), settingsResult: $("settings-result"),
  termForm: $("term-form"), terms: $("terms"), banForm: $("ban-form"), bans: $("bans"), bansEmpty: $("bans-empty"),
  modsPanel: $("mods-panel"), modForm: $("mod-form"), mods: $("mods"), log: $("log").querySelector("tbody"),
  logMore: $("log-more"), clear: $("clear-chat"),
};
let queueCursor = null;
let logCursor = null;

function say(text) {
  ui.status.textContent = text;
  ui.error.hidden = true;
}

async function act(fn, done) {
  try {
    await fn();
    if (done) say(done);
  } catch (err) {
    showError(ui.error, err);
  }
}

function when(iso) {
  return el("time", { dateTime: iso ?? "" }, formatDate(iso));
}

/** A log entry's time, short: "14:05:09" today, else "12/6/26, 14:05". */
function shortWhen(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return el("time", {}, "");
  const today = d.toDateString() === new Date().toDateString();
  const text = today ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" })
    : d.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
  return el("time", { dateTime: iso, title: formatDate(iso) }, text);
}

/** A log entry's ``detail`` (text or an object of changed values) as one short line. */
function detailText(detail) {
  if (detail === null || detail === undefined || detail === "") return "";
  if (typeof detail !== "object") return String(detail);
  const value = (v) => {
    if (Array.isArray(v) && v.length === 2) return `${value(v[0])} → ${value(v[1])}`; // [before, after]
    return v !== null && typeof v === "object" ? JSON.stringify(v) : String(v);
  };
  return Object.entries(detail).map(([k, v]) => `${k}: ${value(v)}`).join(", ");
}

// ---- queue ---------------------------------------------------------------------------
function reportItem(report) {
  const message = report.message ?? {};
  const from = message.from ?? {};
  const buttons = [];
  const resolve = (action, label, testid) => {
    const b = el("button", { type: "button", "data-testid": testid }, label);
    b.addEventListener("click", () => act(async () => {
      await api(`${base}/chat/reports/${encodeURIComponent(report.id)}/resolve`, { method: "POST", body: { action } });
      await Promise.all([loadQueue(), loadLog()]);
    }, action === "approve" ? "Message approved and sent." : action === "delete" ? "Message deleted." : "Dismissed."));
    return b;
  };
  if (report.status === "open") {
    if (report.kind === "held") buttons.push(resolve("approve", "Approve", "queue-approve"));
    buttons.push(resolve("delete", report.kind === "held" ? "Reject" : "Delete message", "queue-delete"));
    buttons.push(resolve("dismiss", "Dismiss", "queue-dismiss"));
  }
  const who = report.kind === "held"
    ? "held by the filter"
    : `reported by ${report.reporter?.username ?? "a deleted user"}`;
  return el("li", { "data-testid": "queue-item", "data-kind": report.kind, "data-report-id": report.id },
    el("div", { className: "mod-line" },
      el("span", { className: `badge badge-${report.kind}` }, report.kind), " ",
      el("b", {}, String(from.name ?? "?")), ": ", el("span", { className: "chat-text", "data-testid": "queue-text" },
        String(message.text ?? ""))),
    el("div", { className: "muted small" }, who, report.reason ? ` — “${report.reason}”` : "", " · ", when(report.created_at),
      report.resolution ? ` · ${report.resolution}` : ""),
    buttons.length ? el("div", { className: "row" }, ...buttons) : null);
}

async function loadQueue({ more = false } = {}) {
  const body = await api(`${base}/chat/reports`, {
    query: { status: ui.queueStatus.value, limit: 50, cursor: more ? queueCursor : undefined },
  });
  const items = (body.reports ?? []).map(reportItem);
  if (more) ui.queue.append(...items);
  else ui.queue.replaceChildren(...items);
  queueCursor = body.next_cursor ?? null;
  ui.queueMore.hidden = !queueCursor;
  ui.queueEmpty.hidden = ui.queue.childElementCount > 0;
}

// ---- settings ------------------------------------------------------------------------
function renderSettings(s) {
  ui.slow.value = String(s.slow_mode_s ?? 0);
  ui.followersOnly.checked = s.followers_only_s !== null && s.followers_only_s !== undefined;
  ui.followersMin.value = String(Math.round((s.followers_only_s ?? 0) / 60));
  ui.followersMin.disabled = !ui.followersOnly.checked;
  ui.guests.checked = Boolean(s.guests_allowed);
  ui.links.checked = Boolean(s.links_allowed);
}

async function saveSettings(ev) {
  ev.preventDefault();
  const body = {
    slow_mode_s: Number(ui.slow.value) || 0,
    followers_only_s: ui.followersOnly.checked ? Math.round((Number(ui.followersMin.value) || 0) * 60) : null,
    guests_allowed: ui.guests.checked,
    links_allowed: ui.links.checked,
  };
  ui.settingsResult.textContent = "";
  await act(async () => {
    renderSettings(await api(`${base}/chat/settings`, { method: "PATCH", body }));
    ui.settingsResult.textContent = "Saved.";
    ui.settingsResult.className = "ok";
    loadLog();
  });
}

// ---- blocked terms -------------------------------------------------------------------
async function loadTerms() {
  const { terms = [] } = await api(`${base}/chat/blocked-terms`);
  ui.terms.replaceChildren(...terms.map((t) => {
    const remove = el("button", { type: "button", "data-testid": "term-remove", "aria-label": `Remove ${t.term}` }, "Remove");
    remove.addEventListener("click", () => act(async () => {
      await api(`${base}/chat/blocked-terms/${encodeURIComponent(t.id)}`, { method: "DELETE" });
      await loadTerms();
    }, "Term removed."));
    return el("li", { "data-testid": "term", "data-term-id": t.id },
      el("code", {}, t.term), " ", el("span", { className: `badge badge-${t.action}` }, t.action), remove);
  }));
  if (!terms.length) ui.terms.append(el("li", { className: "muted" }, "No blocked terms on this channel."));
}

async function addTerm(ev) {
  ev.preventDefault();
  const data = new FormData(ui.termForm);
  await act(async () => {
    await api(`${base}/chat/blocked-terms`, { method: "POST", body: { term: String(data.get("term")).trim(), action: data.get("action") } });
    ui.termForm.reset();
    await loadTerms();
  }, "Term added.");
}

// ---- bans ----------------------------------------------------------------------------
async function loadBans() {
  const { bans = [] } = await api(`${base}/chat/bans`);
  ui.bans.replaceChildren(...bans.map((b) => {
    const lift = el("button", { type: "button", "data-testid": "unban", "aria-label": `Lift for ${b.target_name}` },
      b.expires_at ? "End time-out" : "Unban");
    lift.addEventListener("click", () => act(async () => {
      await api(`${base}/chat/bans/${encodeURIComponent(b.target)}`, { method: "DELETE" });
      await Promise.all([loadBans(), loadLog()]);
    }, `${b.target_name} may chat again.`));
    return el("li", { "data-testid": "ban", "data-target": b.target },
      el("b", {}, String(b.target_name ?? b.target)), " ",
      b.expires_at ? el("span", { className: "muted" }, "timed out until ", when(b.expires_at))
        : el("span", { className: "muted" }, "banned"),
      b.reason ? el("span", { className: "muted small" }, ` — ${b.reason}`) : null, lift);
  }));
  ui.bansEmpty.hidden = bans.length > 0;
}

async function addBan(ev) {
  ev.preventDefault();
  const data = new FormData(ui.banForm);
  const user = String(data.get("user")).trim().replace(/^@/, "");
  const duration = data.get("duration");
  const body = { user };
  if (duration) body.duration_s = Number(duration);
  await act(async () => {
    await api(`${base}/chat/bans`, { method: "POST", body });
    ui.banForm.reset();
    await Promise.all([loadBans(), loadLog()]);
  }, duration ? `${user} is timed out.` : `${user} is banned.`);
}

// ---- moderators ----------------------------------------------------------------------
async function loadMods() {
  const { moderators = [] } = await api(`${base}/moderators`);
  ui.mods.replaceChildren(...moderators.map((m) => {
    const remove = el("button", { type: "button", "data-testid": "mod-remove", "aria-label": `Remove ${m.username}` }, "Remove");
    remove.addEventListener("click", () => act(async () => {
      await api(`${base}/moderators/${encodeURIComponent(m.username)}`, { method: "DELETE" });
      await Promise.all([loadMods(), loadLog()]);
    }, `${m.username} is no longer a moderator.`));
    return el("li", { "data-testid": "moderator" }, el("b", {}, m.username), " ",
      el("span", { className: "muted small" }, "since ", when(m.created_at)), remove);
  }));
  if (!moderators.length) ui.mods.append(el("li", { className: "muted" }, "No moderators yet."));
}

async function addMod(ev) {
  ev.preventDefault();
  const username = String(new FormData(ui.modForm).get("username")).trim().replace(/^@/, "");
  await act(async () => {
    await api(`${base}/moderators/${encodeURIComponent(username)}`, { method: "PUT" });
    ui.modForm.reset();
    await Promise.all([loadMods(), loadLog()]);
  }, `${username} is a moderator now.`);
}

// ---- log -----------------------------------------------------------------------------
function logRow(entry) {
  const target = entry.target_name || entry.target || "";
  const detail = detailText(entry.detail);
  return el("tr", { "data-testid": "log-entry", "data-action": entry.action },
    el("td", { className: "nowrap" }, shortWhen(entry.created_at)),
    el("td", {}, entry.actor?.username ?? "system"),
    el("td", {}, entry.action),
    el("td", {}, target, detail ? el("span", { className: "muted small" }, ` ${detail}`) : null),
    el("td", { className: "wide-only" }, entry.reason ?? ""));
}

async function loadLog({ more = false } = {}) {
  const body = await api(`${base}/moderation/log`, { query: { limit: 50, cursor: more ? logCursor : undefined } });
  const rows = (body.entries ?? []).map(logRow);
  if (more) ui.log.append(...rows);
  else ui.log.replaceChildren(...rows);
  logCursor = body.next_cursor ?? null;
  ui.logMore.hidden = !logCursor;
}

async function refresh() {
  if (document.visibilityState !== "visible") return;
  try {
    await Promise.all([loadQueue(), loadBans(), loadLog()]);
  } catch {
    /* shown on the next action */
  }
}

async function init() {
  const user = await requireUser();
  ui.room.textContent = channel;
  ui.link.href = `/watch/${encodeURIComponent(channel)}`;
  document.title = `Moderation · ${channel} · relaycast`;
  let me;
  try {
    me = await api(`${base}/chat/me`);
  } catch (err) {
    showError(ui.error, err);
    return;
  }
  if (!me.moderator) {
    ui.error.textContent = "You are not a moderator of this channel.";
    ui.error.hidden = false;
    ui.clear.hidden = true;
    return;
  }
  ui.panels.hidden = false;
  renderSettings(me.settings ?? {});
  ui.modsPanel.hidden = !me.broadcaster && user.role !== "admin";
  ui.settings.addEventListener("submit", saveSettings);
  ui.followersOnly.addEventListener("change", () => { ui.followersMin.disabled = !ui.followersOnly.checked; });
  ui.termForm.addEventListener("submit", addTerm);
  ui.banForm.addEventListener("submit", addBan);
  ui.modForm.addEventListener("submit", addMod);
  ui.queueStatus.addEventListener("change", () => act(() => loadQueue()));
  ui.queueMore.addEventListener("click", () => act(() => loadQueue({ more: true })));
  ui.logMore.addEventListener("click", () => act(() => loadLog({ more: true })));
  ui.clear.addEventListener("click", () => {
    if (!confirm("Clear the chat for everybody?")) return;
    act(async () => {
      await api(`${base}/chat/clear`, { method: "POST", body: {} });
      await loadLog();
    }, "The chat is cleared.");
  });
  const loads = [loadQueue(), loadTerms(), loadBans(), loadLog()];
  if (!ui.modsPanel.hidden) loads.push(loadMods());
  const results = await Promise.allSettled(loads);
  const failed = results.find((r) => r.status === "rejected");
  if (failed) showError(ui.error, failed.reason instanceof ApiError ? failed.reason : new Error(String(failed.reason)));
  setInterval(refresh, REFRESH_MS);
}

init();
