"""RTP stream pause and resume (RFC 7728): a receiver that has no use for a stream asks its
sender to stop sending it, and to start again when it has.

The SFU uses it for the audio of publishers that offered it — the RTMP/SRT relay, whose Opus
is encoded from the broadcaster's AAC only for WebRTC: while no one takes a room's Opus (no
WebRTC viewer, no pipe to another node, an LL-HLS bridge that publishes the encoder's own
AAC), the relay need not encode it.  Browsers do not offer it, so their streams are never
paused.

* Negotiation (§10): ``a=rtcp-fb:<pt> ccm pause nowait`` on the codec, in the offer and in
  the answer — ``nowait``: the session is point to point, the sender pauses at once instead
  of waiting for other receivers to object (§6.2).
* Messages (§8): an RTCP transport-layer feedback packet (RTPFB, PT 205) of FMT 9 whose FCI
  entries each hold the target SSRC, a type (:data:`PAUSE`, :data:`RESUME`, :data:`PAUSED`,
  :data:`REFUSED`), a parameter length in 32-bit words, a PauseID and type-specific words.
  The media source SSRC of the header is unused (0): aiortc's own RTCP routing never sees
  these (:func:`sfu.aiortc_private.install_pause_resume_listener`).
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Callable
from typing import NamedTuple

from aiortc.rtcrtpparameters import RTCRtcpFeedback
from aiortc.sdp import MediaDescription

FMT = 9
"""RTPFB FMT of PAUSE-RESUME (RFC 7728 §8)."""
PAUSE, RESUME, PAUSED, REFUSED = 0, 1, 2, 3
FEEDBACK = RTCRtcpFeedback(type="ccm", parameter="pause nowait")
"""What to answer (``a=rtcp-fb:<pt> ccm pause nowait``, §10.1)."""
_RTPFB = 205


class PauseMessage(NamedTuple):
    """One FCI entry: ``target_ssrc``, ``type`` (:data:`PAUSE` …), ``pause_id`` (16 bits)
    and the type-specific words (PAUSED: the extended sequence number of the last packet)."""

    target_ssrc: int
    type: int
    pause_id: int
    type_specific: bytes = b""


def build(sender_ssrc: int, messages: list[PauseMessage]) -> bytes:
    """One PAUSE-RESUME RTCP packet (§8) from ``sender_ssrc`` with ``messages``.

    :raises ValueError: a type-specific field that is not whole 32-bit words."""
    fci = b""
    for message in messages:
        if len(message.type_specific) % 4:
            raise ValueError("type-specific data must be whole 32-bit words")
        fci += struct.pack("!IBBH", message.target_ssrc, (message.type & 0x0F) << 4,
                           len(message.type_specific) // 4, message.pause_id & 0xFFFF) + message.type_specific
    return struct.pack("!BBHII", 0x80 | FMT, _RTPFB, (8 + len(fci)) // 4, sender_ssrc, 0) + fci


def parse(packet: bytes) -> list[PauseMessage]:
    """The messages of one PAUSE-RESUME packet (RFC 3550 header, then §8's FCI entries); an
    entry cut short ends the list.  Types other than the four (§8: reserved) are skipped.

    :raises ValueError: not an RTPFB packet of FMT 9."""
    if len(packet) < 12 or packet[0] >> 6 != 2 or packet[0] & 0x1F != FMT or packet[1] != _RTPFB:
        raise ValueError("not an RTCP PAUSE-RESUME packet")
    end = min(len(packet), (struct.unpack_from("!H", packet, 2)[0] + 1) * 4)
    messages = []
    pos = 12
    while pos + 8 <= end:
        target, type_res, words, pause_id = struct.unpack_from("!IBBH", packet, pos)
        specific_end = pos + 8 + 4 * words
        if specific_end > end:
            break
        if type_res >> 4 <= REFUSED:
            messages.append(PauseMessage(target, type_res >> 4, pause_id, packet[pos + 8:specific_end]))
        pos = specific_end
    return messages


def offered(media: MediaDescription, payload_type: int) -> bool:
    """Whether ``media`` (a section of an offer) offers pause for ``payload_type``."""
    for codec in media.rtp.codecs:
        if codec.payloadType == payload_type:
            return any(fb.type == "ccm" and (fb.parameter or "").split(" ")[0] == "pause"
                       for fb in codec.rtcpFeedback)
    return False


def offer_pause(sdp: str, section: int, payload_type: int) -> str:
    """``sdp`` with ``a=rtcp-fb:<payload_type> ccm pause nowait`` in its media section number
    ``section`` (0 first; aiortc writes no ``ccm`` feedback of its own), after the codec's
    ``a=rtpmap``.

    :raises ValueError: no such section or codec."""
    parts = re.split(r"(?=^m=)", sdp, flags=re.MULTILINE)  # the session part, then the sections
    if 0 <= section < len(parts) - 1:
        media = parts[section + 1]
        rtpmap = re.search(rf"^a=rtpmap:{payload_type} [^\r\n]*\r?\n", media, flags=re.MULTILINE)
        if rtpmap is not None:
            line = f"a=rtcp-fb:{payload_type} ccm pause nowait\r\n"
            parts[section + 1] = media[:rtpmap.end()] + line + media[rtpmap.end():]
            return "".join(parts)
    raise ValueError(f"no codec {payload_type} in media section {section}")


PAUSE_AFTER_S = 3.0
"""Seconds with no consumer before the SFU pauses a stream (a viewer reloading its page
does not stop and restart the encoder)."""
RESEND_S = 1.0
"""A PAUSE the sender did not act on (packets still arrive) or a RESUME it did not (none
arrive) is sent again after this long (RTCP is unreliable, RFC 7728 §6.3)."""


class StreamPauser:
    """The receiving side of one pausable stream (RFC 7728 §6): pauses it after
    :data:`PAUSE_AFTER_S` without a consumer and resumes it as soon as one comes back.

    :param send: sends one message upstream (the owner knows the transport).
    :param clock: monotonic seconds (tests pass a fake one).

    :meth:`tick` runs on the owner's periodic tick; :meth:`wanted` when a consumer is added.
    """

    def __init__(self, send: Callable[[PauseMessage], None], clock: Callable[[], float] = time.monotonic) -> None:
        self._send = send
        self._clock = clock
        self.paused = False
        """A PAUSE went out and no RESUME since (the stream is, or is about to be, quiet)."""
        self._resuming = False
        self._pause_id = 0
        self._idle_since: float | None = None
        self._sent_at = 0.0
        self.pauses = 0
        """PAUSE requests made (retransmissions not counted)."""

    def tick(self, ssrc: int | None, consumed: bool, last_packet_s: float) -> None:
        """``ssrc``: the stream's (None: nothing arrived yet); ``consumed``: it has a consumer
        now; ``last_packet_s``: when its last packet arrived (the clock's seconds)."""
        if ssrc is None:
            return
        now = self._clock()
        if self._resuming:
            if last_packet_s > self._sent_at:  # flowing again: the next PAUSE is a new one
                self._resuming = False
                self._pause_id = (self._pause_id + 1) & 0xFFFF
                self._idle_since = None
            elif now - self._sent_at >= RESEND_S:
                self._request(ssrc, RESUME, now)
            return
        if consumed:
            self._idle_since = None
            if self.paused:
                self.wanted(ssrc)
            return
        if self.paused:
            if last_packet_s > self._sent_at + RESEND_S / 2 and now - self._sent_at >= RESEND_S:
                self._request(ssrc, PAUSE, now)  # still sending: the PAUSE was lost
            return
        if self._idle_since is None:
            self._idle_since = now
        elif now - self._idle_since >= PAUSE_AFTER_S:
            self.paused = True
            self.pauses += 1
            self._request(ssrc, PAUSE, now)

    def wanted(self, ssrc: int | None) -> None:
        """A consumer was added: resume the stream at once if it is paused."""
        if ssrc is not None and self.paused:
            self.paused = False
            self._resuming = True
            self._request(ssrc, RESUME, self._clock())

    def _request(self, ssrc: int, kind: int, now: float) -> None:
        self._sent_at = now
        self._send(PauseMessage(ssrc, kind, self._pause_id))
