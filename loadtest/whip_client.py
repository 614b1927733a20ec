"""Minimal WHIP/WHEP clients on aiortc, for the load tester and the tests.

Every peer connection is created with explicit ICE servers (none by default)
and host candidates pinned to loopback through
:func:`sfu.aiortc_private.set_host_addresses`, so no traffic leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from urllib.parse import urljoin

import aiohttp
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from sfu import aiortc_private


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

    async def close(self, http: aiohttp.ClientSession | None = None) -> int | None:
        """DELETE the resource (best effort) and close the peer connection."""
        status = None
        own = http is None
        http = http or aiohttp.ClientSession()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            async with http.delete(self.location, headers=headers) as resp:
                status = resp.status
        except aiohttp.ClientError:
            pass
        finally:
            if own:
                await http.close()
            await self.pc.close()
        return status


async def _post_offer(
    pc: RTCPeerConnection, url: str, token: str | None, http: aiohttp.ClientSession | None
) -> tuple[str, str, str | None]:
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    own = http is None
    http = http or aiohttp.ClientSession()
    try:
        async with http.post(url, data=pc.localDescription.sdp, headers=headers) as resp:
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
    pc: RTCPeerConnection, url: str, token: str | None, chat: bool, http: aiohttp.ClientSession | None
) -> WhipSession:
    channel = pc.createDataChannel("chat", ordered=True) if chat else None
    try:
        location, answer, etag = await _post_offer(pc, url, token, http)
    except BaseException:
        await pc.close()
        raise
    return WhipSession(pc, location, answer, etag, channel=channel, token=token)


async def view(
    url: str,
    *,
    kinds: tuple[str, ...] = ("video", "audio"),
    chat: bool = False,
    token: str | None = None,
    http: aiohttp.ClientSession | None = None,
) -> WhipSession:
    """WHEP-view ``url`` (``.../whep/{room}``): recvonly transceivers (+ optional chat)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for kind in kinds:
        pc.addTransceiver(kind, direction="recvonly")
    return await _negotiate(pc, url, token, chat, http)


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
        await asyncio.wait_for(done, timeout)
    finally:
        pc.remove_listener("connectionstatechange", check)
