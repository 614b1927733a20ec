"""The client side of the chat fan-out benchmark (:mod:`loadtest.chat_fanout`): processes
holding many chat participants of room ``demo`` — aiortc WHEP viewers on their ``chat``
data channel and python-socketio pages — that join, send on a schedule, record every chat
event (seq, id, receive time, text) and reduce what they saw for the coordinator; and the
flooding client.  A process is driven over a pipe, one command, one answer (:class:`Proc`).
"""

from __future__ import annotations

import array
import asyncio
import hashlib
import json
import multiprocessing
import multiprocessing.connection
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DC", "PATHS", "ROOM", "SIO", "Proc", "Spec", "ask_all", "flood_main", "order_digest", "pool_main"]

ROOM = "demo"
DC, SIO = "datachannel", "socketio"
PATHS = (DC, SIO)


def order_digest(pairs: list[tuple[int, str]]) -> str:
    """SHA-1 of the ``seq:id`` list, in the given order (the order check compares these)."""
    h = hashlib.sha1(usedforsecurity=False)
    for seq, mid in pairs:
        h.update(f"{seq}:{mid};".encode())
    return h.hexdigest()


@dataclass
class Spec:
    """One participant: global index, path, signaling instance label and base URL."""

    gid: int
    path: str
    label: str
    url: str


