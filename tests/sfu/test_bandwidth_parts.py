"""The bandwidth estimator's parts, one by one: the send history ring (sfu.send_history),
packet groups, trendline and over-use detector, AIMD, acknowledged rate and loss-based
control (sfu.gcc, draft-ietf-rmcat-gcc-02 §5–6), probe clusters and their result
(sfu.probe)."""

from __future__ import annotations

import random

import pytest

from sfu import gcc, probe
from sfu.send_history import RING_SIZE, SendHistory

# ------------------------------------------------------------------- send history


def test_sequence_numbers_are_16_bit_and_wrap() -> None:
    now = [5.0]
    history = SendHistory(lambda: now[0])
    seqs = [history.next_sequence(100) for _ in range(65_538)]
    assert seqs[:3] == [0, 1, 2] and seqs[65_535:] == [65_535, 0, 1]
    assert history.last_sequence == 1 and history.next_seq == 2


def test_a_sequence_number_is_known_from_being_sent_until_the_ring_overwrites_it() -> None:
    now = [1.0]
    history = SendHistory(lambda: now[0])
    assert history.slot(0) == -1  # not sent yet
    for k in range(10):
        now[0] = 1.0 + k / 100
        history.next_sequence(1000 + k)
    slot = history.slot(3)
    assert slot >= 0 and history.times[slot] == pytest.approx(1.03) and history.metas[slot] & 0xFFFF == 1003
    assert history.slot(10) == -1 and history.slot(65_535) == -1  # future / never sent
    for _ in range(RING_SIZE):
        history.next_sequence(1)
    assert history.slot(3) == -1  # overwritten
    assert history.slot(history.last_sequence) >= 0
    assert history.slot((history.last_sequence - RING_SIZE + 1) & 0xFFFF) >= 0
    assert history.slot((history.last_sequence - RING_SIZE) & 0xFFFF) == -1


def test_bytes_since_counts_a_probe_cluster_and_rate_walks_back() -> None:
    now = [10.0]
    history = SendHistory(lambda: now[0])
    for _ in range(5):
        history.next_sequence(1000)
    first = history.next_seq
    history.cluster = 7
    for _ in range(4):
        history.next_sequence(500)
    history.cluster = 0
    history.next_sequence(300)
    assert history.bytes_since(first, 7) == (2000, 4)
    assert history.bytes_since(first) == (2300, 5)
    assert history.bytes_since(history.next_seq) == (0, 0)
    now[0] = 10.5
    history.next_sequence(1000)
    assert history.rate_bps(0.1, 10.5) == pytest.approx(1000 * 8 / 0.1)
    assert history.rate_bps(1.0, 10.5) == pytest.approx((5000 + 2300 + 1000) * 8 / 1.0)


# ------------------------------------------------------------------- inter-arrival


def test_packets_sent_within_5_ms_form_one_group() -> None:
    inter = gcc.InterArrival()
    # Group A: sent 0..4 ms; group B: 20..22 ms; group C starts at 40 ms.
    events = [(0, 100), (2, 101), (4, 103), (20, 125), (22, 127), (40, 150)]
    done = [inter.add(s, a) for s, a in events]
    assert done == [False, False, False, False, False, True]
    assert inter.send_delta_ms == pytest.approx(22 - 4)  # last send times of B and A
    assert inter.arrival_delta_ms == pytest.approx(127 - 103)  # their last arrivals


def test_a_burst_joins_the_group_it_arrived_with() -> None:
    inter = gcc.InterArrival()
    inter.add(0, 100)
    # Sent 10 ms later but arriving 1 ms after the group (queued behind it): same group.
    assert not inter.add(10, 101)
    assert not inter.add(30, 140)  # new group B; A is the first complete one
    assert inter.add(60, 170)  # C starts: B − A delta
    assert inter.send_delta_ms == pytest.approx(30 - 10)
    assert inter.arrival_delta_ms == pytest.approx(140 - 101)


