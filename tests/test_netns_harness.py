"""The impaired-link harness does what it claims (loadtest/netns.py, loadtest/impair_relay.py):
tbf limits each direction of the veth to the rate set (and lifts it again), the relay loses
and delays what it is told to (also on a WebRTC viewer's path: aiortc through
`view_through_relay`, Chromium inside a namespace through `route_through_relay`), a namespace
address move takes effect (also for a browser inside), Chromium runs inside a namespace
and its getStats() is sampled, and nothing of a namespace survives its context — also after
an exception.

Rates are measured with UDP datagrams offered at twice the limit; the receive rate is counted
in link bytes (IP packet + Ethernet header: what tbf meters) after the first 0.3 s (the
bucket's initial burst).  Each measurement takes about a second.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import struct
import subprocess
import time
from typing import Any

import pytest

from loadtest import netns as netns_mod
from loadtest import whip_client
from loadtest.impair_relay import (
    UDP_IP_OVERHEAD_BYTES,
    Impairment,
    ImpairRelay,
    rewrite_candidates,
    view_through_relay,
)
from loadtest.netns import VETH_OVERHEAD_BYTES, NetNs, require_netns
from tests.polling import wait_for

PAYLOAD = 1200
WIRE = PAYLOAD + UDP_IP_OVERHEAD_BYTES + VETH_OVERHEAD_BYTES
STAMP = struct.Struct("!Id")  # sequence, send time (time.monotonic)


class Receiver(asyncio.DatagramProtocol):
    """Records (arrival monotonic time, datagram) of everything it receives."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, bytes]] = []
        self.sources: set[tuple[str, int]] = set()
        self.got = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.arrivals.append((time.monotonic(), data))
        self.sources.add(addr[:2])
        self.got.set()


async def endpoint(sock_or_addr: Any) -> tuple[asyncio.DatagramTransport, Receiver]:
    loop = asyncio.get_running_loop()
    kw = {"sock": sock_or_addr} if isinstance(sock_or_addr, socket.socket) else {"local_addr": sock_or_addr}
    transport, proto = await loop.create_datagram_endpoint(Receiver, **kw)
    return transport, proto


async def offer(transport: asyncio.DatagramTransport, dest: tuple[str, int], rate_bps: float,
                duration_s: float, size: int = PAYLOAD) -> int:
    """Send ``size``-byte datagrams (sequence + send time first) to ``dest`` at ``rate_bps``
    of link bytes for ``duration_s``, in 5 ms steps. :returns: datagrams sent."""
    wire = size + UDP_IP_OVERHEAD_BYTES + VETH_OVERHEAD_BYTES
    start = time.monotonic()
    sent = 0
    pad = bytes(size - STAMP.size)
    while (now := time.monotonic()) - start < duration_s:
        due = int((now - start) * rate_bps / 8 / wire) + 1
        while sent < due:
            transport.sendto(STAMP.pack(sent, time.monotonic()) + pad, dest)
            sent += 1
        await asyncio.sleep(0.005)
    return sent


def receive_rate_bps(arrivals: list[tuple[float, bytes]], skip_s: float = 0.3) -> float:
    """Link bits/s received from ``skip_s`` after the first arrival to the last."""
    assert len(arrivals) > 10, f"only {len(arrivals)} datagrams arrived"
    t0 = arrivals[0][0] + skip_s
    window = [(t, len(d)) for t, d in arrivals if t >= t0]
    assert len(window) > 5, "too few datagrams after the initial burst"
    span = window[-1][0] - window[0][0]
    bits = sum(size + UDP_IP_OVERHEAD_BYTES + VETH_OVERHEAD_BYTES for _, size in window[1:]) * 8
    return bits / span


@pytest.fixture
def ns_required() -> None:
    require_netns()


