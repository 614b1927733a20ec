// Chat panel shared by the broadcast and watch pages.
//
// Runs over the reliable, ordered RTCDataChannel labelled "chat" that the page
// creates before its WHIP/WHEP offer. Messages are JSON text:
//   client -> server: {"type":"chat","text":"..."}
//   server -> client: welcome | history | chat | presence | error
// The client never renders its own message optimistically: the server echoes
// every accepted chat (with its seq) to all participants, the sender included.

export const MAX_CHAT_LENGTH = 500;
const MAX_RENDERED = 500; // messages kept in the DOM
const ERROR_SHOW_MS = 4000;

const ERROR_TEXT = {
  rate_limited: "You're sending messages too fast.",
  too_long: `Messages are limited to ${MAX_CHAT_LENGTH} characters.`,
  bad_message: "The server rejected that message.",
};

// One panel per container, reused across reconnects so the log (deduped by
// seq) survives a new data channel being attached.
const panels = new WeakMap();

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k.startsWith("data-") || k === "role" || k.startsWith("aria-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  node.append(...children);
  return node;
}

function buildPanel(container) {
  const me = el("div", { className: "chat-me", "data-testid": "chat-me" });
  const log = el("ol", { className: "chat-log", "data-testid": "chat-log", "aria-live": "polite" });
  const error = el("div", { className: "chat-error", "data-testid": "chat-error", role: "alert", hidden: true });
  const input = el("input", {
    type: "text",
    maxLength: MAX_CHAT_LENGTH,
    placeholder: "Chat is offline",
    autocomplete: "off",
    disabled: true,
    "data-testid": "chat-input",
    "aria-label": "Chat message",
  });
  const send = el("button", { type: "submit", disabled: true, "data-testid": "chat-send" }, "Send");
  const form = el("form", { className: "chat-form" }, input, send);
  container.classList.add("chat");
  container.replaceChildren(el("h2", {}, "Chat"), me, log, error, form);
  const panel = { me, log, error, input, send, form, seen: new Set(), selfId: null, errorTimer: 0, current: null };
  // Enter in the input submits the form, so this covers both Enter and the button.
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    panel.current?.send(input.value);
  });
  return panel;
}

function pad(n) {
  return String(n).padStart(2, "0");
}

export function formatTime(ts) {
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return "--:--:--";
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function showError(panel, text) {
  panel.error.textContent = text;
  panel.error.hidden = false;
  clearTimeout(panel.errorTimer);
  panel.errorTimer = setTimeout(() => {
    panel.error.hidden = true;
  }, ERROR_SHOW_MS);
}

function renderMessage(panel, msg) {
  const seq = Number(msg.seq);
  if (!Number.isFinite(seq) || panel.seen.has(seq)) return; // dedupe by seq
  panel.seen.add(seq);
  const from = msg.from || {};
  const item = el("li", { className: "chat-msg", "data-seq": String(seq) });
  if (from.role === "publisher") item.classList.add("from-publisher");
  if (panel.selfId && from.id === panel.selfId) item.classList.add("from-me");
  // User-controlled strings only ever go through textContent (via append()).
  const name = el("b", { className: "chat-from" }, String(from.name ?? "anonymous"));
  item.append(el("time", { className: "chat-time" }, formatTime(msg.ts)), " ", name);
  if (from.role === "publisher") item.append(" ", el("span", { className: "badge" }, "broadcaster"));
  item.append(": ", el("span", { className: "chat-text" }, String(msg.text ?? "")));

  // Keep the list sorted by seq; new messages almost always go at the end.
  const log = panel.log;
  const stick = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  let after = log.lastElementChild;
  while (after && Number(after.dataset.seq) > seq) after = after.previousElementSibling;
  log.insertBefore(item, after ? after.nextElementSibling : log.firstElementChild);
  while (log.childElementCount > MAX_RENDERED) {
    panel.seen.delete(Number(log.firstElementChild.dataset.seq));
    log.firstElementChild.remove();
  }
  if (stick) log.scrollTop = log.scrollHeight;
}

/** Render the (disabled) chat panel into container now; attachChat reuses it. */
export function mountChat(containerElement) {
  let panel = panels.get(containerElement);
  if (!panel) {
    panel = buildPanel(containerElement);
    panels.set(containerElement, panel);
  }
  return panel;
}

/**
 * Attach the chat UI in containerElement to dataChannel.
 * options.onPresence({viewers, live}) is called for "welcome" and "presence";
 * options.onWelcome(welcomeMessage) for "welcome".
 * Returns {send(text) -> boolean, detach()}.
 */
export function attachChat(dataChannel, containerElement, { onPresence, onWelcome } = {}) {
  const panel = mountChat(containerElement);
  panel.current?.detach();

  const setEnabled = (on, placeholder = on ? "Say something…" : "Connecting to chat…") => {
    panel.input.disabled = !on;
    panel.send.disabled = !on;
    panel.input.placeholder = placeholder;
  };

  const onMessage = (ev) => {
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      return; // ignore non-JSON frames
    }
    switch (msg?.type) {
      case "welcome":
        panel.selfId = msg.participant?.id ?? null;
        panel.me.textContent = msg.participant?.name ? `You are ${msg.participant.name}` : "";
        onWelcome?.(msg);
        onPresence?.({ viewers: msg.viewers, live: msg.live });
        break;
      case "history":
        for (const m of msg.messages ?? []) renderMessage(panel, m);
        break;
      case "chat":
        renderMessage(panel, msg);
        break;
      case "presence":
        onPresence?.({ viewers: msg.viewers, live: msg.live });
        break;
      case "error":
        showError(panel, msg.detail || ERROR_TEXT[msg.code] || msg.code || "error");
        break;
      default:
        break; // unknown types are ignored (forward compatibility)
    }
  };
  const onOpen = () => setEnabled(true);
  const onClose = () => setEnabled(false, "Chat is offline");

  dataChannel.addEventListener("message", onMessage);
  dataChannel.addEventListener("open", onOpen);
  dataChannel.addEventListener("close", onClose);
  setEnabled(dataChannel.readyState === "open");

  const handle = {
    send(text) {
      const t = String(text ?? "").trim();
      if (!t) return false;
      if ([...t].length > MAX_CHAT_LENGTH) {
        showError(panel, ERROR_TEXT.too_long);
        return false;
      }
      if (dataChannel.readyState !== "open") {
        showError(panel, "Chat is not connected.");
        return false;
      }
      dataChannel.send(JSON.stringify({ type: "chat", text: t }));
      panel.input.value = "";
      return true;
    },
    detach() {
      dataChannel.removeEventListener("message", onMessage);
      dataChannel.removeEventListener("open", onOpen);
      dataChannel.removeEventListener("close", onClose);
      setEnabled(false, "Chat is offline");
      if (panel.current === handle) panel.current = null;
    },
  };
  panel.current = handle;
  return handle;
}
