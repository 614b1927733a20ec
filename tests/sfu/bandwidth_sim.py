"""A deterministic simulated link and sender for the bandwidth estimator's tests (pure Python,
virtual clock, seeded randomness).

:class:`SimulatedLink` is a bottleneck: a FIFO served at ``capacity_bps`` (None: unlimited)
with a tail-drop queue of ``queue_bytes``, then ``delay_s`` of propagation and random loss;
with ``burst_bytes`` it is a token bucket like Linux ``tbf`` (a full bucket passes a burst at
line rate).
:class:`Simulation` is an SFU sending one viewer video at 30 frames/s — each frame's
packets (≤ 1,200 bytes) at once, at min(estimate, ``source_bps``) minus the audio, as the SFU forwards a
publisher's frames — and 50 packets/s of audio (48 kbit/s), and a receiver that records arrivals in a
real :class:`sfu.twcc.TwccRecorder` and sends its feedback every 50 ms, delivered after the
reverse path's delay (``feedback``, when given, maps each feedback packet to the packets
actually delivered: none, the same twice, or held back and delivered later).  Optionally it asks the estimator to probe for ``source_bps`` whenever
the estimate is below it, as a consumer that wants the next layer does.

With ``layers`` (bps of simulcast layers, lowest first) the sender behaves like the SFU's
consumer instead: it sends one layer's rate, moves to the highest layer whose rate (× 1.1 to
go up) fits the estimate less the audio, but only ``switch_delay_s`` after deciding (the
target layer's key frame) — going up only once the higher layer has fit for ``up_hold_s``
(the layer selector's hysteresis) — and, when the next layer up (× 1.1 + audio) does not
fit the estimate, asks to probe for it.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

from sfu.bandwidth import BandwidthEstimator
from sfu.twcc import TwccRecorder

TICK_S = 0.001
MAX_PACKET = 1200
AUDIO_PACKET = 120
AUDIO_BPS = AUDIO_PACKET * 8 * 50
RECEIVER_CLOCK_OFFSET_S = 12_345.678  # the receiver's clock is not the sender's


class SimulatedLink:
    """A bottleneck queue + propagation delay + random loss (see the module docstring)."""

    def __init__(self, capacity_bps: float | None, *, queue_bytes: int = 64_000,
                 delay_s: float = 0.025, loss: float = 0.0, seed: int = 1,
                 burst_bytes: int | None = None) -> None:
        self.capacity_bps = capacity_bps
        self.queue_bytes = queue_bytes
        self.burst_bytes = burst_bytes
        self._tokens = float(burst_bytes or 0)
        self._token_time = 0.0
        self.delay_s = delay_s
        self.loss = loss
        self.rng = random.Random(seed)
        self.busy_until = 0.0
        self.dropped = 0
        self.lost = 0

    def send(self, now: float, size: int) -> float | None:
        """A packet of ``size`` bytes enters the link at ``now``: its arrival time, or None."""
        capacity = self.capacity_bps
        if capacity is None:
            departure = now
        elif self.burst_bytes is not None:
            # Token bucket (Linux tbf): a full bucket passes a burst at line rate; then
            # packets wait for tokens; a packet that would wait longer than the queue
            # (queue_bytes at the rate) is dropped.
            start = max(now, self.busy_until)
            tokens = min(float(self.burst_bytes), self._tokens + (start - self._token_time) * capacity / 8)
            if tokens >= size:
                departure, tokens = start, tokens - size
            else:
                departure, tokens = start + (size - tokens) * 8 / capacity, 0.0
            if (departure - now) * capacity / 8 > self.queue_bytes:
                self.dropped += 1
                return None
            self.busy_until, self._tokens, self._token_time = departure, tokens, departure
        else:
            backlog = max(0.0, self.busy_until - now) * capacity / 8
            if backlog + size > self.queue_bytes:
                self.dropped += 1
                return None
            self.busy_until = max(now, self.busy_until) + size * 8 / capacity
            departure = self.busy_until
        if self.loss and self.rng.random() < self.loss:
            self.lost += 1
            return None
        return departure + self.delay_s


class Simulation:
    """SFU → link → viewer → feedback → estimator, on a virtual clock (see the module docstring)."""

    def __init__(self, link: SimulatedLink, *, source_bps: float = 3_000_000,
                 initial_bps: int = 1_000_000, reverse_delay_s: float | None = None,
                 probing: bool = True, fps: float = 30.0,
                 feedback: Callable[[bytes], list[bytes]] | None = None,
                 layers: tuple[int, ...] | None = None, switch_delay_s: float = 0.3,
                 up_hold_s: float = 0.0) -> None:
        self.link = link
        self.layers = layers
        self.layer = len(layers) - 1 if layers else 0
        self.layer_log: list[tuple[float, int]] = []  # (time s, layer index) at each switch
        self.switch_delay_s = switch_delay_s
        self.up_hold_s = up_hold_s
        self._up_since: float | None = None  # a higher layer has fit since then
        self._switch: tuple[float, int] | None = None  # (when, to which layer)
        self.source_bps = source_bps
        self.now = 0.0
        self.bwe = BandwidthEstimator(initial_bps=initial_bps, clock=lambda: self.now)
        self.recorder = TwccRecorder(sender_ssrc=0x1234)
        self.reverse_delay_s = link.delay_s if reverse_delay_s is None else reverse_delay_s
        self.probing = probing
        self.asking = True  # False: the sender asks for no probe (the estimator may on its own)
        self.frame_interval = 1 / fps
        self.feedback_filter = feedback
        self.samples: list[tuple[float, int]] = []  # (time s, estimate bps) every 10 ms
        self.sent_bytes = 0
        self.padding_bytes = 0
        self.delivered = 0  # packets that reached the receiver
        self._arrivals: deque[tuple[float, int]] = deque()
        self._feedback: deque[tuple[float, bytes]] = deque()
        self._next_frame = 0.0
        self._next_audio = 0.0
        self._next_feedback = 0.05
        self._tick = 0
        if probing:
            self.bwe.set_padding_sender(self._send_padding)

    def _transmit(self, seq: int, size: int) -> None:
        arrival = self.link.send(self.now, size)
        if arrival is not None:
            self._arrivals.append((arrival, seq))

    def _send(self, size: int) -> None:
        self._transmit(self.bwe.next_sequence(size), size)
        self.sent_bytes += size

    def _send_padding(self, size: int) -> bool:
        self._transmit(self.bwe.next_probe_sequence(size), size)
        self.padding_bytes += size
        return True

    def run(self, seconds: float) -> None:
        """Advance the virtual clock by ``seconds`` in 1 ms ticks."""
        for _ in range(round(seconds / TICK_S)):
            self._tick += 1
            self.now = self._tick * TICK_S
            self._step()

    def _step(self) -> None:
        now, bwe = self.now, self.bwe
        arrivals = self._arrivals
        while arrivals and arrivals[0][0] <= now:
            arrival, seq = arrivals.popleft()
            self.delivered += 1
            self.recorder.record(seq, int((arrival + RECEIVER_CLOCK_OFFSET_S) * 1e6), 0x5678)
        if now >= self._next_feedback - 1e-9:
            self._next_feedback += 0.05
            for built in self.recorder.build_feedback():
                packets = [built] if self.feedback_filter is None else self.feedback_filter(built)
                for packet in packets:  # the filter may drop, repeat or hold back feedback
                    self._feedback.append((now + self.reverse_delay_s, packet))
        feedback = self._feedback
        while feedback and feedback[0][0] <= now:
            bwe.on_transport_feedback(feedback.popleft()[1])
        if now >= self._next_audio - 1e-9:
            self._next_audio += 0.02
            self._send(AUDIO_PACKET)
        if self.layers:
            self._choose_layer()
        if now >= self._next_frame - 1e-9:
            self._next_frame += self.frame_interval
            if self.layers:
                rate = self.layers[self.layer]
            else:
                rate = min(bwe.estimate_bps, self.source_bps) - AUDIO_BPS  # the estimate covers both
            frame = max(200, int(rate * self.frame_interval / 8))
            packets = max(1, -(-frame // MAX_PACKET))
            for _ in range(packets):
                self._send(min(MAX_PACKET, -(-frame // packets)))
        if self.probing and self.asking:
            if self.layers:
                if self.layer + 1 < len(self.layers):
                    need = int(self.layers[self.layer + 1] * 1.1) + AUDIO_BPS
                    if need > bwe.estimate_bps:  # as the consumer: only when it does not fit
                        bwe.probe(need)
            elif bwe.estimate_bps < self.source_bps:
                bwe.probe(int(self.source_bps))
        if self.probing:
            bwe.pace()
        if self._tick % 10 == 0:
            self.samples.append((now, bwe.estimate_bps))

    def _choose_layer(self) -> None:
        layers = self.layers
        assert layers is not None
        budget = self.bwe.estimate_bps - AUDIO_BPS
        want = 0
        for i, rate in enumerate(layers):
            if rate * (1.1 if i > self.layer else 1.0) <= budget:
                want = i
        if want > self.layer:
            if self._up_since is None:
                self._up_since = self.now
            if self.now - self._up_since < self.up_hold_s:
                want = self.layer  # hysteresis: up only after fitting for up_hold_s
        else:
            self._up_since = None
        if want == self.layer:
            self._switch = None
        elif self._switch is None or self._switch[1] != want:
            self._switch = (self.now + self.switch_delay_s, want)
        elif self.now >= self._switch[0]:
            self.layer = want
            self._switch = None
            self.layer_log.append((self.now, want))

    def estimates(self, start: float, end: float) -> list[int]:
        """The estimates sampled in [start, end) s."""
        return [bps for t, bps in self.samples if start <= t < end]


def scenario_figures() -> dict[str, float | None]:
    """The figures docs/bandwidth.md quotes (``python -m tests.sfu.bandwidth_sim``)."""

    def first(sim: Simulation, start: float, ok: Callable[[int], bool]) -> float | None:
        return next((round(t - start, 2) for t, bps in sim.samples if t >= start and ok(bps)), None)

    out: dict[str, float | None] = {}
    for probing in (True, False):
        sim = Simulation(SimulatedLink(None, delay_s=0.025), source_bps=3_000_000, probing=probing)
        sim.run(10)
        sim.link.capacity_bps = 800_000
        sim.run(10)
        sim.link.capacity_bps = None
        sim.run(10)
        tag = "" if probing else "_no_probing"
        if probing:
            during = sim.estimates(11, 20)
            out["drop_to_800k_s"] = first(sim, 10.0, lambda bps: bps <= 800_000)
            out["at_800k_min_kbps"] = min(sim.estimates(10, 20)) / 1000
            out["at_800k_mean_kbps"] = round(sum(during) / len(during) / 1000, 1)
            out["at_800k_max_kbps"] = max(during) / 1000
        out[f"return_to_2500k_s{tag}"] = first(sim, 20.0, lambda bps: bps >= 2_500_000)
    # The real scenario's shape: 3-layer simulcast (q/h/f 150k/460k/1.8M, a switch waits 1 s
    # for the key frame, up only after fitting 5 s), tbf 800 kbit/s with a 6 KB bucket and
    # 50 ms (5 KB) queue, 10–20 s.
    link = SimulatedLink(None, delay_s=0.01, burst_bytes=6000, queue_bytes=5000)
    sim = Simulation(link, layers=(150_000, 460_000, 1_800_000), switch_delay_s=1.0, up_hold_s=5.0)
    sim.run(10)
    link.capacity_bps = 800_000
    sim.run(10)
    link.capacity_bps = None
    sim.run(10)
    during = sim.estimates(12, 20)
    out["tbf_layers_drop_to_900k_s"] = first(sim, 10.0, lambda bps: bps <= 900_000)
    out["tbf_layers_800k_min_kbps"] = min(during) / 1000
    out["tbf_layers_800k_max_kbps"] = max(during) / 1000
    out["tbf_layers_probe_failures"] = sim.bwe.stats()["probe"]["failures"]
    out["tbf_layers_return_to_2500k_s"] = first(sim, 20.0, lambda bps: bps >= 2_500_000)
    out["tbf_layers_top_layer_back_s"] = next(
        (round(t - 20.0, 2) for t, layer in sim.layer_log if t >= 20.0 and layer == 2), None)
    sim = Simulation(SimulatedLink(1_000_000, delay_s=0.025, queue_bytes=10_000))
    sim.run(40)
    late = sim.estimates(5, 40)
    out["short_queue_1000k_mean_kbps"] = round(sum(late) / len(late) / 1000, 1)
    out["short_queue_1000k_max_kbps"] = max(late) / 1000
    out["short_queue_1000k_loss_percent"] = round(
        100 * sim.link.dropped / (sim.link.dropped + sim.delivered), 1)
    for seed in (1, 2, 3):
        for probing in (True, False):
            sim = Simulation(SimulatedLink(2_500_000, delay_s=0.05, loss=0.05, seed=seed),
                             source_bps=3_000_000, probing=probing)
            sim.run(40)
            tag = "" if probing else "_no_probing"
            steady = sim.estimates(20, 40)
            out[f"loss5_rtt100_seed{seed}_min_kbps{tag}"] = min(steady) / 1000
            out[f"loss5_rtt100_seed{seed}_mean_kbps{tag}"] = round(sum(steady) / len(steady) / 1000, 1)
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(scenario_figures(), indent=1))