async def measure(ns: NetNs, direction: str, rate_bps: float, duration_s: float = 1.2) -> float:
    """Offer ``rate_bps`` across the veth in ``direction``; the received link rate, bps."""
    inside = ns.socket()
    inside.bind((ns.address, 0))
    t_in, r_in = await endpoint(inside)
    t_out, r_out = await endpoint((ns.server_address, 0))
    try:
        if direction == "up":
            await offer(t_in, t_out.get_extra_info("sockname"), rate_bps, duration_s)
            receiver = r_out
        else:
            await offer(t_out, t_in.get_extra_info("sockname"), rate_bps, duration_s)
            receiver = r_in
        await asyncio.sleep(0.1)  # tbf's queue (latency 50 ms) drains
        return receive_rate_bps(receiver.arrivals)
    finally:
        t_in.close()
        t_out.close()


async def test_tbf_limits_each_direction_within_20_percent_and_clears(ns_required: None) -> None:
    limit = 2_000_000
    async with NetNs() as ns:
        for direction in ("up", "down"):
            ns.set_rate(direction, limit)  # type: ignore[arg-type]
            assert ns.qdisc_stats(direction)["kind"] == "tbf"  # type: ignore[arg-type]
            got = await measure(ns, direction, 2 * limit)
            print(f"\n{direction}: tbf {limit} bps, offered {2 * limit}, received {got:.0f} bps")
            assert 0.8 * limit <= got <= 1.2 * limit, (direction, got)
            assert ns.qdisc_stats(direction)["drops"] > 0  # type: ignore[arg-type]
        ns.clear_rate()
        for direction in ("up", "down"):
            assert ns.qdisc_stats(direction)["kind"] != "tbf"  # type: ignore[arg-type]
            offered = 4 * limit
            got = await measure(ns, direction, offered, duration_s=0.8)
            print(f"{direction}: no limit, offered {offered} bps, received {got:.0f} bps")
            assert got >= 0.8 * offered, (direction, got)


async def test_rate_change_mid_stream_takes_effect(ns_required: None) -> None:
    async with NetNs() as ns:
        ns.set_rate("down", 4_000_000)
        ns.set_rate("down", 1_000_000)  # replace, not add
        got = await measure(ns, "down", 2_000_000, duration_s=1.0)
        assert 0.8e6 <= got <= 1.2e6, got


async def test_address_move(ns_required: None) -> None:
    async with NetNs() as ns:
        old = ns.address
        t_out, r_out = await endpoint((ns.server_address, 0))
        server = t_out.get_extra_info("sockname")
        old_sock = ns.socket()
        old_sock.bind((old, 0))
        old_sock.sendto(b"before", server)
        await wait_for(lambda: r_out.arrivals, 5, "a datagram from the old address")
        assert r_out.sources == {(old, old_sock.getsockname()[1])}

        new = ns.move()
        assert new != old and ns.address == new
        shown = ns.run(["ip", "-o", "-4", "addr", "show", "dev", ns.ns_if]).stdout
        assert f" {new}/" in shown and f" {old}/" not in shown, shown
        with pytest.raises(OSError):  # the old address is gone: its socket cannot send
            old_sock.sendto(b"after", server)

        new_sock = ns.socket()
        new_sock.bind((new, 0))
        t_new, r_new = await endpoint(new_sock)
        t_new.sendto(b"from new", server)
        await wait_for(lambda: (new, new_sock.getsockname()[1]) in r_out.sources, 5,
                       "a datagram from the new address")
        t_out.sendto(b"back", (new, new_sock.getsockname()[1]))  # and the root side reaches it
        await wait_for(lambda: r_new.arrivals, 5, "the reply at the new address")
        with pytest.raises(ValueError):
            ns.move(ns.server_address)
        t_out.close()
        t_new.close()


