// Chat replay of a past broadcast: the messages of GET /api/streams/{id}/chat (paged
// backwards with ?before=<next_before>, at most MAX_PAGES pages of 100) appear under the
// recording as its media time passes their offset_ms (ms since the broadcast started).
// Seeking re-renders: backwards removes what is later than the new time, forwards adds
// what is now due. Deleted messages are never listed by the API.

import { api, el } from "./api.js";
import { formatTime } from "./chat-panel.js";

const PAGE = 100;
const MAX_PAGES = 50;
const MAX_SHOWN = 300; // rows kept in the list

/** "m:ss" (or "h:mm:ss") of a media offset in ms. */
function offsetText(ms) {
  const s = Math.floor(ms / 1000);
  const pad = (n) => String(n).padStart(2, "0");
  const h = Math.floor(s / 3600);
  return h ? `${h}:${pad(Math.floor(s / 60) % 60)}:${pad(s % 60)}` : `${Math.floor(s / 60)}:${pad(s % 60)}`;
}

/** Every stored message of stream ``id`` with an offset, ordered by (offset_ms, seq). */
export async function fetchReplay(id) {
  const pages = [];
  let before;
  for (let i = 0; i < MAX_PAGES; i += 1) {
    const body = await api(`/api/streams/${encodeURIComponent(id)}/chat`, { query: { limit: PAGE, before }, login: "optional" });
    pages.unshift(body.messages ?? []);
    before = body.next_before;
    if (!before) break;
  }
  return pages.flat()
    .filter((m) => Number.isFinite(m.offset_ms))
    .sort((a, b) => a.offset_ms - b.offset_ms || a.seq - b.seq);
}

/** Plays ``messages`` into ``list`` following ``video``'s currentTime until destroy(). */
export class ChatReplay {
  constructor(video, list, messages) {
    this.video = video;
    this.list = list;
    this.messages = messages;
    this.shown = 0; // messages[0..shown) are in the list
    this.onTime = () => this.sync();
    for (const type of ["timeupdate", "seeked", "seeking", "loadedmetadata"]) video.addEventListener(type, this.onTime);
    list.replaceChildren();
    list.dataset.total = String(messages.length);
    this.sync();
  }

  /** Show exactly the messages whose offset is at or before the media time. */
  sync() {
    const now = this.video.currentTime * 1000;
    let due = this.shown;
    while (due < this.messages.length && this.messages[due].offset_ms <= now) due += 1;
    while (due > 0 && this.messages[due - 1].offset_ms > now) due -= 1;
    if (due === this.shown) return;
    if (due < this.shown) {
      for (let i = this.shown; i > due; i -= 1) this.list.lastElementChild?.remove();
      // Rows dropped for MAX_SHOWN come back when seeking backwards.
      const first = Math.max(0, due - MAX_SHOWN);
      if (this.list.childElementCount < due - first) {
        this.list.replaceChildren(...this.messages.slice(first, due).map((m) => this.row(m)));
      }
    } else {
      this.list.append(...this.messages.slice(Math.max(this.shown, due - MAX_SHOWN), due).map((m) => this.row(m)));
      while (this.list.childElementCount > MAX_SHOWN) this.list.firstElementChild.remove();
    }
    this.shown = due;
    this.list.dataset.shown = String(due);
    this.list.scrollTop = this.list.scrollHeight;
  }

  row(m) {
    return el("li", { "data-testid": "replay-message", "data-seq": String(m.seq), "data-offset-ms": String(m.offset_ms) },
      el("span", { className: "chat-time", title: formatTime(m.ts) }, offsetText(m.offset_ms)),
      el("b", { className: "chat-from" }, String(m.from?.name ?? "anonymous")), ": ",
      el("span", { className: "chat-text" }, String(m.text ?? "")));
  }

  destroy() {
    for (const type of ["timeupdate", "seeked", "seeking", "loadedmetadata"]) this.video.removeEventListener(type, this.onTime);
    this.list.replaceChildren();
  }
}
