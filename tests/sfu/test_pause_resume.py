"""sfu.pause_resume (RFC 7728): the PAUSE-RESUME packet format, the SDP offer line, and the
SFU's side of pausing a stream no one consumes (a fake clock; the real exchange with the
RTMP relay is tests/ingest/test_encoder_to_webrtc.py::test_the_opus_is_not_encoded_while_no_one_takes_it)."""

from __future__ import annotations

import struct

import pytest
from aiortc import sdp as aiortc_sdp

from sfu import pause_resume
from sfu.pause_resume import PAUSE, PAUSED, RESUME, PauseMessage, StreamPauser


def test_messages_round_trip_with_the_header_rfc_7728_gives_them() -> None:
    messages = [PauseMessage(0x11223344, PAUSE, 7), PauseMessage(0x55667788, PAUSED, 0xFFFF, b"\x00\x01\x02\x03")]
    packet = pause_resume.build(0xCAFEBABE, messages)
    first, pt, length, sender, media = struct.unpack_from("!BBHII", packet)
    assert (first, pt) == (0x80 | 9, 205)  # V=2, FMT 9; RTPFB
    assert (length + 1) * 4 == len(packet) == 12 + 8 + 12
    assert (sender, media) == (0xCAFEBABE, 0)  # the media source field is unused
    assert packet[12:20] == bytes.fromhex("11223344") + b"\x00\x00\x00\x07"  # type 0 in the top nibble
    assert pause_resume.parse(packet) == messages


def test_reserved_types_are_skipped_and_a_cut_entry_ends_the_list() -> None:
    packet = pause_resume.build(1, [PauseMessage(2, RESUME, 1), PauseMessage(3, 9, 1), PauseMessage(4, PAUSE, 2)])
    assert pause_resume.parse(packet) == [PauseMessage(2, RESUME, 1), PauseMessage(4, PAUSE, 2)]
    assert pause_resume.parse(packet[:-4]) == [PauseMessage(2, RESUME, 1)]  # length field now too long
    with pytest.raises(ValueError, match="PAUSE-RESUME"):
        pause_resume.parse(bytes([0x8F, 205]) + packet[2:])  # FMT 15: transport-cc
    with pytest.raises(ValueError, match="words"):
        pause_resume.build(1, [PauseMessage(2, PAUSED, 0, b"\x00")])


OFFER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 97\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=rtpmap:97 H264/90000\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=rtpmap:96 opus/48000/2\r\n"
)


def test_the_offer_gets_ccm_pause_on_the_codec_of_the_section_and_the_sfu_sees_it() -> None:
    sdp = pause_resume.offer_pause(OFFER, 1, 96)
    assert "a=rtpmap:96 opus/48000/2\r\na=rtcp-fb:96 ccm pause nowait\r\n" in sdp
    media = aiortc_sdp.SessionDescription.parse(sdp).media
    assert pause_resume.offered(media[1], 96) and not pause_resume.offered(media[0], 97)
    assert not pause_resume.offered(aiortc_sdp.SessionDescription.parse(OFFER).media[1], 96)
    with pytest.raises(ValueError):
        pause_resume.offer_pause(OFFER, 0, 96)  # no Opus in the video section
    with pytest.raises(ValueError):
        pause_resume.offer_pause(OFFER, 2, 96)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_stream_is_paused_after_a_while_alone_and_resumed_at_once() -> None:
    clock, sent = Clock(), []
    pauser = StreamPauser(sent.append, clock)
    pauser.tick(None, False, 0.0)
    assert sent == []  # nothing arrived yet: nothing to pause
    pauser.tick(1234, False, clock.now)
    clock.now += pause_resume.PAUSE_AFTER_S - 0.1
    pauser.tick(1234, False, clock.now)
    assert sent == [] and not pauser.paused  # not yet: a viewer reloading its page
    clock.now += 0.2
    pauser.tick(1234, False, clock.now)
    assert sent == [PauseMessage(1234, PAUSE, 0)] and pauser.paused and pauser.pauses == 1
    pauser.wanted(1234)  # a viewer joins
    assert sent[-1] == PauseMessage(1234, RESUME, 0) and not pauser.paused
    resumed_at = clock.now
    clock.now += 0.3
    pauser.tick(1234, True, resumed_at + 0.1)  # packets again
    clock.now += 10
    pauser.tick(1234, True, clock.now)
    assert len(sent) == 2  # nothing more while it is consumed
    for _ in range(int(pause_resume.PAUSE_AFTER_S * 2) + 2):
        clock.now += 0.5
        pauser.tick(1234, False, clock.now)
    assert sent[-1] == PauseMessage(1234, PAUSE, 1) and pauser.pauses == 2  # a new PAUSE: the next PauseID


def test_requests_the_sender_did_not_act_on_are_sent_again() -> None:
    clock, sent = Clock(), []
    pauser = StreamPauser(sent.append, clock)
    pauser.tick(7, False, clock.now)
    clock.now += pause_resume.PAUSE_AFTER_S
    pauser.tick(7, False, clock.now)
    assert sent == [PauseMessage(7, PAUSE, 0)]
    clock.now += pause_resume.RESEND_S
    pauser.tick(7, False, clock.now)  # packets still arrive: the PAUSE was lost
    assert sent == [PauseMessage(7, PAUSE, 0)] * 2 and pauser.pauses == 1
    last_packet = clock.now
    clock.now += pause_resume.RESEND_S
    pauser.tick(7, False, last_packet)  # quiet now
    assert len(sent) == 2
    pauser.wanted(7)
    clock.now += pause_resume.RESEND_S
    pauser.tick(7, True, last_packet)  # still quiet after the RESUME: again
    assert sent[-2:] == [PauseMessage(7, RESUME, 0)] * 2
