"""Google congestion control, send side (draft-ietf-rmcat-gcc-02), for one subscriber transport.

The parts, each pure and synchronous (times in ms on the clock named, rates in bps):

* :class:`InterArrival` — groups packets sent within 5 ms of each other (a video frame's
  burst) and yields, per completed group, the inter-departure and inter-arrival time of
  consecutive groups (§5.2; libwebrtc ``InterArrivalDelta``, including its burst rule:
  packets arriving ≤ 5 ms after the group with a negative propagation delta join it).
* :class:`TrendlineEstimator` — the delay gradient, the slope of a least-squares line
  through the smoothed accumulated one-way delay variation of the last 20 groups, and the
  over-use detector with its adaptive threshold (§5.3, §5.4; libwebrtc's trendline filter
  replaced the draft's Kalman filter, the detector and threshold are the draft's).
* :class:`AimdRateControl` — the delay-based rate A_r: multiplicative increase (8 %/s),
  additive increase near the link capacity (one packet per response time), decrease to
  0.85 × the acknowledged rate on over-use (0.85 × the link capacity when the sender, not
  the link, limited what was acknowledged), hold on under-use (§5.5), never above
  1.5 × the acknowledged rate + 10 kbit/s or the measured link capacity, whichever is more.
* :class:`LinkCapacityEstimator` — mean and deviation of the acknowledged rate at over-use
  (when the estimate is within 3 σ of it, increase is additive).
* :class:`ThroughputEstimator` — the rate the receiver acknowledges, over the last 350 ms
  of arrivals (libwebrtc ``RobustThroughputEstimator``'s idea).
* :class:`LossBasedControl` — the loss-based rate A_s (§6): +8 %/s below 2 % loss, × (1 − 0.5 p)
  above 10 % (not below 0.85 × the acknowledged rate), hold between, with an *inherent
  loss* allowance (see the class).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

# ----------------------------------------------------------------- inter-arrival (§5.2)

GROUP_LENGTH_MS = 5.0
"""Packets sent within this of a group's first packet belong to the group (burst_time, §5.2)."""
BURST_DELTA_MS = 5.0
MAX_BURST_MS = 100.0
_REORDER_RESET = 3


class InterArrival:
    """Packet groups and their deltas (§5.2).  Feed received packets in the order the
    feedback lists them; each completed group yields the deltas of the previous two groups
    (:attr:`send_delta_ms`, :attr:`arrival_delta_ms`: last send time and last arrival of
    each) to the trendline."""

    __slots__ = ("_first_send", "_send", "_first_arrival", "_arrival", "_prev_send",
                 "_prev_arrival", "_reordered", "send_delta_ms", "arrival_delta_ms")

    def __init__(self) -> None:
        self._first_send = -math.inf  # current group: first send time, ms (-inf: empty)
        self._send = 0.0  # current group: last (largest) send time
        self._first_arrival = 0.0
        self._arrival = 0.0  # current group: arrival of its last packet ("complete time")
        self._prev_send = -math.inf  # previous complete group (-inf: none)
        self._prev_arrival = 0.0
        self._reordered = 0
        self.send_delta_ms = 0.0
        self.arrival_delta_ms = 0.0

    def add(self, send_ms: float, arrival_ms: float) -> bool:
        """One received packet: send time (sender clock, ms), arrival (receiver clock, ms).
        True when it completed a group (the deltas are then in the attributes)."""
        return self.feed(((send_ms, arrival_ms, 0),), None) > 0

    def feed(self, packets: Iterable[tuple[float, float, int]],
             trend: TrendlineEstimator | None) -> int:
        """Received packets as (send ms, arrival ms, bytes); each group delta goes to
        ``trend.update`` (when given).  Returns the number of deltas.  (One loop with the
        state in locals: this runs for every acknowledged packet.)"""
        first_send, send, first_arrival, arrival = (
            self._first_send, self._send, self._first_arrival, self._arrival)
        prev_send, prev_arrival = self._prev_send, self._prev_arrival
        deltas = 0
        for send_ms, arrival_ms, _ in packets:
            if first_send == -math.inf:
                first_send = send = send_ms
                first_arrival = arrival = arrival_ms
                continue
            if send_ms < first_send:
                continue  # sent before the current group: reordered, ignored
            # Same group (§5.2): sent within 5 ms of the group's first packet, or with its
            # last, or a burst — arrived ≤ 5 ms after the group with a negative propagation
            # delta, within 100 ms of the group's first arrival.
            send_delta = send_ms - send
            arrival_delta = arrival_ms - arrival
            if (send_delta == 0 or send_ms - first_send <= GROUP_LENGTH_MS
                    or (arrival_delta < send_delta and arrival_delta <= BURST_DELTA_MS
                        and arrival_ms - first_arrival < MAX_BURST_MS)):
                if send_delta > 0:
                    send = send_ms
                arrival = arrival_ms
                continue
            if prev_send != -math.inf:
                group_arrival_delta = arrival - prev_arrival
                if group_arrival_delta < 0:
                    self._reordered += 1
                    if self._reordered >= _REORDER_RESET:  # reset, like libwebrtc
                        first_send = prev_send = -math.inf
                        self._reordered = 0
                        continue
                else:
                    self._reordered = 0
                    self.send_delta_ms = send - prev_send
                    self.arrival_delta_ms = group_arrival_delta
                    deltas += 1
                    if trend is not None:
                        trend.update(group_arrival_delta, send - prev_send, arrival_ms)
            prev_send, prev_arrival = send, arrival
            first_send = send = send_ms
            first_arrival = arrival = arrival_ms
        self._first_send, self._send, self._first_arrival, self._arrival = (
            first_send, send, first_arrival, arrival)
        self._prev_send, self._prev_arrival = prev_send, prev_arrival
        return deltas


