"""A responder's deployments of accepted `<stitches>` links, run in the background.

The responder of a `<stitches>` batch answers once it claimed the VNIs and
started deploying its ends; the initiator deploys its own ends meanwhile and
then repeats the accepted proposals (the confirmation), which the responder
answers once this deployment ended: with its failure, if it failed. Jobs are
keyed by (sliver id, link ref); a job's outcome is kept until a confirmation
takes it (or the sliver is removed), so a failure is told once to the peer
and a later retry deploys again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

log = logging.getLogger(__name__)

Key = tuple[str, str]
"""(sliver id, link ref)"""


class StillRunning(RuntimeError):
    """A deployment that did not end within the wait."""


class StitchJobs:
    """The background deployments of one PIP service."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._jobs: dict[Key, Future[None]] = {}
        self._threads: set[threading.Thread] = set()

    def start(self, keys: Iterable[Key], work: Callable[[], object]) -> None:
        """Run `work` (one deployment of the links `keys`) in a thread of its own."""
        future: Future[None] = Future()
        keys = list(keys)

        def run() -> None:
            try:
                work()
            except BaseException as exc:  # kept for the confirmation
                future.set_exception(exc)
            else:
                future.set_result(None)
            finally:
                with self._lock:
                    self._threads.discard(threading.current_thread())

        thread = threading.Thread(target=run, daemon=True, name=f"stitch-{self._name}")
        with self._lock:
            for key in keys:
                self._jobs[key] = future
            self._threads.add(thread)
        thread.start()

    def settle(self, key: Key, timeout: float) -> tuple[bool, BaseException | None]:
        """Wait for the job of `key`, if any, and take its outcome: whether there
        was one, and its exception if it failed (no job: the caller deploys
        itself). StillRunning after `timeout`, the job kept."""
        with self._lock:
            future = self._jobs.get(key)
        if future is None:
            return False, None
        try:
            error = future.exception(timeout)
        except FutureTimeout as exc:
            raise StillRunning(f"link {key[1]} is still being deployed") from exc
        with self._lock:
            if self._jobs.get(key) is future:
                del self._jobs[key]
        return True, error

    def forget(self, sliver_id: str) -> None:
        """Drop the outcomes kept for a removed sliver."""
        with self._lock:
            for key in [k for k in self._jobs if k[0] == sliver_id]:
                del self._jobs[key]

    def close(self, timeout: float) -> None:
        """Wait (bounded) for the deployments still running."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("%s: a stitched links' deployment still runs at close", self._name)
