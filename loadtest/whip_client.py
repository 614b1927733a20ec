"""Minimal WHIP/WHEP clients on aiortc, for the load tester and the tests.

Every peer connection is created with explicit ICE servers (none by default)
and host candidates pinned to loopback through
:func:`sfu.aiortc_private.set_host_addresses`, so no traffic leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urljoin

import aiohttp
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from sfu import aiortc_private
from sfu.twcc import TRANSPORT_CC_URI

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 30.0
"""Default bound on each half of `WhipSession.close` (the DELETE, the peer connection's close)."""


class WhipError(Exception):
    """A WHIP/WHEP POST was refused; ``status`` and ``problem`` say why."""

    def __init__(self, status: int, problem: dict[str, object] | str, headers: dict[str, str]) -> None:
        super().__init__(f"HTTP {status}: {problem}")
        self.status = status
        self.problem = problem
        self.headers = headers


def pin_loopback() -> None:
    """Gather ICE host candidates on 127.0.0.1 only (call once per process)."""
    aiortc_private.set_host_addresses(["127.0.0.1"])


@dataclass
class WhipSession:
    """A connected WHIP/WHEP client session (``channel``: the "chat" data channel, if asked for;
    ``token``: the Bearer token it was created with, sent again on DELETE — relaycast ends a
    WHIP session only for the publisher's own stream key)."""

    pc: RTCPeerConnection
    location: str
    answer: str
    etag: str | None = None
    tracks: list[MediaStreamTrack] = field(default_factory=list)
    channel: RTCDataChannel | None = None
    token: str | None = field(default=None, repr=False)

    async def close(self, http: aiohttp.ClientSession | None = None, *,
                    timeout: float = CLOSE_TIMEOUT_S) -> int | None:
        """DELETE the resource (best effort) and close the peer connection, each within
        ``timeout`` s; never raises (but for the caller's own cancellation).

        :returns: the DELETE's status, ``None`` if it got no answer in time.
        """
        try:
            return await self.delete(http, timeout=timeout)
        finally:
            await close_pc(self.pc, timeout)

    async def delete(self, http: aiohttp.ClientSession | None = None, *,
                     timeout: float = CLOSE_TIMEOUT_S) -> int | None:
        """DELETE the resource within ``timeout`` s (connection set-up included; a node or
        instance that died may never answer); the status, ``None`` on an error or no answer."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            async with asyncio.timeout(timeout):
                if http is None:
                    async with aiohttp.ClientSession() as own, own.delete(self.location, headers=headers) as resp:
                        return resp.status
                async with http.delete(self.location, headers=headers) as resp:
                    return resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            logger.debug("DELETE %s: %r", self.location, exc)
            return None


async def close_pc(pc: RTCPeerConnection, timeout: float = CLOSE_TIMEOUT_S) -> bool:
    """``pc.close()`` within ``timeout`` s; never raises (but for the caller's own cancellation).

    aiortc's close can wait forever: `RTCRtpSender.stop`/`RTCRtpReceiver.stop` wait on
    events their RTP/RTCP tasks set, which never happens when such a task was cancelled
    before it ran or died of an unexpected error, and a second ``close()`` awaits the first
    one's end, which never comes when the first was interrupted.

    :returns: whether it closed in time without an error.
    """
    try:
        async with asyncio.timeout(timeout):
            await pc.close()
        return True
    except TimeoutError:
        logger.warning("RTCPeerConnection.close() did not finish within %g s; abandoned", timeout)
    except Exception:
        logger.warning("RTCPeerConnection.close() failed", exc_info=True)
    return False


TRANSPORT_CC_EXTENSION_ID = 5
"""``a=extmap`` id a viewer offering transport-cc uses (aiortc's own are 1–3)."""


def offer_transport_cc(sdp: str, extension_id: int = TRANSPORT_CC_EXTENSION_ID) -> str:
    """Add transport-wide congestion control to an aiortc offer, as browsers offer it:
    ``a=extmap:<id>`` of the transport-wide sequence number extension
    (draft-holmer-rmcat-transport-wide-cc-extensions-01 §2) and ``a=rtcp-fb:<pt> transport-cc``
    for every payload type of every audio/video m= section.  aiortc neither offers nor
    implements it; the caller must send the feedback itself."""
    out: list[str] = []
    media = False
    for line in sdp.splitlines():
        if line.startswith("m="):
            media = line.startswith(("m=audio", "m=video"))
        out.append(line)
        if media and line.startswith("a=mid:"):
            out.append(f"a=extmap:{extension_id} {TRANSPORT_CC_URI}")
        elif media and line.startswith("a=rtpmap:"):
            out.append(f"a=rtcp-fb:{line[9:].split()[0]} transport-cc")
    return "\r\n".join(out) + "\r\n"


async def _post_offer(
    pc: RTCPeerConnection, url: str, token: str | None, http: aiohttp.ClientSession | None,
    edit_offer: Callable[[str], str] | None = None,
) -> tuple[str, str, str | None]:
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    own = http is None
    http = http or aiohttp.ClientSession()
    offer = pc.localDescription.sdp if edit_offer is None else edit_offer(pc.localDescription.sdp)
    try:
        async with http.post(url, data=offer, headers=headers) as resp:
            body = await resp.text()
            if resp.status != 201:
                try:
                    problem: dict[str, object] | str = await resp.json(content_type=None)
                except ValueError:
                    problem = body
                raise WhipError(resp.status, problem, dict(resp.headers))
            location = urljoin(url, resp.headers["Location"])
            etag = resp.headers.get("ETag")
    finally:
        if own:
            await http.close()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    return location, body, etag


async def publish(
    url: str,
    token: str,
    tracks: list[MediaStreamTrack],
    *,
    chat: bool = False,
    http: aiohttp.ClientSession | None = None,
) -> WhipSession:
    """WHIP-publish ``tracks`` to ``url`` (``.../whip/{room}``) with the stream key."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for track in tracks:
        pc.addTransceiver(track, direction="sendonly")
    session = await _negotiate(pc, url, token, chat, http)
    session.tracks = list(tracks)
    return session


async def _negotiate(
    pc: RTCPeerConnection, url: str, token: str | None, chat: bool, http: aiohttp.ClientSession | None,
    edit_offer: Callable[[str], str] | None = None,
) -> WhipSession:
    channel = pc.createDataChannel("chat", ordered=True) if chat else None
    try:
        location, answer, etag = await _post_offer(pc, url, token, http, edit_offer)
    except BaseException:
        await close_pc(pc)
        raise
    return WhipSession(pc, location, answer, etag, channel=channel, token=token)


async def view(
    url: str,
    *,
    kinds: tuple[str, ...] = ("video", "audio"),
    chat: bool = False,
    token: str | None = None,
    http: aiohttp.ClientSession | None = None,
    transport_cc: bool = False,
) -> WhipSession:
    """WHEP-view ``url`` (``.../whep/{room}``): recvonly transceivers (+ optional chat);
    ``transport_cc`` offers transport-wide congestion control (:func:`offer_transport_cc`)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for kind in kinds:
        pc.addTransceiver(kind, direction="recvonly")
    return await _negotiate(pc, url, token, chat, http, offer_transport_cc if transport_cc else None)


async def wait_connected(pc: RTCPeerConnection, timeout: float = 10.0) -> None:
    """Wait until ``connectionState == "connected"``; raise on failure/timeout."""
    done = asyncio.get_running_loop().create_future()

    def check() -> None:
        if pc.connectionState == "connected" and not done.done():
            done.set_result(None)
        elif pc.connectionState in ("failed", "closed") and not done.done():
            done.set_exception(ConnectionError(f"peer connection {pc.connectionState}"))

    pc.on("connectionstatechange", check)
    check()
    try:
        # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation
        # that arrives once the awaited future is done.
        async with asyncio.timeout(timeout):
            await done
    finally:
        pc.remove_listener("connectionstatechange", check)
