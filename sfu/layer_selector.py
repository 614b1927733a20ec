"""Per-consumer choice of the (spatial, temporal) layer to forward: pure, no I/O.

LiveKit's ``StreamAllocator`` / ``Forwarder.AllocateOptimal`` and mediasoup's
``SimulcastConsumer`` (preferred/target/current layers) choose, per subscriber, the best
layer that the subscriber's bandwidth estimate carries.  :class:`LayerSelector` does the
choosing for one video Consumer; the Consumer feeds it the producer's layers with their
measured bitrates, the estimate (:class:`sfu.bandwidth.BandwidthEstimator`) and the
viewer's rendered size, and carries out the target (spatial switch on a key frame of the
target layer, temporal switch at once, pause when ``None``).  docs/layers.md explains
the rules; in short:

* **Ladder.**  Candidates are ``(spatial, temporal)`` of active layers in ascending order
  (spatial first, then temporal).  A candidate's cost is ``bitrates_bps[temporal]``
  (cumulative).  Reduced frame rates below ``min_temporal_fraction`` of the layer's full
  rate (each temporal layer doubles the rate: with three layers TID 0 is 1/4, TID 1 1/2)
  are only offered on the lowest active layer — a viewer gets a smaller picture at a
  fluid frame rate before it gets a large one at 7.5 fps.
* **Size cap.**  With a hint ``(max_width, max_height)`` (device pixels of the video
  element), the top eligible layer is the smallest one that *covers* the rendered size: the
  picture is drawn with ``object-fit: contain``, so a layer ``w x h`` is drawn at
  ``min(W, H * w / h)`` pixels wide, and it covers when ``w >= cover_ratio`` times that.
  Layers above it are never chosen.  Layers of unknown size are not capped.
* **Down at once.**  The current target is kept while ``cost <= budget * (1 + down_margin)``;
  when it is not, or it no longer exists or exceeds the cap, the selector moves at once to
  the best candidate with ``cost <= budget`` (``None`` — pause video — when none).
* **A cost that rose is given time.**  When it is the target's measured cost that rose
  above a budget still covering what the target cost when it last fitted — the key frame a
  switch asked for is in the layer's rate for a second or so — the target is kept for
  ``cost_rise_hold_s`` before the selector moves down.  A falling budget moves at once.
* **Up after a hold.**  A candidate above the current one is taken only once it has fit
  with ``cost * (1 + up_margin) <= budget`` continuously for ``up_hold_s`` — or
  ``up_hold_after_down_s`` when it is at or above a target the selector left because the
  budget fell short, in the last ``recent_down_s``.  The highest candidate that has held is taken.
* **Probe hint.**  After each :meth:`LayerSelector.select`, ``probe_bps`` is the budget the
  next step up would need (its cost with the up margin) and ``deficit_bps`` how far the
  budget is below it; the Consumer asks the estimator to probe towards ``probe_bps``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Target = tuple[int, int]
"""``(spatial, temporal)``: a simulcast layer index (0 = lowest) and a temporal layer id."""


@dataclass(slots=True)
class LayerInfo:
    """One simulcast layer (spatial) of a producer as the selector sees it.

    ``width``/``height`` in pixels (``None`` until a key frame told them);
    ``bitrates_bps[t]`` the measured bps of temporal layers ``0..t`` together (cumulative),
    one entry per temporal layer seen (at least one; 0 = not measured yet); ``active``
    whether packets arrive on it now.
    """

    spatial: int
    width: int | None
    height: int | None
    bitrates_bps: tuple[int, ...]
    active: bool


class LayerSelector:
    """Chooses one Consumer's target layer from its budget, with hysteresis (see module doc).

    :param up_hold_s: seconds a higher candidate must fit (with ``up_margin``) before it is
        taken.
    :param up_hold_after_down_s: the hold for candidates at or above a target left
        downwards less than ``recent_down_s`` ago.
    :param recent_down_s: how long a downgrade makes going back up slower, seconds.
    :param down_margin: the current target is kept while its cost is at most
        ``budget * (1 + down_margin)``.
    :param up_margin: a higher candidate fits when ``cost * (1 + up_margin) <= budget``.
    :param min_temporal_fraction: reduced frame rates below this fraction of a layer's full
        rate are offered on the lowest active layer only (1.0: never reduce the frame rate
        above the lowest layer; 0.0: any).
    :param cover_ratio: a layer covers the rendered size when its width is at least this
        fraction of the rendered width (see module doc).
    :param cost_rise_hold_s: seconds the current target is kept when its own cost rose over
        a budget that still covers the cost it had when it last fitted.
    :raises ValueError: for negative holds or margins, or ratios outside (0, 1].
    """

    __slots__ = (
        "up_hold_s", "up_hold_after_down_s", "recent_down_s", "down_margin", "up_margin",
        "min_temporal_fraction", "cover_ratio", "cost_rise_hold_s", "current", "probe_bps",
        "deficit_bps", "switches_up", "switches_down", "_started", "_fit_since", "_left", "_left_at",
        "_fit_cost", "_over_since",
    )

    def __init__(
        self,
        *,
        up_hold_s: float = 1.5,
        up_hold_after_down_s: float = 5.0,
        recent_down_s: float = 10.0,
        down_margin: float = 0.05,
        up_margin: float = 0.10,
        min_temporal_fraction: float = 1.0,
        cover_ratio: float = 0.85,
        cost_rise_hold_s: float = 2.0,
    ) -> None:
        if min(up_hold_s, up_hold_after_down_s, recent_down_s, down_margin, up_margin, cost_rise_hold_s) < 0:
            raise ValueError("holds and margins must be >= 0")
        if not 0 <= min_temporal_fraction <= 1 or not 0 < cover_ratio <= 1:
            raise ValueError("min_temporal_fraction must be in [0, 1], cover_ratio in (0, 1]")
        self.up_hold_s = up_hold_s
        self.up_hold_after_down_s = up_hold_after_down_s
        self.recent_down_s = recent_down_s
        self.down_margin = down_margin
        self.up_margin = up_margin
        self.min_temporal_fraction = min_temporal_fraction
        self.cover_ratio = cover_ratio
        self.cost_rise_hold_s = cost_rise_hold_s
        self.current: Target | None = None
        """The last target returned (``None``: paused, or nothing chosen yet)."""
        self.probe_bps: int | None = None
        """Budget the next step up needs (bps), ``None`` at the top of the ladder."""
        self.deficit_bps = 0
        """``probe_bps - budget`` when positive, else 0."""
        self.switches_up = 0
        self.switches_down = 0
        self._started = False
        self._fit_since: dict[Target, float] = {}
        self._left: Target | None = None  # the target last left downwards
        self._left_at = -1e18
        self._fit_cost = 0  # the current target's cost, bps, when it last fitted the budget
        self._over_since: float | None = None  # its cost over the budget since (a rise held)

    # ----------------------------------------------------------------- ladder
    def ladder(
        self, layers: Sequence[LayerInfo], max_width: int | None = None, max_height: int | None = None
    ) -> list[tuple[Target, int]]:
        """The eligible candidates, ascending, with their cost in bps (see module doc).

        Unmeasured candidates (bitrate 0) are left out; when no candidate is measured yet,
        the lowest active layer's top temporal layer is the only one (cost 0), so video
        starts and its bitrate can be measured.
        """
        active = sorted((li for li in layers if li.active and li.bitrates_bps), key=lambda li: li.spatial)
        if not active:
            return []
        cap = self._cap_index(active, max_width, max_height)
        out: list[tuple[Target, int]] = []
        for index, li in enumerate(active[: cap + 1]):
            n = len(li.bitrates_bps)
            for t, bps in enumerate(li.bitrates_bps):
                if bps <= 0:
                    continue
                if index > 0 and 2.0 ** (t - (n - 1)) < self.min_temporal_fraction - 1e-9:
                    continue
                out.append(((li.spatial, t), bps))
        if not out:
            lowest = active[0]
            out.append(((lowest.spatial, len(lowest.bitrates_bps) - 1), 0))
        return out

    def _cap_index(self, active: list[LayerInfo], max_width: int | None, max_height: int | None) -> int:
        """Index in ``active`` of the smallest layer that covers the rendered size."""
        if max_width is None and max_height is None:
            return len(active) - 1
        for index, li in enumerate(active):
            if li.width is None or li.height is None or li.width <= 0 or li.height <= 0:
                return len(active) - 1  # sizes unknown: no cap
            aspect = li.width / li.height
            if max_width is not None and max_height is not None:
                drawn = min(max_width, max_height * aspect)
            elif max_width is not None:
                drawn = max_width
            else:
                drawn = max_height * aspect  # type: ignore[operator]
            if li.width >= self.cover_ratio * drawn:
                return index
        return len(active) - 1

    # ----------------------------------------------------------------- select
    def select(
        self,
        layers: Sequence[LayerInfo],
        budget_bps: int,
        max_width: int | None,
        max_height: int | None,
        now: float,
    ) -> Target | None:
        """The target ``(spatial, temporal)`` for ``budget_bps``, or ``None``: pause video.

        ``now`` is a monotonic time in seconds; call it whenever the estimate, the layers or
        the hint change, and at least every few hundred ms while ``probe_bps`` is set (holds
        are measured between calls).  The result is always a candidate of :meth:`ladder`.
        """
        ladder = self.ladder(layers, max_width, max_height)
        targets = [t for t, _ in ladder]
        # Fit times are kept for every candidate, capped or not, so a larger hint can take
        # a layer that has fit for long at once.
        up = 1 + self.up_margin
        up_fit = {t for t, cost in self.ladder(layers) if cost * up <= budget_bps}
        fit_since = self._fit_since
        for t in [t for t in fit_since if t not in up_fit]:
            del fit_since[t]
        for t in up_fit:
            fit_since.setdefault(t, now)
        current = self.current
        pos = targets.index(current) if current in targets else -1
        congested = False
        if not self._started:
            # First choice: the best that fits with the up margin, else the best that fits.
            self._started = True
            chosen = self._best(ladder, len(ladder), budget_bps, up)
            if chosen < 0:
                chosen = self._best(ladder, len(ladder), budget_bps)
        elif current is not None and pos < 0:
            # The target vanished (layer inactive, above the cap, fewer temporal layers):
            # the best that fits at or below it, else the lowest that fits.
            below = sum(1 for t in targets if t <= current)
            chosen = self._best(ladder, below, budget_bps)
            if chosen < 0:
                chosen = next((i for i, (_, c) in enumerate(ladder) if c <= budget_bps), -1)
        elif pos >= 0 and ladder[pos][1] > budget_bps * (1 + self.down_margin):
            rose = budget_bps * (1 + self.down_margin) >= self._fit_cost  # the budget did not fall
            if self._over_since is None:
                self._over_since = now
            if rose and now - self._over_since < self.cost_rise_hold_s:
                chosen = pos
            else:
                chosen = self._best(ladder, pos, budget_bps)  # down at once
                congested = True
        else:
            self._over_since = None
            if pos >= 0:
                self._fit_cost = ladder[pos][1]
            chosen = self._held_up(ladder, pos, now)
        new = targets[chosen] if chosen >= 0 else None
        if new != current:
            self._fit_cost = ladder[chosen][1] if chosen >= 0 else 0
            self._over_since = None
        self._record(current, new, now, congested)
        nxt = chosen + 1
        if nxt < len(ladder):
            self.probe_bps = int(ladder[nxt][1] * (1 + self.up_margin)) + 1
            self.deficit_bps = max(0, self.probe_bps - budget_bps)
        else:
            self.probe_bps = None
            self.deficit_bps = 0
        return new

    @staticmethod
    def _best(ladder: list[tuple[Target, int]], below: int, budget: float, factor: float = 1.0) -> int:
        """Index of the highest of the first ``below`` candidates with ``cost * factor <= budget``."""
        for i in range(below - 1, -1, -1):
            if ladder[i][1] * factor <= budget:
                return i
        return -1

    def _held_up(self, ladder: list[tuple[Target, int]], pos: int, now: float) -> int:
        """The highest candidate above ``pos`` that has fit long enough, else ``pos``."""
        recent = self._left is not None and now - self._left_at < self.recent_down_s
        for i in range(len(ladder) - 1, pos, -1):
            target = ladder[i][0]
            since = self._fit_since.get(target)
            if since is None:
                continue
            hold = self.up_hold_after_down_s if recent and target >= self._left else self.up_hold_s  # type: ignore[operator]
            if now - since >= hold:
                return i
        return pos

    def _record(self, old: Target | None, new: Target | None, now: float, congested: bool) -> None:
        if new == old:
            return
        if old is not None and (new is None or new < old):
            self.switches_down += 1
            if congested:  # not for a smaller hint or a vanished layer
                self._left = old
                self._left_at = now
        else:
            self.switches_up += 1
        self.current = new

    def next_bps(self) -> int | None:
        """``probe_bps``: the budget (bps) the next step up needs, ``None`` at the top."""
        return self.probe_bps

    def wants_more(self) -> int | None:
        """The bps to probe towards (``probe_bps``) when the budget is short of the next step
        up, else ``None``."""
        return self.probe_bps if self.deficit_bps > 0 else None

    def stats(self) -> dict[str, object]:
        return {
            "target": list(self.current) if self.current is not None else None,
            "probe_bps": self.probe_bps,
            "deficit_bps": self.deficit_bps,
            "switches_up": self.switches_up,
            "switches_down": self.switches_down,
        }
