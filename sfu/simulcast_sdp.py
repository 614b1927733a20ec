"""Simulcast in the offer/answer: ``a=rid`` (RFC 8851) and ``a=simulcast`` (RFC 8853).

aiortc parses neither attribute and drops both from its answers, so the SFU reads them
from the offer's text and writes the answer's lines itself.  A publisher that offers, in
its video m= section::

    a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id
    a=extmap:5 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id
    a=rid:q send
    a=rid:h send
    a=rid:f send
    a=simulcast:send q;h;f

is answered ``a=rid:<id> recv`` for each accepted stream and ``a=simulcast:recv q;h;f``
(RFC 8853 §5.3: the answerer reverses the direction and may remove streams), and the two
header extensions with the offer's ids (RFC 8852 §3–4), so each simulcast stream's packets
can be told apart by their RtpStreamId.  At most :data:`MAX_LAYERS` streams are accepted
(the first ones listed); alternatives (``a,b``) keep their first format; a paused stream
(``~q``) stays paused in the answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidSdp

URI_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
URI_REPAIRED_RID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
MAX_LAYERS = 3
"""Spatial layers (simulcast streams) the SFU accepts from one publisher."""

_RID_ID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")  # RFC 8851 §10 rid-syntax; 16 bytes: RFC 8852 §3
_EXTMAP = re.compile(r"^a=extmap:(\d+)(?:/\w+)? (\S+)")


@dataclass(frozen=True)
class SimulcastOffer:
    """The simulcast streams a publisher's video m= section offers to send.

    :ivar rids: accepted RtpStreamIds in the order of ``a=simulcast:send`` (at most
        :data:`MAX_LAYERS`); the order says nothing about resolution.
    :ivar paused: the rids offered paused (``~``).
    :ivar rid_extension_id: ``a=extmap`` id of the RtpStreamId extension (RFC 8852 §3).
    :ivar repaired_rid_extension_id: id of the RepairedRtpStreamId extension (§4), or ``None``.
    """

    rids: tuple[str, ...]
    paused: frozenset[str]
    rid_extension_id: int
    repaired_rid_extension_id: int | None


def _sections(sdp: str) -> list[list[str]]:
    """The SDP's lines split into [session, m-section, m-section, ...]."""
    sections: list[list[str]] = [[]]
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    return sections


def _send_streams(value: str) -> list[str] | None:
    """The ``send`` stream list of an ``a=simulcast`` value (RFC 8853 §5.1), or ``None``."""
    words = value.split()
    for direction, streams in zip(words[::2], words[1::2], strict=False):
        if direction == "send":
            return [alt.split(",")[0] for alt in streams.split(";") if alt]
    return None


def offered_simulcast(sdp: str) -> SimulcastOffer | None:
    """The video m= section's simulcast offer, or ``None`` when it offers no simulcast
    (no ``a=simulcast:send``, or fewer than two usable rids, or no RtpStreamId extension —
    without it the streams cannot be told apart, so the offer is answered as one stream).

    :raises InvalidSdp: an ``a=simulcast`` stream names a rid without an ``a=rid:<id> send``
        line, or a rid id breaks RFC 8851 §10 (400).
    """
    for section in _sections(sdp)[1:]:
        if not section[0].startswith("m=video") or " 0 " in section[0][:10]:
            continue
        rids: dict[str, str] = {}
        streams: list[str] | None = None
        extensions: dict[str, int] = {}
        for line in section:
            if line.startswith("a=rid:"):
                parts = line[6:].split()
                if len(parts) < 2 or not _RID_ID.match(parts[0]):
                    raise InvalidSdp(f"malformed a=rid line {line[:60]!r} (RFC 8851 §10)")
                rids[parts[0]] = parts[1]
            elif line.startswith("a=simulcast:"):
                streams = _send_streams(line[12:])
            elif match := _EXTMAP.match(line):
                extensions[match.group(2)] = int(match.group(1))
        if not streams:
            return None
        ids = []
        paused = set()
        for stream in streams:
            rid = stream.lstrip("~")
            if rids.get(rid) != "send":
                raise InvalidSdp(f"a=simulcast names rid {rid!r} without 'a=rid:{rid} send' (RFC 8853 §5.1)")
            if stream.startswith("~"):
                paused.add(rid)
            if rid not in ids:
                ids.append(rid)
        ids = ids[:MAX_LAYERS]
        if len(ids) < 2 or URI_RID not in extensions:
            return None
        return SimulcastOffer(tuple(ids), frozenset(paused & set(ids)), extensions[URI_RID],
                              extensions.get(URI_REPAIRED_RID))
    return None


def answer_simulcast(answer_sdp: str, offer: SimulcastOffer) -> str:
    """Add ``a=rid:<id> recv`` lines and ``a=simulcast:recv`` to the answer's video m= section
    (RFC 8853 §5.3), right after its last ``a=extmap`` line (or at its end)."""
    lines = [f"a=rid:{rid} recv" for rid in offer.rids]
    lines.append("a=simulcast:recv " + ";".join(
        ("~" if rid in offer.paused else "") + rid for rid in offer.rids))
    out: list[str] = []
    for section in _sections(answer_sdp):
        if section and section[0].startswith("m=video"):
            at = max((i for i, line in enumerate(section) if line.startswith("a=extmap:")),
                     default=len(section) - 1) + 1
            section = [*section[:at], *lines, *section[at:]]
        out.extend(section)
    return "\r\n".join(out) + "\r\n"
