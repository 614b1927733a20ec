// The chat panel of the watch, studio and broadcast pages: one conversation per room,
// whichever way the page reaches it.
//
// Two transports feed the same panel (docs/chat.md):
// * the reliable, ordered RTCDataChannel "chat" of a WHIP/WHEP session (attachChat):
//     client -> server {"type":"chat","text"}; server -> client welcome | history | chat |
//     delete | clear | presence | error;
// * the pages' Socket.IO connection (connectSocketChat), for LL-HLS viewers and before or
//   without WebRTC: "join" {"room"} -> ack {..., "chat": {participant, history, moderator,
//   badges}}; "chat" {"text"} -> ack {"message"} | {"error", "detail", "retry_after"?};
//   server -> client "chat" events (message | delete | clear) and "room" (live, viewers).
// While a data channel is open the page chats over it and leaves the Socket.IO room (no
// double delivery); when it closes the Socket.IO room is joined again and its history
// fills any gap. Every message goes through ChatPanel.handle: deduplicated and ordered by
// seq, removed by "delete", all gone on "clear". The client never renders its own message
// optimistically: the server echoes every accepted message, the sender included.

import { ChatPanel } from "./chat-panel.js";
import { connectLiveEvents } from "./live-events.js";

export { ChatPanel, MAX_CHAT_LENGTH, formatTime, graphemeCount, refusalText } from "./chat-panel.js";

const JOIN_RETRY_MS = 5000;

// One panel per container, reused across reconnects so the log survives a new transport.
const panels = new WeakMap();

/** The panel in ``container`` (built on first use; disabled until a transport is attached). */
export function mountChat(container) {
  let panel = panels.get(container);
  if (!panel) {
    panel = new ChatPanel(container);
    panels.set(container, panel);
  }
  return panel;
}

/**
 * Chat over a WHIP/WHEP session's data channel "chat" in ``container``'s panel.
 * ``onPresence({viewers, live})`` is called for "welcome" and "presence", ``onWelcome(msg)``
 * for "welcome". Returns ``{send(text), detach()}``.
 */
export function attachChat(dataChannel, container, { onPresence, onWelcome } = {}) {
  const panel = mountChat(container);
  const transport = {
    kind: "datachannel",
    ready: () => dataChannel.readyState === "open",
    async send(text) {
      if (dataChannel.readyState !== "open") throw new Error("closed");
      dataChannel.send(JSON.stringify({ type: "chat", text }));
      return null; // accepted messages come back as "chat", refusals as "error"
    },
  };
  const onMessage = (ev) => {
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      return; // ignore non-JSON frames
    }
    if (msg?.type === "welcome") {
      panel.setParticipant(msg.participant, msg.participant?.badges ?? []);
      onWelcome?.(msg);
      onPresence?.({ viewers: msg.viewers, live: msg.live });
    } else if (msg?.type === "presence") {
      onPresence?.({ viewers: msg.viewers, live: msg.live });
    } else {
      panel.handle(msg);
    }
  };
  const onOpen = () => panel.useDataChannel(transport);
  const onClose = () => panel.dropTransport(transport);
  dataChannel.addEventListener("message", onMessage);
  dataChannel.addEventListener("open", onOpen);
  dataChannel.addEventListener("close", onClose);
  if (dataChannel.readyState === "open") onOpen();
  return {
    send: (text) => {
      panel.input.value = text;
      return panel.submit();
    },
    detach() {
      dataChannel.removeEventListener("message", onMessage);
      dataChannel.removeEventListener("open", onOpen);
      dataChannel.removeEventListener("close", onClose);
      panel.dropTransport(transport);
    },
  };
}

/**
 * Chat in ``room`` over the pages' Socket.IO connection (its own connection: the cookies
 * of its handshake make a logged-in page chat under its username). Joined while no data
 * channel carries the chat (see the module comment). ``onRoom({live, viewers})`` gets the
 * room's state (join ack and "room" events); ``onJoin(chat)`` the join ack's ``chat``
 * member. Returns ``{close()}``.
 */
export function connectSocketChat(container, room, { onRoom, onJoin, token = null } = {}) {
  const panel = mountChat(container);
  let suspended = false;
  let joined = false;
  let retry = 0;
  let socket = null;

  const transport = {
    kind: "socketio",
    ready: () => joined,
    send: (text) => socket.emit("chat", { text }),
    suspend() {
      suspended = true;
      clearTimeout(retry);
      if (joined) socket.emit("leave", {}).catch(() => {});
      joined = false;
    },
    resume() {
      if (!suspended) return;
      suspended = false;
      join();
    },
  };

  async function join() {
    clearTimeout(retry);
    if (suspended || !socket?.connected) return;
    let ack;
    try {
      // A private room's pages need its playback token, as its WHEP and LL-HLS do.
      ack = await socket.emit("join", token ? { room, token } : { room });
    } catch {
      return; // reconnects call join again
    }
    if (suspended) return;
    if (!ack || ack.error) {
      joined = false;
      panel.renderEnabled();
      if (ack?.status === 401) return; // no (valid) playback token: retrying cannot help
      retry = setTimeout(join, Math.max(JOIN_RETRY_MS, (Number(ack?.retry_after) || 0) * 1000));
      return;
    }
    joined = true;
    onRoom?.(ack);
    const chat = ack.chat;
    if (chat) {
      panel.setParticipant(chat.participant, chat.badges ?? []);
      panel.handle({ type: "history", messages: chat.history ?? [] });
      onJoin?.(chat);
    }
    if (panel.transport === null || panel.transport === transport) panel.setTransport(transport);
    else panel.renderEnabled();
  }

  panel.fallback = transport;
  socket = connectLiveEvents({
    connect: join,
    disconnect() {
      joined = false;
      panel.renderEnabled();
    },
    chat(event) {
      if (!suspended) panel.handle(event);
    },
    room(state) {
      if (!suspended) onRoom?.(state);
    },
  });
  return {
    transport,
    close() {
      clearTimeout(retry);
      socket.close();
      if (panel.fallback === transport) panel.fallback = null;
      panel.dropTransport(transport);
    },
  };
}