# ------------------------------------------------------- trendline + over-use (§5.3, §5.4)

NORMAL, UNDERUSING, OVERUSING = "normal", "underusing", "overusing"
WINDOW = 20
SMOOTHING = 0.9
THRESHOLD_GAIN = 4.0
K_UP, K_DOWN = 0.0087, 0.039
"""Adaptive threshold gains (§5.4): the threshold rises slowly, falls fast."""
INITIAL_THRESHOLD_MS = 12.5
OVERUSE_TIME_MS = 10.0
"""A trend above the threshold for this long (and two deltas) is over-use (§5.4: overuse_time_th)."""
_MAX_ADAPT_OFFSET_MS = 15.0
_MIN_DELTAS = 60


class TrendlineEstimator:
    """Delay gradient and over-use detector (§5.3–5.4).  :meth:`update` per group delta;
    :attr:`state` is ``"normal"``, ``"underusing"`` or ``"overusing"``.

    The least-squares slope over the window keeps running sums (O(1) per delta); they are
    recomputed from the window, with x rebased to its oldest point, every 256 deltas so that
    rounding does not accumulate."""

    __slots__ = ("_deltas", "_origin", "_accumulated", "_smoothed", "_hist", "_sx", "_sy",
                 "_sxx", "_sxy", "_updates", "_prev_trend", "threshold_ms",
                 "_last_threshold_update", "_overuse_ms", "_overuse_count", "state", "trend",
                 "modified_trend")

    def __init__(self) -> None:
        self._deltas = 0
        self._origin = -math.inf  # arrival time (ms) that x counts from
        self._accumulated = 0.0
        self._smoothed = 0.0
        self._hist: deque[tuple[float, float]] = deque()
        self._sx = self._sy = self._sxx = self._sxy = 0.0
        self._updates = 0
        self._prev_trend = 0.0
        self.threshold_ms = INITIAL_THRESHOLD_MS
        self._last_threshold_update = -math.inf
        self._overuse_ms = -1.0
        self._overuse_count = 0
        self.state = NORMAL
        self.trend = 0.0
        self.modified_trend = 0.0

    def update(self, arrival_delta_ms: float, send_delta_ms: float, arrival_ms: float) -> str:
        """One inter-group delta (§5.3): returns the detector state (§5.4).  (One function,
        not three: it runs once per packet group.)"""
        deltas = self._deltas = min(self._deltas + 1, 1000)
        if self._origin == -math.inf:
            self._origin = arrival_ms
        self._accumulated += arrival_delta_ms - send_delta_ms
        y = self._smoothed = SMOOTHING * self._smoothed + (1 - SMOOTHING) * self._accumulated
        x = arrival_ms - self._origin
        hist = self._hist
        hist.append((x, y))
        sx = self._sx + x
        sy = self._sy + y
        sxx = self._sxx + x * x
        sxy = self._sxy + x * y
        if len(hist) > WINDOW:
            ox, oy = hist.popleft()
            sx -= ox
            sy -= oy
            sxx -= ox * ox
            sxy -= ox * oy
        self._sx, self._sy, self._sxx, self._sxy = sx, sy, sxx, sxy
        self._updates += 1
        if not self._updates & 0xFF:
            self._rebase()
        trend = prev_trend = self._prev_trend
        if len(hist) == WINDOW:
            den = sxx - sx * sx / WINDOW
            if den > 1e-9:
                trend = (sxy - sx * sy / WINDOW) / den
        self.trend = trend
        if deltas < 2:
            return self.state

        # Over-use detector (§5.4).
        modified = (deltas if deltas < _MIN_DELTAS else _MIN_DELTAS) * trend * THRESHOLD_GAIN
        self.modified_trend = modified
        threshold = self.threshold_ms
        if modified > threshold:
            if self._overuse_ms == -1:
                self._overuse_ms = send_delta_ms / 2
            else:
                self._overuse_ms += send_delta_ms
            self._overuse_count += 1
            if self._overuse_ms > OVERUSE_TIME_MS and self._overuse_count > 1 and trend >= prev_trend:
                self._overuse_ms = 0
                self._overuse_count = 0
                self.state = OVERUSING
        else:
            self._overuse_ms = -1
            self._overuse_count = 0
            self.state = UNDERUSING if modified < -threshold else NORMAL
        self._prev_trend = trend

        # Adaptive threshold (§5.4): gamma += dt * k * (|m| - gamma), k_up / k_down.
        magnitude = modified if modified >= 0 else -modified
        last = self._last_threshold_update
        if last == -math.inf:
            last = arrival_ms
        if magnitude <= threshold + _MAX_ADAPT_OFFSET_MS:  # else a spike (e.g. a route change)
            k = K_DOWN if magnitude < threshold else K_UP
            dt = arrival_ms - last
            threshold += k * (magnitude - threshold) * (dt if dt < 100.0 else 100.0)
            self.threshold_ms = 600.0 if threshold > 600.0 else 6.0 if threshold < 6.0 else threshold
        self._last_threshold_update = arrival_ms
        return self.state

    def _rebase(self) -> None:
        hist = self._hist
        shift = hist[0][0]
        self._origin += shift
        points = [(x - shift, y) for x, y in hist]
        hist.clear()
        hist.extend(points)
        self._sx = sum(x for x, _ in points)
        self._sy = sum(y for _, y in points)
        self._sxx = sum(x * x for x, _ in points)
        self._sxy = sum(x * y for x, y in points)