async def test_nothing_leaves_the_link(ns_required: None) -> None:
    """The namespace's default route (browsers need one) goes nowhere: a datagram to an
    address beyond the link stays unresolved (ARP) inside the namespace."""
    async with NetNs() as ns:
        beyond = "198.51.100.7"  # TEST-NET-2 (RFC 5737)
        sock = ns.socket()
        sock.sendto(b"x", (beyond, 9))

        def state() -> str | None:
            out = ns.run(["ip", "neigh", "show", beyond]).stdout.split()
            return out[-1] if out else None

        await wait_for(lambda: state() in ("INCOMPLETE", "FAILED"), 5,
                       lambda: f"an unresolved neighbour entry for {beyond}; last: {state()}")


def test_nothing_left_after_exit_or_exception(ns_required: None) -> None:
    before = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    with NetNs() as ns:
        ns.set_rate("both", 1_000_000)
        proc = ns.popen(["sleep", "60"])
        assert ns.name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert ns.leftovers(), "the namespace and its links exist while open"
    assert ns.leftovers() == []
    assert proc.poll() is not None

    for exc_type in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(exc_type):
            with NetNs() as ns:
                proc = ns.popen(["sleep", "60"])
                sock = ns.socket()
                raise exc_type("mid-test")
        assert ns.leftovers() == [], exc_type
        assert proc.poll() is not None
        assert sock.fileno() == -1
    after = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    assert after <= before
    assert ns.server_address not in netns_mod.open_server_addresses()
    assert ns.server_address in netns_mod.server_addresses_made()


async def test_async_exit_after_exception_removes_everything(ns_required: None) -> None:
    with pytest.raises(RuntimeError):
        async with NetNs() as ns:
            proc = await ns.start_process("sleep", "60")
            port = await ns.expose_tcp(_free_port())
            assert port
            raise RuntimeError("mid-test")
    assert ns.leftovers() == []
    assert proc.returncode is not None
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert ns.root_if not in links and ns.ns_if not in links


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_expose_tcp_reaches_root_loopback_from_inside(ns_required: None) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"echo:" + await reader.read(100))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with NetNs() as ns:
            await ns.expose_tcp(port)
            # a process inside connects to ITS 127.0.0.1:port (the namespace's own loopback)
            code = (f"import socket; s=socket.create_connection(('127.0.0.1',{port}),5);"
                    "s.sendall(b'hi'); print(s.recv(100).decode())")
            proc = await ns.start_process("python3", "-c", code, stdout=asyncio.subprocess.PIPE)
            out, _ = await asyncio.wait_for(proc.communicate(), 15)
            assert out.decode().strip() == "echo:hi"
    finally:
        server.close()


# ----------------------------------------------------------------- the relay


async def test_relay_loss_and_delay_match_the_settings() -> None:
    t_target, r_target = await endpoint(("127.0.0.1", 0))
    t_client, r_client = await endpoint(("127.0.0.1", 0))
    up = Impairment(loss=0.10, delay_ms=30, jitter_ms=10)
    down = Impairment(loss=0.20, delay_ms=60)
    relay = ImpairRelay(t_target.get_extra_info("sockname"), up=up, down=down, seed=7)
    async with relay:
        n = await offer(t_client, relay.address, 1_600_000, 1.5, size=200)
        assert n > 1000
        await wait_for(lambda: relay.stats.up.received >= n, 10, "the relay to receive")
        await asyncio.sleep(0.2)  # the last delayed datagrams
        up_stats = relay.stats.up
        # what the target got is exactly what the relay says it forwarded
        assert len(r_target.arrivals) == up_stats.forwarded == up_stats.received - up_stats.lost
        assert 0.07 <= up_stats.loss_rate <= 0.13, up_stats
        delays = [(t - STAMP.unpack_from(d)[1]) * 1000 for t, d in r_target.arrivals]
        print(f"\nup: loss {up_stats.loss_rate:.3f}, delay min {min(delays):.1f} "
              f"median {statistics.median(delays):.1f} ms")
        assert min(delays) >= 30 - 10 - 0.5
        assert 30 - 10 <= statistics.median(delays) <= 30 + 10 + 15  # FIFO pushes up; loaded host
        seqs = [STAMP.unpack_from(d)[0] for _, d in r_target.arrivals]
        assert seqs == sorted(seqs), "the relay must not reorder"

        # down: the target answers the client (learned from its datagrams) through the relay
        n = await offer(t_target, relay.upstream_address, 1_600_000, 1.0, size=200)
        await wait_for(lambda: relay.stats.down.received >= n, 10, "the relay to receive")
        await asyncio.sleep(0.2)
        down_stats = relay.stats.down
        assert len(r_client.arrivals) == down_stats.forwarded == down_stats.received - down_stats.lost
        assert 0.16 <= down_stats.loss_rate <= 0.24, down_stats
        delays = [(t - STAMP.unpack_from(d)[1]) * 1000 for t, d in r_client.arrivals]
        assert min(delays) >= 60 - 0.5
        assert statistics.median(delays) <= 60 + 15
        # strangers are not forwarded
        t_other, _ = await endpoint(("127.0.0.1", 0))
        t_other.sendto(b"x", relay.upstream_address)
        await wait_for(lambda: relay.stats.stranger == 1, 5, "the stranger to be counted")
        t_other.close()
    t_target.close()
    t_client.close()


