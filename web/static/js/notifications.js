// Notifications: GET /api/notifications (newest first, paged), new ones prepended
// as they arrive over the pages' Socket.IO connection (shell.js re-dispatches them
// as "relaycast:notification"), POST /api/notifications/read for one (on opening
// it) or all ("Mark all as read").

import { api, el, formatDate, showError } from "./api.js";
import { requireUser } from "./shell.js";

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const ui = { list: $("notifications"), status: $("notifications-status"), more: $("load-more"), all: $("mark-all-read") };
let cursor = null;
const shown = new Set();

/** What a notification says and where it leads: {text, href}. */
function describe(n) {
  const p = n.payload ?? {};
  const channel = p.channel ?? p.channel_name ?? "";
  const who = p.channel_display_name || p.display_name || channel || "A channel";
  if (n.kind.includes("live") || n.kind.includes("started")) {
    return { text: `${who} is live${p.title ? `: ${p.title}` : ""}`, href: channel ? `/watch/${encodeURIComponent(channel)}` : null };
  }
  return { text: p.text || p.message || n.kind, href: channel ? `/watch/${encodeURIComponent(channel)}` : null };
}

function tellUnread(unread) {
  if (Number.isFinite(unread)) dispatchEvent(new CustomEvent("relaycast:unread", { detail: { unread } }));
}

async function markRead(body) {
  try {
    const result = await api("/api/notifications/read", { method: "POST", body });
    tellUnread(result.unread);
    return true;
  } catch (err) {
    showError(ui.status, err);
    return false;
  }
}

function item(n) {
  const { text, href } = describe(n);
  const li = el("li", { "data-testid": "notification", "data-id": n.id, "data-kind": n.kind,
    className: n.read_at ? "" : "unread" });
  const label = href ? el("a", { href }, text) : el("span", {}, text);
  if (href && !n.read_at) {
    label.addEventListener("click", (ev) => {
      ev.preventDefault();
      markRead({ ids: [n.id] }).finally(() => location.assign(new URL(href, location.origin).href));
    });
  }
  li.append(label);
  if (!n.read_at) li.append(el("span", { className: "badge" }, "new"));
  li.append(el("time", { dateTime: n.created_at }, formatDate(n.created_at)));
  return li;
}

function add(notifications, { prepend = false } = {}) {
  const fresh = notifications.filter((n) => n?.id && !shown.has(n.id));
  fresh.forEach((n) => shown.add(n.id));
  const items = fresh.map(item);
  if (prepend) ui.list.prepend(...items);
  else ui.list.append(...items);
  ui.status.textContent = ui.list.childElementCount ? "" : "No notifications yet. Follow channels to hear when they go live.";
  ui.status.hidden = ui.list.childElementCount > 0;
}

async function load() {
  try {
    const body = await api("/api/notifications", { query: { limit: 20, cursor } });
    add(body.notifications ?? []);
    cursor = body.next_cursor ?? null;
    ui.more.hidden = !cursor;
    tellUnread(body.unread);
  } catch (err) {
    showError(ui.status, err);
  }
}

async function init() {
  await requireUser();
  ui.more.addEventListener("click", load);
  ui.all.addEventListener("click", async () => {
    if (await markRead({ all: true })) {
      for (const li of ui.list.querySelectorAll(".unread")) {
        li.classList.remove("unread");
        li.querySelector(".badge")?.remove();
      }
    }
  });
  addEventListener("relaycast:notification", (ev) => add([ev.detail], { prepend: true }));
  await load();
}

init();
