"""Helpers shared by the WHIP/WHEP HTTP tests: aiortc offers, SDP pieces, problem checks."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender

SDP = "application/sdp"
FRAG = "application/trickle-ice-sdpfrag"
STRONG_ETAG = re.compile(r'^"[\x21\x23-\x7e]+"$')  # RFC 9110 §8.8.3: no W/ prefix
CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) \d+ typ", re.MULTILINE)
RFC9110_PHRASES = {413: "Content Too Large", 422: "Unprocessable Content"}


MakeOffer = Callable[..., Awaitable[str]]
"""The ``make_offer`` fixture: ``await make_offer(kinds, direction, codecs)`` → an SDP offer."""


async def new_offer(
    pcs: list[RTCPeerConnection],
    kinds: Sequence[str] = ("video", "audio"),
    direction: str = "sendonly",
    codecs: dict[str, list[str]] | None = None,
) -> str:
    """An offer from a real aiortc peer connection (appended to ``pcs`` for closing).

    ``codecs`` restricts a kind to the listed mime types (``{"audio": ["audio/pcmu"]}``);
    the kind ``"application"`` adds a data channel.
    """
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pcs.append(pc)
    for kind in kinds:
        if kind == "application":  # an m=application section: a data channel
            pc.createDataChannel("chat")
            continue
        transceiver = pc.addTransceiver(kind, direction=direction)
        if codecs and kind in codecs:
            caps = RTCRtpSender.getCapabilities(kind).codecs
            transceiver.setCodecPreferences([c for c in caps if c.mimeType.lower() in codecs[kind]])
    await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp


def sections(sdp: str) -> list[str]:
    """The m= sections of an SDP, each as text starting with ``m=``."""
    return ["m=" + part for part in sdp.split("\nm=")[1:]]


def attribute(sdp: str, name: str) -> str | None:
    """The value of the first ``a=name:value`` line."""
    m = re.search(rf"^a={name}:(\S+)", sdp, re.MULTILINE)
    return m.group(1) if m else None


def sdpfrag(offer: str, ufrag: str = "", pwd: str = "", candidate: str = "", end=False) -> str:
    """An RFC 8840 trickle fragment for ``offer``'s first (bundle-tag) m= section.

    Defaults: the offer's ufrag/pwd (a trickle) and its first candidate; a new
    ufrag or pwd makes it an ICE restart.
    """
    first = sections(offer)[0]
    candidate = candidate or next(ln for ln in first.splitlines() if ln.startswith("a=candidate:"))
    ufrag, pwd = ufrag or attribute(offer, "ice-ufrag") or "", pwd or attribute(offer, "ice-pwd")
    kind = first.split(" ")[0]
    lines = [f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}", f"{kind} 9 UDP/TLS/RTP/SAVPF 0"]
    lines += [f"a=mid:{attribute(first, 'mid')}", candidate] + (
        ["a=end-of-candidates"] if end else []
    )
    return "\r\n".join(lines) + "\r\n"


def check_answer(answer: str, direction: str) -> list[str]:
    """Assert max-bundle, rtcp-mux, ``direction`` everywhere, loopback candidates; the m= kinds."""
    media = sections(answer)
    assert all(f"a={direction}" in m.splitlines() for m in media), answer
    assert all("a=rtcp-mux" in m.splitlines() for m in media)
    mids = " ".join(str(attribute(m, "mid")) for m in media)
    assert f"a=group:BUNDLE {mids}" in answer.splitlines()  # max-bundle: one transport
    assert len({attribute(m, "ice-ufrag") for m in media}) == 1
    addresses = CANDIDATE.findall(answer)
    assert addresses and set(addresses) == {"127.0.0.1"}
    return [m.split(" ")[0].removeprefix("m=") for m in media]


TYPED_PROBLEMS = {"https://relaycast.dev/problems/invalid-sdp": (400, "Invalid SDP offer")}
"""Problem types relaycast answers with other than ``about:blank``: (status, title)."""


async def problem(resp: aiohttp.ClientResponse, status: int) -> dict[str, object]:
    """Assert an RFC 9457 problem: ``about:blank`` with the status's reason phrase as the
    title, or one of :data:`TYPED_PROBLEMS` with its title."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    body = await resp.json(content_type=None)
    phrase = RFC9110_PHRASES.get(status) or HTTPStatus(status).phrase
    expected = ("about:blank", phrase, status)
    if body["type"] in TYPED_PROBLEMS:
        expected = (body["type"], TYPED_PROBLEMS[body["type"]][1], TYPED_PROBLEMS[body["type"]][0])
    assert (body["type"], body["title"], body["status"]) == expected
    return body
