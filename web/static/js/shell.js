// The header of every page: brand, navigation, the search box, and either the
// log-in / sign-up links or the notifications bell and the user menu.
//
// The bell's unread count comes from GET /api/notifications?unread=true&limit=1
// and then follows the pages' Socket.IO connection: each "notification" event
// adds one and is re-dispatched on window as a "relaycast:notification"
// CustomEvent (detail = the stored notification) for the page to use.
// "relaycast:unread" (detail = {unread}) sets the count, e.g. after marking read.
//
// ``session`` resolves to the logged-in user (Me) or null; ``requireUser()`` goes
// to /login when there is none.

import { api, apiUrl, currentUser, el, goToLogin } from "./api.js";
import { connectLiveEvents } from "./live-events.js";

const header = document.querySelector('[data-testid="topbar"]');
let unread = 0;
let badge = null;

/** The logged-in user or null (one GET /api/users/me per page). */
export const session = currentUser().catch(() => null);

/** The logged-in user; goes to /login (and never resolves) when there is none. */
export async function requireUser() {
  const user = await session;
  if (user) return user;
  goToLogin();
  return new Promise(() => {});
}

function setUnread(count) {
  unread = Math.max(0, Number(count) || 0);
  if (!badge) return;
  badge.textContent = unread > 99 ? "99+" : String(unread);
  badge.hidden = unread === 0;
  badge.dataset.unread = String(unread);
  badge.parentElement.setAttribute("aria-label", `Notifications (${unread} unread)`);
}

function searchForm() {
  const params = new URLSearchParams(location.search);
  const input = el("input", {
    type: "search", name: "q", placeholder: "Search streams", autocomplete: "off", maxLength: 200,
    value: location.pathname === "/search" ? params.get("q") ?? "" : "",
    "aria-label": "Search streams, channels, tags and categories", "data-testid": "search-input",
  });
  const form = el("form", { className: "search", role: "search", action: "/search", method: "get",
    "data-testid": "search-form" },
  input, el("button", { type: "submit", "aria-label": "Search" }, "Search"));
  return form;
}

function bellIcon() {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", "22");
  svg.setAttribute("height", "22");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", "M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22zm7-6V11a7 7 0 0 0-5.5-6.84V3.5a1.5 1.5 0 0 0-3 0v.66A7 7 0 0 0 5 11v5l-2 2v1h18v-1z");
  path.setAttribute("fill", "currentColor");
  svg.append(path);
  return svg;
}

function userMenu(user) {
  const bell = el("a", { href: "/notifications", className: "bell", "data-testid": "bell",
    "aria-label": "Notifications" }, bellIcon());
  badge = el("span", { className: "count", "data-testid": "unread-count", hidden: true, "aria-hidden": "true" }, "0");
  bell.append(badge);
  const logout = el("button", { type: "button", "data-testid": "logout" }, "Log out");
  logout.addEventListener("click", async () => {
    try {
      await api("/api/users/logout", { method: "POST", body: {}, login: "optional" });
    } catch {
      /* the cookies are cleared by the server; nothing else to undo */
    }
    location.assign(apiUrl("/").href);
  });
  const menu = el("details", { className: "user-menu", "data-testid": "user-menu" },
    el("summary", { "aria-label": `Account menu for ${user.username}` },
      el("span", { className: "avatar", "aria-hidden": "true" }, (user.display_name || user.username).slice(0, 1).toUpperCase()),
      el("span", { className: "who", "data-testid": "user-name" }, user.display_name || user.username)),
    el("ul", { role: "list" },
      el("li", {}, el("a", { href: `/watch/${encodeURIComponent(user.channel || user.username)}` }, "My channel")),
      el("li", {}, el("a", { href: "/studio" }, "Studio")),
      el("li", {}, el("a", { href: "/notifications" }, "Notifications")),
      el("li", {}, el("a", { href: "/settings" }, "Settings")),
      el("li", {}, logout)));
  // Escape closes the menu and gives focus back to its summary.
  menu.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && menu.open) {
      menu.open = false;
      menu.querySelector("summary").focus();
    }
  });
  document.addEventListener("click", (ev) => {
    if (menu.open && !menu.contains(ev.target)) menu.open = false;
  });
  return [bell, menu];
}

async function loadUnread() {
  try {
    const body = await api("/api/notifications", { query: { unread: "true", limit: 1 }, login: "optional" });
    setUnread(body.unread);
  } catch {
    /* the bell keeps its count */
  }
}

function render(user) {
  if (!header) return;
  const nav = el("nav", { className: "nav", "aria-label": "Main" },
    el("a", { href: "/", "data-testid": "nav-browse" }, "Browse"),
    user ? el("a", { href: "/studio", "data-testid": "nav-studio" }, "Studio") : null);
  const right = el("div", { className: "account" });
  if (user) {
    right.append(...userMenu(user));
  } else {
    right.append(el("a", { href: `/login?next=${encodeURIComponent(location.pathname + location.search)}`,
      "data-testid": "nav-login" }, "Log in"),
    el("a", { href: "/register", className: "button primary", "data-testid": "nav-register" }, "Sign up"));
  }
  header.replaceChildren(el("a", { className: "brand", href: "/" }, "relaycast"), nav, searchForm(), right);
  for (const link of header.querySelectorAll("nav a")) {
    if (link.getAttribute("href") === location.pathname) link.setAttribute("aria-current", "page");
  }
}

async function init() {
  render(null);
  const user = await session;
  if (!user) return;
  render(user);
  await loadUnread();
  connectLiveEvents({
    notification(notification) {
      setUnread(unread + 1);
      dispatchEvent(new CustomEvent("relaycast:notification", { detail: notification }));
    },
    connect: loadUnread, // catch up on what arrived while disconnected
  });
  addEventListener("relaycast:unread", (ev) => setUnread(ev.detail?.unread));
}

init();
