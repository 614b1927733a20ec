"""Bandwidth probing: probe clusters and their result (libwebrtc ``ProbeController`` /
``ProbeBitrateEstimator``; draft-ietf-rmcat-gcc-02 §5 leaves ramp-up speed to the sender).

A delay-based estimate only learns rates the sender actually sends, and an SFU sends what
its publishers produce: a viewer held on a low layer never sends enough to show that its
link got better.  A *probe cluster* sends, for 40 ms (200 ms when the target is far above
the acknowledged rate), padding on top of the media so that
the transport carries ``target_bps``; every packet sent meanwhile (media and padding) is
tagged with the cluster id in the send history.  When the transport-cc feedback for them
arrives, :class:`ProbeBitrateEstimator` compares the rate they were sent at with the rate
they arrived at: a link that carried them unchanged has at least that capacity; one that
spread them out has about the arrival rate.

:class:`ProbeController` rate-limits the requests: one cluster at a time, at most twice the
current estimate per step (a step that worked is followed at once by the next, towards the
rate asked for), and after a step that did not work the next waits 1 s, then 2 s, then 3 s
(10 s without a failure start it again at 1 s).

Once a step has *saturated* the link (its packets were lost or queued: see
:class:`ProbeBitrateEstimator`) — which counts as a failure, whatever the rate that
arrived — what arrived is the link's known *capacity* (so is the acknowledged rate when
congestion cut the estimate: :meth:`ProbeController.congested`), and from then on every step is at
most :data:`CAPACITY_STEP` × the capacity, in 200 ms clusters, each success raising the
capacity to its result (LiveKit's stream allocator likewise probes 20 % above what it has);
after :data:`CAPACITY_FORGET_AFTER` successes in a row it is forgotten and steps double again.
A 2 × step over a link found full overflows its queue: with a token-bucket bottleneck of
~1 Mbit/s (a few KB of bucket, ~50 ms of queue) a 200 ms cluster at twice the link's rate
drops tens of packets, media among them, and the viewer's picture waits a repair round trip
behind the rest of the cluster (0.25–0.45 s frozen, tests/e2e/test_adaptive_netns.py).  A
25 % step over 200 ms overshoots such a link by ~5 KB (~10 KB for a second step after a
first one the bucket passed whole): within its bucket and queue, so the step shows as a
growing delay, not as loss.  When the link gets better the steps succeed one after another
(~0.3 s each): a first one may have passed a bucket whole, a second 25 % above it cannot,
so two show that the link got better and the climb goes on in 2 × steps.
Times are seconds on the estimator's monotonic clock, rates bps.
"""

from __future__ import annotations

import math

CLUSTER_DURATION_S = 0.04
"""How long a cluster sends when its target is near the acknowledged rate (libwebrtc:
≥ 15 ms; longer gives a steadier result at our per-frame media bursts)."""
LONG_CLUSTER_DURATION_S = 0.2
"""How long a cluster sends when its target is more than :data:`LONG_CLUSTER_RATIO` × the
acknowledged rate.  A token-bucket bottleneck (Linux ``tbf``: a bucket of a few KB and a
queue of ~50 ms) passes a 40 ms burst at any rate — 2 Mbit/s for 40 ms is 10 KB — so a
short cluster "measures" the line rate, not the bucket's; 200 ms outlasts bucket + queue
of links up to a few Mbit/s."""
LONG_CLUSTER_RATIO = 1.5
MIN_CLUSTER_PACKETS = 5
LONG_MIN_CLUSTER_PACKETS = 15
MAX_PADDING_SIZE = 1200
MIN_PADDING_SIZE = 200
MAX_STEP = 2.0
"""A cluster probes at most this many times the current estimate."""
GOAL_HEADROOM = 1.25
"""Probing goes on towards this many times the rate asked for (the caller asks for exactly
what its next layer needs; a little more lets the layer's bitrate vary without the estimate
being at its edge)."""
SUCCESS_RATIO = 0.7
"""A result at least this fraction of the cluster's target counts as success (libwebrtc's
exponential probing goes on above 0.7 × the target)."""
CAPACITY_STEP = 1.25
"""Once the link's capacity is known, a step probes at most this many times it (see the
module docstring)."""
CAPACITY_FORGET_AFTER = 2
"""Successes in a row above the known capacity after which it is forgotten."""
BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 3.0
"""After a failed probe the next waits 1 s, then 2 s, then 3 s (capped: when the link comes
back, the next probe finds it within 3 s however many failed before)."""
REPROBE_MEMORY_S = 20.0
"""How long the highest rate asked for is remembered for probing again on the estimator's
own (see :meth:`ProbeController.wanted`)."""
BACKOFF_RESET_S = 10.0
"""A failure more than this long after the previous one starts the back-off again at 1 s."""
RESULT_TIMEOUT_S = 1.0
"""A cluster without a result this long (+ RTT) after it stopped sending failed."""
_MIN_RECEIVED_RATIO = 0.8
_LOSS_SATURATED = 0.05
"""More than this fraction of the cluster's bytes lost: the link was saturated."""
_DELAY_GROWTH_MS = 10.0
"""The one-way delay grew by more than this (and a quarter of the send span) across the
cluster: a queue built up, the link was saturated."""
_MAX_VALID_RATIO = 2.0
_UNSATURATED_RATIO = 0.9
_TARGET_UTILIZATION = 0.95
_MAX_INTERVAL_S = 1.0


