// Home page: list rooms from GET /api/rooms, refreshed every 5 s.

const REFRESH_MS = 5000;
const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const list = $("rooms");
const status = $("rooms-status");
const form = $("open-room");

const roomUrl = (kind, room) => `/${kind}/${encodeURIComponent(room)}`;

function link(href, text, testid) {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = text;
  a.dataset.testid = testid;
  return a;
}

function renderRoom({ room, live, viewers }) {
  const li = document.createElement("li");
  li.dataset.testid = "room";
  li.dataset.room = room;
  li.dataset.live = String(Boolean(live));
  const name = document.createElement("strong");
  name.textContent = room; // room names are user input: textContent only
  const badge = document.createElement("span");
  badge.className = live ? "badge live" : "badge";
  badge.textContent = live ? "LIVE" : "offline";
  const count = document.createElement("span");
  count.className = "muted";
  count.dataset.testid = "room-viewers";
  count.textContent = `${Number(viewers) || 0} watching`;
  const actions = document.createElement("span");
  actions.className = "actions";
  actions.append(link(roomUrl("watch", room), "Watch", "watch-link"), " ",
    link(roomUrl("broadcast", room), "Broadcast", "broadcast-link"));
  li.append(name, " ", badge, " ", count, actions);
  return li;
}

async function refresh() {
  try {
    const res = await fetch("/api/rooms", { headers: { Accept: "application/json" } });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const { rooms = [] } = await res.json();
    list.replaceChildren(...rooms.map(renderRoom));
    status.textContent = rooms.length ? `${rooms.length} room(s), updated ${new Date().toLocaleTimeString()}` : "No rooms yet.";
  } catch (err) {
    status.textContent = `Could not load rooms (${err.message}); retrying…`;
  }
}

form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const room = new FormData(form).get("room").trim();
  if (!room) return;
  const kind = ev.submitter?.value === "broadcast" ? "broadcast" : "watch";
  location.href = roomUrl(kind, room);
});

refresh();
setInterval(refresh, REFRESH_MS);
