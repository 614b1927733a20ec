// A minimal Socket.IO client (protocol v5 over Engine.IO v4, WebSocket transport only)
// for the pages' connection to this origin's /socket.io/, namespace "/".
//
// Engine.IO packets are text frames: "0{json}" open (pingInterval, pingTimeout),
// "2" ping → answer "3" pong, "1" close, "4<socket.io packet>" message. Socket.IO
// packets: "0" CONNECT (we send "40", the server answers "40{sid}"), "2[event, ...args]"
// EVENT (optionally with an ack id before the array), "4{message}" CONNECT_ERROR.
// https://socket.io/docs/v4/engine-io-protocol/ and /socket-io-protocol/
//
// The handshake carries the page's cookies (same origin), so a logged-in page is
// put in its user's room by the server and receives e.g. "notification" events.
// The connection is re-opened with backoff (1 s doubling to 30 s) until close().

const MAX_BACKOFF_MS = 30000;

/**
 * Connect and call ``handlers[event](...args)`` for every event the server emits.
 * ``handlers.connect()`` runs after each (re)connection. Returns ``{close()}``.
 */
export function connectLiveEvents(handlers) {
  let ws = null;
  let closed = false;
  let attempt = 0;
  let retryTimer = 0;
  let pingTimer = 0;

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
      handlers.connect?.();
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
      handlers.disconnect?.();
      schedule();
    });
  }

  open();
  return {
    close() {
      closed = true;
      clearTimeout(retryTimer);
      clearTimeout(pingTimer);
      ws?.close();
    },
  };
}
