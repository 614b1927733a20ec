// The directory: "/" (live streams by viewers, GET /api/streams?live=true),
// "/category/{slug}" (the same, of one category) and "/search?q=" (GET
// /api/streams/search: title, channel, tags, category). Category chips come from
// GET /api/categories. Cards link to the channel page /watch/{channel}.
// The first page of results is refreshed every REFRESH_MS while no more were loaded,
// and at once when a go-live notification arrives.

import { api, apiUrl, el, formatCount, showError } from "./api.js";

const REFRESH_MS = 15000;
const PAGE_SIZE = 24;
const PLACEHOLDER = "/static/thumbnail-placeholder.svg";

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const ui = {
  heading: $("directory-heading"), chips: $("categories"), status: $("directory-status"),
  list: $("streams"), more: $("load-more"), filters: $("filters"), live: $("filter-live"),
  sort: $("filter-sort"),
};

const params = new URLSearchParams(location.search);
const parts = location.pathname.split("/").filter(Boolean);
const mode = parts[0] === "search" ? "search" : parts[0] === "category" ? "category" : "home";
const slug = mode === "category" ? decodeURIComponent(parts[1] ?? "") : "";
const q = mode === "search" ? (params.get("q") ?? "").trim() : "";
let cursor = null;
let pages = 0;

function query(extra = {}) {
  if (mode === "search") {
    return { q, live: ui.live.checked ? "true" : "", sort: ui.sort.value, limit: PAGE_SIZE, ...extra };
  }
  return { live: "true", sort: "viewers", category: slug, limit: PAGE_SIZE, ...extra };
}

function endpoint() {
  return mode === "search" ? "/api/streams/search" : "/api/streams";
}

function card(stream) {
  const channel = stream.channel;
  const href = `/watch/${encodeURIComponent(channel)}`;
  const img = el("img", { src: stream.thumbnail_url || PLACEHOLDER, alt: "", loading: "lazy",
    "data-testid": "stream-thumbnail" });
  img.addEventListener("error", () => { if (!img.src.endsWith(PLACEHOLDER)) img.src = PLACEHOLDER; }, { once: true });
  const live = stream.status === "live";
  const viewers = Number(stream.viewers) || 0;
  const title = stream.title || `${stream.channel_display_name || channel}'s stream`;
  const thumb = el("a", { className: "thumb", href, tabIndex: -1, "aria-hidden": "true" }, img,
    el("span", { className: live ? "badge live" : "badge" }, live ? "Live" : stream.status || "offline"),
    live ? el("span", { className: "viewers", "data-testid": "stream-viewers", "data-viewers": viewers },
      `${formatCount(viewers)} watching`) : null);
  const category = stream.category
    ? el("div", { className: "category" }, el("a", { href: `/category/${encodeURIComponent(stream.category)}` },
      stream.category_name || stream.category))
    : null;
  const tags = Array.isArray(stream.tags) && stream.tags.length
    ? el("ul", { className: "tags", "aria-label": "Tags" }, ...stream.tags.slice(0, 5).map((t) => el("li", {}, t)))
    : null;
  return el("li", { className: "card", "data-testid": "stream-card", "data-channel": channel,
    "data-stream-id": stream.id, "data-viewers": viewers },
  thumb,
  el("div", { className: "meta" },
    el("a", { className: "title", href, "data-testid": "stream-title", title },
      title, el("span", { className: "sr-only" }, live ? ` — live, ${viewers} watching` : "")),
    el("div", { className: "channel", "data-testid": "stream-channel" }, stream.channel_display_name || channel),
    category, tags));
}

function headline(categories) {
  if (mode === "search") {
    ui.heading.textContent = q ? `Results for “${q}”` : "Search";
    document.title = q ? `${q} · Search · relaycast` : "Search · relaycast";
  } else if (mode === "category") {
    const name = categories.find((c) => c.slug === slug)?.name || slug;
    ui.heading.textContent = name;
    document.title = `${name} · relaycast`;
  }
}

async function loadCategories() {
  let categories = [];
  try {
    ({ categories = [] } = await api("/api/categories", { login: "optional" }));
  } catch {
    /* the chips are optional */
  }
  // Categories with live streams first (most viewers first), then the rest as listed.
  const live = categories.filter((c) => c.live_streams > 0).sort((a, b) => (b.viewers ?? 0) - (a.viewers ?? 0));
  const quiet = categories.filter((c) => !(c.live_streams > 0));
  const chips = [{ slug: "", name: "All", live_streams: null }, ...live, ...quiet];
  ui.chips.replaceChildren(...chips.map((c) => {
    const href = c.slug ? `/category/${encodeURIComponent(c.slug)}` : "/";
    const current = mode !== "search" && c.slug === slug;
    const count = c.live_streams != null ? el("span", { className: "n" }, String(c.live_streams)) : null;
    const a = el("a", { href, "data-testid": "category-chip", "data-slug": c.slug,
      "aria-current": current ? "page" : null }, c.name, count);
    return el("li", {}, a);
  }));
  headline(categories);
}

async function load({ append = false } = {}) {
  if (mode === "search" && !q) {
    ui.status.textContent = "Type something to search for: a title, a channel, a tag or a category.";
    ui.list.replaceChildren();
    return;
  }
  try {
    const body = await api(endpoint(), { query: query(append && cursor ? { cursor } : {}), login: "optional" });
    const streams = body.streams ?? [];
    const cards = streams.map(card);
    if (append) ui.list.append(...cards);
    else ui.list.replaceChildren(...cards);
    cursor = body.next_cursor ?? null;
    pages = append ? pages + 1 : 1;
    ui.more.hidden = !cursor;
    const shown = ui.list.childElementCount;
    if (shown === 0) {
      ui.status.textContent = mode === "search" ? "No streams match." : "Nobody is live right now.";
    } else {
      const what = mode === "search" ? "result" : "live channel";
      ui.status.textContent = `${shown} ${what}${shown === 1 ? "" : "s"}${cursor ? " (more below)" : ""}`;
    }
  } catch (err) {
    showError(ui.status, err);
  }
}

function init() {
  if (mode === "search") {
    ui.filters.hidden = false;
    ui.sort.value = ["viewers", "recent"].includes(params.get("sort")) ? params.get("sort") : "viewers";
    ui.live.checked = params.get("live") !== "false";
    ui.filters.addEventListener("change", () => {
      const url = apiUrl("/search", { q, sort: ui.sort.value, live: ui.live.checked ? "" : "false" });
      history.replaceState(null, "", url.pathname + url.search);
      load();
    });
  }
  ui.more.addEventListener("click", () => load({ append: true }));
  // A followed channel went live (shell.js): it is in the directory now.
  addEventListener("relaycast:notification", () => { if (pages <= 1) load(); });
  loadCategories();
  load();
  setInterval(() => {
    if (pages <= 1 && document.visibilityState === "visible") {
      load();
      loadCategories();
    }
  }, REFRESH_MS);
}

init();