async def test_relay_rate_limit_within_20_percent() -> None:
    t_target, r_target = await endpoint(("127.0.0.1", 0))
    t_client, _ = await endpoint(("127.0.0.1", 0))
    rate = 1_000_000
    async with ImpairRelay(t_target.get_extra_info("sockname"),
                           up=Impairment(rate_bps=rate, queue_ms=50)) as relay:
        await offer(t_client, relay.address, 2 * rate, 1.2)
        await asyncio.sleep(0.1)
        # the relay meters IP bytes (datagram + 28), receive_rate_bps link bytes (+14)
        got = receive_rate_bps(r_target.arrivals) * (PAYLOAD + 28) / WIRE
        print(f"\nrelay rate {rate} bps: received {got:.0f} bps, queue drops {relay.stats.up.queue_dropped}")
        assert 0.8 * rate <= got <= 1.2 * rate
        assert relay.stats.up.queue_dropped > 0
    t_target.close()
    t_client.close()


def test_rewrite_candidates_keeps_one_candidate_per_section() -> None:
    sdp = "\r\n".join([
        "v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0",
        "m=audio 50000 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 10.0.0.5",
        "a=candidate:1 1 udp 2130706431 10.0.0.5 50000 typ host",
        "a=candidate:2 1 udp 2130706431 fd00::5 50001 typ host",
        "a=candidate:3 1 udp 1694498815 192.0.2.9 6000 typ srflx raddr 10.0.0.5 rport 50000",
        "a=end-of-candidates",
        "m=video 50000 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 10.0.0.5",
        "a=candidate:1 1 udp 2130706431 10.0.0.5 50000 typ host", "",
    ])
    out = rewrite_candidates(sdp, ("127.0.0.1", 4242))
    cands = [line for line in out.split("\r\n") if line.startswith("a=candidate")]
    assert cands == ["a=candidate:1 1 udp 2130706431 127.0.0.1 4242 typ host"] * 2
    assert out.count("c=IN IP4 127.0.0.1") == 2 and "a=end-of-candidates" in out


