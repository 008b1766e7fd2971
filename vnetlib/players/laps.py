"""Phase timings of a player's multi-step operation, as lap times."""

from __future__ import annotations

import time


class Laps:
    """Call with a phase's name when it ends: `timings` maps each name to the
    seconds since the previous call (or since the Laps was made)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._mark = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._mark, 4)
        self._mark = now
