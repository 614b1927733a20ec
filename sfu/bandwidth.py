"""Send-side bandwidth estimation for one subscriber transport (a viewer's peer connection).

:class:`BandwidthEstimator` numbers every RTP packet the SFU sends on the transport with a
transport-wide sequence number (draft-holmer-rmcat-transport-wide-cc-extensions-01 §2),
remembers when it was sent and how big it was (:class:`~sfu.send_history.SendHistory`),
and turns the viewer's transport-cc feedback (RTCP RTPFB FMT 15, §3.1) into an estimate
of the viewer's available bandwidth, Google congestion control style
(draft-ietf-rmcat-gcc-02; :mod:`sfu.gcc`):

* delay-based (§5): packet groups → delay gradient (trendline) → over-use detector with
  adaptive threshold → AIMD rate A_r, capped at 1.5 × the acknowledged rate (or the
  link capacity measured at over-use, when more);
* loss-based (§6): the fraction of packets the feedback reports lost → A_s;
* the estimate is min(A_r, A_s), clamped to [min_bps, max_bps];
* probing (:mod:`sfu.probe`): on :meth:`probe`, a cluster of padding packets (40 ms, or
  200 ms when far above the acknowledged rate, so that a token bucket cannot pass it
  whole; sent through the callback given to :meth:`set_padding_sender`, paced by an
  asyncio task) measures whether the link carries more; a result above the estimate
  replaces it, and a cluster that saturated the link sets the estimate to what arrived.

Viewers without transport-cc (aiortc sends REMB and receiver reports) fall back to
REMB (draft-alvestrand-rmcat-remb-03) as a cap and receiver-report loss (RFC 3550 §6.4.1
fraction lost) for A_s: :meth:`on_remb`, :meth:`on_receiver_report`.  Feedback counts as
fresh for :data:`FEEDBACK_TIMEOUT_S`.

Everything runs on the event loop thread; nothing here blocks.  Times come from a
monotonic clock (``time.monotonic`` unless one is injected), rates are bps, sizes bytes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from .gcc import (
    BETA,
    LOSS_HIGH,
    MIN_LOSS_PACKETS,
    OVERUSING,
    AimdRateControl,
    InterArrival,
    LossBasedControl,
    ThroughputEstimator,
    TrendlineEstimator,
)
from .probe import CLUSTER_DURATION_S, ProbeBitrateEstimator, ProbeCluster, ProbeController
from .send_history import (
    CLUSTER_MASK,
    CLUSTER_SHIFT,
    LOST,
    NEVER,
    RECEIVED,
    RING_MASK,
    RING_SIZE,
    SIZE_MASK,
    SendHistory,
)

logger = logging.getLogger(__name__)

FEEDBACK_TIMEOUT_S = 2.0
"""transport-cc feedback (and REMB) older than this no longer drives the estimate."""
REMB_TIMEOUT_S = 5.0
PACE_INTERVAL_S = 0.005
"""The probe pacer's tick while a cluster is sent."""
PROBE_QUIET_S = 0.3
"""Over-use within this of a long probe cluster (after it started + its duration, or after
its result) is the queue the cluster built: no delay-based decrease for it."""
APP_LIMITED_RATIO = 0.65
"""Acknowledged below this fraction of the estimate: the sender, not the path, limits the
rate (application-limited: libwebrtc's ``AlrDetector`` starts ALR below 65 % usage), and a
wanted higher rate is probed for again without being asked (see
:meth:`sfu.probe.ProbeController.wanted`)."""
SENT_WINDOW_S = 0.35
"""The sent rate compared with the acknowledged rate at over-use (the acknowledged rate's
window, :data:`sfu.gcc.THROUGHPUT_WINDOW_MS`)."""
BASE_DELAY_WINDOW_S = 30.0
"""The base one-way delay is the minimum over the last 30–60 s (long: a queue that stays full
for a while must not become the base, or its drops would be learnt as inherent loss)."""

