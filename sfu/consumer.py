"""Consumer: one subscriber's copy of a Producer (LiveKit ``DownTrack``).

Per forwarded packet a consumer rewrites the RTP header — SSRC, sequence
number, timestamp (via its :class:`Forwarder`), payload type, header-extension
ids — and sends it with one SRTP protect and one ``sendto``.  It also:

* gates on a key frame when it starts or its producer changes;
* keeps a sequencer ring (output seq → shared packet) to answer NACKs
  (RFC 4585 §6.2.1), as RTX (RFC 4588) when negotiated;
* turns PLI/FIR from the viewer into a throttled key-frame request upstream;
* emits an RTCP sender report (RFC 3550 §6.4.1) per second mapped from the
  publisher's own reports, so players can lip-sync audio and video;
* numbers every packet for transport-wide congestion control when the viewer negotiated
  it (draft-holmer-rmcat-transport-wide-cc-extensions-01 §2), through the viewer's
  :class:`~sfu.bandwidth.BandwidthEstimator`, which the viewer's feedback drives.

An *adaptive* video consumer (a viewer's) picks its layer itself (mediasoup
``SimulcastConsumer``, LiveKit ``DownTrack`` + ``StreamAllocator``): every tick
:meth:`Consumer.update_layers` asks its :class:`~sfu.layer_selector.LayerSelector` for the
(spatial, temporal) target that fits the estimate and the viewer's rendered size
(:meth:`Consumer.set_max_size`); a spatial switch waits for a key frame of the target
simulcast stream (PLI upstream for it), a temporal one happens at the next frame that
allows it (VP8 layer sync, RFC 7741 §4.2); frames above the temporal target are dropped
and the output sequence numbers close up behind them (:meth:`Forwarder.drop`), VP8 picture
ids stay continuous (:class:`~sfu.vp8.Vp8Munger`); when nothing fits, video pauses and audio
goes on.
"""

from __future__ import annotations

import itertools
import logging
import struct
import time
from array import array
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiortc import RTCRtpCodecParameters
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    AnyRtcpPacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    unpack_remb_fci,
)

from . import aiortc_private
from .forwarder import Forwarder
from .layer_selector import LayerInfo, LayerSelector
from .rtp import URI_AUDIO_LEVEL, sender_elements
from .twcc import TRANSPORT_CC_URI
from .vp8 import Vp8Munger

if TYPE_CHECKING:
    from .estimator_link import Estimator
    from .producer import Layer, MediaPacket, Producer

logger = logging.getLogger(__name__)
_ids = itertools.count(1)
_HEADER = struct.Struct("!BBHII")
"""The fixed RTP header (RFC 3550 §5.1) when no extension is sent: V/P/X/CC, M/PT, seq, ts, SSRC."""
_U16 = struct.Struct("!H").pack
_header_structs: dict[tuple[int, bool, int], struct.Struct] = {}


def _header_struct(elements: int, twcc: bool, pad: int) -> struct.Struct:
    """The fixed RTP header, then ``elements`` bytes passed as one ``bytes`` (an RFC 8285
    block's 0xBEDE, length and elements; none without extensions), the transport-wide
    sequence number (``twcc``: its element's id byte ends ``elements``) and ``pad`` zero
    bytes, in one :class:`struct.Struct`."""
    key = (elements, twcc, pad)
    fmt = _header_structs.get(key)
    if fmt is None:
        fmt = _header_structs[key] = struct.Struct(f"!BBHII{elements}s{'H' if twcc else ''}{pad}x")
    return fmt
CONGESTION_MEMORY_S = 3.0
"""An estimate that fell within this many seconds is a congestion signal: only then may it
take a viewer below what it receives now (an estimate that is merely low — the estimator
has not yet seen the rate the stream needs — does not).  With transport-cc "fell" means
the estimator's detectors cut it (``congestion_cuts``): a probe's verdict that the link is
full lowers the estimate too, but the media alone did not congest it."""
KEYFRAME_WAIT_RETRY_S = 1.0
PAUSE_AFTER_S = 2.0
"""Video pauses only when even the lowest layer has not fitted the budget for this long."""
RTX_SHARE = 0.5
"""Retransmissions take at most this share of the viewer's bandwidth estimate."""