@dataclass
class _Participant:
    spec: Spec
    received: list[tuple[int, str, float, str]] = field(default_factory=list)
    """(seq, id, receive time.time(), text) per ``chat`` message, in arrival order."""
    errors: dict[str, int] = field(default_factory=dict)
    """Refusals of its own messages by code (data-channel ``error``, Socket.IO ack)."""
    sio: Any = None
    session: Any = None
    channel: Any = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None
    closed: bool = False
    bench: dict[str, int] = field(default_factory=dict)
    """Benchmark messages received per phase."""

    def on_chat(self, event: Any) -> None:
        if isinstance(event, dict) and event.get("type") == "chat":
            text = str(event.get("text", ""))
            self.received.append((int(event.get("seq", -1)), str(event.get("id")), time.time(), text))
            if text.startswith("b|"):
                phase = text.split("|", 2)[1]
                self.bench[phase] = self.bench.get(phase, 0) + 1

    def refused(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


def _ignore(_: bytes, __: int = 0) -> None:
    pass


class _Pool:
    """The participants of one client process."""

    def __init__(self) -> None:
        import aiohttp

        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.members: dict[int, _Participant] = {}
        self.last_arrival = time.monotonic()
        self.lateness: list[float] = []
        self.pending: set[asyncio.Task[Any]] = set()
        self.dc_senders: set[str] = set()
        """The senders on data channels (gids as text), to tell a message's sending path."""

    async def join_dc(self, spec: Spec) -> None:
        from . import aiortc_hooks, whip_client

        p = self.members[spec.gid] = _Participant(spec)
        try:
            session = await whip_client.view(f"{spec.url}/whep/{ROOM}", kinds=("video",), chat=True,
                                             http=self.http)
            p.session, p.channel = session, session.channel

            def on_message(raw: str | bytes) -> None:
                try:
                    message = json.loads(raw)
                except ValueError:
                    return
                kind = message.get("type") if isinstance(message, dict) else None
                if kind == "chat":
                    p.on_chat(message)
                    self.last_arrival = time.monotonic()
                elif kind == "history":
                    p.ready.set()
                elif kind == "error":
                    p.refused(str(message.get("code")))

            def on_close() -> None:
                p.closed = True

            session.channel.on("message", on_message)
            session.channel.on("close", on_close)
            await asyncio.wait_for(p.ready.wait(), 30)
            # The video only lets the viewer in: drop its RTP in the socket callback rather
            # than have aiortc decode every frame of hundreds of viewers.
            for transceiver in session.pc.getTransceivers():
                if transceiver.kind == "video":
                    aiortc_hooks.install_raw_rtp_receiver(transceiver.receiver.transport, _ignore)
        except Exception as exc:
            p.error = f"{type(exc).__name__}: {exc}"[:200]

    async def join_sio(self, spec: Spec) -> None:
        import socketio

        p = self.members[spec.gid] = _Participant(spec)
        sio = p.sio = socketio.AsyncClient(reconnection=False, http_session=self.http)

        def on_chat(event: Any) -> None:
            p.on_chat(event)
            self.last_arrival = time.monotonic()

        def on_disconnect(*_: Any) -> None:
            p.closed = True

        sio.on("chat", on_chat)
        sio.on("disconnect", on_disconnect)
        g = spec.gid
        forwarded = f"10.{(g >> 16) & 255}.{(g >> 8) & 255}.{g & 255}"
        try:
            await sio.connect(spec.url, transports=["websocket"], wait_timeout=20,
                              headers={"X-Forwarded-For": forwarded})
            for _ in range(50):
                ack = await sio.call("join", {"room": ROOM}, timeout=20)
                if isinstance(ack, dict) and "retry_after" in ack:
                    await asyncio.sleep(float(ack["retry_after"]))
                    continue
                break
            if not isinstance(ack, dict) or "chat" not in ack:
                p.error = f"join refused: {ack!r}"[:200]
        except Exception as exc:
            p.error = f"{type(exc).__name__}: {exc}"[:200]

    async def join(self, specs: list[Spec], concurrency: int) -> dict[str, Any]:
        gate = asyncio.Semaphore(concurrency)

        async def one(spec: Spec) -> None:
            async with gate:
                await (self.join_dc(spec) if spec.path == DC else self.join_sio(spec))

        await asyncio.gather(*(one(s) for s in specs))
        failed = [self.members[s.gid].error for s in specs if self.members[s.gid].error]
        return {"joined": len(specs) - len(failed), "errors": sorted({str(e) for e in failed})[:5]}

    async def send(self, schedule: list[tuple[int, int, float, str]]) -> None:
        """``schedule``: (sender gid, k, due time.time(), phase), in due order."""
        for gid, k, due, phase in schedule:
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            p = self.members[gid]
            if p.error:
                continue
            now = time.time()
            self.lateness.append(now - due)
            text = f"b|{phase}|{gid}|{k}|{now:.6f}"
            if p.spec.path == DC:
                if p.channel is not None and p.channel.readyState == "open":
                    p.channel.send(json.dumps({"type": "chat", "text": text}))
                else:
                    p.refused("channel_closed")
            else:
                task = asyncio.create_task(self._sio_send(p, text))
                self.pending.add(task)
                task.add_done_callback(self.pending.discard)
        if self.pending:
            await asyncio.wait(self.pending, timeout=15)

    @staticmethod
    async def _sio_send(p: _Participant, text: str) -> None:
        try:
            ack = await p.sio.call("chat", {"text": text}, timeout=10)
        except Exception as exc:
            p.refused(type(exc).__name__)
            return
        if not isinstance(ack, dict) or "message" not in ack:
            p.refused(str(ack.get("error") if isinstance(ack, dict) else ack))

    async def drain(self, phase: str, sent: int, quiet_s: float, max_s: float) -> None:
        """Until every participant here has all ``sent`` benchmark messages of ``phase``, or
        no chat event arrived for ``quiet_s`` seconds (some were never numbered), at most
        ``max_s`` seconds."""
        deadline = time.monotonic() + max_s
        joined = [p for p in self.members.values() if p.error is None and not p.closed]
        while time.monotonic() < deadline and time.monotonic() - self.last_arrival < quiet_s:
            if all(p.bench.get(phase, 0) >= sent for p in joined):
                return
            await asyncio.sleep(0.05)

    def results(self) -> dict[str, Any]:
        """What the coordinator needs, reduced here (a full run has millions of deliveries):

        * ``ids``: seq → [id, text] over every participant of this process (consistency
          is checked across processes);
        * per participant: path, label, error, closed, refusals, received count, duplicates,
          the arrival-order digest of its (seq, id) list per phase, its seqs per phase;
        * ``latency``: ``"phase|receiving path|sending path"`` → bytes of float64 seconds, and
          ``k``: the same keys → bytes of int64, the message number of each latency.
        """
        ids: dict[int, tuple[str, str]] = {}
        conflicts = 0
        latency: dict[str, array.array[float]] = {}
        ks: dict[str, array.array[int]] = {}
        people = []
        for p in self.members.values():
            by_phase: dict[str, list[tuple[int, str]]] = {}
            seen: set[int] = set()
            duplicates = 0
            for seq, mid, t, text in p.received:
                known = ids.setdefault(seq, (mid, text))
                if known[0] != mid:
                    conflicts += 1
                repeated = seq in seen
                duplicates += repeated
                seen.add(seq)
                parts = text.split("|")
                phase = parts[1] if len(parts) == 5 else "?"
                by_phase.setdefault(phase, []).append((seq, mid))
                if parts[0] == "b" and len(parts) == 5 and not repeated:
                    sender_path = DC if parts[2] in self.dc_senders else SIO
                    key = f"{phase}|{p.spec.path}|{sender_path}"
                    latency.setdefault(key, array.array("d")).append(t - float(parts[4]))
                    ks.setdefault(key, array.array("q")).append(int(parts[3]))
            people.append({
                "gid": p.spec.gid, "path": p.spec.path, "label": p.spec.label, "error": p.error,
                "closed": p.closed, "refused": p.errors, "received": len(p.received),
                "duplicates": duplicates,
                "digest": {ph: order_digest(pairs) for ph, pairs in by_phase.items()},
                "seqs": {ph: [s for s, _ in pairs] for ph, pairs in by_phase.items()},
            })
        return {"ids": ids, "conflicts": conflicts, "people": people,
                "latency": {k: v.tobytes() for k, v in latency.items()},
                "k": {key: v.tobytes() for key, v in ks.items()},
                "lateness": array.array("d", self.lateness).tobytes()}

    async def close(self) -> None:
        async def one(p: _Participant) -> None:
            try:
                if p.sio is not None and p.sio.connected:
                    await asyncio.wait_for(p.sio.disconnect(), 5)
                if p.session is not None:
                    await asyncio.wait_for(p.session.close(self.http), 5)
            except Exception:
                pass

        await asyncio.gather(*(one(p) for p in self.members.values()))
        await self.http.close()


def pool_main(conn: multiprocessing.connection.Connection) -> None:
    """Entry point of a client process: commands over ``conn``, one answer each."""
    try:
        asyncio.run(_pool(conn))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass  # the coordinator is gone


async def _pool(conn: multiprocessing.connection.Connection) -> None:
    from .whip_client import pin_loopback

    pin_loopback()
    pool = _Pool()
    try:
        while True:
            command, *rest = await asyncio.to_thread(conn.recv)
            if command == "join":
                specs, concurrency = rest
                conn.send(await pool.join(specs, concurrency))
            elif command == "senders":
                pool.dc_senders = {str(g) for g in rest[0]}
                conn.send("ok")
            elif command == "send":
                await pool.send(rest[0])
                conn.send("sent")
            elif command == "drain":
                await pool.drain(*rest)
                conn.send("drained")
            elif command == "results":
                conn.send(pool.results())
            elif command == "quit":
                break
    finally:
        await pool.close()


def flood_main(conn: multiprocessing.connection.Connection, url: str, rate: float, path: str) -> None:
    try:
        asyncio.run(_flood(conn, url, rate, path))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass


async def _flood(conn: multiprocessing.connection.Connection, url: str, rate: float, path: str) -> None:
    """One participant on ``url`` — a Socket.IO page, or (``path`` = ``datachannel``) a WHEP
    viewer's data channel — that sends ``rate`` messages/s for each ``("flood", phase, t0,
    seconds)`` it is told (until any other command) and answers each with ``{"path", "sent",
    "replies"}``: Socket.IO acks (``accepted`` or the refusal code, one per message) or
    data-channel ``error`` messages by code (the node tells a flooding sender
    ``rate_limited`` once per refill, not once per message)."""
    import aiohttp
    import socketio

    from . import aiortc_hooks, whip_client

    whip_client.pin_loopback()
    http = aiohttp.ClientSession()
    sio = socketio.AsyncClient(reconnection=False, http_session=http)
    session: whip_client.WhipSession | None = None
    replies: dict[str, int] = {}

    def count(key: str) -> None:
        replies[key] = replies.get(key, 0) + 1

    try:
        if path == DC:
            session = await whip_client.view(f"{url}/whep/{ROOM}", kinds=("video",), chat=True, http=http)
            history = asyncio.Event()

            def on_message(raw: str | bytes) -> None:
                message = json.loads(raw)
                if message.get("type") == "history":
                    history.set()
                elif message.get("type") == "error":
                    count(str(message.get("code")))

            assert session.channel is not None
            session.channel.on("message", on_message)
            await asyncio.wait_for(history.wait(), 30)
            for transceiver in session.pc.getTransceivers():
                if transceiver.kind == "video":
                    aiortc_hooks.install_raw_rtp_receiver(transceiver.receiver.transport, _ignore)
            conn.send("ready")
        else:
            await sio.connect(url, transports=["websocket"], wait_timeout=20,
                              headers={"X-Forwarded-For": "10.255.255.254"})
            ack = await sio.call("join", {"room": ROOM}, timeout=20)
            conn.send("ready" if isinstance(ack, dict) and "chat" in ack else f"join refused: {ack!r}")
        async def rejoin() -> None:
            """What a flooder does once the server disconnected it: connect and join again."""
            try:
                await sio.connect(url, transports=["websocket"], wait_timeout=5,
                                  headers={"X-Forwarded-For": "10.255.255.254"})
                await sio.call("join", {"room": ROOM}, timeout=5)
            except Exception:
                pass

        def on_ack(answer: Any = None) -> None:
            count("accepted" if isinstance(answer, dict) and "message" in answer else (
                str(answer.get("error")) if isinstance(answer, dict) else "bad_ack"))

        while True:
            command, *rest = await asyncio.to_thread(conn.recv)
            if command != "flood":
                break
            replies.clear()
            sent = await _flood_phase(session, sio, on_ack, rate, *rest, rejoin=rejoin, count=count)
            deadline = time.monotonic() + 15
            while session is None and sum(replies.values()) < sent and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            conn.send({"path": path, "sent": sent, "replies": dict(replies)})
    finally:
        if sio.connected:
            try:
                await asyncio.wait_for(sio.disconnect(), 5)
            except Exception:
                pass
        if session is not None:
            try:
                await asyncio.wait_for(session.close(http), 5)
            except Exception:
                pass
        await http.close()


async def _flood_phase(session: Any, sio: Any, on_ack: Any, rate: float, phase: str, t0: float,
                       seconds: float, *, rejoin: Any, count: Any) -> int:
    """Send ``rate`` messages/s from ``t0`` (time.time()) for ``seconds``: the count sent.

    A Socket.IO flooder the server disconnected reconnects and joins again (at most once a
    second, as a determined one would); what it could not send meanwhile counts as
    ``not_sent``, each disconnection as ``disconnected``."""
    total = round(rate * seconds)
    sent = 0
    next_rejoin = 0.0
    while sent < total:
        delay = t0 + sent / rate - time.time()
        if delay > 0:
            await asyncio.sleep(min(delay, 0.01))
            continue
        # Everything due by now (a late tick sends what it owes, in one go).
        owed = min(total, int((time.time() - t0) * rate) + 1)
        while sent < owed:
            text = f"f|{phase}|x|{sent}|{time.time():.6f}"
            if session is not None and session.channel is not None:
                session.channel.send(json.dumps({"type": "chat", "text": text}))
            elif sio.connected:
                try:
                    await sio.emit("chat", {"text": text}, callback=on_ack)
                except Exception:  # disconnected meanwhile
                    count("not_sent")
            else:
                count("not_sent")
                if time.monotonic() >= next_rejoin:
                    count("disconnected")
                    next_rejoin = time.monotonic() + 1.0
                    await rejoin()
            sent += 1
    return sent


class Proc:
    """A child process and its pipe."""

    def __init__(self, ctx: Any, target: Any, *args: Any) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child, *args), daemon=True)
        self.proc.start()
        child.close()

    @property
    def pid(self) -> int:
        return int(self.proc.pid or 0)

    async def ask(self, message: Any, timeout: float) -> Any:
        """Send ``message`` (None: send nothing) and return the answer.

        :raises RuntimeError: no answer within ``timeout`` s, or the process died."""
        if message is not None:
            self.conn.send(message)
        if not await asyncio.to_thread(self.conn.poll, timeout):
            raise RuntimeError(f"client process {self.proc.pid} did not answer {str(message)[:40]} "
                               f"within {timeout:.0f} s")
        try:
            return self.conn.recv()
        except EOFError:
            raise RuntimeError(f"client process {self.proc.pid} died") from None

    async def stop(self) -> None:
        try:
            self.conn.send(("quit",))
        except (OSError, ValueError):
            pass
        await asyncio.to_thread(self.proc.join, 10)
        if self.proc.is_alive():
            self.proc.terminate()
            await asyncio.to_thread(self.proc.join, 3)
            if self.proc.is_alive():
                self.proc.kill()
                await asyncio.to_thread(self.proc.join, 3)
        self.conn.close()


async def ask_all(procs: list[Proc], messages: list[Any], timeout: float) -> list[Any]:
    for proc, message in zip(procs, messages, strict=True):
        proc.conn.send(message)
    return list(await asyncio.gather(*(p.ask(None, timeout) for p in procs)))
