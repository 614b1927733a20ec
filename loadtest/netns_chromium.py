"""Debian's headless Chromium inside a network namespace, driven by Playwright from outside,
and a once-a-second reader of a page's received-video statistics.

Playwright talks to the browser over pipes (``--remote-debugging-pipe``, file descriptors 3
and 4), so control needs no network: the browser is started through a small wrapper
executable, ``exec ip netns exec <ns> /usr/lib/chromium/chromium-headless-shell "$@"``
(`wrapper_executable`), given to Playwright as ``executable_path``.  ``ip netns exec``
enters the namespace and execs the browser in the same process, keeping the pipes.  Every
socket the browser opens — ICE candidates included — is then inside the namespace: its
host candidate is the namespace's veth address, and its media crosses the veth (and any
``tbf`` on it) to a server that gathers on the root-side address.

Pages: a browser inside reaches the root namespace only at the veth's root-side address.
Serve the page through a forwarder on the namespace's own loopback (``loadtest.netns.NetNs
.expose_tcp(port)``) so the URL stays ``http://127.0.0.1:<port>/`` — the same origin as
outside, and a secure context — while signaling takes that forwarder and media the veth.

::

    async with chromium_in_netns(ns.name) as browser:
        page = await (await browser.new_context()).new_page()
        await page.goto(f"http://127.0.0.1:{port}/watch/demo")
        sampler = InboundVideoSampler(page)       # reads window.__relaycast.pc
        sampler.start()
        ...
        await sampler.stop()
        sampler.samples[-1].frames_per_second, sampler.samples[-1].frame_height

The namespace's own loopback must be up (``loadtest.netns.NetNs`` does it).  Launch flags are
:data:`loadtest.chromium.WEBRTC_ARGS` (the same as the browser tests and the benchmarks).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.chromium import CHROMIUM, WEBRTC_ARGS


def wrapper_executable(netns: str, directory: str | Path, chromium: str = CHROMIUM) -> Path:
    """Write ``<directory>/chromium-in-<netns>``: a shell script that runs ``chromium`` with
    its arguments inside network namespace ``netns``.  :returns: its path (mode 0755)."""
    path = Path(directory) / f"chromium-in-{netns}"
    ip = shutil.which("ip") or "/usr/sbin/ip"
    path.write_text(
        "#!/bin/sh\n"
        f"exec {shlex.quote(ip)} netns exec {shlex.quote(netns)} {shlex.quote(chromium)} \"$@\"\n"
    )
    path.chmod(0o755)
    return path


@contextlib.asynccontextmanager
async def chromium_in_netns(
    netns: str,
    args: Sequence[str] = WEBRTC_ARGS,
    *,
    chromium: str = CHROMIUM,
    headless: bool = True,
) -> AsyncIterator[Any]:
    """``async with chromium_in_netns(ns) as browser``: a Playwright ``Browser`` whose
    process runs inside network namespace ``ns``; closed (and its wrapper removed) on exit.

    :raises FileNotFoundError: ``chromium`` does not exist.
    """
    from playwright.async_api import async_playwright

    if not os.path.exists(chromium):
        raise FileNotFoundError(chromium)
    with tempfile.TemporaryDirectory(prefix="rc-netns-chromium-") as tmp:
        exe = wrapper_executable(netns, tmp, chromium)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(exe), args=list(args),
                                               headless=headless)
            try:
                yield browser
            finally:
                await browser.close()


# getStats() of window.<path...> (the page's RTCPeerConnection): the video inbound-rtp
# entry (W3C webrtc-stats §7.6 RTCInboundRtpStreamStats) and the selected candidate pair.
# A property path, not an expression: the pages' Content Security Policy has no
# 'unsafe-eval'.
INBOUND_VIDEO_JS = """
async (path) => {
  let pc = window;
  for (const part of path) { pc = pc?.[part]; }
  if (!pc) return null;
  const report = await pc.getStats();
  let video = null, pairId = null;
  for (const s of report.values()) {
    if (s.type === 'inbound-rtp' && s.kind === 'video') video = s;
    if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
  }
  const pair = pairId && report.get(pairId);
  return {
    connectionState: pc.connectionState,
    video: video && JSON.parse(JSON.stringify(video)),
    localAddress: pair ? (report.get(pair.localCandidateId)?.address ?? null) : null,
    remoteAddress: pair ? (report.get(pair.remoteCandidateId)?.address ?? null) : null,
  };
}
"""
"""A JavaScript function of the path (a list of property names from ``window``)."""

DEFAULT_PC_PATH = ("__relaycast", "pc")
"""Where the relaycast pages expose their peer connection: ``window.__relaycast.pc``."""


@dataclass(slots=True)
class VideoSample:
    """One getStats() reading of the received video (W3C webrtc-stats names in comments).

    :ivar t: seconds since the sampler started (``time.monotonic`` based).
    :ivar bitrate_bps: received bits/s since the previous sample (``bytesReceived`` delta,
        RTP payload + padding bytes); ``None`` on the first sample.
    :ivar raw: the whole inbound-rtp entry (``None`` while there is no video stream yet).
    """

    t: float
    connection_state: str | None = None
    frames_per_second: float | None = None  # framesPerSecond
    frame_width: int | None = None  # frameWidth
    frame_height: int | None = None  # frameHeight
    frames_decoded: int = 0  # framesDecoded
    frames_dropped: int = 0  # framesDropped
    freeze_count: int = 0  # freezeCount
    total_freezes_duration_s: float = 0.0  # totalFreezesDuration (s)
    packets_received: int = 0  # packetsReceived
    packets_lost: int = 0  # packetsLost
    jitter_s: float = 0.0  # jitter (s)
    nack_count: int = 0  # nackCount
    pli_count: int = 0  # pliCount
    bytes_received: int = 0  # bytesReceived
    bitrate_bps: float | None = None
    local_address: str | None = None  # the selected pair's local candidate address
    remote_address: str | None = None
    raw: dict[str, Any] | None = field(default=None, repr=False)


def _sample(t: float, stats: dict[str, Any] | None, previous: VideoSample | None) -> VideoSample:
    if stats is None:
        return VideoSample(t=t)
    v = stats.get("video") or {}
    s = VideoSample(
        t=t,
        connection_state=stats.get("connectionState"),
        frames_per_second=v.get("framesPerSecond"),
        frame_width=v.get("frameWidth"),
        frame_height=v.get("frameHeight"),
        frames_decoded=v.get("framesDecoded", 0),
        frames_dropped=v.get("framesDropped", 0),
        freeze_count=v.get("freezeCount", 0),
        total_freezes_duration_s=v.get("totalFreezesDuration", 0.0),
        packets_received=v.get("packetsReceived", 0),
        packets_lost=v.get("packetsLost", 0),
        jitter_s=v.get("jitter", 0.0),
        nack_count=v.get("nackCount", 0),
        pli_count=v.get("pliCount", 0),
        bytes_received=v.get("bytesReceived", 0),
        local_address=stats.get("localAddress"),
        remote_address=stats.get("remoteAddress"),
        raw=stats.get("video"),
    )
    if previous is not None and t > previous.t and s.bytes_received >= previous.bytes_received:
        s.bitrate_bps = (s.bytes_received - previous.bytes_received) * 8 / (t - previous.t)
    return s


async def read_inbound_video(page: Any, pc_path: Sequence[str] = DEFAULT_PC_PATH) -> dict[str, Any] | None:
    """One getStats() of ``window.<pc_path>``: ``{"connectionState", "video": <inbound-rtp
    entry or None>, "localAddress", "remoteAddress"}``, or ``None`` while there is no pc."""
    return await page.evaluate(INBOUND_VIDEO_JS, list(pc_path))


class InboundVideoSampler:
    """Reads a page's received-video statistics every ``interval_s`` into `samples`.

    :param page: a Playwright ``Page``.
    :param pc_path: the property path of the page's ``RTCPeerConnection`` from ``window``
        (default ``("__relaycast", "pc")``); re-resolved at every sample, so a page that
        replaces its peer connection is followed.
    :param interval_s: seconds between samples (1 s: ``framesPerSecond`` is Chromium's
        one-second figure).

    `start` runs it in the background until `stop`; `sample` takes one now.  A failing
    evaluation (page navigating or closed) ends the background loop; `stop` re-raises
    nothing but leaves the error in `error`.
    """

    def __init__(self, page: Any, pc_path: Sequence[str] = DEFAULT_PC_PATH,
                 interval_s: float = 1.0) -> None:
        self.page = page
        self.pc_path = tuple(pc_path)
        self.interval_s = interval_s
        self.samples: list[VideoSample] = []
        self.error: BaseException | None = None
        self._t0 = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self.updated = asyncio.Event()
        """Set after every new sample (for ``tests.polling.wait_for(..., wake=...)``)."""

    async def sample(self) -> VideoSample:
        """Take one sample now, append it to `samples` and return it."""
        stats = await read_inbound_video(self.page, self.pc_path)
        s = _sample(time.monotonic() - self._t0, stats, self.samples[-1] if self.samples else None)
        self.samples.append(s)
        self.updated.set()
        return s

    def start(self) -> InboundVideoSampler:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        return self

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        try:
            while True:
                await self.sample()
                next_at += self.interval_s
                await asyncio.sleep(max(0.0, next_at - loop.time()))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the page went away
            self.error = exc

    async def stop(self) -> list[VideoSample]:
        """Stop the background loop; :returns: `samples`."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        return self.samples

    def since(self, t: float) -> list[VideoSample]:
        """The samples taken at or after ``t`` seconds (sampler time)."""
        return [s for s in self.samples if s.t >= t]


