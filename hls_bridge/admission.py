"""Bridge admission: start a transcoder only where the machine has CPU for it.

A bridge's transcoder runs at a lower priority than forwarding, so on a busy machine it
would not hurt WebRTC viewers — it would fall behind real time and give its LL-HLS
players stalls instead.  :class:`Admission` therefore measures the machine's idle CPU
(psutil's system-wide ``cpu_times``: idle + iowait, all cores) over a sliding window and
refuses a new bridge while fewer than ``min_idle_cores`` are idle, with a reason for
``/api/hls``, ``/metrics`` and the log.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

import psutil

__all__ = ["Admission"]

WINDOW_S = 3.0
"""Idle CPU is averaged over this many seconds."""


class Admission:
    """``refusal()``: None when a bridge may start, else why not.

    :param min_idle_cores: idle cores required (0 = admit always).
    :param clock: monotonic seconds (replaceable in tests).
    :param idle_seconds: cumulative idle CPU seconds of the machine (replaceable in tests).
    """

    def __init__(self, min_idle_cores: float, *, clock: Callable[[], float] = time.monotonic,
                 idle_seconds: Callable[[], float] | None = None) -> None:
        self.min_idle_cores = min_idle_cores
        self.cores = psutil.cpu_count() or 1
        self._clock = clock
        self._idle_seconds = idle_seconds or _machine_idle_seconds
        self._samples: collections.deque[tuple[float, float]] = collections.deque()
        self.refused = 0
        """Bridges refused so far."""
        self.last_refusal: dict[str, str] = {}
        """Room → the reason its last start was refused (cleared when one starts)."""
        self.sample()

    def sample(self) -> None:
        """Record the machine's idle CPU now (call every ~0.5 s; `refusal` also does)."""
        now = self._clock()
        self._samples.append((now, self._idle_seconds()))
        while len(self._samples) > 2 and now - self._samples[1][0] >= WINDOW_S:
            self._samples.popleft()

    @property
    def idle_cores(self) -> float | None:
        """Idle cores averaged over the window; None until two samples 0.2 s apart exist."""
        (t0, idle0), (t1, idle1) = self._samples[0], self._samples[-1]
        if t1 - t0 < 0.2:
            return None
        return max(0.0, (idle1 - idle0) / (t1 - t0))

    def refusal(self, room: str) -> str | None:
        """None, or why ``room``'s bridge may not start now (counted in :attr:`refused`)."""
        self.sample()
        idle = self.idle_cores
        if self.min_idle_cores <= 0 or idle is None or idle >= self.min_idle_cores:
            self.last_refusal.pop(room, None)
            return None
        reason = (f"cpu: {idle:.2f} idle cores of {self.cores}, a bridge needs "
                  f"{self.min_idle_cores:g} (RELAYCAST_HLS_MIN_IDLE_CORES)")
        self.refused += 1
        self.last_refusal[room] = reason
        return reason

    def to_json(self) -> dict[str, object]:
        """``{"cores", "idle_cores", "min_idle_cores", "refused", "refusals": {room: reason}}``."""
        idle = self.idle_cores
        return {"cores": self.cores, "idle_cores": None if idle is None else round(idle, 2),
                "min_idle_cores": self.min_idle_cores, "refused": self.refused,
                "refusals": dict(self.last_refusal)}


def _machine_idle_seconds() -> float:
    times = psutil.cpu_times()
    return float(times.idle + getattr(times, "iowait", 0.0))
