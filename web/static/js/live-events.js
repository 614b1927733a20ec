// A minimal Socket.IO client (protocol v5 over Engine.IO v4, WebSocket transport only)
// for the pages' connection to this origin's /socket.io/, namespace "/".
//
// Engine.IO packets are text frames: "0{json}" open (pingInterval, pingTimeout),
// "2" ping → answer "3" pong, "1" close, "4<socket.io packet>" message. Socket.IO
// packets: "0" CONNECT (we send "40", the server answers "40{sid}"), "2[event, ...args]"
// EVENT (optionally with an ack id before the array), "3<id>[...args]" ACK (the answer to
// an EVENT we sent with that id), "4{message}" CONNECT_ERROR.
// https://socket.io/docs/v4/engine-io-protocol/ and /socket-io-protocol/
//
// The handshake carries the page's cookies (same origin), so a logged-in page is
// put in its user's room by the server and receives e.g. "notification" events.
// The connection is re-opened with backoff (1 s doubling to 30 s) until close().

const MAX_BACKOFF_MS = 30000;
const ACK_TIMEOUT_MS = 10000;

/** An ``emit`` that got no answer: not connected, disconnected meanwhile, or timed out. */
export class NotConnected extends Error {
  constructor(message = "not connected") {
    super(message);
    this.name = "NotConnected";
  }
}

/**
 * Connect and call ``handlers[event](...args)`` for every event the server emits.
 * ``handlers.connect()`` runs after each (re)connection, ``handlers.disconnect()`` after
 * each loss. Returns ``{close(), emit(event, data) -> Promise<ack>, connected}``:
 * ``emit`` resolves with the server's ack (its first argument) and rejects with
 * NotConnected when there is no connection, it drops before the answer, or no answer
 * comes within 10 s.
 */
export function connectLiveEvents(handlers) {
  let ws = null;
  let closed = false;
  let attempt = 0;
  let retryTimer = 0;
  let pingTimer = 0;
  let ready = false; // the Socket.IO CONNECT was answered
  let nextAckId = 0;
  const pending = new Map(); // ack id -> {resolve, reject, timer}

  function failPending() {
    for (const { reject, timer } of pending.values()) {
      clearTimeout(timer);
      reject(new NotConnected("the connection dropped"));
    }
    pending.clear();
  }

  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const url = `${scheme}//${location.host}/socket.io/?EIO=4&transport=websocket`;

  function schedule() {
    if (closed) return;
    const delay = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** attempt++);
    retryTimer = setTimeout(open, delay);
  }

  function watchdog(ms) {
    clearTimeout(pingTimer);
    // No ping within pingInterval + pingTimeout: the server is gone.
    pingTimer = setTimeout(() => ws?.close(), ms);
  }

  function onPacket(text, deadlineMs) {
    const type = text[0];
    if (type === "0") {
      const open = JSON.parse(text.slice(1));
      deadlineMs.value = (open.pingInterval || 25000) + (open.pingTimeout || 20000);
      watchdog(deadlineMs.value);
      ws.send("40");
    } else if (type === "2") {
      watchdog(deadlineMs.value);
      ws.send("3");
    } else if (type === "1") {
      ws.close();
    } else if (type === "4") {
      onSocketIo(text.slice(1));
    }
  }

  function onSocketIo(packet) {
    const type = packet[0];
    if (type === "0") {
      attempt = 0;
      ready = true;
      handlers.connect?.();
    } else if (type === "3") {
      const start = packet.indexOf("[");
      const id = Number(packet.slice(1, start));
      const waiter = pending.get(id);
      if (start < 0 || !waiter) return;
      pending.delete(id);
      clearTimeout(waiter.timer);
      let args = [];
      try {
        args = JSON.parse(packet.slice(start));
      } catch {
        /* a malformed ack resolves with undefined */
      }
      waiter.resolve(Array.isArray(args) ? args[0] : undefined);
    } else if (type === "2") {
      const start = packet.indexOf("[");
      if (start < 0) return;
      let data;
      try {
        data = JSON.parse(packet.slice(start));
      } catch {
        return;
      }
      const [event, ...args] = Array.isArray(data) ? data : [];
      if (typeof event === "string" && event !== "connect" && typeof handlers[event] === "function") {
        handlers[event](...args);
      }
    } else if (type === "4") {
      ws.close(); // refused (e.g. too many connections from this address): retry later
    }
  }

  function open() {
    if (closed) return;
    const deadlineMs = { value: 45000 };
    try {
      ws = new WebSocket(url);
    } catch {
      schedule();
      return;
    }
    ws.addEventListener("message", (ev) => {
      if (typeof ev.data === "string" && ev.data) onPacket(ev.data, deadlineMs);
    });
    ws.addEventListener("close", () => {
      clearTimeout(pingTimer);
      ws = null;
      ready = false;
      failPending();
      handlers.disconnect?.();
      schedule();
    });
  }

  function emit(event, data) {
    if (!ready || !ws) return Promise.reject(new NotConnected());
    const id = nextAckId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new NotConnected("no answer"));
      }, ACK_TIMEOUT_MS);
      pending.set(id, { resolve, reject, timer });
      ws.send(`42${id}${JSON.stringify([event, data])}`);
    });
  }

  open();
  return {
    emit,
    get connected() {
      return ready;
    },
    close() {
      closed = true;
      clearTimeout(retryTimer);
      clearTimeout(pingTimer);
      failPending();
      ws?.close();
    },
  };
}
