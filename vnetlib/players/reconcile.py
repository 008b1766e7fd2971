"""A service's background reconciler: one thread that runs a round of work,
sleeps for as long as the round asks (bounded), and stops when told.

A round's errors are logged, never raised: the thread outlives them. Every wait
is bounded, so `stop` returns within its timeout even if a round is in the
middle of a call (the thread is a daemon: a process that exits does not wait
for it; a call in flight ends under its own budget).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

FAILED_ROUND_WAIT = 5.0  # after an unexpected error in a round (a store outage...)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays of successive retries: `first`, doubling, at most `most`."""

    first: float
    most: float

    def delay(self, attempts: int) -> float:
        return min(self.first * 2 ** max(attempts - 1, 0), self.most)


class Retries:
    """When each item (an order id) may next be retried, after how many failures."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self._lock = threading.Lock()
        self._attempts: dict[str, int] = {}
        self._next: dict[str, float] = {}

    def due(self, item: str) -> bool:
        with self._lock:
            return self._next.get(item, 0.0) <= time.monotonic()

    def failed(self, item: str) -> float:
        """Count a failed attempt; returns the delay until the next one."""
        with self._lock:
            n = self._attempts.get(item, 0) + 1
            self._attempts[item] = n
            delay = self.backoff.delay(n)
            self._next[item] = time.monotonic() + delay
            return delay

    def done(self, item: str) -> None:
        with self._lock:
            self._attempts.pop(item, None)
            self._next.pop(item, None)

    def next_in(self, default: float) -> float:
        """Seconds until the earliest pending retry, at most `default`."""
        now = time.monotonic()
        with self._lock:
            return min([default, *(max(t - now, 0.0) for t in self._next.values())])


class Reconciler:
    """Runs `work()` in a thread until `stop()`; `work` returns the seconds to
    sleep before the next round (clamped to [`least`, `most`]); `wake()` ends
    the sleep early."""

    def __init__(self, name: str, work: Callable[[], float], *, least: float = 0.05,
                 most: float = 60.0) -> None:
        self.name = name
        self._work = work
        self.least = least
        self.most = most
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self.rounds = 0
        self._thread = threading.Thread(target=self._run, name=f"reconcile-{name}", daemon=True)

    def start(self) -> Reconciler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self.stopping.is_set():
            self._wake.clear()  # a wake() during the round below ends the next sleep
            try:
                wait = self._work()
            except Exception:
                log.exception("%s: reconciliation round failed", self.name)
                wait = min(self.most, FAILED_ROUND_WAIT)
            self.rounds += 1
            self._wake.wait(min(max(wait, self.least), self.most))

    def wake(self) -> None:
        """Run the next round now (new work arrived)."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("%s: reconciler still busy after %gs; left to end on its own",
                            self.name, timeout)
