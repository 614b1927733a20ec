"""A user-space UDP impairment relay: random loss, delay + jitter and a rate limit on the
path of one WebRTC peer (the kernel here has no ``netem``).

Model: a bidirectional 1:1 port mapping, like a NAT box with a bad uplink::

    client (viewer)  <-->  [listen socket]  relay  [upstream socket]  <-->  target (SFU)

* ``up``: datagrams arriving on the listen socket (from the client) are impaired and sent
  from the upstream socket to ``target``;
* ``down``: datagrams arriving on the upstream socket from ``target`` are impaired and sent
  from the listen socket to the client (``client=`` given, else the source of the latest
  client datagram).  Datagrams from anyone else are counted (``stranger``) and dropped.

Each direction has its own `Impairment` and counters (`DirectionStats`): loss is drawn per
datagram from a seeded ``random.Random`` (reproducible); the rate limit serializes each
datagram at ``rate_bps`` behind the previous one (IP + UDP headers counted) and drops the
datagram when the queue already holds more than ``queue_ms`` (drop-tail, like a router or
``tbf``'s ``latency``); then each datagram waits ``delay_ms`` ± ``jitter_ms`` (uniform),
never overtaking the one before (no reordering, as on a single link).

Putting a WebRTC viewer behind it (ICE, RFC 8445): each side must see the other at the
relay.  `view_through_relay` does it for an aiortc WHEP viewer:

1. the viewer creates its offer (aiortc gathers; its host candidate is the relay's client);
2. the offer's candidates are rewritten to the relay's **upstream** address (`rewrite_candidates`):
   the SFU's checks and media go to the relay, which forwards them to the viewer;
3. the SFU's answer candidate becomes the relay's ``target``, and the answer's candidates
   are rewritten to the relay's **listen** address before the viewer applies it.

Every ICE check, DTLS and SRTP datagram then crosses the relay in both directions; the
pair both agents nominate is the relayed one (there is no other).  The same works for a
viewer inside a network namespace (relay listening on the namespace's root-side address,
upstream on the SFU's address) and for a browser whose WHEP POST is rewritten (Playwright
``page.route``).  Consent checks keep flowing, so loss above ~30 % can end the session
(RFC 7675) — as on a real link.

CLI (fixed target, e.g. a pre-known server port)::

    python -m loadtest.impair_relay --listen 127.0.0.1:40000 --target 127.0.0.1:50000 \\
        --loss 0.05 --delay-ms 50 --jitter-ms 5 --rate-kbps 800 --seed 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import socket
import sys
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

UDP_IP_OVERHEAD_BYTES = 28
"""IPv4 + UDP header bytes, counted by the rate limit on top of each datagram."""


@dataclass(slots=True)
class Impairment:
    """What one direction of the relay does to each datagram.

    :ivar loss: probability (0..1) that a datagram is dropped, drawn independently.
    :ivar delay_ms: fixed one-way delay added, ms.
    :ivar jitter_ms: the delay varies uniformly in ``[delay - jitter, delay + jitter]``
        (clipped at 0), ms; order is kept (a datagram never overtakes the previous one).
    :ivar rate_bps: link rate, bits/s of IP packets (datagram + 28 bytes); ``None``: unlimited.
    :ivar queue_ms: with a rate, a datagram arriving when the queue holds more than this
        much sending time is dropped (drop-tail), ms.
    """

    loss: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_bps: int | None = None
    queue_ms: float = 100.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError(f"loss must be within 0..1, not {self.loss}")
        if self.delay_ms < 0 or self.jitter_ms < 0 or self.queue_ms < 0:
            raise ValueError("delay_ms, jitter_ms and queue_ms must not be negative")
        if self.rate_bps is not None and self.rate_bps <= 0:
            raise ValueError(f"rate_bps must be positive or None, not {self.rate_bps}")


@dataclass(slots=True)
class DirectionStats:
    """Counters of one direction (datagrams unless named ``bytes``)."""

    received: int = 0
    forwarded: int = 0
    lost: int = 0
    """dropped by the random loss"""
    queue_dropped: int = 0
    """dropped because the rate limit's queue was full"""
    no_peer: int = 0
    """dropped because the destination is not known yet (no target / no client yet)"""
    send_errors: int = 0
    bytes_received: int = 0
    bytes_forwarded: int = 0

    @property
    def loss_rate(self) -> float:
        """Share of received datagrams dropped by the random loss (0 when none received)."""
        return self.lost / self.received if self.received else 0.0


@dataclass
class RelayStats:
    up: DirectionStats = field(default_factory=DirectionStats)
    down: DirectionStats = field(default_factory=DirectionStats)
    stranger: int = 0
    """datagrams from an address other than the target (upstream socket) or the fixed client
    (listen socket); dropped"""

    def as_dict(self) -> dict[str, Any]:
        return {"up": asdict(self.up), "down": asdict(self.down), "stranger": self.stranger}