def test_packets_sent_before_the_current_group_are_ignored() -> None:
    inter = gcc.InterArrival()
    inter.add(0, 100)
    inter.add(20, 120)
    assert not inter.add(5, 130)  # reordered
    assert inter.add(40, 140)
    assert inter.send_delta_ms == pytest.approx(20) and inter.arrival_delta_ms == pytest.approx(20)


# ---------------------------------------------------------- trendline + detector


def test_trendline_slope_matches_a_least_squares_fit_across_rebases() -> None:
    rng = random.Random(3)
    trend = gcc.TrendlineEstimator()
    accumulated = smoothed = 0.0
    points: list[tuple[float, float]] = []
    arrival = 1e9  # a receiver clock far from zero
    for _ in range(1000):  # the running sums are rebuilt every 256 deltas
        send_delta = 33.0
        arrival_delta = 33.0 + rng.uniform(-3, 3)
        arrival += arrival_delta
        trend.update(arrival_delta, send_delta, arrival)
        accumulated += arrival_delta - send_delta
        smoothed = 0.9 * smoothed + 0.1 * accumulated
        points.append((arrival, smoothed))
        expected = gcc.linear_fit_slope(points[-gcc.WINDOW:]) if len(points) >= gcc.WINDOW else 0.0
        assert trend.trend == pytest.approx(expected, rel=1e-6, abs=1e-9)


def _feed(trend: gcc.TrendlineEstimator, extra_ms: float, groups: int, start: float = 0.0) -> float:
    arrival = start
    for _ in range(groups):
        arrival += 33.0 + extra_ms
        trend.update(33.0 + extra_ms, 33.0, arrival)
    return arrival


def test_growing_delay_is_overuse_shrinking_is_underuse_flat_is_normal() -> None:
    trend = gcc.TrendlineEstimator()
    end = _feed(trend, 0.0, 40)
    assert trend.state == gcc.NORMAL
    end = _feed(trend, 4.0, 30, end)  # each group 4 ms later than sent: a queue builds
    assert trend.state == gcc.OVERUSING and trend.trend > 0
    _feed(trend, -4.0, 40, end)
    assert trend.state == gcc.UNDERUSING and trend.trend < 0


def test_adaptive_threshold_follows_the_trend_slowly_up_and_fast_down() -> None:
    trend = gcc.TrendlineEstimator()
    start = trend.threshold_ms
    end = _feed(trend, 0.0, 100)
    assert trend.threshold_ms < start  # |m| ≈ 0 < γ: k_down pulls it to its floor
    assert trend.threshold_ms == pytest.approx(6.0)
    # A steady gradient whose |m| grows past γ (not by more than 15 ms: not a spike): γ
    # follows it up (k_up), behind it — so the detector reports over-use meanwhile.
    seen: list[tuple[float, float, str]] = []
    arrival = end
    for _ in range(40):
        arrival += 34.65
        trend.update(34.65, 33.0, arrival)
        seen.append((trend.modified_trend, trend.threshold_ms, trend.state))
    assert seen[-1][0] > 10.0
    assert all(6.0 <= gamma <= m for m, gamma, _ in seen if m > 6.0)
    assert 6.0 < seen[-1][1] < seen[-1][0]
    assert any(state == gcc.OVERUSING for *_, state in seen)


# ------------------------------------------------------------------------ AIMD


def test_aimd_decreases_to_beta_times_acked_then_holds() -> None:
    aimd = gcc.AimdRateControl(2_000_000, 30_000, 20_000_000)
    aimd.update(gcc.NORMAL, 1_500_000, 0.0)
    assert aimd.update(gcc.OVERUSING, 1_000_000, 100.0) == pytest.approx(850_000)
    assert aimd.state == "hold"
    assert aimd.update(gcc.UNDERUSING, 1_000_000, 200.0) == pytest.approx(850_000)
    assert not aimd.time_to_reduce(150.0, 1_000_000)  # within an RTT (200 ms) of the last change
    assert aimd.time_to_reduce(150.0, 400_000)  # … unless acked fell below half the estimate


