"""Test-side RTP taps for aiortc viewers: induced loss and packet capture.

Why aiortc internals here: the only place to see (and drop) a viewer's incoming
RTP after SRTP is ``RTCDtlsTransport._handle_rtp_data`` (aiortc has no public
receive hook; see /work/shared/design/testing.md, "aiortc facts").  Dropping
*after* SRTP unprotect keeps the SRTP replay window untouched, so a NACKed packet
that comes back (as RTX or as a plain resend) is accepted like on a real lossy
link.  Only the test's own viewer is wrapped — the SFU under test is not touched.
"""

from __future__ import annotations

import re
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection

_RTPMAP = re.compile(r"^a=rtpmap:(\d+) ([\w-]+)/(\d+)", re.MULTILINE)
_FMTP_APT = re.compile(r"^a=fmtp:(\d+) apt=(\d+)", re.MULTILINE)


def payload_types(sdp: str, kind: str = "video") -> tuple[int, int | None]:
    """(media PT, RTX PT or None) of the first codec in the ``m=<kind>`` section of ``sdp``."""
    sections = re.split(r"^(?=m=)", sdp, flags=re.MULTILINE)
    for section in sections:
        if not section.startswith(f"m={kind} "):
            continue
        first = int(section.split("\r\n", 1)[0].split()[3])
        rtx = None
        for pt, apt in _FMTP_APT.findall(section):
            if int(apt) == first:
                rtx = int(pt)
        return first, rtx
    raise ValueError(f"no m={kind} section")


def dtls_transport(pc: RTCPeerConnection) -> Any:
    """The (bundled) RTCDtlsTransport that carries the viewer's media."""
    return pc.getTransceivers()[0].receiver.transport


@dataclass
class RtpRecord:
    seq: int  # original sequence number (RTX unwrapped)
    timestamp: int
    ssrc: int
    rtx: bool
    arrival: float  # time.monotonic()


@dataclass
class RtpTap:
    """Wraps one viewer's DTLS transport; drops and/or records incoming RTP.

    :param media_pt: payload type of the stream to act on (the video codec).
    :param rtx_pt: its RTX payload type; RTX packets are recorded (unwrapped),
        never dropped.
    :param drop_every: drop every N-th *new* media packet (0 = no loss).  A
        sequence number is dropped at most once, so its retransmission passes.
    """

    media_pt: int
    rtx_pt: int | None = None
    drop_every: int = 0
    records: list[RtpRecord] = field(default_factory=list)
    dropped: set[int] = field(default_factory=set)
    _seen: set[int] = field(default_factory=set)
    _new: int = 0

    def install(self, pc: RTCPeerConnection) -> RtpTap:
        transport = dtls_transport(pc)
        original = transport._handle_rtp_data

        async def handle_rtp_data(data: bytes, arrival_time_ms: int) -> None:
            if len(data) >= 12 and self.inspect(data):
                return
            await original(data, arrival_time_ms)

        transport._handle_rtp_data = handle_rtp_data
        return self

    def inspect(self, data: bytes) -> bool:
        """Record ``data`` (a plain RTP packet); True when it must be dropped."""
        pt = data[1] & 0x7F
        if pt not in (self.media_pt, self.rtx_pt):
            return False
        _, _, seq, ts, ssrc = struct.unpack_from("!BBHII", data)
        rtx = pt == self.rtx_pt
        if rtx:
            offset = 12 + 4 * (data[0] & 0x0F)
            if data[0] & 0x10:
                offset += 4 + 4 * struct.unpack_from("!H", data, offset + 2)[0]
            if len(data) < offset + 2:
                return False
            seq = struct.unpack_from("!H", data, offset)[0]
        elif seq not in self._seen:
            self._seen.add(seq)
            self._new += 1
            if self.drop_every and self._new % self.drop_every == 0:
                self.dropped.add(seq)
                return True
        self.records.append(RtpRecord(seq, ts, ssrc, rtx, time.monotonic()))
        return False

    def received_seqs(self) -> set[int]:
        return {r.seq for r in self.records}