class ProbeCluster:
    """One probe: ``target_bps`` for ``duration_s`` from ``start_s``; ``first_seq`` is the
    first transport-wide sequence number sent after it started.  ``long`` (target far above
    the acknowledged rate): :data:`LONG_CLUSTER_DURATION_S` and ≥
    :data:`LONG_MIN_CLUSTER_PACKETS` packets, else :data:`CLUSTER_DURATION_S` and ≥
    :data:`MIN_CLUSTER_PACKETS`."""

    __slots__ = ("id", "target_bps", "start_s", "first_seq", "duration_s", "padding_size",
                 "min_packets", "min_bytes", "sending", "ended_s", "padding_sent")

    def __init__(self, cluster_id: int, target_bps: float, start_s: float, first_seq: int,
                 long: bool = False) -> None:
        self.id = cluster_id
        self.target_bps = target_bps
        self.start_s = start_s
        self.first_seq = first_seq
        self.duration_s = LONG_CLUSTER_DURATION_S if long else CLUSTER_DURATION_S
        self.min_packets = LONG_MIN_CLUSTER_PACKETS if long else MIN_CLUSTER_PACKETS
        total = target_bps * self.duration_s / 8
        self.padding_size = int(min(MAX_PADDING_SIZE, max(MIN_PADDING_SIZE, total / self.min_packets)))
        self.min_bytes = total
        self.sending = True
        self.ended_s = math.inf
        self.padding_sent = 0

    def bytes_due(self, now: float, sent_bytes: int, lookahead_s: float) -> int:
        """Bytes (media + padding) still to send by ``now + lookahead_s`` to keep the target."""
        elapsed = min(now - self.start_s + lookahead_s, self.duration_s)
        return int(self.target_bps * elapsed / 8) - sent_bytes

    def packets_due(self, now: float, sent_packets: int, lookahead_s: float) -> int:
        """Packets still to send by ``now + lookahead_s`` so that the cluster has at least
        ``min_packets`` spread over its duration (padding may be larger than asked for)."""
        elapsed = min(now - self.start_s + lookahead_s, self.duration_s)
        return math.ceil(self.min_packets * elapsed / self.duration_s) - sent_packets