class _Direction:
    """The queue of one direction: loss, rate, delay; sends through ``send(data, addr)``."""

    def __init__(self, impairment: Impairment, seed: int, stats: DirectionStats,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.impairment = impairment
        self.random = random.Random(seed)
        self.stats = stats
        self.loop = loop
        self.queue: deque[tuple[float, bytes, tuple[str, int]]] = deque()
        self.link_free_at = 0.0  # loop time the rate-limited link finishes the last datagram
        self.last_due = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.DatagramTransport | None = None

    def push(self, data: bytes, addr: tuple[str, int] | None) -> None:
        stats = self.stats
        stats.received += 1
        stats.bytes_received += len(data)
        imp = self.impairment
        if addr is None:
            stats.no_peer += 1
            return
        if imp.loss and self.random.random() < imp.loss:
            stats.lost += 1
            return
        now = self.loop.time()
        depart = now
        if imp.rate_bps:
            start = max(now, self.link_free_at)
            if start - now > imp.queue_ms / 1000.0:
                stats.queue_dropped += 1
                return
            depart = start + (len(data) + UDP_IP_OVERHEAD_BYTES) * 8 / imp.rate_bps
            self.link_free_at = depart
        delay = imp.delay_ms
        if imp.jitter_ms:
            delay = max(0.0, delay + self.random.uniform(-imp.jitter_ms, imp.jitter_ms))
        due = max(depart + delay / 1000.0, self.last_due)
        self.last_due = due
        if due <= now and not self.queue:
            self._send(data, addr)
            return
        self.queue.append((due, data, addr))
        if self.timer is None:
            self.timer = self.loop.call_at(due, self._drain)

    def _drain(self) -> None:
        self.timer = None
        now = self.loop.time()
        queue = self.queue
        while queue and queue[0][0] <= now:
            _, data, addr = queue.popleft()
            self._send(data, addr)
        if queue:
            self.timer = self.loop.call_at(queue[0][0], self._drain)

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is None or self.transport.is_closing():
            self.stats.send_errors += 1
            return
        try:
            self.transport.sendto(data, addr)
        except OSError:
            self.stats.send_errors += 1
            return
        self.stats.forwarded += 1
        self.stats.bytes_forwarded += len(data)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Any) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable etc.: ignore
        pass


Address = tuple[str, int]


