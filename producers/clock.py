"""Simulated clock: paces event time against wall time (``--speed`` simulated seconds per second).

``speed == 0`` means as fast as possible (no waiting). With ``live_from``, the events before that
simulated time go out as fast as possible (history: the demo's warm-up) and the pacing starts at
the first event at or after it. The clock never sleeps long in one go, so a Ctrl-C or a stop flag
is honoured within ``max_nap`` seconds.

>>> naps = []
>>> c = SimClock(speed=3600, sim_start=0, now=lambda: 0.0, sleep=naps.append)
>>> c.delay(7200)  # two simulated hours at 3600x = 2 wall seconds ahead
2.0
>>> SimClock(speed=0, sim_start=0).delay(10**9)
0.0
>>> c = SimClock(speed=3600, sim_start=0, now=lambda: 0.0, live_from=86400)
>>> c.delay(80000), c.delay(86400 + 3600)  # history is not paced; live time is, from live_from
(0.0, 1.0)
"""

from __future__ import annotations

import time
from collections.abc import Callable


class SimClock:
    def __init__(self, speed: float, sim_start: float, now: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] = time.sleep, max_nap: float = 0.2,
                 live_from: float | None = None) -> None:
        if speed < 0:
            raise ValueError("speed must be >= 0 (0 = as fast as possible)")
        self.speed = speed
        self.sim_start = sim_start if live_from is None else max(sim_start, live_from)
        self._now, self._sleep, self._max_nap = now, sleep, max_nap
        # wall time of ``sim_start``: now, or when the first live event asks (after the history)
        self._wall_start: float | None = now() if live_from is None else None

    def delay(self, sim_t: float) -> float:
        """Wall seconds to wait before ``sim_t`` is due (0 when due, unpaced, or history)."""
        if self.speed == 0 or sim_t < self.sim_start:
            return 0.0
        if self._wall_start is None:
            self._wall_start = self._now()
        due = self._wall_start + (sim_t - self.sim_start) / self.speed
        return max(0.0, due - self._now())

    def wait_until(self, sim_t: float, stop: Callable[[], bool] = lambda: False) -> None:
        """Sleep until ``sim_t`` is due, in short naps, returning early when ``stop()`` is true."""
        while not stop():
            left = self.delay(sim_t)
            if left <= 0:
                return
            self._sleep(min(left, self._max_nap))
