"""A video's picture size from the headers of its key frames, read straight from RTP payloads.

Nothing is decoded: the size sits in a few header bytes the encoder writes for decoders —

* H.264: the sequence parameter set (ITU-T H.264 §7.3.2.1.1), carried as a single NAL unit,
  inside a STAP-A or at the start of an FU-A (RFC 6184 §5.6-5.8); an exp-Golomb walk up to
  ``pic_width_in_mbs_minus1``, ``pic_height_in_map_units_minus1`` and the cropping window
  (§7.4.2.1.1, Table 6-1);
* VP8: the 10-byte key-frame header after the payload descriptor (RFC 7741 §4.2): a 3-byte
  frame tag, the start code ``9d 01 2a``, then 14-bit width and height (RFC 6386 §9.1).

VP9 is not parsed: the SFU never negotiates it (aiortc offers VP8 and H.264 only).
Malformed or truncated headers give ``None``, never an exception.
"""

from __future__ import annotations

PictureSize = tuple[int, int]
"""``(width, height)`` in pixels, after cropping."""

# profile_idc values whose SPS carries chroma_format_idc ... (H.264 §7.3.2.1.1)
_HIGH_PROFILES = frozenset((100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135))
_NAL_SPS = 7
_NAL_STAP_A = 24
_NAL_FU_A = 28
_MAX_EXP_GOLOMB_ZEROS = 31  # ue(v) values of an SPS fit in 32 bits (H.264 §9.1)


class BitReader:
    """MSB-first bit reader over an RBSP (emulation prevention bytes removed)."""

    __slots__ = ("_value", "_left")

    def __init__(self, rbsp: bytes) -> None:
        self._value = int.from_bytes(rbsp, "big")
        self._left = len(rbsp) * 8

    def bits(self, count: int) -> int:
        if count > self._left:
            raise ValueError("SPS truncated")
        self._left -= count
        return (self._value >> self._left) & ((1 << count) - 1)

    def ue(self) -> int:
        """Unsigned exp-Golomb ue(v) (H.264 §9.1)."""
        zeros = 0
        while self.bits(1) == 0:
            zeros += 1
            if zeros > _MAX_EXP_GOLOMB_ZEROS:
                raise ValueError("exp-Golomb code too long")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        """Signed exp-Golomb se(v) (H.264 §9.1.1)."""
        code = self.ue()
        return (code + 1) // 2 if code & 1 else -(code // 2)


def rbsp(nal: bytes) -> bytes:
    """The NAL unit's payload without its header byte and emulation prevention bytes
    (``00 00 03`` → ``00 00``, H.264 §7.4.1)."""
    body = nal[1:]
    if b"\x00\x00\x03" not in body:
        return body
    out = bytearray()
    zeros = 0
    for byte in body:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def _skip_scaling_list(reader: BitReader, size: int) -> None:
    """scaling_list() (H.264 §7.3.2.1.1.1): only its length matters here."""
    last, following = 8, 8
    for _ in range(size):
        if following:
            following = (last + reader.se() + 256) % 256
        last = following or last


def h264_sps_size(nal: bytes) -> PictureSize | None:
    """``(width, height)`` from an H.264 SPS NAL unit (header byte included, H.264 §7.3.2.1.1);
    ``None`` if ``nal`` is not a well-formed SPS."""
    if len(nal) < 4 or nal[0] & 0x1F != _NAL_SPS:
        return None
    try:
        return _parse_sps(BitReader(rbsp(nal)))
    except ValueError:
        return None