def linear_fit_slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (x, y) points (reference for tests); None when x does not vary."""
    n = len(points)
    if n < 2:
        return None
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else None


# -------------------------------------------------------------- acknowledged bitrate

THROUGHPUT_WINDOW_MS = 350.0
"""The acknowledged rate is measured over this much arrival time."""
_MIN_THROUGHPUT_PACKETS = 5


class ThroughputEstimator:
    """The rate the receiver acknowledges, bps, over the last :data:`THROUGHPUT_WINDOW_MS`
    of arrival time (the idea of libwebrtc's ``RobustThroughputEstimator``, its default
    acknowledged-bitrate estimator): bytes received after the window's first packet divided by
    the arrival span.  Short enough that, when a link's capacity drops, the rate measured at
    over-use is the new capacity (the decrease to β × it happens within ~0.5 s)."""

    __slots__ = ("_packets", "_bytes", "_newest")

    def __init__(self) -> None:
        self._packets: deque[tuple[float, int]] = deque()  # (arrival ms, bytes)
        self._bytes = 0
        self._newest = -math.inf

    def update(self, arrival_ms: float, size: int) -> None:
        """One acknowledged packet: its arrival (receiver clock, ms) and size (bytes)."""
        self.extend(((0.0, arrival_ms, size),))

    def extend(self, acked: Iterable[tuple[float, float, int]]) -> None:
        """Acknowledged packets as (send ms, arrival ms, bytes), in feedback order."""
        packets = self._packets
        newest = self._newest
        total = self._bytes
        for _, arrival_ms, size in acked:
            if arrival_ms < newest - THROUGHPUT_WINDOW_MS:
                packets.clear()  # the receiver's clock jumped back: start again
                total = 0
                newest = -math.inf
            packets.append((arrival_ms, size))
            total += size
            if arrival_ms > newest:
                newest = arrival_ms
        while packets and newest - packets[0][0] > THROUGHPUT_WINDOW_MS:
            total -= packets.popleft()[1]
        self._bytes = total
        self._newest = newest

    @property
    def bps(self) -> float | None:
        """The rate, or None with fewer than 5 packets or under 50 ms of arrivals in the window."""
        packets = self._packets
        if len(packets) < _MIN_THROUGHPUT_PACKETS:
            return None
        span = self._newest - packets[0][0]
        if span < 50.0:
            return None
        return (self._bytes - packets[0][1]) * 8000 / span


# --------------------------------------------------------------------- AIMD (§5.5)

BETA = 0.85
"""Decrease factor on over-use (§5.5: beta)."""
ETA_PER_S = 1.08
"""Multiplicative increase per second (§5.5: eta)."""
MIN_ADDITIVE_BPS_PER_S = 4000.0
LINK_LIMITED_RATIO = 1.1
"""At over-use, the link limits the acknowledged rate when the sender sent more than this
times it; else the sender does (see :meth:`AimdRateControl.update`)."""


class LinkCapacityEstimator:
    """Mean and deviation (kbps) of the acknowledged rate measured at over-use."""

    __slots__ = ("_kbps", "_dev")

    def __init__(self) -> None:
        self._kbps = -1.0
        self._dev = 0.4

    @property
    def known(self) -> bool:
        return self._kbps >= 0

    def _sigma(self) -> float:
        return math.sqrt(self._dev * self._kbps)

    def upper_bps(self) -> float:
        return (self._kbps + 3 * self._sigma()) * 1000 if self.known else math.inf

    def lower_bps(self) -> float:
        return max(0.0, self._kbps - 3 * self._sigma()) * 1000 if self.known else 0.0

    def estimate_bps(self) -> float:
        """The mean, bps (0 when unknown)."""
        return self._kbps * 1000 if self.known else 0.0

    def update(self, bps: float, alpha: float = 0.05) -> None:
        kbps = bps / 1000
        self._kbps = kbps if self._kbps < 0 else (1 - alpha) * self._kbps + alpha * kbps
        error = self._kbps - kbps
        self._dev = min(2.5, max(0.4, (1 - alpha) * self._dev + alpha * error * error / max(self._kbps, 1.0)))

    def reset(self) -> None:
        self._kbps = -1.0


class AimdRateControl:
    """The delay-based rate A_r (§5.5) driven by the detector state.

    :param initial_bps: A_r before any feedback.
    """

    __slots__ = ("bps", "min_bps", "max_bps", "state", "capacity", "_last_change_ms",
                 "_last_update_ms", "rtt_ms")

    def __init__(self, initial_bps: float, min_bps: float, max_bps: float) -> None:
        self.bps = float(initial_bps)
        self.min_bps = float(min_bps)
        self.max_bps = float(max_bps)
        self.state = "hold"  # "hold" | "increase" | "decrease"
        self.capacity = LinkCapacityEstimator()
        self._last_change_ms = -math.inf
        self._last_update_ms = -math.inf
        self.rtt_ms = 200.0

    def time_to_reduce(self, now_ms: float, acked_bps: float) -> bool:
        """Another decrease is due: an RTT (10–200 ms) since the last change, or the
        acknowledged rate fell below half the estimate."""
        interval = min(200.0, max(10.0, self.rtt_ms))
        return now_ms - self._last_change_ms >= interval or acked_bps < 0.5 * self.bps

    def update(self, signal: str, acked_bps: float | None, now_ms: float,
               sent_bps: float | None = None) -> float:
        """Apply one detector state (``"normal"``/``"underusing"``/``"overusing"``) at
        ``now_ms``; returns A_r.  ``sent_bps``: what the sender sent lately (bps; None:
        unknown) — at over-use, when it is not clearly above the acknowledged rate
        (< :data:`LINK_LIMITED_RATIO` × acked), the sender, not the link, limits what is
        acknowledged (an SFU that just moved the viewer to a lower layer), so the decrease
        does not go below β × the link capacity measured at earlier over-use and the
        acknowledged rate is not learnt as the capacity."""
        if signal == OVERUSING:
            self.state = "decrease"
        elif signal == UNDERUSING:
            self.state = "hold"
        elif self.state == "hold":
            self.state = "increase"
            self._last_change_ms = now_ms
        bps = self.bps
        if self.state == "increase":
            if acked_bps is not None and self.capacity.known and acked_bps > self.capacity.upper_bps():
                self.capacity.reset()  # well above the old capacity: it grew
            if self._last_update_ms != -math.inf:
                dt_ms = min(now_ms - self._last_update_ms, 1000.0)
                if self.capacity.known:
                    bps += self._additive_bps_per_s() * dt_ms / 1000
                else:
                    bps += max(bps * (ETA_PER_S ** (dt_ms / 1000) - 1), 1000 * dt_ms / 1000)
            self._last_change_ms = now_ms
        elif self.state == "decrease":
            if acked_bps is not None:
                sender_limited = (sent_bps is not None and self.capacity.known
                                  and sent_bps < LINK_LIMITED_RATIO * acked_bps)
                measured = max(acked_bps, self.capacity.estimate_bps()) if sender_limited else acked_bps
                lowered = BETA * measured
                if lowered < bps:
                    bps = lowered
                if not sender_limited:
                    if acked_bps < self.capacity.lower_bps():
                        self.capacity.reset()
                    self.capacity.update(acked_bps)
            else:
                bps *= BETA
            self.state = "hold"
            self._last_change_ms = now_ms
        if acked_bps is not None and bps > self.bps:
            # Never more than 1.5 × what is acknowledged + 10 kbit/s (ack-rate cap), or the
            # link capacity measured at over-use when that is more: an SFU that sends a low
            # layer acknowledges little, and must not be held below a link it has measured.
            limit = max(1.5 * acked_bps + 10_000, self.capacity.estimate_bps())
            bps = max(self.bps, min(bps, limit))
        self._last_update_ms = now_ms
        self.bps = min(self.max_bps, max(self.min_bps, bps))
        return self.bps

    def _additive_bps_per_s(self) -> float:
        """About one packet per response time (RTT + 100 ms), at 30 frames/s of ≤ 1200-byte packets."""
        bits_per_frame = self.bps / 30
        packets_per_frame = max(1.0, math.ceil(bits_per_frame / (1200 * 8)))
        packet_bits = bits_per_frame / packets_per_frame
        return max(MIN_ADDITIVE_BPS_PER_S, packet_bits * 1000 / (self.rtt_ms + 100))

    def set_estimate(self, bps: float, now_ms: float) -> None:
        """A measured rate (probe result): A_r jumps to it; the capacity estimate learns it."""
        self.bps = min(self.max_bps, max(self.min_bps, float(bps)))
        self.capacity.update(bps, 0.5)
        self._last_change_ms = now_ms


# -------------------------------------------------------------------- loss-based (§6)

LOSS_LOW, LOSS_HIGH = 0.02, 0.10
"""§6: increase below 2 % loss, decrease above 10 %."""
MIN_LOSS_PACKETS = 40
"""Packets a loss fraction is computed over (at least; fewer make it noise)."""
INHERENT_LOSS_MAX = 0.10
INHERENT_LOSS_GAIN = 0.1
LOW_QUEUE_MS = 30.0
"""Queuing delay below which a loss is taken as link loss, not queue overflow."""
DECREASE_INTERVAL_MS = 300.0


class LossBasedControl:
    """The loss-based rate A_s (§6; libwebrtc ``SendSideBandwidthEstimation``).

    Per loss report (fraction p of packets reported lost): p < 2 % → A_s = 1.08 × (its
    minimum over the last second) + 1 kbit/s, capped at ``cap``; p > 10 % → A_s × (1 − 0.5 p),
    at most once per 300 ms + RTT, and not below β × the acknowledged rate (deviation: an
    SFU cannot lower its rate at once — a layer switch waits for a key frame — so the loss
    goes on after the first decrease, and §6 alone would halve A_s every 300 ms + RTT down
    to nothing while the link still carries what is acknowledged); else hold.  Deviation from §6 (the idea of libwebrtc's
    ``LossBasedBweV2`` inherent loss): loss that persists while the queue is empty is link
    loss (Wi-Fi, a lossy path), not congestion — a tail-drop queue drops only when full.
    With transport-cc the queuing delay is known; reports taken with < 30 ms of it teach an
    *inherent loss* (EWMA, ≤ 10 %) that is subtracted from p before the thresholds apply.
    So 5 % random loss stops holding A_s after ~1 s, while congestion loss (a full queue)
    still cuts it.
    """

    __slots__ = ("bps", "_history", "_last_decrease_ms", "inherent", "last_fraction")

    def __init__(self, initial_bps: float) -> None:
        self.bps = float(initial_bps)
        self._history: deque[tuple[float, float]] = deque()  # (ms, bps) of the last second
        self._last_decrease_ms = -math.inf
        self.inherent = 0.0
        self.last_fraction = 0.0

    def update(self, fraction: float, now_ms: float, cap: float, rtt_ms: float,
               queue_ms: float | None = None, acked_bps: float | None = None) -> float:
        """One loss report: ``fraction`` lost (0..1) at ``now_ms``; ``cap`` bounds increases
        (the delay-based rate or REMB); ``queue_ms`` the queuing delay when known;
        ``acked_bps`` the rate the receiver acknowledged meanwhile (a decrease never goes
        below β × it: with 70 % loss the 30 % that arrive measure what the link carries)."""
        self.last_fraction = fraction
        if queue_ms is not None and queue_ms < LOW_QUEUE_MS:
            target = min(fraction, INHERENT_LOSS_MAX)
            self.inherent += INHERENT_LOSS_GAIN * (target - self.inherent)
        p = max(0.0, fraction - self.inherent) if queue_ms is not None else fraction
        history = self._history
        while history and now_ms - history[0][0] > 1000:
            history.popleft()
        if p < LOSS_LOW:
            floor = history[0][1] if history else self.bps  # minimum of the last second
            grown = floor * ETA_PER_S + 1000
            if grown > self.bps:
                self.bps = min(grown, max(cap, self.bps))
        elif p > LOSS_HIGH and now_ms - self._last_decrease_ms >= DECREASE_INTERVAL_MS + rtt_ms:
            lowered = self.bps * (1 - 0.5 * p)
            if acked_bps is not None and lowered < BETA * acked_bps:
                lowered = min(self.bps, BETA * acked_bps)
            self.bps = lowered
            self._last_decrease_ms = now_ms
        self._remember(now_ms)
        return self.bps

    def set(self, bps: float, now_ms: float) -> None:
        """Jump to ``bps`` (a probe result, or to follow a lower cap)."""
        self.bps = float(bps)
        self._history.clear()
        self._remember(now_ms)

    def _remember(self, now_ms: float) -> None:
        history = self._history
        while history and history[-1][1] >= self.bps:
            history.pop()  # a monotonic deque: the front is the minimum of the last second
        history.append((now_ms, self.bps))
