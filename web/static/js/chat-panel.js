// ChatPanel: the chat's rendering and sending, whatever the transport (chat.js attaches
// the transports). Every server object goes through ChatPanel.handle: messages are kept
// once per seq and shown in seq order (at most 500 rows), "delete" removes messages by id,
// "clear" empties the list; a refusal becomes one line (refusalText). The characters left
// are counted in grapheme clusters, the server's measure.

export const MAX_CHAT_LENGTH = 500; // grapheme clusters (RELAYCAST_CHAT_MAX_CHARS default)
const RAW_INPUT_LIMIT = 4000; // what the server reads at most (code units)
const MAX_RENDERED = 500; // messages kept in the DOM
const NOTICE_MS = 6000;

const segmenter = typeof Intl.Segmenter === "function" ? new Intl.Segmenter(undefined, { granularity: "grapheme" }) : null;

/** Length of ``text`` in grapheme clusters (UAX #29; code points where Intl.Segmenter is missing). */
export function graphemeCount(text) {
  if (!segmenter) return [...text].length;
  let n = 0;
  for (const _ of segmenter.segment(text)) n += 1;
  return n;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("data-") || k === "role" || k.startsWith("aria-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function pad(n) {
  return String(n).padStart(2, "0");
}

export function formatTime(ts) {
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return "--:--:--";
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function minutesText(seconds) {
  const s = Math.max(1, Math.ceil(Number(seconds) || 0));
  if (s < 90) return `${s} s`;
  if (s < 5400) return `${Math.ceil(s / 60)} min`;
  return `${Math.ceil(s / 3600)} h`;
}

/**
 * One line for a refusal ``code`` (the contract's error codes), or null for "show detail".
 * ``retryAfterS``: seconds until it may work (slow_mode, timed_out, rate_limited).
 */
export function refusalText(code, retryAfterS) {
  switch (code) {
    case "slow_mode":
      return retryAfterS != null ? `Slow mode: you can send again in ${minutesText(retryAfterS)}.` : "Slow mode is on.";
    case "rate_limited":
      return "You're sending messages too fast.";
    case "timed_out":
      return retryAfterS != null ? `You are timed out for another ${minutesText(retryAfterS)}.` : "You are timed out.";
    case "banned":
      return "You are banned from this chat.";
    case "guests_off":
      return "Log in to chat.";
    case "followers_only":
      return "Only followers can chat here.";
    case "links_off":
      return "Links are not allowed in this chat.";
    case "blocked_term":
      return "That message contains a blocked term.";
    case "held":
      return "Your message is held for review.";
    case "too_long":
      return `Messages are limited to ${MAX_CHAT_LENGTH} characters.`;
    case "unavailable":
      return "Chat is unavailable right now; try again shortly.";
    case "bad_message":
      return "The server rejected that message.";
    default:
      return null;
  }
}

/**
 * The chat panel in ``container``: renders the conversation and sends through whichever
 * transport is current. Other modules extend it through ``actionsFor`` (per-message
 * actions: moderation, reports) and read ``me`` (who this page chats as).
 */
export class ChatPanel {
  constructor(container) {
    this.container = container;
    this.items = new Map(); // seq -> <li>
    this.byId = new Map(); // message id -> seq
    this.deleted = new Set(); // ids deleted while this page was open
    this.floorSeq = 0; // messages up to this seq are gone (cleared, or dropped past MAX_RENDERED)
    this.atBottom = true; // the log is scrolled to its end: keep it there as messages come
    this.scrollQueued = false;
    this.selfIds = new Set(); // participant ids this page chats as (one per transport)
    this.me = { name: "", user: null, username: "" }; // username: lower-case, for mentions
    this.transport = null; // {kind, send(text) -> Promise<ack|null>}
    this.fallback = null; // the Socket.IO transport, used whenever no data channel is open
    this.actionsFor = null; // (message) -> [{label, testid, run}] | [] (set by chat-moderation.js)
    this.lastSent = "";
    this.noticeTimer = 0;
    this.countdown = 0;
    this.blocked = ""; // why sending is off for good (banned, guests_off), else ""
    this.build();
  }

  build() {
    const c = this.container;
    this.heading = el("h2", {}, "Chat");
    this.tools = el("div", { className: "chat-tools" });
    this.meLine = el("div", { className: "chat-me", "data-testid": "chat-me" });
    this.log = el("ol", { className: "chat-log", "data-testid": "chat-log", role: "log",
      "aria-label": "Chat messages" });
    this.notice = el("div", { className: "chat-error", "data-testid": "chat-error", role: "status", hidden: true });
    this.input = el("input", {
      type: "text", maxLength: RAW_INPUT_LIMIT, placeholder: "Chat is offline", autocomplete: "off",
      disabled: true, "data-testid": "chat-input", "aria-label": "Chat message", "aria-describedby": "chat-counter",
    });
    this.counter = el("span", { className: "chat-counter", id: "chat-counter", "data-testid": "chat-counter",
      "aria-label": "characters left" }, String(MAX_CHAT_LENGTH));
    this.sendButton = el("button", { type: "submit", disabled: true, "data-testid": "chat-send" }, "Send");
    this.form = el("form", { className: "chat-form" }, this.input, this.counter, this.sendButton);
    this.menu = el("li", { className: "chat-actions", "data-testid": "chat-actions", role: "group",
      "aria-label": "Message actions", hidden: true });
    c.classList.add("chat");
    c.replaceChildren(el("div", { className: "chat-head" }, this.heading, this.tools), this.meLine, this.log,
      this.notice, this.form);
    this.form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.submit();
    });
    this.input.addEventListener("input", () => this.renderCounter());
    // Read the scroll position when it changes, never while adding messages (no forced layout).
    this.log.addEventListener("scroll", () => {
      this.atBottom = this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 40;
    }, { passive: true });
    this.log.addEventListener("click", (ev) => {
      const button = ev.target.closest("button.chat-more");
      if (button) this.toggleMenu(button.closest("li"));
    });
    this.log.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape" && !this.menu.hidden) this.closeMenu(true);
    });
  }

  // ---------------------------------------------------------------- who I am

  /** ``participant``: {id, name, role, user?} of a join ack or a welcome. */
  setParticipant(participant, badges = []) {
    if (!participant) return;
    if (participant.id) this.selfIds.add(participant.id);
    if (participant.user) this.me.user = participant.user;
    this.me.name = participant.name || this.me.name;
    if (badges.length) this.myBadges = badges; // the data channel's welcome carries none
    this.meLine.replaceChildren(`You are ${this.me.name} `,
      ...(this.myBadges ?? []).map((b) => el("span", { className: `badge badge-${b}` }, b)));
    this.meLine.dataset.name = this.me.name;
  }

  /** The logged-in user ({id, username}) or null: mentions of the username are highlighted. */
  setUser(user) {
    this.me.user = user?.id ?? null;
    this.me.username = (user?.username ?? "").toLowerCase();
    if (user && !this.me.name) {
      this.me.name = user.username;
      this.meLine.textContent = `You are ${user.username}`;
    }
    for (const item of this.items.values()) this.mark(item); // history shown before we knew
  }

  /** The classes of a message that depend on who this page is: from-me, mention. */
  mark(item) {
    const msg = item.message;
    const from = msg.from || {};
    item.classList.toggle("from-me", Boolean((from.user && from.user === this.me.user) || this.selfIds.has(from.id)));
    const mentioned = Boolean(this.me.username) && Array.isArray(msg.mentions) && msg.mentions.includes(this.me.username);
    item.classList.toggle("mention", mentioned);
    if (mentioned) item.dataset.mention = "true";
    else delete item.dataset.mention;
  }

  // ---------------------------------------------------------------- transports

  setTransport(transport) {
    this.transport = transport;
    this.renderEnabled();
  }

  /** ``transport`` stops (its channel closed): fall back to Socket.IO when there is one. */
  dropTransport(transport) {
    if (this.transport !== transport) return;
    this.transport = this.fallback && this.fallback !== transport ? this.fallback : null;
    this.fallback?.resume?.();
    this.renderEnabled();
  }

  /** A data channel opened: chat over it, and let the Socket.IO transport leave the room. */
  useDataChannel(transport) {
    this.fallback?.suspend?.();
    this.setTransport(transport);
  }

  get online() {
    return Boolean(this.transport?.ready?.() ?? this.transport);
  }

  /** Sending off for good (``reason`` shown as the placeholder and notice), or on again (""). */
  block(reason, { link = null } = {}) {
    this.blocked = reason;
    this.blockedLink = link;
    if (reason) this.showNotice(reason, { sticky: true, link });
    else this.hideNotice();
    this.renderEnabled();
  }

  renderEnabled() {
    const on = this.online && !this.blocked;
    this.input.disabled = !on;
    this.sendButton.disabled = !on || this.countdown > 0;
    this.input.placeholder = this.blocked || (on ? "Say something…" : "Chat is offline");
  }

  renderCounter() {
    const left = MAX_CHAT_LENGTH - graphemeCount(this.input.value.trim());
    this.counter.textContent = String(left);
    this.counter.classList.toggle("over", left < 0);
    this.counter.classList.toggle("low", left >= 0 && left < 50);
  }

  async submit() {
    const text = this.input.value.trim();
    if (!text || !this.transport || this.blocked || this.countdown > 0) return;
    if (graphemeCount(text) > MAX_CHAT_LENGTH) {
      this.showNotice(refusalText("too_long"));
      return;
    }
    this.lastSent = text;
    this.input.value = "";
    this.renderCounter();
    let ack;
    try {
      ack = await this.transport.send(text);
    } catch {
      this.restore(text);
      this.showNotice("Chat is not connected.");
      return;
    }
    if (ack?.error) {
      this.restore(text);
      this.refused(ack.error, ack.detail, ack.retry_after);
    } else if (ack?.message) {
      this.handle({ type: "chat", ...ack.message });
    } else if (ack?.held) {
      this.refused("held");
    }
  }

  restore(text) {
    if (!this.input.value) {
      this.input.value = text;
      this.renderCounter();
    }
  }

  /** A refused message (either transport): a one-line notice; codes that last disable sending. */
  refused(code, detail = "", retryAfterS = null) {
    const text = refusalText(code, retryAfterS) || detail || code || "error";
    if (code === "held") {
      this.showNotice(text, { kind: "info" });
      return;
    }
    if (code === "guests_off") {
      this.block(text, { link: loginLink() });
      return;
    }
    if (code === "banned") {
      this.block(text);
      return;
    }
    if ((code === "slow_mode" || code === "timed_out") && Number(retryAfterS) > 0) {
      this.startCountdown(code, Number(retryAfterS));
      return;
    }
    this.showNotice(text);
  }

  /** Keep the notice counting down (slow mode, time-outs); Send stays off until zero. */
  startCountdown(code, seconds) {
    clearInterval(this.countdownTimer);
    const until = Date.now() + seconds * 1000;
    let first = true; // the refusal just came: it is the notice to show
    const tick = () => {
      const left = (until - Date.now()) / 1000;
      this.countdown = Math.max(0, left);
      // Later ticks do not write over a newer notice (it hides after NOTICE_MS).
      const mine = first || this.notice.hidden || this.notice.dataset.code === code;
      if (left <= 0) {
        clearInterval(this.countdownTimer);
        if (mine) this.hideNotice();
      } else if (mine) {
        // Announced once by screen readers, not at every tick.
        this.showNotice(refusalText(code, left), { sticky: true, code, quiet: !first });
      }
      first = false;
      this.renderEnabled();
    };
    tick();
    this.countdownTimer = setInterval(tick, 1000);
  }

  /** One line in the notice; with ``link`` (an <a>) the line is that link, saying ``text``. */
  showNotice(text, { sticky = false, kind = "error", link = null, code = "", quiet = false } = {}) {
    this.notice.setAttribute("aria-live", quiet ? "off" : "polite");
    if (link) link.textContent = text;
    this.notice.replaceChildren(link ?? text);
    this.notice.dataset.kind = kind;
    this.notice.dataset.code = code;
    this.notice.hidden = false;
    clearTimeout(this.noticeTimer);
    if (!sticky) this.noticeTimer = setTimeout(() => this.hideNotice(), NOTICE_MS);
  }

  hideNotice() {
    if (this.blocked) this.showNotice(this.blocked, { sticky: true, link: this.blockedLink });
    else this.notice.hidden = true;
  }

  // ---------------------------------------------------------------- events in

  /** Any server object of either transport: chat | history | delete | clear | error. */
  handle(event) {
    switch (event?.type) {
      case "chat":
        this.render(event);
        break;
      case "history":
        for (const m of event.messages ?? []) this.render(m);
        break;
      case "delete":
        this.remove(event.ids ?? []);
        break;
      case "clear":
        this.clear();
        break;
      case "error":
        this.restore(this.lastSent);
        this.refused(event.code, event.detail, event.retry_after);
        break;
      default:
        break; // unknown types are ignored (forward compatibility)
    }
  }

  render(msg) {
    const seq = Number(msg.seq);
    if (!Number.isFinite(seq) || this.items.has(seq) || seq <= this.floorSeq) return;
    if (msg.id && this.deleted.has(msg.id)) return;
    const from = msg.from || {};
    const item = el("li", { className: "chat-msg", "data-seq": String(seq), "data-id": msg.id ?? "",
      "data-testid": "chat-message" });
    const badges = Array.isArray(from.badges) ? [...from.badges] : [];
    if (from.role === "publisher" && !badges.includes("broadcaster")) badges.unshift("broadcaster");
    if (badges.includes("broadcaster")) item.classList.add("from-publisher");
    // User-controlled strings only ever go through text nodes.
    item.append(el("time", { className: "chat-time" }, formatTime(msg.ts)), " ");
    for (const b of badges) item.append(el("span", { className: `badge badge-${b}` }, String(b)), " ");
    item.append(el("b", { className: "chat-from" }, String(from.name ?? "anonymous")), ": ",
      el("span", { className: "chat-text" }, String(msg.text ?? "")));
    if (this.actionsFor) {
      item.append(el("button", { type: "button", className: "chat-more", "data-testid": "chat-more",
        "aria-label": `Actions for the message from ${from.name ?? "anonymous"}`, "aria-expanded": "false" }, "⋯"));
    }
    item.message = msg;
    this.mark(item);

    let after = this.log.lastElementChild;
    // The actions row (no data-seq) stays under its message: NaN < seq is false.
    while (after && !(Number(after.dataset.seq) < seq)) after = after.previousElementSibling;
    let before = after ? after.nextElementSibling : this.log.firstElementChild;
    if (before && before === this.menu) before = before.nextElementSibling;
    this.log.insertBefore(item, before);
    this.items.set(seq, item);
    if (msg.id) this.byId.set(msg.id, seq);
    while (this.items.size > MAX_RENDERED) {
      const first = this.log.querySelector("li.chat-msg");
      this.floorSeq = Math.max(this.floorSeq, Number(first.dataset.seq));
      this.forget(first);
    }
    if (this.atBottom && !this.scrollQueued) {
      this.scrollQueued = true; // once per frame, however many messages arrived
      requestAnimationFrame(() => {
        this.scrollQueued = false;
        this.log.scrollTop = this.log.scrollHeight;
      });
    }
  }

  forget(item) {
    if (!item) return;
    if (this.menu.owner === item) this.closeMenu();
    this.items.delete(Number(item.dataset.seq));
    this.byId.delete(item.dataset.id);
    item.remove();
  }

  remove(ids) {
    for (const id of ids) {
      this.deleted.add(id);
      const seq = this.byId.get(id);
      if (seq !== undefined) this.forget(this.items.get(seq));
    }
  }

  clear() {
    for (const seq of this.items.keys()) this.floorSeq = Math.max(this.floorSeq, seq);
    for (const item of [...this.items.values()]) this.forget(item);
    this.log.replaceChildren();
    this.showNotice("A moderator cleared the chat.", { kind: "info" });
  }

  /** The message ids in the order shown (for the tests and devtools). */
  get order() {
    return [...this.log.querySelectorAll("li.chat-msg")].map((li) => Number(li.dataset.seq));
  }

  // ---------------------------------------------------------------- per-message actions

  toggleMenu(item) {
    if (!item || !this.actionsFor) return;
    if (this.menu.owner === item && !this.menu.hidden) {
      this.closeMenu(true);
      return;
    }
    this.closeMenu();
    const actions = this.actionsFor(item.message);
    if (!actions.length) return;
    this.menu.replaceChildren(...actions.map((a) => {
      const button = el("button", { type: "button", "data-testid": a.testid }, a.label);
      button.addEventListener("click", async () => {
        this.closeMenu();
        try {
          const note = await a.run(item.message);
          if (note) this.showNotice(note, { kind: "info" });
        } catch (err) {
          this.showNotice(err?.message || String(err));
        }
      });
      return button;
    }));
    this.menu.owner = item;
    item.querySelector("button.chat-more")?.setAttribute("aria-expanded", "true");
    item.after(this.menu);
    this.menu.hidden = false;
    this.menu.querySelector("button")?.focus();
  }

  closeMenu(focusBack = false) {
    const owner = this.menu.owner;
    this.menu.hidden = true;
    this.menu.owner = null;
    this.menu.remove();
    const more = owner?.querySelector("button.chat-more");
    more?.setAttribute("aria-expanded", "false");
    if (focusBack) more?.focus();
  }
}

function loginLink() {
  const next = location.pathname + location.search;
  return el("a", { href: `/login?next=${encodeURIComponent(next)}`, "data-testid": "chat-login" });
}
