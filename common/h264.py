"""H.264 byte-stream helpers shared by the ingest (RTMP/SRT → WHIP) and the LL-HLS packager."""

from __future__ import annotations

from collections.abc import Iterator


def iter_nal_units(data: bytes) -> Iterator[bytes]:
    """The NAL units of an Annex-B byte stream (ITU-T H.264 Annex B), start codes removed;
    bytes before the first start code are skipped.

    Trailing zero bytes (``trailing_zero_8bits``, the first byte of a 4-byte start
    code) are stripped; a NAL unit never ends in 0x00.
    """
    start = data.find(b"\x00\x00\x01")
    while start >= 0:
        start += 3
        end = data.find(b"\x00\x00\x01", start)
        nal = data[start:] if end < 0 else data[start:end]
        nal = nal.rstrip(b"\x00")
        if nal:
            yield nal
        start = end