def test_aimd_multiplies_by_8_percent_a_second_and_respects_the_ack_cap() -> None:
    aimd = gcc.AimdRateControl(1_000_000, 30_000, 20_000_000)
    aimd.update(gcc.NORMAL, 5_000_000, 0.0)  # hold → increase
    for k in range(1, 11):
        aimd.update(gcc.NORMAL, 5_000_000, k * 100.0)
    assert aimd.bps == pytest.approx(1_000_000 * 1.08, rel=0.01)
    capped = gcc.AimdRateControl(1_000_000, 30_000, 20_000_000)
    for k in range(100):
        capped.update(gcc.NORMAL, 400_000, k * 100.0)
    assert capped.bps == pytest.approx(1_000_000)  # already above 1.5 × 400k + 10k: no increase
    low = gcc.AimdRateControl(500_000, 30_000, 20_000_000)
    for k in range(200):
        low.update(gcc.NORMAL, 400_000, k * 100.0)
    assert low.bps == pytest.approx(1.5 * 400_000 + 10_000)


def test_aimd_increases_additively_near_the_known_capacity() -> None:
    aimd = gcc.AimdRateControl(1_000_000, 30_000, 20_000_000)
    aimd.rtt_ms = 100.0
    aimd.update(gcc.OVERUSING, 1_000_000, 0.0)  # learns ~1 Mbit/s as the capacity
    aimd.update(gcc.NORMAL, 1_000_000, 100.0)
    before = aimd.bps
    aimd.update(gcc.NORMAL, 1_000_000, 1100.0)
    # One packet per response time (RTT + 100 ms): at 850 kbit/s, 30 frames/s of 3 packets,
    # a packet is 850k / 90 bits; per 200 ms that is ~47 kbit/s.
    assert aimd.bps - before == pytest.approx(850_000 / 90 * 1000 / 200, rel=0.02)


def test_throughput_is_the_recent_arrival_rate() -> None:
    estimator = gcc.ThroughputEstimator()
    assert estimator.bps is None
    for k in range(200):  # 1000 bytes every 4 ms: 2 Mbit/s
        estimator.update(1000.0 + 4 * k, 1000)
    assert estimator.bps == pytest.approx(2_000_000)
    for k in range(200):  # then every 10 ms: 800 kbit/s — the window forgets the old rate
        estimator.update(1800.0 + 10 * k, 1000)
    assert estimator.bps == pytest.approx(800_000)


# ------------------------------------------------------------------ loss-based


def test_loss_based_holds_between_2_and_10_percent_unless_the_loss_is_inherent() -> None:
    plain = gcc.LossBasedControl(1_000_000)
    for k in range(20):
        plain.update(0.05, k * 200.0, 10_000_000, 100.0, queue_ms=100.0)  # a queue: congestion
    assert plain.bps == 1_000_000
    learnt = gcc.LossBasedControl(1_000_000)
    for k in range(20):
        learnt.update(0.05, k * 200.0, 10_000_000, 100.0, queue_ms=5.0)  # no queue: link loss
    assert learnt.inherent == pytest.approx(0.05, abs=0.01)
    assert learnt.bps > 1_200_000
    before = learnt.bps
    assert learnt.update(0.30, 5000.0, 10_000_000, 100.0, queue_ms=200.0) == pytest.approx(
        before * (1 - 0.5 * (0.30 - learnt.inherent)))  # congestion loss above the inherent


# ---------------------------------------------------------------------- probing


def _cluster_packets(rates: probe.ProbeBitrateEstimator, cluster: probe.ProbeCluster,
                     send_span_s: float, arrival_span_ms: float, packets: int = 10) -> None:
    for k in range(packets):
        rates.add(cluster.id, 1.0 + send_span_s * k / (packets - 1), 5000.0 + arrival_span_ms * k / (packets - 1),
                  1000)