class Consumer:
    """Forwards one producer's packets to one subscriber transport.

    :param kind: ``"audio"`` or ``"video"``.
    :param clock_rate: codec clock rate in Hz.
    :param adaptive: a video consumer that picks its own layer (viewers); a non-adaptive
        one (node pipes) gets the producer's top layer, every temporal layer.
    """

    HISTORY = 1024  # packets kept per consumer for NACK (~3 s of 1.5 Mbps video)

    def __init__(self, kind: str, clock_rate: int, subscriber_id: str, *, adaptive: bool = False) -> None:
        self.id = f"c{next(_ids)}"
        self.kind = kind
        self.subscriber_id = subscriber_id
        self.producer: Producer | None = None
        self.forwarder = Forwarder(clock_rate, frame_ticks=3000 if kind == "video" else 960)
        self.clock_rate = clock_rate
        self.codec: RTCRtpCodecParameters | None = None  # negotiated with the viewer
        self.params: aiortc_private.SendParameters | None = None
        self.raw: aiortc_private.RawRtpSender | None = None
        self.closed = False
        self.bwe: Estimator | None = None
        """The viewer transport's estimator (shared with its other consumers), if any."""
        # counters
        self.packets_sent = 0
        self.octets_sent = 0
        self.retransmits = 0
        self.nacks_received = 0
        self.plis_received = 0
        self.dropped_waiting = 0
        self.dropped_temporal = 0
        self.layer_switches = 0
        self.padding_sent = 0
        self.remb_bps: int | None = None
        self.fraction_lost = 0
        self.rtt_s: float | None = None
        # The sequencer ring, by output seq % HISTORY, as parallel arrays rather than a tuple
        # per packet: a tuple would be a new GC-tracked object per packet per viewer, and the
        # ring's churn (200 viewers × 1,024 slots) made the collector's full passes take
        # ~130 ms every few seconds in the forwarding process.
        self._sent_ids = array("q", [-1]) * self.HISTORY
        """(forwarder epoch << 48) | (output timestamp << 16) | output seq per slot; -1: empty."""
        self._sent_media: list[MediaPacket | None] = [None] * self.HISTORY
        self._sent_payload: list[bytes | None] = [None] * self.HISTORY
        """The payload as sent (``media.payload``, or a copy with the VP8 descriptor rewritten)."""
        self._resent_at = array("d", bytes(8 * self.HISTORY))  # monotonic time, per ring slot
        self._rtx_tokens = 0.0  # bytes retransmissions may still take (bucket of 100 ms)
        self._rtx_refilled = 0.0
        self.retransmits_skipped = 0
        self.retransmits_stale = 0
        self._rtx_seq = 0
        self._waiting_since = time.monotonic()
        self._last_sr_mid = 0
        self._last_sr_time = 0.0
        # header template
        self._pt = 0
        self._ssrc = 0
        self._ext_static = b""
        self._ast_element = b""  # one-byte-header element prefix for abs-send-time
        self._level_id = 0
        self._twcc_id = 0
        self._ext_layout: tuple[bytes, bytes, int, int] = (b"", b"", 0, 0)
        """(_ext_static, _ast_element, _level_id, _twcc_id): the key of a packet's extension
        block cache (MediaPacket.extensions), fixed once the sender started."""
        self._next_twcc = None  # bound BandwidthEstimator.next_sequence when negotiated
        # layers (adaptive video consumers)
        self.adaptive = adaptive and kind == "video"
        self.selector = LayerSelector() if self.adaptive else None
        self.max_width: int | None = None
        self.max_height: int | None = None
        self.paused = False
        """Video paused: not even the lowest layer fits the estimate."""
        self._layer: Layer | None = None  # the layer forwarded now (adaptive)
        self._target_layer: Layer | None = None  # waiting for its key frame
        self._tid = 255  # highest temporal layer forwarded now
        self._target_tid = 255
        self._munger = None
        self._last_estimate = 0
        self._last_source = ""
        self._last_cuts = 0
        self._short_since: float | None = None  # when the budget fell below the lowest layer
        self._estimate_fell_at = -1e9

    # ------------------------------------------------------------ lifecycle
    def on_sender_started(self, params: aiortc_private.SendParameters, raw: aiortc_private.RawRtpSender) -> None:
        self.params = params
        self.raw = raw
        self._pt = params.codec.payloadType or 0  # always set once negotiated
        self._ssrc = params.ssrc
        ext = params.extensions
        self._ext_static, self._ast_element = sender_elements(ext, params.mid)
        self._level_id = ext.get(URI_AUDIO_LEVEL, 0) if 1 <= ext.get(URI_AUDIO_LEVEL, 0) <= 14 else 0
        twcc_id = ext.get(TRANSPORT_CC_URI, 0)
        if 1 <= twcc_id <= 14 and self.bwe is not None:
            self._twcc_id = twcc_id
            self._next_twcc = self.bwe.next_sequence
        self._ext_layout = (self._ext_static, self._ast_element, self._level_id, self._twcc_id)
        if self.kind == "video" and params.codec.mimeType.lower() == "video/vp8":
            self._munger = Vp8Munger()
        self._rtx_seq = self.forwarder.last_seq_out ^ 0x5A5A
        if self.producer is not None:
            self._ask_keyframe()

    def attach(self, producer: Producer) -> None:
        """Start (or resume) forwarding ``producer``; gates on its next key frame."""
        if self.producer is producer:
            return
        if self.producer is not None:
            self.producer.remove_consumer(self)
        self.forwarder.switch_source()
        self.producer = producer
        self._waiting_since = time.monotonic()
        if self.adaptive:
            self._layer = self._target_layer = None
            self._tid = self._target_tid = 255
            self.paused = False
            self._choose_layer(producer, time.monotonic(), 0)  # asks the layer for a key frame
        else:
            producer.add_consumer(self)
        if self.raw is not None and not self.adaptive:
            # Not yet connected: on_sender_started asks once packets can flow;
            # a key frame now would arrive before it and be wasted.
            self._ask_keyframe()

    def detach(self) -> None:
        """Producer gone (publisher left): keep the output space, wait for the next one."""
        if self.producer is not None:
            self.producer.remove_consumer(self)
            self.producer = None
        self._layer = self._target_layer = None
        self.forwarder.switch_source()

    def close(self) -> None:
        self.detach()
        self.closed = True
        self.raw = None
        self._next_twcc = None
        self._sent_media = []

    @property
    def current_layer(self) -> Layer | None:
        """The producer layer this adaptive consumer forwards now (``None``: not adaptive,
        paused, or before its first key frame)."""
        return self._layer

    @property
    def waiting_for_keyframe(self) -> bool:
        return self.producer is not None and not self.forwarder.started and not self.paused

    def needs_keyframe_retry(self, now: float, after_s: float = KEYFRAME_WAIT_RETRY_S) -> bool:
        """True when still gated on a key frame ``after_s`` seconds after asking."""
        if self.kind != "video" or self.raw is None:
            return False
        if not (self.waiting_for_keyframe or self._target_layer is not None):
            return False
        if now - self._waiting_since >= after_s:
            self._waiting_since = now
            return True
        return False

    def request_keyframe(self) -> None:
        """Ask the publisher for a key frame of the layer this consumer waits for or gets."""
        self._ask_keyframe()

    def _ask_keyframe(self) -> None:
        producer = self.producer
        if producer is None or self.kind != "video":
            return
        layer = self._target_layer or self._layer
        if layer is not None:
            if not producer.closed:
                layer.request_keyframe()
        elif not self.adaptive:
            producer.request_keyframe()

    # --------------------------------------------------------------- layers
    def set_max_size(self, width: int | None, height: int | None) -> None:
        """The viewer's rendered video size in device pixels (``None``: no hint); the consumer
        never sends a layer much larger (:class:`~sfu.layer_selector.LayerSelector`).  Applied
        at once."""
        self.max_width, self.max_height = width, height
        if self.producer is not None and self.adaptive:
            self.update_layers(time.monotonic(), 0)

    def _budget(self, now: float, audio_bps: int) -> int | None:
        """Bits per second the video may use: the estimate less the audio; ``None`` (no
        limit) without an estimator.  While the estimate has not fallen lately it never
        counts for less than what this consumer sends now."""
        bwe = self.bwe
        if bwe is None:
            return None
        estimate = bwe.estimate_bps
        source = bwe.source
        cuts = bwe.congestion_cuts
        if source == "transport-cc" and self._last_source == "transport-cc":
            if cuts != self._last_cuts and estimate < self._last_estimate:
                self._estimate_fell_at = now
        elif estimate < self._last_estimate * 0.97 and source == self._last_source:
            self._estimate_fell_at = now  # not when another signal takes over (first REMB)
        self._last_cuts = cuts
        self._last_estimate = estimate
        self._last_source = source
        budget = estimate - audio_bps
        if now - self._estimate_fell_at > CONGESTION_MEMORY_S:
            budget = max(budget, int(self._current_bps() * 1.05))
        return max(budget, 0)

    def _current_bps(self) -> int:
        layer = self._layer
        if layer is None or self.paused:
            return 0
        rates = layer.bitrates_bps
        return sum(rates[: min(self._tid, len(rates) - 1) + 1])

    def update_layers(self, now: float, audio_bps: int) -> None:
        """Pick the layer (the room's tick, the size hint): see the module docstring."""
        producer = self.producer
        if not self.adaptive or producer is None or producer.closed:
            return
        self._choose_layer(producer, now, audio_bps)

    def _choose_layer(self, producer: Producer, now: float, audio_bps: int) -> None:
        selector = self.selector
        assert selector is not None
        layers = producer.layers
        infos = [
            LayerInfo(layer.spatial, layer.width, layer.height, _cumulative(layer.bitrates_bps),
                      layer.active or not producer.simulcast)
            for layer in layers
        ]
        budget = self._budget(now, audio_bps)
        if budget is not None and not self.paused:
            # Pause only after PAUSE_AFTER_S of shortfall: until then the lowest layer stays
            # (a burst of delay noise must not blank the picture).
            lowest = min((info.bitrates_bps[0] for info in infos if info.active and info.bitrates_bps[0]),
                         default=0)
            if budget < lowest:
                if self._short_since is None:
                    self._short_since = now
                if now - self._short_since < PAUSE_AFTER_S:
                    budget = lowest
            else:
                self._short_since = None
        target = selector.select(infos, 10**10 if budget is None else budget,
                                 self.max_width, self.max_height, now)
        if target is None:
            self._pause()
        else:
            spatial, temporal = target
            self._target_tid = temporal  # down from the next frame on, up at a layer sync
            self._go_to(layers[min(spatial, len(layers) - 1)], now)
        if budget is not None and self.bwe is not None:
            need = selector.probe_bps
            if need and need > budget:
                self.bwe.probe(need + audio_bps)

    def _go_to(self, layer: Layer, now: float) -> None:
        self.paused = False
        if layer is self._layer:
            if self._target_layer is not None:  # cancel a pending switch
                self._target_layer.remove_sink(self)
                self._target_layer = None
            return
        if layer is self._target_layer:
            return
        if self._target_layer is not None:
            self._target_layer.remove_sink(self)
        self._target_layer = layer
        self._waiting_since = now
        layer.add_sink(self)
        if self.raw is not None:
            layer.request_keyframe()

    def _pause(self) -> None:
        if self.paused:
            return
        self.paused = True
        for layer in (self._layer, self._target_layer):
            if layer is not None:
                layer.remove_sink(self)
        self._layer = self._target_layer = None
        self.forwarder.switch_source()

    def _switch_to(self, layer: Layer) -> None:
        """A key frame of the target layer arrived: forward it from now on."""
        old = self._layer
        if old is not None:
            old.remove_sink(self)
            self.layer_switches += 1
        self._layer = layer
        self._target_layer = None
        self._tid = self._target_tid
        self.forwarder.switch_source()

    # ------------------------------------------------------------ fast path
    def _extension(self, media: MediaPacket) -> tuple[Callable[..., bytes], bytes, int, int]:
        """The RTP header and RFC 8285 one-byte-header extension block for ``media`` as this
        consumer sends it: ``(pack, elements, first byte, header bytes)``.  ``pack(first
        byte, M|PT, seq, ts, ssrc, elements[, transport-wide seq])`` returns the fixed header
        (RFC 3550 §5.1), 0xBEDE + length, ``elements``, the transport-wide number when
        transport-cc was negotiated (draft-holmer-rmcat-transport-wide-cc-extensions-01 §2,
        the last element) and the block's zero padding; the RTP header with the block
        takes ``header bytes``.  Cached on the packet by extension layout: consumers that
        negotiated the same ids share one."""
        layout = self._ext_layout
        block = media.extensions.get(layout)
        if block is None:
            body = self._ext_static
            if self._ast_element:
                body += self._ast_element + media.abs_send_time
            if self._level_id and media.audio_level is not None:
                body += bytes((self._level_id << 4, media.audio_level))
            size = len(body)
            if self._twcc_id:
                body += bytes(((self._twcc_id << 4) | 1,))
                size += 3
            if size:
                pad = -size % 4
                elements = _U16(0xBEDE) + _U16((size + pad) >> 2) + body
                block = (_header_struct(len(elements), bool(self._twcc_id), pad).pack, elements, 0x90,
                         12 + 4 + size + pad)
            else:
                block = (_header_struct(0, False, 0).pack, b"", 0x80, 12)
            media.extensions[layout] = block
        return block

    def forward(self, media: MediaPacket) -> None:
        """Rewrite and send one packet (the hot path; no allocation beyond the datagram)."""
        raw = self.raw
        if raw is None:
            return
        if media.layer is not self._layer:
            if not self.adaptive:  # the producer's top layer changed: a new stream
                self._layer = media.layer
                self.forwarder.switch_source()
            elif media.layer is not self._target_layer or not media.keyframe:
                return
            else:
                self._switch_to(media.layer)
        munger = self._munger
        if self.adaptive:
            if media.frame_start:  # temporal switches happen between frames
                tid = media.tid
                if media.keyframe or self._tid > self._target_tid:
                    self._tid = self._target_tid
                elif self._tid < tid <= self._target_tid and media.layer_sync:
                    self._tid = tid  # up one temporal layer at a frame that allows it
            if media.tid > self._tid and (munger is None or munger.drop(media.payload)):
                self.dropped_temporal += 1
                self.forwarder.drop(media.seq)
                return
        fwd = self.forwarder
        if not fwd.started:
            if not media.keyframe:
                self.dropped_waiting += 1
                return
            fwd.start(media.seq, media.timestamp)
            if munger is not None:
                munger.start(media.payload)
        mapped = fwd.munge(media.seq, media.timestamp)
        if mapped is None:
            return
        seq, ts = mapped
        payload = media.payload
        if munger is not None:
            if media.frame_start:
                munger.forwarded(payload)
            key = munger.key
            if key is not None:
                rewrites = media.rewrites
                if rewrites is None:
                    rewrites = media.rewrites = {}
                payload = rewrites.get(key)
                if payload is None:
                    payload = rewrites[key] = munger.rewrite(media.payload)
        slot = seq % self.HISTORY
        self._sent_ids[slot] = (fwd.epoch << 48) | (ts << 16) | seq
        self._sent_media[slot] = media
        self._sent_payload[slot] = payload
        # _send written out (the hot path): one struct call for the header, the extension
        # block and the transport-wide number, one concatenation with the payload
        block = media.extensions.get(self._ext_layout) or self._extension(media)
        pack, elements, first, header_size = block
        next_twcc = self._next_twcc
        if next_twcc is not None:
            data = pack(first, (media.marker << 7) | self._pt, seq, ts, self._ssrc, elements,
                        next_twcc(header_size + len(payload))) + payload
        else:
            data = pack(first, (media.marker << 7) | self._pt, seq, ts, self._ssrc, elements) + payload
        if raw.send_rtp(data):
            self.packets_sent += 1
            self.octets_sent += len(payload)

    def _send(self, seq: int, ts: int, media: MediaPacket, payload: bytes, pt: int, ssrc: int,
              prefix: bytes, probe: bool = False) -> None:
        """Send ``prefix + payload`` as ``media``'s packet with these header fields (RTX:
        ``prefix`` is the original sequence number, RFC 4588 §4); ``probe``: numbered as
        probe traffic for the estimator."""
        raw = self.raw
        if raw is None:
            return
        pack, elements, first, header_size = self._extension(media)
        marker_pt = (media.marker << 7) | pt
        next_twcc = self._next_twcc
        if next_twcc is not None:
            size = header_size + len(prefix) + len(payload)
            bwe = self.bwe
            number = bwe.next_probe_sequence(size) if probe and bwe is not None else next_twcc(size)
            header = pack(first, marker_pt, seq, ts, ssrc, elements, number)
        else:
            header = pack(first, marker_pt, seq, ts, ssrc, elements)
        if raw.send_rtp(b"".join((header, prefix, payload))):
            self.packets_sent += 1
            self.octets_sent += len(payload)

    def send_padding(self, size: int) -> bool:
        """Send about ``size`` bytes of probe traffic (the estimator's padding sender): an RTX
        copy of a recent packet (RFC 4588; the viewer discards it as a duplicate), else a
        padding-only RTX packet (RFC 3550 §5.1, at most 255 bytes).  ``False`` without RTX
        or before the transport is up."""
        params = self.params
        if self.raw is None or params is None or params.rtx_payload_type is None:
            return False
        self.padding_sent += 1
        seq = self.forwarder.last_seq_out
        entry = self._sent(seq)
        self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
        if entry is not None:
            _, ts, media, payload = entry
            self._send(self._rtx_seq, ts, media, payload, params.rtx_payload_type, params.rtx_ssrc,
                       _U16(seq), probe=True)
            return True
        pad = max(1, min(size - 12, 255))
        padding = bytes(pad - 1) + bytes((pad,))
        bwe = self.bwe
        ext = b""
        if self._twcc_id and bwe is not None:  # the header extension: 4 + 4 bytes
            number = bwe.next_probe_sequence(12 + 8 + pad)
            ext = struct.pack("!HHBHB", 0xBEDE, 1, (self._twcc_id << 4) | 1, number, 0)
        header = _HEADER.pack(0xB0 if ext else 0xA0, params.rtx_payload_type, self._rtx_seq,
                              self.forwarder.last_ts_out, params.rtx_ssrc)
        return self.raw.send_rtp(header + ext + padding)

    # ----------------------------------------------------------------- RTCP
    def on_rtcp(self, packet: AnyRtcpPacket) -> None:
        """RTCP from the viewer for this consumer's SSRC."""
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            self.nacks_received += 1
            for seq in packet.lost:
                self.retransmit(seq)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            self.plis_received += 1
            self._ask_keyframe()
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                self.remb_bps, _ = unpack_remb_fci(packet.fci)
            except ValueError:
                return
            if self.bwe is not None:
                self.bwe.on_remb(self.remb_bps)
        elif isinstance(packet, RtcpRrPacket | RtcpSrPacket):
            for report in packet.reports:
                if report.ssrc != self._ssrc:
                    continue
                self.fraction_lost = report.fraction_lost
                if report.lsr and report.lsr == self._last_sr_mid:
                    rtt = time.time() - self._last_sr_time - report.dlsr / 65536
                    if rtt >= 0:
                        self.rtt_s = rtt
                if self.bwe is not None and self.kind == "video":
                    self.bwe.on_receiver_report(report.fraction_lost, self.rtt_s)

    def _sent(self, seq: int) -> tuple[int, int, MediaPacket, bytes] | None:
        """``(forwarder epoch, output timestamp, packet, payload as sent)`` of output seq
        ``seq`` from the sequencer ring, or ``None`` when it is no longer (or never was) there."""
        if not self._sent_media:  # closed
            return None
        slot = seq % self.HISTORY
        ident = self._sent_ids[slot]
        media = self._sent_media[slot]
        payload = self._sent_payload[slot]
        if ident < 0 or ident & 0xFFFF != seq or media is None or payload is None:
            return None
        return ident >> 48, (ident >> 16) & 0xFFFFFFFF, media, payload

    def retransmit(self, seq: int) -> bool:
        """Resend output packet ``seq`` from the sequencer ring; RTX when negotiated.

        Bounded as libwebrtc bounds its own: a packet resent less than one round trip ago
        (100 ms while the RTT is unknown) is not resent again — the first copy may still be
        on its way — and retransmissions take at most :data:`RTX_SHARE` of the viewer's
        bandwidth estimate (a 100 ms bucket), so a NACK storm after a link drop does not
        keep the link full.  Nor is a packet sent before the current source started (the
        layer or publisher this viewer switched away from).  ``False`` when not resent."""
        entry = self._sent(seq)
        if entry is None or self.params is None:
            return False
        epoch, ts, media, payload = entry
        if epoch != self.forwarder.epoch:
            # A packet of the layer (or publisher) this viewer left: its decoder starts over
            # on the new source's key frame and has no use for it, while the key frame's own
            # losses need the retransmission budget (a link that just dropped loses both).
            self.retransmits_stale += 1
            return False
        slot = seq % self.HISTORY
        now = time.monotonic()
        if now - self._resent_at[slot] < (self.rtt_s or 0.1):
            self.retransmits_skipped += 1
            return False
        bwe = self.bwe
        if bwe is not None:
            rate = bwe.estimate_bps * RTX_SHARE / 8  # bytes/s
            self._rtx_tokens = min(rate * 0.1, self._rtx_tokens + (now - self._rtx_refilled) * rate)
            self._rtx_refilled = now
            if self._rtx_tokens < len(payload):
                self.retransmits_skipped += 1
                return False
            self._rtx_tokens -= len(payload)
        self._resent_at[slot] = now
        self.retransmits += 1
        rtx_pt = self.params.rtx_payload_type
        if rtx_pt is not None:
            self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            self._send(self._rtx_seq, ts, media, payload, rtx_pt, self.params.rtx_ssrc, _U16(seq))
        else:
            self._send(seq, ts, media, payload, self._pt, self._ssrc, b"")
        return True

    def sender_report(self) -> bytes | None:
        """SR + SDES for this consumer, mapped from the publisher's clock, or ``None``."""
        producer = self.producer
        if producer is None or self.params is None or not self.forwarder.started:
            return None
        layer = self._layer
        clock = producer.sender_clock if layer is None else layer.sender_clock
        if clock is None:
            return None
        elapsed = time.monotonic() - clock.received
        ntp = (clock.ntp + int(elapsed * (1 << 32))) & 0xFFFFFFFFFFFFFFFF
        rtp = (clock.rtp + int(elapsed * self.clock_rate) + self.forwarder.ts_offset) & 0xFFFFFFFF
        self._last_sr_mid = (ntp >> 16) & 0xFFFFFFFF
        self._last_sr_time = time.time()
        sr = RtcpSrPacket(
            ssrc=self._ssrc,
            sender_info=RtcpSenderInfo(
                ntp_timestamp=ntp,
                rtp_timestamp=rtp,
                packet_count=self.packets_sent & 0xFFFFFFFF,
                octet_count=self.octets_sent & 0xFFFFFFFF,
            ),
        )
        data = bytes(sr)
        if self.params.cname:
            sdes = RtcpSdesPacket(
                chunks=[RtcpSourceInfo(ssrc=self._ssrc, items=[(1, self.params.cname.encode())])]
            )
            data += bytes(sdes)
        return data

    def send_sender_report(self) -> None:
        data = self.sender_report()
        if data is not None and self.raw is not None:
            self.raw.send_rtcp(data)

    def stats(self) -> dict[str, object]:
        return {
            "id": self.id,
            "kind": self.kind,
            "packets_sent": self.packets_sent,
            "retransmits": self.retransmits,
            "retransmits_skipped": self.retransmits_skipped,
            "retransmits_stale": self.retransmits_stale,
            "padding_sent": self.padding_sent,
            "nacks_received": self.nacks_received,
            "plis_received": self.plis_received,
            "fraction_lost": self.fraction_lost,
            "rtt_ms": None if self.rtt_s is None else round(self.rtt_s * 1000, 1),
            "remb_bps": self.remb_bps,
            **({"layer": None if self.paused or self._layer is None else {
                    "spatial": self._layer.spatial, "rid": self._layer.rid,
                    "temporal": None if self._tid == 255 else self._tid},
                "paused": self.paused, "switches": self.layer_switches,
                "dropped_temporal": self.dropped_temporal,
                "max_size": None if self.max_width is None else [self.max_width, self.max_height]}
               if self.adaptive else {}),
        }


def _cumulative(rates: tuple[int, ...]) -> tuple[int, ...]:
    """Per-temporal-layer bps → bps of layers 0..t together."""
    total = 0
    out = []
    for rate in rates:
        total += rate
        out.append(total)
    return tuple(out) or (0,)
