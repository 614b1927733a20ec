"""``aiortc_private.srtp_function``: pylibsrtp's protect/unprotect without its per-call
overhead must give the same bytes and the same errors as pylibsrtp itself."""

from __future__ import annotations

import os
import struct

import pylibsrtp
import pytest

from sfu.aiortc_private import srtp_function

KEY = os.urandom(30)


def _session(direction: int) -> pylibsrtp.Session:
    return pylibsrtp.Session(pylibsrtp.Policy(
        key=KEY, ssrc_type=direction, srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80))


def _rtp(seq: int, size: int = 1100) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq, seq * 3000, 4242) + os.urandom(size)


def test_protect_matches_pylibsrtp_and_round_trips() -> None:
    reference, fast = _session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND), _session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    protect = srtp_function(fast)
    receiver = _session(pylibsrtp.Policy.SSRC_ANY_INBOUND)
    for seq in range(200):
        packet = _rtp(seq, size=seq * 5)
        protected = protect(packet)
        assert protected == reference.protect(packet)
        assert receiver.unprotect(protected) == packet


def test_unprotect_rtcp_matches_pylibsrtp_errors_included() -> None:
    sender = _session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    reference, fast = _session(pylibsrtp.Policy.SSRC_ANY_INBOUND), _session(pylibsrtp.Policy.SSRC_ANY_INBOUND)
    unprotect_rtcp = srtp_function(fast, "unprotect_rtcp")
    report = struct.pack("!BBHI", 0x80, 200, 6, 4242) + os.urandom(20)  # an SR's size
    protected = sender.protect_rtcp(report)
    assert unprotect_rtcp(protected) == reference.unprotect_rtcp(protected) == report
    with pytest.raises(pylibsrtp.Error, match="replay"):
        unprotect_rtcp(protected)  # the same index twice
    with pytest.raises(pylibsrtp.Error):
        unprotect_rtcp(b"\x81\xc9" + bytes(40))  # not authenticated
    assert unprotect_rtcp(sender.protect_rtcp(report)) == report, "still usable after errors"


def test_too_long_and_unknown_operation() -> None:
    protect = srtp_function(_session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    with pytest.raises(ValueError, match="too long"):
        protect(_rtp(1, size=1500))
    with pytest.raises(KeyError):
        srtp_function(_session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND), "encrypt")