def test_probe_result_is_the_send_rate_when_the_link_kept_up() -> None:
    cluster = probe.ProbeCluster(1, 2_000_000, 1.0, 0)
    rates = probe.ProbeBitrateEstimator()
    _cluster_packets(rates, cluster, 0.036, 36.0)
    assert rates.result(cluster) == pytest.approx(9000 * 8 / 0.036)


def test_probe_result_is_95_percent_of_the_arrival_rate_when_the_link_spread_it() -> None:
    cluster = probe.ProbeCluster(1, 2_000_000, 1.0, 0)
    rates = probe.ProbeBitrateEstimator()
    _cluster_packets(rates, cluster, 0.036, 90.0)
    assert rates.result(cluster) == pytest.approx(0.95 * 9000 * 8 / 0.090)


def test_probe_result_needs_most_of_the_cluster() -> None:
    cluster = probe.ProbeCluster(1, 2_000_000, 1.0, 0)
    rates = probe.ProbeBitrateEstimator()
    _cluster_packets(rates, cluster, 0.036, 36.0, packets=3)
    assert rates.result(cluster) is None


def test_probe_controller_steps_and_backs_off() -> None:
    controller = probe.ProbeController()
    first = controller.request(5_000_000, 1_000_000, 20_000_000, 0.0, 0)
    assert first is not None and first.target_bps == 2_000_000  # at most 2 × the estimate
    assert controller.request(5_000_000, 1_000_000, 20_000_000, 0.0, 0) is None  # one at a time
    assert controller.finish(1_900_000, 0.2)  # success
    second = controller.request(5_000_000, 1_900_000, 20_000_000, 0.2, 5)
    assert second is not None and second.target_bps == 3_800_000
    assert not controller.finish(1_000_000, 0.4)  # failure: wait 1 s, then 2 s, then 4 s
    assert controller.request(5_000_000, 1_900_000, 20_000_000, 1.3, 9) is None
    assert controller.request(5_000_000, 1_900_000, 20_000_000, 1.41, 9) is not None
    controller.finish(None, 1.5)
    assert controller.request(5_000_000, 1_900_000, 20_000_000, 3.4, 9) is None
    assert controller.request(5_000_000, 1_900_000, 20_000_000, 3.51, 9) is not None
    assert controller.request(1_000_000, 1_900_000, 20_000_000, 9.0, 9) is None  # nothing to find


# ------------------------------------------- lessons from the real tbf runs (issue 13)


def test_aimd_over_use_when_the_sender_limits_the_acked_rate_keeps_the_link_capacity() -> None:
    """An SFU that just moved the viewer to a lower layer acknowledges less than the link
    carries; over-use then (the trendline lags the drained queue) must not cut to β × that."""
    aimd = gcc.AimdRateControl(3_000_000, 30_000, 20_000_000)
    aimd.rtt_ms = 50.0
    # Link-limited: 2.5 Mbit/s sent into an 800 kbit/s link, 750 kbit/s acknowledged.
    assert aimd.update(gcc.OVERUSING, 750_000, 0.0, sent_bps=2_500_000) == pytest.approx(0.85 * 750_000)
    assert aimd.capacity.estimate_bps() == pytest.approx(750_000)
    # Sender-limited: 280 kbit/s sent, 300 kbit/s acknowledged: the cut keeps β × capacity.
    assert aimd.update(gcc.OVERUSING, 300_000, 500.0, sent_bps=280_000) == pytest.approx(0.85 * 750_000)
    assert aimd.capacity.estimate_bps() == pytest.approx(750_000)  # not learnt
    # Link-limited again (sent well above acked): the cut follows the acked rate.
    assert aimd.update(gcc.OVERUSING, 300_000, 1000.0, sent_bps=1_000_000) == pytest.approx(0.85 * 300_000)