class ImpairRelay:
    """A UDP relay between one client and one target with impairments per direction.

    :param target: where client datagrams go (``(host, port)``); may be set later (`target`).
    :param listen: the client-facing bind address (default ``("127.0.0.1", 0)``).
    :param upstream: the target-facing bind address (default: the listen host, port 0).
    :param impairment: applied to both directions unless ``up``/``down`` is given.
    :param up: client -> target; ``down``: target -> client.
    :param client: the client's address; ``None``: the source of the latest client datagram.
    :param seed: seeds the loss/jitter draws (``down`` uses ``seed``, ``up`` ``seed + 1``).
    :param listen_sock: an existing UDP socket to use instead of binding ``listen`` (e.g.
        one made inside a network namespace); ``upstream_sock`` likewise.

    Use ``async with ImpairRelay(...) as relay`` or `start`/`close`.  After `start`:
    `address` (listen) and `upstream_address` are the bound addresses; `stats` counts.
    `up`/`down` may be replaced at any time (``relay.down = Impairment(loss=0.05)``).
    """

    def __init__(
        self,
        target: Address | None = None,
        *,
        listen: Address = ("127.0.0.1", 0),
        upstream: Address | None = None,
        impairment: Impairment | None = None,
        up: Impairment | None = None,
        down: Impairment | None = None,
        client: Address | None = None,
        seed: int = 0,
        listen_sock: socket.socket | None = None,
        upstream_sock: socket.socket | None = None,
    ) -> None:
        self.target = target
        self.client = client
        self._fixed_client = client is not None
        self._listen = listen
        self._upstream = upstream or (listen[0], 0)
        self._listen_sock = listen_sock
        self._upstream_sock = upstream_sock
        base = impairment or Impairment()
        self._up_imp = up or base
        self._down_imp = down or base
        self._seed = seed
        self.stats = RelayStats()
        self.address: Address = ("", 0)
        self.upstream_address: Address = ("", 0)
        self._up: _Direction | None = None
        self._down: _Direction | None = None
        self._transports: list[asyncio.DatagramTransport] = []

    @property
    def up(self) -> Impairment:
        return self._up.impairment if self._up else self._up_imp

    @up.setter
    def up(self, value: Impairment) -> None:
        self._up_imp = value
        if self._up:
            self._up.impairment = value

    @property
    def down(self) -> Impairment:
        return self._down.impairment if self._down else self._down_imp

    @down.setter
    def down(self, value: Impairment) -> None:
        self._down_imp = value
        if self._down:
            self._down.impairment = value

    def set_impairment(self, impairment: Impairment) -> None:
        """The same impairment on both directions from now on (queued datagrams keep theirs)."""
        self.up = impairment
        self.down = impairment

    async def start(self) -> ImpairRelay:
        """Bind both sockets. :raises OSError: an address cannot be bound."""
        loop = asyncio.get_running_loop()
        self._up = _Direction(self._up_imp, self._seed + 1, self.stats.up, loop)
        self._down = _Direction(self._down_imp, self._seed, self.stats.down, loop)
        try:
            up_kw: dict[str, Any] = (
                {"sock": self._upstream_sock} if self._upstream_sock else {"local_addr": self._upstream})
            upstream, _ = await loop.create_datagram_endpoint(
                lambda: _Protocol(self._from_target), **up_kw)
            self._transports.append(upstream)
            listen_kw: dict[str, Any] = (
                {"sock": self._listen_sock} if self._listen_sock else {"local_addr": self._listen})
            listen, _ = await loop.create_datagram_endpoint(
                lambda: _Protocol(self._from_client), **listen_kw)
            self._transports.append(listen)
        except BaseException:
            await self.close()
            raise
        self._up.transport = upstream  # client datagrams leave from the upstream socket
        self._down.transport = listen
        self.address = listen.get_extra_info("sockname")[:2]
        self.upstream_address = upstream.get_extra_info("sockname")[:2]
        return self

    def _from_client(self, data: bytes, addr: Address) -> None:
        if not self._fixed_client:
            self.client = addr
        elif addr != self.client:
            self.stats.stranger += 1
            return
        assert self._up is not None
        self._up.push(data, self.target)

    def _from_target(self, data: bytes, addr: Address) -> None:
        if self.target is None:  # e.g. the SFU's first check, before its answer is read
            self.stats.down.received += 1
            self.stats.down.no_peer += 1
            return
        if addr[0] != self.target[0] or addr[1] != self.target[1]:
            self.stats.stranger += 1
            return
        assert self._down is not None
        self._down.push(data, self.client)

    async def close(self) -> None:
        """Drop what is queued and close both sockets (idempotent)."""
        for direction in (self._up, self._down):
            if direction is not None:
                direction.close()
        for transport in self._transports:
            transport.close()
        self._transports.clear()

    async def __aenter__(self) -> ImpairRelay:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return (f"ImpairRelay(listen={self.address}, upstream={self.upstream_address}, "
                f"target={self.target}, client={self.client})")


# --------------------------------------------------------------------------- SDP

_CANDIDATE = re.compile(
    r"^a=candidate:(\S+) (\d+) (\S+) (\d+) (\S+) (\d+) typ (\S+)(.*)$", re.IGNORECASE)


def first_candidate(sdp: str) -> Address | None:
    """The address of the first IPv4 UDP ``a=candidate`` of component 1 in ``sdp``
    (RFC 8839 §5.1), or ``None``."""
    for line in sdp.splitlines():
        m = _CANDIDATE.match(line)
        if m and m.group(2) == "1" and m.group(3).lower() == "udp" and ":" not in m.group(5):
            return m.group(5), int(m.group(6))
    return None


def rewrite_candidates(sdp: str, address: Address) -> str:
    """``sdp`` with one candidate per media section, at ``address``.

    In each m-section the first IPv4 UDP component-1 candidate is kept, with its connection
    address and port replaced by ``address`` and typed ``host`` (raddr/rport dropped); every
    other ``a=candidate`` line goes, and ``c=`` lines carry ``address`` (RFC 8839 §5.1,
    RFC 8866 §5.7).  Foundation and priority stay.
    """
    host, port = address
    sep = "\r\n" if "\r\n" in sdp else "\n"
    out: list[str] = []
    kept_in_section = False
    for line in sdp.split(sep):
        if line.startswith("m="):
            kept_in_section = False
        m = _CANDIDATE.match(line)
        if m:
            usable = m.group(2) == "1" and m.group(3).lower() == "udp" and ":" not in m.group(5)
            if not usable or kept_in_section:
                continue
            kept_in_section = True
            rest = re.sub(r" raddr \S+ rport \d+", "", m.group(8))
            line = (f"a=candidate:{m.group(1)} 1 udp {m.group(4)} {host} {port} typ host{rest}")
        elif line.startswith("c=IN IP4 "):
            line = f"c=IN IP4 {host}"
        out.append(line)
    return sep.join(out)