async def test_aiortc_viewer_plays_through_the_relay(service: Any) -> None:
    """The documented placement works: every ICE, DTLS and SRTP datagram of a WHEP viewer
    crosses the relay (5 % loss, 50 ms each way) and the video still plays."""
    from tests.sfu.sfu_helpers import publish_pattern, read_frames, receiver_tracks

    pub = await publish_pattern(service, audio=False)
    imp = Impairment(loss=0.05, delay_ms=50, jitter_ms=5)
    session, relay = await view_through_relay(f"{service.url}/whep/demo", impairment=imp,
                                              kinds=("video",), seed=3)
    try:
        await whip_client.wait_connected(session.pc, timeout=20)
        frames = await read_frames(receiver_tracks(session.pc)["video"], 30, timeout=30)
        assert len(frames.codes) >= 30
        stats = relay.stats
        print(f"\nrelay: {stats.as_dict()}")
        assert stats.down.forwarded > 50 and stats.up.forwarded > 5
        assert stats.down.lost > 0
        assert stats.stranger == 0
        # the SFU's own candidates are the relay's target, the viewer's the relay's client
        assert relay.target is not None and relay.client is not None
    finally:
        await session.close()
        await relay.close()
        await pub.close()


# ----------------------------------------------------------------- Chromium inside

_PAGE = """<!doctype html><html><body><video id="v" autoplay muted playsinline></video><script>
(async () => {
  const pc = new RTCPeerConnection({iceServers: []});
  window.__relaycast = {pc};
  pc.addTransceiver('video', {direction: 'recvonly'});
  pc.ontrack = (e) => { document.getElementById('v').srcObject = new MediaStream([e.track]); };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((r) => { if (pc.iceGatheringState === 'complete') r();
    else pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r(); });
  const resp = await fetch('/offer', {method: 'POST', body: pc.localDescription.sdp});
  await pc.setRemoteDescription({type: 'answer', sdp: await resp.text()});
})();
</script></body></html>"""