def test_aimd_increase_may_reach_the_measured_capacity_whatever_is_acked() -> None:
    aimd = gcc.AimdRateControl(1_000_000, 30_000, 20_000_000)
    aimd.rtt_ms = 50.0
    aimd.update(gcc.OVERUSING, 800_000, 0.0, sent_bps=2_000_000)  # capacity 800k, A_r 680k
    for k in range(1, 200):  # 20 s of "normal" while only 150 kbit/s is acknowledged
        aimd.update(gcc.NORMAL, 150_000, k * 100.0)
    # 1.5 × 150k + 10k = 235k would be the plain ack-rate cap; the capacity allows 800k.
    assert aimd.bps == pytest.approx(800_000, rel=0.01)


def test_loss_based_decrease_stops_at_beta_times_the_acked_rate() -> None:
    """90 % loss while the SFU still sends the old layer (the switch waits for a key frame):
    §6 alone would multiply A_s by 0.55 every 300 ms + RTT; the 10 % that arrive say what the
    link carries."""
    loss = gcc.LossBasedControl(3_500_000)
    rates = [loss.update(0.9, k * 400.0, 10_000_000, 50.0, queue_ms=100.0, acked_bps=750_000)
             for k in range(10)]
    assert rates[0] == pytest.approx(3_500_000 * 0.55)
    assert rates[-1] == pytest.approx(0.85 * 750_000)
    assert min(rates) == pytest.approx(0.85 * 750_000)
    once = gcc.LossBasedControl(700_000)  # already below β × acked: a decrease never raises it
    assert once.update(0.9, 0.0, 10_000_000, 50.0, acked_bps=1_000_000) == pytest.approx(700_000)


def _token_bucket_cluster(rates: probe.ProbeBitrateEstimator, cluster: probe.ProbeCluster,
                          rate_bps: float, bucket_bytes: float, queue_s: float) -> tuple[int, int]:
    """Send ``cluster`` at its target through a token bucket (``rate_bps``, a full bucket of
    ``bucket_bytes``, drop-tail after ``queue_s`` of waiting); returns (packets, bytes) sent."""
    size = 1000
    count = int(cluster.target_bps * cluster.duration_s / 8 / size)
    tokens, last, busy = bucket_bytes, 0.0, 0.0
    for k in range(count):
        send = k * size * 8 / cluster.target_bps
        start = max(send, busy)
        tokens = min(bucket_bytes, tokens + (start - last) * rate_bps / 8)
        depart = start if tokens >= size else start + (size - tokens) * 8 / rate_bps
        if depart - send > queue_s:
            continue  # dropped
        tokens, last, busy = max(0.0, tokens - size), depart, depart
        rates.add(cluster.id, 10.0 + send, 1000.0 * (depart + 0.02), size)
    return count, count * size


@pytest.mark.parametrize("long", [False, True])
def test_a_token_bucket_does_not_fool_a_long_probe(long: bool) -> None:
    """tbf 800 kbit/s, 6 KB bucket, 50 ms queue: a 40 ms cluster at 1.7 Mbit/s (8.5 KB) fits
    in bucket + queue and "measures" 1.7 Mbit/s; a 200 ms one sees the bucket run dry."""
    cluster = probe.ProbeCluster(1, 1_700_000, 10.0, 0, long=long)
    rates = probe.ProbeBitrateEstimator()
    packets, sent = _token_bucket_cluster(rates, cluster, 800_000, 6000, 0.05)
    result = rates.result(cluster, packets, sent, complete=True)
    if not long:
        assert result is not None and result > 1_500_000  # fooled: why clusters are long
        return
    # Half of it was dropped: with every packet reported, what arrived measured the bucket.
    assert rates.result(cluster, packets, sent, complete=False) is None  # not all reported yet
    assert result is not None and rates.saturated
    assert 0.8 * 800_000 <= result <= 800_000, result


