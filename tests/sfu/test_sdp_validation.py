"""SDP offer validation (`sfu.sdp_validation`, `sfu.negotiation.parse_offer`).

Table-driven: real aiortc offers with one rule broken are refused as 400 with the
``invalid-sdp`` problem type and a short detail (never aiortc's exception text); through a
real Worker they answer 400, never 500 (a missing or duplicate mid used to be a 500
``ValueError``; an MD5 or truncated fingerprint, junk ``c=`` and ``sctp-port:-1`` used to
be answered 201 with a session that could never connect).  Then hypothesis mutates real
offers (lines dropped, duplicated, garbled): the validator and the Worker answer every one
with an answer or a 4xx, and log no ERROR.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from hypothesis import HealthCheck, given, settings

from loadtest import whip_client
from sfu.config import SfuConfig
from sfu.errors import INVALID_SDP_TYPE, InvalidSdp, SfuError
from sfu.negotiation import parse_offer
from sfu.sdp_validation import valid_candidate, validate_offer
from sfu.worker import Worker
from tests.sdp_mutations import sdp_mutations

PUBLISHER = {"id": "pub", "name": "demo", "role": "publisher"}


async def _offer(direction: str = "sendonly", chat: bool = True) -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction=direction)
    pc.addTransceiver("audio", direction=direction)
    if chat:
        pc.createDataChannel("chat")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


whip_client.pin_loopback()  # the offers' host candidates are on 127.0.0.1
OFFER = asyncio.run(_offer())
"""A real aiortc offer: video + audio sendonly, a data channel, host candidates."""


@pytest.fixture
def offer() -> str:
    return OFFER


def _fingerprint(algorithm: str, octets: int) -> Callable[[str], str]:
    value = ":".join(["AB"] * octets)
    return lambda o: re.sub(r"a=fingerprint:\S+ \S+", f"a=fingerprint:{algorithm} {value}", o)


BROKEN: dict[str, Callable[[str], str]] = {
    "no-mid": lambda o: re.sub(r"a=mid:\S+\r\n", "", o),
    "duplicate-mid": lambda o: o.replace("a=mid:1", "a=mid:0"),
    "md5-fingerprint": _fingerprint("md5", 16),
    "sha-1-fingerprint": _fingerprint("sha-1", 20),
    "unknown-hash": _fingerprint("foo-9", 32),
    "truncated-fingerprint": _fingerprint("sha-256", 10),
    "no-fingerprint": lambda o: re.sub(r"a=fingerprint:.*\r\n", "", o),
    "junk-c": lambda o: re.sub(r"c=IN IP4 \S+", "c=IN IP4 junk!!", o),
    "c-without-address": lambda o: re.sub(r"c=IN IP4 \S+", "c=garbage", o),
    "c-wrong-family": lambda o: re.sub(r"c=IN IP4 \S+", "c=IN IP4 ::1", o),
    "sctp-port-negative": lambda o: o.replace("a=sctp-port:5000", "a=sctp-port:-1"),
    "sctp-port-0": lambda o: o.replace("a=sctp-port:5000", "a=sctp-port:0"),
    "sctp-port-70000": lambda o: o.replace("a=sctp-port:5000", "a=sctp-port:70000"),
    "max-message-size-negative": lambda o: re.sub(r"a=max-message-size:\d+",
                                                  "a=max-message-size:-1", o),
    "short-ufrag": lambda o: re.sub(r"a=ice-ufrag:\S+", "a=ice-ufrag:ab", o),
    "short-pwd": lambda o: re.sub(r"a=ice-pwd:\S+", "a=ice-pwd:short", o),
    "setup-holdconn": lambda o: re.sub(r"a=setup:\S+", "a=setup:holdconn", o),
    "garbage-candidate": lambda o: re.sub(r"a=candidate:.*", "a=candidate:garbage", o, count=1),
    "candidate-port": lambda o: re.sub(r"(a=candidate:\S+ \d+ \S+ \d+ \S+ )\d+",
                                       r"\g<1>99999", o, count=1),
    "bundle-unknown-mid": lambda o: re.sub(r"a=group:BUNDLE .*", "a=group:BUNDLE 0 1 2 7", o),
    "payload-type-200": lambda o: re.sub(r"(m=video \d+ \S+) (\d+)", r"\1 200", o),
    "payload-type-rtcp": lambda o: re.sub(r"(m=video \d+ \S+) (\d+)", r"\1 73", o),
    "rtpmap-clock-rate": lambda o: o.replace("VP8/90000", "VP8/x"),
    "fmtp-unknown-format": lambda o: o.replace("a=mid:0\r\n", "a=mid:0\r\na=fmtp:55 apt=97\r\n"),
    "fmtp-integer": lambda o: re.sub(r"apt=\d+", "apt=x", o, count=1),
    "not-a-line": lambda o: o.replace("a=mid:0\r\n", "a=mid:0\r\nhello\r\n"),
    "no-v-first": lambda o: o.replace("v=0\r\n", "", 1),
    "no-media": lambda o: o.split("m=")[0],
}


def test_a_real_offer_passes(offer: str) -> None:
    validate_offer(offer)
    assert len(parse_offer(offer).media) == 3


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_offer_is_invalid_sdp(offer: str, name: str) -> None:
    broken = BROKEN[name](offer)
    assert broken != offer, "the mutation must change the offer"
    with pytest.raises(InvalidSdp) as info:
        parse_offer(broken)
    error = info.value.to_rpc_error()
    assert (error.status, error.type, error.title) == (400, INVALID_SDP_TYPE, "Invalid SDP offer")
    assert len(error.detail) < 140
    assert "Error" not in error.detail  # no Python exception names or texts


@pytest.mark.parametrize(
    ("candidate", "ok"),
    [
        ("candidate:1 1 udp 2122260223 127.0.0.1 61764 typ host", True),
        ("candidate:1 1 udp 2122260223 192.0.2.1 61764 typ srflx raddr 10.0.0.1 rport 9", True),
        ("candidate:7 1 tcp 1518280447 127.0.0.1 9 typ host tcptype active", True),
        ("candidate:1 1 udp 2122260223 127.0.0.1 70000 typ host", False),
        ("candidate:1 1 udp 2122260223 127.0.0.1 9 typ host rport x", False),
        ("candidate:1 1 udp 2122260223 127.0.0.1 9 typ host raddr", False),
        ("candidate:1 1 udp 2122260223 127.0.0.1 9 typ nonsense", False),
        ("candidate:garbage", False),
    ],
)
def test_candidate_grammar(candidate: str, ok: bool) -> None:
    assert valid_candidate(candidate) is ok


# ------------------------------------------------------------------ through a real Worker
@pytest.fixture
async def worker() -> AsyncIterator[Worker]:
    async with Worker(SfuConfig(ice_gather=("127.0.0.1",))) as w:
        yield w


@pytest.mark.parametrize("name", ["no-mid", "duplicate-mid", "md5-fingerprint",
                                  "truncated-fingerprint", "junk-c", "sctp-port-negative"])
async def test_worker_answers_400_and_allocates_nothing(
    worker: Worker, offer: str, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    result = await worker.publish({"room": "demo", "session_id": f"s-{name}",
                                   "sdp": BROKEN[name](offer), "identity": PUBLISHER})
    assert result["error"]["status"] == 400, result
    assert result["error"]["type"] == INVALID_SDP_TYPE
    assert worker.load()["sessions"] == 0 and worker.routers == {}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# ------------------------------------------------------------------------------ fuzzing
_FUZZ_LINES = OFFER.split("\r\n")


@settings(max_examples=300, deadline=None)
@given(lines=sdp_mutations(_FUZZ_LINES))
def test_validator_fuzz_raises_only_sfu_errors(lines: list[str]) -> None:
    try:
        parse_offer("\r\n".join(lines))
    except SfuError as exc:
        assert 400 <= exc.status < 500


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=sdp_mutations(_FUZZ_LINES))
async def test_worker_fuzz_never_5xx_nor_error_log(
    worker: Worker, caplog: pytest.LogCaptureFixture, lines: list[str]
) -> None:
    caplog.clear()
    for n, rpc in enumerate((worker.publish, worker.subscribe)):
        result = await rpc({"room": "fuzz", "session_id": f"fuzz-{n}", "sdp": "\r\n".join(lines),
                            "identity": PUBLISHER if n == 0 else {"id": "viewer"}})
        if "error" in result:
            assert 400 <= result["error"]["status"] < 500, result
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    for n in range(2):
        await worker.close_session({"session_id": f"fuzz-{n}"})
    assert worker.load()["sessions"] == 0