async def route_through_relay(
    page: Any,
    url_glob: str,
    *,
    listen_host: str,
    upstream_host: str = "127.0.0.1",
    impairment: Any = None,
    up: Any = None,
    down: Any = None,
    seed: int = 0,
) -> list[Any]:
    """Put every WebRTC session the page negotiates at ``url_glob`` behind its own
    :class:`loadtest.impair_relay.ImpairRelay` (Playwright ``page.route``).

    For each non-trickle offer POSTed there (WHEP/WHIP, RFC 9725 §4.2) a relay is started
    (listening on ``listen_host`` — e.g. the namespace's root-side address, which the
    browser inside can reach — and sending from ``upstream_host``); the offer's candidates
    are rewritten to the relay's upstream address before it is sent, the answer's become the
    relay's target and are rewritten to its listen address before the page sees them.  A
    later ``PATCH`` (ICE restart, RFC 9725 §4.3.3) to the session's Location is rewritten the
    same way with that session's relay (the relay learns the client's new address from its
    first datagram).

    :returns: the relays, appended as sessions are made (close them when done:
        ``for r in relays: await r.close()``).
    """
    from urllib.parse import urljoin, urlsplit

    from loadtest.impair_relay import ImpairRelay, first_candidate, rewrite_candidates

    relays: list[ImpairRelay] = []
    by_location: dict[str, ImpairRelay] = {}

    async def through(relay: ImpairRelay, route: Any, body: str) -> tuple[Any, str]:
        """Send the request with its candidates on the relay's upstream side; the answer's
        first candidate becomes the relay's target, and the page sees the relay's address."""
        response = await route.fetch(post_data=rewrite_candidates(body, relay.upstream_address))
        text = await response.text()
        target = first_candidate(text)
        if target is not None:
            relay.target = target
            text = rewrite_candidates(text, relay.address)
        return response, text

    async def handle(route: Any) -> None:
        request = route.request
        method = request.method
        body = request.post_data or ""
        if method == "POST" and "a=candidate" in body:
            relay = ImpairRelay(listen=(listen_host, 0), upstream=(upstream_host, 0),
                                impairment=impairment, up=up, down=down, seed=seed + len(relays))
            await relay.start()
            relays.append(relay)
            response, text = await through(relay, route, body)
            location = response.headers.get("location")
            if location:
                by_location[urlsplit(urljoin(request.url, location)).path] = relay
            await route.fulfill(response=response, body=text)
            return
        relay = by_location.get(urlsplit(request.url).path)
        if method == "PATCH" and relay is not None:
            response, text = await through(relay, route, body)
            await route.fulfill(response=response, body=text)
            return
        await route.continue_()

    await page.route(url_glob, handle)
    # the session URLs (Location) may lie outside url_glob: route them too
    await page.route(lambda url: urlsplit(url).path in by_location, handle)
    return relays