class ProbeBitrateEstimator:
    """The rate a probe cluster measured, from its packets' send and arrival times
    (libwebrtc ``ProbeBitrateEstimator``, hardened against token buckets): send rate =
    bytes but the last / send span; receive rate = bytes but the first / arrival span, and
    the same over the later packets — from the median arrival to the 90th percentile
    (*sustained*: a bucket passes the start of a cluster at line rate, then the rest at its
    own rate).  The link was *saturated* (:attr:`saturated`: evidence that it is full;
    long clusters only) when more than 5 % (+ the path's inherent loss) of the cluster's
    bytes were lost (every packet reported: ``complete``) or the one-way delay grew by more
    than 10 ms (and a tenth of the send span) from the cluster's start to its end; then, or
    when either receive rate is under 0.9 × the send rate, the result is 0.95 × the smaller
    receive rate, else min(send rate, receive rate).  None until ≥ 80 % of the packets and
    bytes sent in the cluster (and of its minimum size) are acknowledged — except a long
    cluster, all reported, of which ≥ 80 % of its minimum packet count arrived: with more
    loss than that it measured a saturated link (tbf drops what its queue cannot hold; what
    arrives arrives at the bucket's rate) — or when a span is ≤ 0 or > 1 s, or the receive
    rate exceeds twice the send rate.  :attr:`saturated` tells about the last result."""

    __slots__ = ("_clusters", "saturated")

    def __init__(self) -> None:
        self._clusters: dict[int, list[tuple[float, float, int]]] = {}
        self.saturated = False

    def add(self, cluster_id: int, send_s: float, arrival_ms: float, size: int) -> None:
        """One acknowledged packet of a cluster (send s, arrival ms on the receiver's clock,
        bytes)."""
        packets = self._clusters.get(cluster_id)
        if packets is None:
            if len(self._clusters) >= 8:
                self._clusters.pop(next(iter(self._clusters)))  # oldest first
            packets = self._clusters[cluster_id] = []
        packets.append((send_s, arrival_ms / 1000, size))

    def result(self, cluster: ProbeCluster, sent_packets: int = 0, sent_bytes: int = 0,
               inherent_loss: float = 0.0, complete: bool = False) -> float | None:
        """The cluster's rate (bps) or None (see the class); ``sent_packets``/``sent_bytes``:
        what the sender sent tagged with the cluster (0: only its minimum counts);
        ``inherent_loss``: the path's random loss (0..1), allowed on top of the 5 %;
        ``complete``: every packet of the cluster has been reported received or lost (a
        result with heavy loss needs that: unreported packets are not lost ones)."""
        packets = self._clusters.get(cluster.id)
        if not packets:
            return None
        count = len(packets)
        total = sum(size for _, _, size in packets)
        need_packets = max(cluster.min_packets, sent_packets)
        need_bytes = max(cluster.min_bytes, sent_bytes)
        long = cluster.duration_s > CLUSTER_DURATION_S
        heavy_loss = count < _MIN_RECEIVED_RATIO * need_packets or total < _MIN_RECEIVED_RATIO * need_bytes
        if heavy_loss and not (long and complete and sent_bytes
                               and count >= _MIN_RECEIVED_RATIO * cluster.min_packets):
            return None  # too little arrived to measure anything
        by_send = sorted(packets)
        by_arrival = sorted(packets, key=lambda p: p[1])
        send_span = by_send[-1][0] - by_send[0][0]
        first_arrival, last_arrival = by_arrival[0][1], by_arrival[-1][1]
        receive_span = last_arrival - first_arrival
        if not (0 < send_span <= _MAX_INTERVAL_S and 0 < receive_span <= _MAX_INTERVAL_S):
            return None
        send_bps = (total - by_send[-1][2]) * 8 / send_span
        receive_bps = (total - by_arrival[0][2]) * 8 / receive_span
        if receive_bps > _MAX_VALID_RATIO * send_bps:
            return None
        # Sustained: the receive rate of the later packets — from the median arrival to the
        # 90th percentile (the last few may straggle behind: media sent after the padding).
        late = by_arrival[count // 2:max(count // 2 + 3, (9 * count) // 10)]
        sustained = receive_bps
        if len(late) >= 3 and late[-1][1] > late[0][1]:
            sustained = min(receive_bps, sum(p[2] for p in late[1:]) * 8 / (late[-1][1] - late[0][1]))
        # Delay growth: one-way delay (+ the clocks' offset, which cancels) at the end of
        # the cluster against its start, by send order.
        quarter = max(1, count // 4)
        start_delay = min(a - s for s, a, _ in by_send[:quarter])
        end_delay = min(a - s for s, a, _ in by_send[-quarter:])
        grown = (end_delay - start_delay) * 1000 > max(_DELAY_GROWTH_MS, 100 * send_span)
        # Lost, not merely unreported yet (feedback may come late or out of order).
        lost = complete and sent_bytes > 0 and total < (1 - _LOSS_SATURATED - inherent_loss) * sent_bytes
        received = min(receive_bps, sustained)
        # Only a long cluster outlasts frame bursts and a bucket: a short one's delay and
        # loss are those of one or two frames.
        self.saturated = long and (grown or lost or heavy_loss)
        if self.saturated or received < _UNSATURATED_RATIO * send_bps:
            return _TARGET_UTILIZATION * received
        return min(send_bps, receive_bps)

    def forget(self, cluster_id: int) -> None:
        self._clusters.pop(cluster_id, None)


class ProbeController:
    """When to probe and how high (see the module docstring).

    :ivar asked_bps: the rate last asked for (0: none).
    :ivar wanted_bps: the highest rate asked for within the last :data:`REPROBE_MEMORY_S`
        (see :meth:`wanted`).
    :ivar goal_bps: what probing goes on towards: :data:`GOAL_HEADROOM` × ``asked_bps``
        (at most ``max_bps``).
    :ivar active: the cluster being sent or awaiting its result, or None.
    :ivar capacity_bps: the link's known capacity: what arrived in the last step that
        saturated it, or what was acknowledged when congestion last cut the estimate
        (:meth:`congested`), raised by a later success (None: not known yet, or
        :data:`CAPACITY_FORGET_AFTER` steps succeeded since).
    """

    __slots__ = ("asked_bps", "goal_bps", "wanted_bps", "_wanted_at", "active", "_next_id", "_backoff_s", "_next_allowed_s",
                 "_last_failure_s", "clusters", "successes", "failures", "last_result_bps", "capacity_bps",
                 "_capped_successes")

    def __init__(self) -> None:
        self.asked_bps = self.goal_bps = self.wanted_bps = 0.0
        self._wanted_at = -math.inf
        self.active: ProbeCluster | None = None
        self._next_id = 1
        self._backoff_s = BACKOFF_MIN_S
        self._next_allowed_s = -math.inf
        self._last_failure_s = -math.inf
        self.clusters = self.successes = self.failures = 0
        self.last_result_bps: float | None = None
        self.capacity_bps: float | None = None
        self._capped_successes = 0

    def request(self, target_bps: float, estimate_bps: float, max_bps: float, now: float,
                first_seq: int, acked_bps: float | None = None) -> ProbeCluster | None:
        """Ask for ``target_bps``: a new cluster, or None (one is active, the last failed
        too recently, or the estimate already reaches the target).  ``acked_bps``: the rate
        acknowledged now (None: unknown); a step above :data:`LONG_CLUSTER_RATIO` × it gets
        a long cluster.  Once the capacity is known the step is at most
        :data:`CAPACITY_STEP` × :attr:`capacity_bps`, always a long cluster (a short one
        passes a token bucket whole), and is sent even when the estimate already reaches it
        (an estimate above a known capacity is unverified)."""
        self.asked_bps = float(target_bps)
        if target_bps >= self.wanted_bps or now - self._wanted_at > REPROBE_MEMORY_S:
            self.wanted_bps, self._wanted_at = float(target_bps), now
        self.goal_bps = min(GOAL_HEADROOM * target_bps, max_bps)
        if self.active is not None or now < self._next_allowed_s or self.goal_bps <= estimate_bps:
            return None
        step = min(self.goal_bps, MAX_STEP * estimate_bps)
        floor = estimate_bps
        capacity = self.capacity_bps
        capped = capacity is not None and step > CAPACITY_STEP * capacity
        if capacity is not None and capped:
            step = CAPACITY_STEP * capacity
            floor = min(estimate_bps, capacity)
        if step <= floor:
            return None
        long = capped or acked_bps is None or step > LONG_CLUSTER_RATIO * acked_bps
        cluster = ProbeCluster(self._next_id, step, now, first_seq, long)
        self._next_id = self._next_id % 0xFFFF + 1
        self.active = cluster
        self.clusters += 1
        return cluster

    def congested(self, acked_bps: float) -> None:
        """Congestion cut the estimate while ``acked_bps`` was acknowledged: the link is full
        at that rate, its known capacity (the first probe after a link drop must not be a
        2 × step either)."""
        self.capacity_bps = acked_bps
        self._capped_successes = 0

    def wanted(self, now: float) -> float:
        """The highest rate asked for within the last :data:`REPROBE_MEMORY_S` (0: none).
        A consumer asks only for its next step up, and not while that step fits but is held
        by its hysteresis: a viewer held on the lowest layer after a drop asks for nothing
        when the link comes back.  The estimator probes again towards this on its own."""
        return self.wanted_bps if now - self._wanted_at <= REPROBE_MEMORY_S else 0.0

    def ready(self, now: float) -> bool:
        """No cluster active and no back-off in force."""
        return self.active is None and now >= self._next_allowed_s

    def stop_sending(self, now: float) -> None:
        if self.active is not None and self.active.sending:
            self.active.sending = False
            self.active.ended_s = now

    def finish(self, result_bps: float | None, now: float, saturated: bool = False) -> bool:
        """The active cluster's outcome (None: no result; ``saturated``: the result is what
        the link carried while the cluster filled it — the capacity from now on).  True when
        it succeeded: a result ≥ :data:`SUCCESS_RATIO` × the target, without saturating."""
        cluster = self.active
        if cluster is None:
            return False
        self.active = None
        self.last_result_bps = result_bps
        if result_bps is not None and saturated:
            self.capacity_bps = result_bps
            self._capped_successes = 0
        elif result_bps is not None and result_bps >= SUCCESS_RATIO * cluster.target_bps:
            if self.capacity_bps is not None:
                self._capped_successes += 1
                self.capacity_bps = (None if self._capped_successes >= CAPACITY_FORGET_AFTER
                                     else max(self.capacity_bps, result_bps))
            self.successes += 1
            self._backoff_s = BACKOFF_MIN_S
            self._next_allowed_s = now  # the next step may follow at once
            return True
        self.failures += 1
        if now - self._last_failure_s > BACKOFF_RESET_S:
            self._backoff_s = BACKOFF_MIN_S
        self._last_failure_s = now
        self._next_allowed_s = now + self._backoff_s
        self._backoff_s = min(BACKOFF_MAX_S, self._backoff_s * 2)
        return False

    def timed_out(self, now: float, rtt_s: float) -> bool:
        """The active cluster stopped sending more than 1 s + RTT ago without a result."""
        cluster = self.active
        return cluster is not None and not cluster.sending and now - cluster.ended_s > RESULT_TIMEOUT_S + rtt_s