def test_probe_controller_long_clusters_and_backoff_reset() -> None:
    controller = probe.ProbeController()
    near = controller.request(2_000_000, 1_000_000, 20_000_000, 0.0, 0, acked_bps=1_500_000)
    assert near is not None and near.duration_s == probe.CLUSTER_DURATION_S
    controller.finish(None, 0.5)  # back-off 1 s
    far = controller.request(2_000_000, 1_000_000, 20_000_000, 1.5, 0, acked_bps=300_000)
    assert far is not None and far.duration_s == probe.LONG_CLUSTER_DURATION_S
    assert far.min_packets == probe.LONG_MIN_CLUSTER_PACKETS
    controller.finish(None, 2.0)  # back-off 2 s
    assert controller.request(2_000_000, 1_000_000, 20_000_000, 3.9, 0) is None
    third = controller.request(2_000_000, 1_000_000, 20_000_000, 4.1, 0)
    assert third is not None
    controller.finish(None, 4.5)  # back-off 3 s (the cap, not 4)
    assert controller.request(2_000_000, 1_000_000, 20_000_000, 7.4, 0) is None
    assert controller.request(2_000_000, 1_000_000, 20_000_000, 7.6, 0) is not None
    controller.finish(None, 8.0)  # 3 s again
    # A failure long after the previous one starts the back-off again at 1 s.
    assert controller.request(2_000_000, 1_000_000, 20_000_000, 30.0, 0) is not None
    controller.finish(None, 30.2)
    assert controller.request(2_000_000, 1_000_000, 20_000_000, 31.3, 0) is not None


def test_a_step_that_saturated_the_link_fails_and_caps_the_next_steps() -> None:
    """A 2 × step over a link found full would overflow it again: after a saturated result
    (a failure, whatever its rate) steps are 1.25 × the capacity, long, sent even when the
    drifted estimate reaches them; two successes above it in a row forget it."""
    controller = probe.ProbeController()
    first = controller.request(2_000_000, 700_000, 20_000_000, 0.0, 0, acked_bps=650_000)
    assert first is not None and first.target_bps == 1_400_000
    # 760k arrived of 1.4M asked: ≥ 0.7 × the target would be a success, but the link was full.
    assert not controller.finish(1_000_000, 0.4, saturated=True)
    assert controller.capacity_bps == 1_000_000 and controller.failures == 1
    capped = controller.request(2_000_000, 1_300_000, 20_000_000, 1.5, 0, acked_bps=1_000_000)
    assert capped is not None and capped.target_bps == pytest.approx(1_250_000)
    assert capped.duration_s == probe.LONG_CLUSTER_DURATION_S  # 1.25 × acked: long all the same
    assert controller.finish(1_240_000, 1.8)
    assert controller.capacity_bps == 1_240_000  # raised by the success, still known
    second = controller.request(2_000_000, 1_240_000, 20_000_000, 1.8, 0, acked_bps=1_000_000)
    assert second is not None and second.target_bps == pytest.approx(1_550_000)
    assert controller.finish(1_540_000, 2.1)
    assert controller.capacity_bps is None  # two in a row: the link got better
    third = controller.request(5_000_000, 1_540_000, 20_000_000, 2.1, 0, acked_bps=1_000_000)
    assert third is not None and third.target_bps == 3_080_000  # 2 × steps again


def test_unreported_packets_of_a_probe_are_not_lost_ones() -> None:
    """Late or reordered feedback: a result taken while 10 % of the cluster is unreported must
    not call the link saturated for loss (it did, and a capped probe then failed for ever)."""
    cluster = probe.ProbeCluster(1, 1_000_000, 10.0, 0, long=True)
    rates = probe.ProbeBitrateEstimator()
    for k in range(18):  # 18 of 20 packets reported, sent and received at 1 Mbit/s
        rates.add(cluster.id, 10.0 + 0.01 * k, 5000.0 + 10.0 * k, 1250)
    assert rates.result(cluster, 20, 25_000, complete=False) == pytest.approx(17 * 1250 * 8 / 0.17)
    assert not rates.saturated
    rates.result(cluster, 20, 25_000, complete=True)  # the 2 are reported lost: 10 % of the bytes
    assert rates.saturated