class _OfferServer:
    """An aiohttp server on 127.0.0.1 serving `_PAGE` at ``/`` and answering its offer at
    ``/offer`` with an aiortc peer that sends a 320x240 pattern (ICE on the addresses the
    process pinned: ``sfu.aiortc_private.set_host_addresses``)."""

    async def __aenter__(self) -> _OfferServer:
        from aiohttp import web
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        from loadtest.chromium import CHROMIUM
        from loadtest.sources import PatternVideoTrack

        if not os.path.exists(CHROMIUM):
            pytest.skip(f"Debian chromium-headless-shell not found at {CHROMIUM}")
        self.pcs: list[Any] = []

        async def index(_: web.Request) -> web.Response:
            return web.Response(text=_PAGE, content_type="text/html")

        async def answer(request: web.Request) -> web.Response:
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            self.pcs.append(pc)
            pc.addTrack(PatternVideoTrack(320, 240, 30))
            await pc.setRemoteDescription(RTCSessionDescription(sdp=await request.text(), type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            return web.Response(text=pc.localDescription.sdp, content_type="application/sdp")

        app = web.Application()
        app.router.add_get("/", index)
        app.router.add_post("/offer", answer)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for pc in self.pcs:
            await pc.close()
        await self.runner.cleanup()


async def test_chromium_inside_the_namespace_receives_video_over_the_veth(ns_required: None) -> None:
    """Chromium runs inside the namespace (driven over pipes), loads a page from the root
    namespace's loopback through `expose_tcp`, and receives an aiortc peer's video over the
    veth (through tbf); the sampler reads its inbound-rtp statistics every second."""
    from loadtest.netns_chromium import InboundVideoSampler, chromium_in_netns
    from sfu import aiortc_private

    try:
        async with _OfferServer() as server, NetNs() as ns:
            # the peer in the root namespace gathers on the veth's root end only
            aiortc_private.set_host_addresses([ns.server_address])
            ns.set_rate("down", 5_000_000)
            await ns.expose_tcp(server.port)
            async with chromium_in_netns(ns.name) as browser:
                page = await (await browser.new_context()).new_page()
                await page.goto(f"http://127.0.0.1:{server.port}/")
                sampler = InboundVideoSampler(page).start()
                try:
                    await wait_for(
                        lambda: any((s.frames_per_second or 0) > 0 for s in sampler.samples),
                        30, lambda: f"video in the page; last: {sampler.samples[-1:]}",
                        wake=sampler.updated)
                finally:
                    samples = await sampler.stop()
            last = samples[-1]
            print(f"\nlast sample: {last}")
            assert last.connection_state == "connected"
            assert (last.frame_width, last.frame_height) == (320, 240)
            assert last.local_address == ns.address and last.remote_address == ns.server_address
            # the media went through the veth's tbf
            assert ns.qdisc_stats("down")["bytes"] >= last.bytes_received > 0
            assert sampler.error is None
    finally:
        whip_client.pin_loopback()


async def test_chromium_inside_the_namespace_behind_the_relay(ns_required: None) -> None:
    """The relay on the path of a browser inside the namespace: its offer and the answer are
    rewritten by `route_through_relay`, all its datagrams cross the relay (5 % loss, 40 ms
    each way) and the video plays."""
    from loadtest.impair_relay import Impairment
    from loadtest.netns_chromium import InboundVideoSampler, chromium_in_netns, route_through_relay

    async with _OfferServer() as server, NetNs() as ns:
        await ns.expose_tcp(server.port)
        async with chromium_in_netns(ns.name) as browser:
            page = await (await browser.new_context()).new_page()
            relays = await route_through_relay(
                page, "**/offer", listen_host=ns.server_address, upstream_host="127.0.0.1",
                impairment=Impairment(loss=0.05, delay_ms=40), seed=5)
            await page.goto(f"http://127.0.0.1:{server.port}/")
            sampler = InboundVideoSampler(page).start()
            try:
                await wait_for(
                    lambda: sum((s.frames_per_second or 0) > 0 for s in sampler.samples) >= 2,
                    30, lambda: f"video in the page; last: {sampler.samples[-1:]}",
                    wake=sampler.updated)
            finally:
                samples = await sampler.stop()
                for relay in relays:
                    await relay.close()
        last = samples[-1]
        print(f"\nlast sample: {last}\nrelay: {relays[0].stats.as_dict()}")
        assert len(relays) == 1
        stats = relays[0].stats
        assert stats.down.forwarded > 30 and stats.up.forwarded > 5 and stats.down.lost > 0
        assert stats.stranger == 0
        # as behind a NAT, the browser may learn its address as the server saw it (the relay's
        # upstream socket) from the STUN responses (a peer-reflexive local candidate)
        assert last.local_address in (ns.address, relays[0].upstream_address[0])
        assert last.remote_address == ns.server_address  # the relay's listen address
        assert relays[0].client is not None and relays[0].client[0] == ns.address


_GATHER_JS = """async () => {
  const pc = new RTCPeerConnection({iceServers: []});
  pc.addTransceiver('video');
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((r) => { if (pc.iceGatheringState === 'complete') r();
    else pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r(); });
  const sdp = pc.localDescription.sdp;
  pc.close();
  return sdp.split('\\r\\n').filter((l) => l.startsWith('a=candidate')).map((l) => l.split(' ')[4]);
}"""


async def test_browser_inside_gathers_on_the_moved_address(ns_required: None) -> None:
    """What the ICE restart tests rely on: Chromium inside offers the namespace address as
    its host candidate, and after `NetNs.move` (it notices the change over netlink, ~1-2 s
    here) the new one."""
    from loadtest.chromium import CHROMIUM
    from loadtest.netns_chromium import chromium_in_netns

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Debian chromium-headless-shell not found at {CHROMIUM}")
    async with NetNs() as ns, chromium_in_netns(ns.name) as browser:
        page = await (await browser.new_context()).new_page()
        await page.goto("about:blank")
        assert await page.evaluate(_GATHER_JS) == [ns.address]
        old = ns.address
        new = ns.move()
        seen: list[str] = []

        async def gathered_new() -> bool:
            seen[:] = await page.evaluate(_GATHER_JS)
            return seen == [new]

        await wait_for(gathered_new, 15, lambda: f"a host candidate on {new} (not {old}); last {seen}",
                       interval_s=0.25)