def _parse_sps(r: BitReader) -> PictureSize | None:
    profile_idc = r.bits(8)
    r.bits(16)  # constraint_set flags, reserved_zero_2bits, level_idc
    r.ue()  # seq_parameter_set_id
    chroma_format_idc, separate_colour_plane = 1, 0
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = r.ue()
        if chroma_format_idc > 3:
            return None
        if chroma_format_idc == 3:
            separate_colour_plane = r.bits(1)
        r.ue()  # bit_depth_luma_minus8
        r.ue()  # bit_depth_chroma_minus8
        r.bits(1)  # qpprime_y_zero_transform_bypass_flag
        if r.bits(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if r.bits(1):  # seq_scaling_list_present_flag[i]
                    _skip_scaling_list(r, 16 if i < 6 else 64)
    r.ue()  # log2_max_frame_num_minus4
    pic_order_cnt_type = r.ue()
    if pic_order_cnt_type == 0:
        r.ue()  # log2_max_pic_order_cnt_lsb_minus4
    elif pic_order_cnt_type == 1:
        r.bits(1)  # delta_pic_order_always_zero_flag
        r.se()  # offset_for_non_ref_pic
        r.se()  # offset_for_top_to_bottom_field
        cycle = r.ue()  # num_ref_frames_in_pic_order_cnt_cycle (0..255)
        if cycle > 255:
            return None
        for _ in range(cycle):
            r.se()
    elif pic_order_cnt_type != 2:
        return None
    r.ue()  # max_num_ref_frames
    r.bits(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = r.ue() + 1
    height_map_units = r.ue() + 1
    frame_mbs_only = r.bits(1)
    if not frame_mbs_only:
        r.bits(1)  # mb_adaptive_frame_field_flag
    r.bits(1)  # direct_8x8_inference_flag
    width = width_mbs * 16
    height = (2 - frame_mbs_only) * height_map_units * 16
    if r.bits(1):  # frame_cropping_flag: offsets in crop units (§7.4.2.1.1)
        left, right, top, bottom = r.ue(), r.ue(), r.ue(), r.ue()
        chroma_array_type = 0 if separate_colour_plane else chroma_format_idc
        if chroma_array_type == 0:
            unit_x, unit_y = 1, 2 - frame_mbs_only
        else:  # SubWidthC, SubHeightC of Table 6-1
            unit_x = 1 if chroma_array_type == 3 else 2
            unit_y = (2 if chroma_array_type == 1 else 1) * (2 - frame_mbs_only)
        width -= unit_x * (left + right)
        height -= unit_y * (top + bottom)
    if width <= 0 or height <= 0 or width > 16384 or height > 16384:
        return None
    return width, height


def h264_payload_sps(payload: bytes) -> bytes | None:
    """The SPS NAL unit an H.264 RTP payload carries (single NAL unit, STAP-A, or the first
    fragment of an FU-A — RFC 6184 §5.6-5.8), else ``None``."""
    if not payload:
        return None
    nal_type = payload[0] & 0x1F
    if nal_type == _NAL_SPS:
        return payload
    if nal_type == _NAL_STAP_A:
        pos = 1
        while pos + 2 < len(payload):
            size = (payload[pos] << 8) | payload[pos + 1]
            start = pos + 2
            if size == 0 or start + size > len(payload):
                return None
            if payload[start] & 0x1F == _NAL_SPS:
                return payload[start:start + size]
            pos = start + size
        return None
    if nal_type == _NAL_FU_A and len(payload) > 2:
        fu_header = payload[1]
        if fu_header & 0x80 and fu_header & 0x1F == _NAL_SPS:  # start bit, original type
            return bytes(((payload[0] & 0xE0) | _NAL_SPS,)) + payload[2:]
    return None


def vp8_keyframe_size(payload: bytes) -> PictureSize | None:
    """``(width, height)`` from an RTP VP8 payload that starts a key frame (RFC 7741 §4.2,
    RFC 6386 §9.1: the 14-bit sizes, the 2-bit scaling hints ignored); else ``None``."""
    if len(payload) < 2:
        return None
    first = payload[0]
    if not first & 0x10 or first & 0x07:  # S bit, partition index 0
        return None
    pos = 1
    if first & 0x80:  # X: extension byte
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if pos >= len(payload):
                return None
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T/K: TID/Y/KEYIDX
            pos += 1
    header = payload[pos:pos + 10]
    if len(header) < 10 or header[0] & 0x01 or header[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(header[6:8], "little") & 0x3FFF
    height = int.from_bytes(header[8:10], "little") & 0x3FFF
    if not width or not height:
        return None
    return width, height


def keyframe_picture_size(mime_type: str, payload: bytes) -> PictureSize | None:
    """The picture size a key frame's first RTP payload announces, by codec (``"video/VP8"``,
    ``"video/H264"``); ``None`` when it carries none (an H.264 IDR without its SPS)."""
    mime = mime_type.lower()
    if mime == "video/vp8":
        return vp8_keyframe_size(payload)
    if mime == "video/h264":
        sps = h264_payload_sps(payload)
        return None if sps is None else h264_sps_size(sps)
    return None