_RTPFB = 205
_FMT_TRANSPORT_FEEDBACK = 15
_REFERENCE_WRAP = 1 << 24
_REFERENCE_MS = 64.0
_LONG_RUN = 64  # "not received" runs longer than this are clipped to the send history


def send_due_padding(cluster: ProbeCluster, history: SendHistory, now: float,
                     send: Callable[[int], bool]) -> tuple[int, bool]:
    """Send, through ``send(size)``, the padding probe ``cluster`` is due by ``now`` plus one
    :data:`PACE_INTERVAL_S` (bytes and packets of the cluster already in ``history`` count;
    at most 64 packets a call).  Returns (packets sent, whether ``send`` refused one)."""
    sent_bytes, sent_packets = history.bytes_since(cluster.first_seq, cluster.id)
    due = cluster.bytes_due(now, sent_bytes, PACE_INTERVAL_S)
    packets_due = cluster.packets_due(now, sent_packets, PACE_INTERVAL_S)
    count = 0
    while (due > 0 or packets_due > 0) and count < 64:
        try:
            sent = send(cluster.padding_size)
        except Exception:  # noqa: BLE001 — a broken sender ends the probe, not the pacer
            logger.exception("probe padding sender failed")
            sent = False
        if not sent:
            return count, True
        due -= cluster.padding_size
        packets_due -= 1
        cluster.padding_sent += 1
        count += 1
    return count, False