async def view_through_relay(
    url: str,
    *,
    impairment: Impairment | None = None,
    up: Impairment | None = None,
    down: Impairment | None = None,
    seed: int = 0,
    relay_host: str = "127.0.0.1",
    upstream_host: str | None = None,
    kinds: tuple[str, ...] = ("video", "audio"),
    token: str | None = None,
    http: Any = None,
    edit_offer: Any = None,
) -> tuple[Any, ImpairRelay]:
    """WHEP-view ``url`` with an aiortc viewer whose every datagram crosses a new relay.

    The viewer gathers on its host addresses as pinned by the process
    (``loadtest.whip_client.pin_loopback``); the relay listens on ``relay_host`` (the
    viewer's side) and sends from ``upstream_host`` (the SFU's side; default
    ``relay_host``).  See the module docstring for the candidate rewriting.

    ``edit_offer(sdp) -> sdp`` changes the offer before it is sent (e.g.
    ``loadtest.whip_client.offer_transport_cc``).

    :returns: ``(session, relay)``: a ``loadtest.whip_client.WhipSession`` (its ``answer``
        is the SFU's, unrewritten) and the started relay; close both (session first).
    :raises loadtest.whip_client.WhipError: the POST was refused.
    :raises ValueError: the offer or the answer has no IPv4 UDP candidate.
    """
    from urllib.parse import urljoin

    import aiohttp
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from loadtest.whip_client import WhipError, WhipSession

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    relay: ImpairRelay | None = None
    own = http is None
    http = http or aiohttp.ClientSession()
    try:
        for kind in kinds:
            pc.addTransceiver(kind, direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        client = first_candidate(pc.localDescription.sdp)
        if client is None:
            raise ValueError("the viewer's offer has no IPv4 UDP candidate")
        relay = ImpairRelay(listen=(relay_host, 0), upstream=(upstream_host or relay_host, 0),
                            impairment=impairment, up=up, down=down, seed=seed, client=client)
        await relay.start()
        offer = rewrite_candidates(pc.localDescription.sdp, relay.upstream_address)
        if edit_offer is not None:
            offer = edit_offer(offer)
        headers = {"Content-Type": "application/sdp"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with http.post(url, data=offer, headers=headers) as resp:
            body = await resp.text()
            if resp.status != 201:
                try:
                    problem: Any = json.loads(body)
                except ValueError:
                    problem = body
                raise WhipError(resp.status, problem, dict(resp.headers))
            location = urljoin(url, resp.headers["Location"])
            etag = resp.headers.get("ETag")
        target = first_candidate(body)
        if target is None:
            raise ValueError("the SFU's answer has no IPv4 UDP candidate")
        relay.target = target
        answer = rewrite_candidates(body, relay.address)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    except BaseException:
        if relay is not None:
            await relay.close()
        await pc.close()
        raise
    finally:
        if own:
            await http.close()
    return WhipSession(pc, location, body, etag, token=token), relay


# --------------------------------------------------------------------------- CLI


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.impair_relay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=_address, default=("127.0.0.1", 0), help="client side HOST:PORT")
    parser.add_argument("--target", type=_address, required=True, help="server side HOST:PORT")
    parser.add_argument("--upstream", type=_address, default=None, help="bind of the server-facing socket")
    parser.add_argument("--loss", type=float, default=0.0, help="drop probability 0..1 (both directions)")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--rate-kbps", type=float, default=None, help="rate limit per direction")
    parser.add_argument("--queue-ms", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration-s", type=float, default=None, help="exit after this long")
    parser.add_argument("--stats-interval-s", type=float, default=0.0, help="print counters as JSON lines")
    args = parser.parse_args(argv)
    imp = Impairment(loss=args.loss, delay_ms=args.delay_ms, jitter_ms=args.jitter_ms,
                     rate_bps=int(args.rate_kbps * 1000) if args.rate_kbps else None,
                     queue_ms=args.queue_ms)

    async def run() -> None:
        async with ImpairRelay(args.target, listen=args.listen, upstream=args.upstream,
                               impairment=imp, seed=args.seed) as relay:
            print(json.dumps({"listen": list(relay.address), "upstream": list(relay.upstream_address),
                              "target": list(args.target)}), flush=True)
            loop = asyncio.get_running_loop()
            end = None if args.duration_s is None else loop.time() + args.duration_s
            while end is None or loop.time() < end:
                step = args.stats_interval_s or 3600.0
                await asyncio.sleep(step if end is None else max(0.0, min(step, end - loop.time())))
                if args.stats_interval_s:
                    print(json.dumps(relay.stats.as_dict()), flush=True)
            print(json.dumps(relay.stats.as_dict()), flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