class BandwidthEstimator:
    """Per-subscriber-transport bandwidth estimator (see the module docstring).

    :param initial_bps: the estimate before any feedback.
    :param min_bps: the estimate never goes below this.
    :param max_bps: … nor above this; probes never ask for more.
    :param clock: monotonic clock, seconds (tests pass a virtual one).
    :param history: the send history to number packets into and read feedback against
        (default: a new :class:`~sfu.send_history.SendHistory` on ``clock``; the estimator
        process passes a :class:`~sfu.send_history.SharedSendHistory` the forwarding
        process writes).
    :raises ValueError: not ``0 < min_bps <= initial_bps <= max_bps``.
    """

    def __init__(self, *, initial_bps: int = 1_000_000, min_bps: int = 30_000,
                 max_bps: int = 20_000_000, clock: Callable[[], float] = time.monotonic,
                 history: SendHistory | None = None) -> None:
        if not 0 < min_bps <= initial_bps <= max_bps:
            raise ValueError("need 0 < min_bps <= initial_bps <= max_bps")
        self.min_bps = min_bps
        self.max_bps = max_bps
        self._clock = clock
        self._history = SendHistory(clock) if history is None else history
        # The hot path without an extra call layer: this instance's next_sequence *is* the
        # history's bound method (same signature and meaning as the method below).
        self.next_sequence = self._history.next_sequence  # type: ignore[method-assign]
        self._inter = InterArrival()
        self._trend = TrendlineEstimator()
        self._aimd = AimdRateControl(initial_bps, min_bps, max_bps)
        self._throughput = ThroughputEstimator()
        self._loss = LossBasedControl(initial_bps)
        self._probe_rates = ProbeBitrateEstimator()
        self._probes = ProbeController()
        self._padding: Callable[[int], bool] | None = None
        self._remote_pacer: Callable[[ProbeCluster], None] | None = None
        self._pacer: asyncio.Task[None] | None = None
        self._closed = False
        self._acked: list[tuple[float, float, int]] = []  # … (send ms, arrival ms, bytes)
        # feedback state
        self._ref_raw = -1  # last reference time (24 bits, 64 ms units); -1: none yet
        self._ref = 0  # … unwrapped
        self._feedback_at = -math.inf
        self._loss_received = 0
        self._loss_lost = 0
        self._loss_epoch = -math.inf  # losses of packets sent before this (s) are not counted
        self._base_now = math.inf  # minimum one-way delay, ms, this window …
        self._base_prev = math.inf  # … and the previous one
        self._base_since = -math.inf
        self._feedback_rtt_ms: float | None = None
        self._rr_rtt_s: float | None = None
        self._rr_at = -math.inf
        self._remb_bps: int | None = None
        self._remb_at = -math.inf
        self._queue_ms: float | None = None
        self._probe_quiet_until = -math.inf
        # counters
        self.feedback_packets = 0
        self.invalid_feedback = 0
        self.reported_received = 0
        self.reported_lost = 0
        self.duplicate_reports = 0
        self.unknown_reports = 0
        self.padding_packets = 0
        self.congestion_cuts = 0
        """Decreases the delay- and loss-based detectors made (§5.5 over-use, §6 loss): the
        estimate falling for congestion — not for a probe's verdict on a step above it."""

    # ----------------------------------------------------------------- hot path

    def next_sequence(self, size: int) -> int:  # replaced per instance in __init__
        """Hot path, one call per RTP packet sent on the transport: the 16-bit transport-wide
        sequence number to put in its transport-cc header extension (§2); records now and
        ``size`` (bytes, the RTP packet before SRTP: header + extensions + payload)."""
        return self._history.next_sequence(size)

    def next_probe_sequence(self, size: int) -> int:
        """:meth:`next_sequence` for a padding-only (probe) packet of ``size`` bytes."""
        self.padding_packets += 1
        return self._history.next_sequence(size)

    # ------------------------------------------------------------------ inputs

    def on_transport_feedback(self, data: bytes) -> None:
        """One raw RTCP transport feedback packet (RTPFB, FMT 15; §3.1), its RTCP padding
        included.  Malformed packets are counted in ``invalid_feedback``, never raised.
        Costs ~25 µs for 15 packets (loadtest/bwe_micro.py); long "not received" runs are
        clipped to the send history, so any packet costs ≤ ~1 ms."""
        try:
            parsed = self._parse(data)
        except (ValueError, IndexError):
            parsed = False
        if not parsed:
            self.invalid_feedback += 1

    def on_remb(self, bps: int) -> None:
        """A REMB (draft-alvestrand-rmcat-remb-03 §2.2) from the viewer: caps the estimate
        while fresh (:data:`REMB_TIMEOUT_S`)."""
        if bps < 0:
            return
        self._remb_bps = int(bps)
        self._remb_at = self._clock()

    def on_receiver_report(self, fraction_lost: int, rtt_s: float | None) -> None:
        """An RTCP receiver report block for one of the transport's SSRCs (RFC 3550 §6.4.1):
        ``fraction_lost`` 0..255 (lost / expected × 256), ``rtt_s`` the round trip from its
        LSR/DLSR (None: unknown).  The RTT always feeds the rate control; the loss drives A_s
        only while no transport-cc feedback is fresh (§6 on receiver reports)."""
        now = self._clock()
        if rtt_s is not None and 0 <= rtt_s < 10:
            self._rr_rtt_s = float(rtt_s)
            self._aimd.rtt_ms = rtt_s * 1000
        self._rr_at = now
        if not self._twcc_fresh(now):
            fraction = min(255, max(0, int(fraction_lost))) / 256
            self._loss.update(fraction, now * 1000, min(self._cap(now), self.max_bps),
                              self._aimd.rtt_ms)

    # --------------------------------------------------------------- estimate

    @property
    def estimate_bps(self) -> int:
        """The current estimate, bps (min(A_r, A_s) with transport-cc; else A_s capped by REMB)."""
        return self._estimate(self._clock())[0]

    @property
    def source(self) -> str:
        """What the estimate rests on: ``"transport-cc"``, ``"remb"``, ``"loss"`` (receiver
        reports) or ``"initial"``."""
        return self._estimate(self._clock())[1]

    def _twcc_fresh(self, now: float) -> bool:
        return now - self._feedback_at < FEEDBACK_TIMEOUT_S

    def _cap(self, now: float) -> float:
        remb = self._remb_bps
        return float(remb) if remb is not None and now - self._remb_at < REMB_TIMEOUT_S else math.inf

    def _estimate(self, now: float) -> tuple[int, str]:
        cap = self._cap(now)
        loss_bps = self._loss.bps
        if self._twcc_fresh(now):
            bps, source = min(self._aimd.bps, loss_bps, cap), "transport-cc"
        elif cap < loss_bps:
            bps, source = cap, "remb"
        elif self._rr_at > -math.inf:
            bps, source = loss_bps, "loss"
        elif self._feedback_at > -math.inf:
            bps, source = min(self._aimd.bps, loss_bps), "transport-cc"  # stale: the last one
        else:
            bps, source = loss_bps, "initial"
        return int(min(self.max_bps, max(self.min_bps, bps))), source

    # ---------------------------------------------------------------- probing

    def set_padding_sender(self, send: Callable[[int], bool] | None) -> None:
        """Where probe padding goes: ``send(size)`` sends ONE padding-only RTP packet of about
        ``size`` bytes (numbered with :meth:`next_probe_sequence`) and returns False when it
        cannot.  None: no probing."""
        self._padding = send

    def set_remote_pacer(self, start: Callable[[ProbeCluster], None] | None) -> None:
        """Probe clusters are paced in another process (the forwarding one, by
        :func:`send_due_padding` over the same shared history): ``start(cluster)`` is called
        as each one starts, and :meth:`pace` then only ends it once its time is up.  None:
        paced here, through the padding sender."""
        self._remote_pacer = start

    @property
    def _can_probe(self) -> bool:
        return (self._padding is not None or self._remote_pacer is not None) and not self._closed

    def probe(self, target_bps: int) -> None:
        """Ask to find out whether the link carries ``target_bps``: starts a probe cluster
        unless one runs, the last failed recently (1–3 s back-off), there is no padding
        sender, the estimate already reaches 1.25 × the target, or the path is congested
        now (over-use, or > 10 % loss).  Steps of at most 2 × the estimate, the next step
        following a successful one at once."""
        if not self._can_probe:
            return
        now = self._clock()
        self._check_probe_timeout(now)
        self._start_probe(target_bps, now)

    def _start_probe(self, target_bps: float, now: float) -> None:
        loss = self._loss
        if self._trend.state == OVERUSING or loss.last_fraction - loss.inherent > LOSS_HIGH:
            return  # congested now: a probe would only add to it
        cluster = self._probes.request(target_bps, self._estimate(now)[0], self.max_bps, now,
                                       self._history.next_seq, self._throughput.bps)
        if cluster is None:
            return
        self._history.cluster = cluster.id
        self._probe_rates.forget(cluster.id)
        if self._remote_pacer is not None:
            self._remote_pacer(cluster)
            return  # the driver (the estimator process's loop) calls pace() to end it
        self.pace()
        if self._probes.active is cluster and cluster.sending and self._pacer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop (a simulation): its driver calls pace()
            self._pacer = loop.create_task(self._pace_loop())

    async def _pace_loop(self) -> None:
        try:
            while not self._closed:
                cluster = self._probes.active
                if cluster is None or not cluster.sending:
                    break
                await asyncio.sleep(PACE_INTERVAL_S)
                self.pace()
        finally:
            self._pacer = None

    def pace(self) -> int:
        """Send the padding due now for the probe cluster being sent (the asyncio pacer calls
        this every :data:`PACE_INTERVAL_S`; simulations and the estimator process call it
        themselves — with a remote pacer it only ends the cluster once its time is up).
        Returns the padding packets sent."""
        cluster = self._probes.active
        send = self._padding
        if cluster is None or not cluster.sending:
            return 0
        now = self._clock()
        count = 0
        if self._remote_pacer is None and send is not None:
            count, refused = send_due_padding(cluster, self._history, now, send)
            if refused:
                self._fail_cluster(cluster, now)
                return count
        elif self._remote_pacer is None:
            self._end_cluster(cluster, now)  # the padding sender went away
            return 0
        if now - cluster.start_s >= cluster.duration_s:
            self._end_cluster(cluster, now)
        return count

    @property
    def probing(self) -> bool:
        """A probe cluster is being sent (its driver calls :meth:`pace` every
        :data:`PACE_INTERVAL_S` when no asyncio pacer runs)."""
        cluster = self._probes.active
        return cluster is not None and cluster.sending and not self._closed

    def padding_refused(self) -> None:
        """The padding sender could not send what :meth:`pace` asked for (reported later,
        from another process): the cluster being sent ends, as a failed probe."""
        cluster = self._probes.active
        if cluster is not None and cluster.sending:
            self._fail_cluster(cluster, self._clock())

    def _fail_cluster(self, cluster: ProbeCluster, now: float) -> None:
        self._end_cluster(cluster, now)
        self._probes.finish(None, now)

    def _end_cluster(self, cluster: ProbeCluster, now: float) -> None:
        self._probes.stop_sending(now)
        if self._history.cluster == cluster.id:
            self._history.cluster = 0

    def _check_probe_timeout(self, now: float) -> None:
        rtt_s = self._aimd.rtt_ms / 1000
        if self._probes.timed_out(now, rtt_s):
            self._probes.finish(None, now)

    # ---------------------------------------------------------------- feedback

    def _parse(self, data: bytes) -> bool:
        """Validate and apply one feedback packet; False (nothing applied) when malformed."""
        n = len(data)
        if n < 20:
            return False
        first = data[0]
        if first >> 6 != 2 or first & 0x1F != _FMT_TRANSPORT_FEEDBACK or data[1] != _RTPFB:
            return False
        end = (((data[2] << 8) | data[3]) + 1) * 4
        if end > n:
            return False
        if first & 0x20:
            padding = data[end - 1]
            if padding == 0 or padding > end - 20:
                return False
            end -= padding
        base = (data[12] << 8) | data[13]
        count = (data[14] << 8) | data[15]
        reference = (data[16] << 16) | (data[17] << 8) | data[18]
        # Status chunks (§3.1.3, §3.1.4) → segments of (first index, symbols).  A long run of
        # "not received" only matters where it covers sequence numbers still in the send
        # history: the rest is left out (it carries no deltas), so a hostile 65,535-status
        # feedback costs at most RING_SIZE + its delta bytes iterations.
        segments: list[tuple[int, list[int]]] = []
        window = (self._history.next_seq - RING_SIZE - base) & 0xFFFF  # first known index
        current: list[int] = []
        start = index = 0
        pos = 20
        while index < count:
            if pos + 2 > end:
                return False
            word = (data[pos] << 8) | data[pos + 1]
            pos += 2
            if not word & 0x8000:  # run length
                symbol, n = (word >> 13) & 3, min(word & 0x1FFF, count - index)
                if symbol == 0 and n > _LONG_RUN:
                    if current:
                        segments.append((start, current))
                        current = []
                    for first, stop in ((window, window + RING_SIZE),
                                        (window - 0x10000, window + RING_SIZE - 0x10000)):
                        lo, hi = max(index, first), min(index + n, stop)
                        if lo < hi:
                            segments.append((lo, [0] * (hi - lo)))
                    index += n
                    start = index
                    continue
                current += [symbol] * n
            else:
                if not word & 0x4000:  # status vector, 14 × 1 bit
                    symbols = [(word >> k) & 1 for k in range(13, -1, -1)]
                else:  # status vector, 7 × 2 bits
                    symbols = [(word >> k) & 3 for k in range(12, -1, -2)]
                n = min(len(symbols), count - index)
                current += symbols[:n]
            index += n
        if current:
            segments.append((start, current))
        needed = 0
        for _, symbols in segments:
            if 3 in symbols:
                return False  # reserved symbol
            needed += symbols.count(1) + 2 * symbols.count(2)
        if needed > end - pos:
            return False  # truncated receive deltas (§3.1.5)
        self._apply(data, pos, base, reference, segments)
        return True

    def _apply(self, data: bytes, pos: int, base: int, reference: int,
               segments: list[tuple[int, list[int]]]) -> None:
        now = self._clock()
        now_ms = now * 1000
        self.feedback_packets += 1
        self._feedback_at = now
        if self._ref_raw >= 0:
            step = (reference - self._ref_raw) % _REFERENCE_WRAP
            self._ref += step - _REFERENCE_WRAP if step >= _REFERENCE_WRAP // 2 else step
        else:
            self._ref = reference
        self._ref_raw = reference
        units = self._ref * 256  # 250 µs units (64 ms = 256 of them)

        history = self._history
        times, metas, next_seq = history.times, history.metas, history.next_seq
        acked = self._acked
        acked.clear()
        probe_rates = self._probe_rates
        epoch = self._loss_epoch
        received = lost = newly_received = duplicates = 0
        owd_sum = 0.0
        owd_min = math.inf
        newest_send = -math.inf
        for first, symbols in segments:
            for i, symbol in enumerate(symbols, first):
                if symbol:
                    if symbol == 1:
                        units += data[pos]
                        pos += 1
                    else:
                        delta = (data[pos] << 8) | data[pos + 1]
                        units += delta - 0x10000 if delta & 0x8000 else delta
                        pos += 2
                seq = (base + i) & 0xFFFF
                distance = (next_seq - seq) & 0xFFFF
                if distance == 0 or distance > RING_SIZE:
                    self.unknown_reports += 1
                    continue
                slot = seq & RING_MASK
                send_s = times[slot]
                if send_s == NEVER:
                    self.unknown_reports += 1
                    continue
                meta = metas[slot]
                cluster = (meta >> CLUSTER_SHIFT) & CLUSTER_MASK
                if not symbol:
                    if not meta & (RECEIVED | LOST):
                        metas[slot] = meta | LOST
                        self.reported_lost += 1
                        if send_s > epoch and not cluster:
                            lost += 1
                    continue
                if meta & RECEIVED:
                    duplicates += 1
                    continue
                metas[slot] = (meta | RECEIVED) & ~LOST
                newly_received += 1
                if meta & LOST:
                    self.reported_lost -= 1
                if send_s > epoch and not cluster:
                    received += 1
                arrival_ms = units * 0.25
                send_ms = send_s * 1000
                size = meta & SIZE_MASK
                acked.append((send_ms, arrival_ms, size))
                if cluster:
                    probe_rates.add(cluster, send_s, arrival_ms, size)
                owd = arrival_ms - send_ms  # one-way delay + the clocks' offset
                owd_sum += owd
                if owd < owd_min:
                    owd_min = owd
                if send_s > newest_send:
                    newest_send = send_s
        self.reported_received += newly_received
        self.duplicate_reports += duplicates
        self._throughput.extend(acked)
        self._inter.feed(acked, self._trend)
        self._after_feedback(now, now_ms, received, lost, newly_received, owd_sum, owd_min,
                             newest_send)

    def _after_feedback(self, now: float, now_ms: float, received: int, lost: int,
                        acked_count: int, owd_sum: float, owd_min: float,
                        newest_send: float) -> None:
        aimd = self._aimd
        if newest_send > -math.inf:
            sample = (now - newest_send) * 1000
            smoothed = self._feedback_rtt_ms
            self._feedback_rtt_ms = sample if smoothed is None else 0.875 * smoothed + 0.125 * sample
            if self._rr_rtt_s is None:
                aimd.rtt_ms = self._feedback_rtt_ms
        if acked_count:
            if now - self._base_since > BASE_DELAY_WINDOW_S:
                self._base_prev, self._base_now, self._base_since = self._base_now, math.inf, now
            self._base_now = min(self._base_now, owd_min)
            self._queue_ms = owd_sum / acked_count - min(self._base_now, self._base_prev)

        # Delay-based (§5.5): decrease at most once per RTT while over-using — but not for
        # the queue a long probe cluster built on purpose, while it awaits its result and
        # for PROBE_QUIET_S after (the result sets the estimate to what the link carried).
        acked = self._throughput.bps
        before = aimd.bps
        if self._trend.state == OVERUSING:
            if self._probe_queue(now):
                pass
            elif acked is None or aimd.time_to_reduce(now_ms, acked):
                aimd.update(OVERUSING, acked, now_ms, self._history.rate_bps(SENT_WINDOW_S, now))
        else:
            aimd.update(self._trend.state, acked, now_ms)

        # Loss-based (§6), over at least MIN_LOSS_PACKETS packets.
        loss = self._loss
        self._loss_received += received
        self._loss_lost += lost
        total = self._loss_received + self._loss_lost
        loss_before = loss.bps
        if total >= MIN_LOSS_PACKETS:
            loss.update(self._loss_lost / total, now_ms, aimd.bps, aimd.rtt_ms, self._queue_ms, acked)
            self._loss_received = self._loss_lost = 0
        if aimd.bps < before or loss.bps < loss_before:
            self.congestion_cuts += 1
            if acked is not None:
                self._probes.congested(acked)
            # Losses of packets sent before a decrease tell of the old rate, not the new one.
            self._loss_epoch = now
            self._loss_received = self._loss_lost = 0
        if loss.bps > aimd.bps:
            loss.set(aimd.bps, now_ms)  # A_s never above A_r (libwebrtc's delay-based limit)

        # Probe result.
        cluster = self._probes.active
        if cluster is not None and not cluster.sending:
            sent_bytes, sent_packets = self._history.bytes_since(cluster.first_seq, cluster.id)
            complete = newest_send > cluster.ended_s and self._cluster_reported(cluster)
            result = self._probe_rates.result(cluster, sent_packets, sent_bytes,
                                              self._loss.inherent, complete)
            if result is not None:
                self._apply_probe(cluster, result, now, now_ms)
            elif complete:
                # Every packet of the cluster has been reported, and too few arrived: it
                # failed (no need to wait for the time-out).
                self._probe_rates.forget(cluster.id)
                self._probes.finish(None, now)
            else:
                self._check_probe_timeout(now)
        elif cluster is None and self._can_probe:
            # Application-limited (the SFU sends a layer well below the estimate) while a
            # higher rate was wanted lately: probe again on our own once the back-off allows
            # (libwebrtc probes in ALR periodically for the same reason).
            probes = self._probes
            wanted = probes.wanted(now)
            if (wanted and probes.ready(now) and acked is not None
                    and acked < APP_LIMITED_RATIO * self._estimate(now)[0]):
                self._start_probe(wanted, now)

    def _probe_queue(self, now: float) -> bool:
        """Over-use now is the queue a long probe cluster built (see :data:`PROBE_QUIET_S`)."""
        cluster = self._probes.active
        if cluster is not None and cluster.duration_s > CLUSTER_DURATION_S:
            return now - cluster.start_s < cluster.duration_s + PROBE_QUIET_S
        return now < self._probe_quiet_until

    def _cluster_reported(self, cluster: ProbeCluster) -> bool:
        """Every packet sent in ``cluster`` is reported received or lost (False when the
        history no longer holds its start)."""
        history = self._history
        span = (history.next_seq - cluster.first_seq) & 0xFFFF
        if span == 0 or span > RING_SIZE or history.slot(cluster.first_seq) < 0:
            return False
        metas = history.metas
        for k in range(span):
            meta = metas[(cluster.first_seq + k) & RING_MASK]
            if ((meta >> CLUSTER_SHIFT) & CLUSTER_MASK == cluster.id
                    and not meta & (RECEIVED | LOST)):
                return False
        return True

    def _apply_probe(self, cluster: ProbeCluster, result: float, now: float, now_ms: float) -> None:
        result = min(result, float(self.max_bps))
        if self._probe_rates.saturated:
            acked = self._throughput.bps  # the last 350 ms of arrivals: the probe's, mostly
            if acked is not None and result < BETA * acked:
                result = BETA * acked  # a straggling tail made the cluster look slower
            # The cluster filled the link: what arrived is what it carries.  The estimate
            # must not stay above it (a probe that over-drove the link fails, and leaves no
            # estimate the next layer switch would trust), nor below it (the over-use the
            # probe itself caused has cut A_r meanwhile).
            self._aimd.bps = max(float(self.min_bps), result)
            self._aimd.capacity.update(result, 0.5)
        elif result > self._aimd.bps:
            self._aimd.set_estimate(result, now_ms)
        if result > self._loss.bps:
            self._loss.set(min(result, self._aimd.bps), now_ms)
        elif self._loss.bps > self._aimd.bps:
            self._loss.set(self._aimd.bps, now_ms)
        self._probe_rates.forget(cluster.id)
        if cluster.duration_s > CLUSTER_DURATION_S:
            self._probe_quiet_until = now + PROBE_QUIET_S
        succeeded = self._probes.finish(result, now, self._probe_rates.saturated)
        if succeeded and self._probes.goal_bps > 1.1 * result and self._can_probe:
            self._start_probe(self._probes.asked_bps, now)  # the next step at once

    # ------------------------------------------------------------------ misc

    def stats(self) -> dict[str, Any]:
        """Numbers for /api and tests: rates in bps, times in ms, loss as a fraction."""
        now = self._clock()
        estimate, source = self._estimate(now)
        cluster = self._probes.active
        acked = self._throughput.bps
        return {
            "estimate_bps": estimate,
            "source": source,
            "delay_based_bps": int(self._aimd.bps),
            "loss_based_bps": int(self._loss.bps),
            "remb_bps": self._remb_bps,
            "acked_bps": None if acked is None else int(acked),
            "sent_bps": int(self._history.rate_bps(0.5, now)),
            "rtt_ms": round(self._aimd.rtt_ms, 1),
            "detector": self._trend.state,
            "threshold_ms": round(self._trend.threshold_ms, 2),
            "trend": self._trend.trend,
            "queue_ms": None if self._queue_ms is None else round(self._queue_ms, 1),
            "loss_fraction": round(self._loss.last_fraction, 4),
            "inherent_loss": round(self._loss.inherent, 4),
            "feedback_packets": self.feedback_packets,
            "invalid_feedback": self.invalid_feedback,
            "reported_received": self.reported_received,
            "reported_lost": self.reported_lost,
            "duplicate_reports": self.duplicate_reports,
            "unknown_reports": self.unknown_reports,
            "padding_packets": self.padding_packets,
            "congestion_cuts": self.congestion_cuts,
            "probe": {
                "active_target_bps": None if cluster is None else int(cluster.target_bps),
                "sending": cluster is not None and cluster.sending,
                "clusters": self._probes.clusters,
                "successes": self._probes.successes,
                "failures": self._probes.failures,
                "capacity_bps": (None if self._probes.capacity_bps is None
                                 else int(self._probes.capacity_bps)),
                "last_result_bps": (None if self._probes.last_result_bps is None
                                    else int(self._probes.last_result_bps)),
                "wanted_bps": int(self._probes.wanted(now)),
            },
        }

    def close(self) -> None:
        """Stop probing (cancels the pacer); the estimator answers but probes no more."""
        self._closed = True
        self._padding = None
        self._remote_pacer = None
        if self._pacer is not None:
            self._pacer.cancel()
            self._pacer = None
