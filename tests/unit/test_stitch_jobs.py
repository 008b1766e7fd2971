"""The responder's background deployments of stitched links (`StitchJobs`):
a confirmation waits for the run, takes its failure once, and a removed
sliver's outcomes are dropped."""

from __future__ import annotations

import threading

import pytest

from vnetlib.players.stitch_jobs import StillRunning, StitchJobs


def test_a_confirmation_waits_for_the_run_and_takes_its_failure_once() -> None:
    jobs = StitchJobs("pip-t")
    release = threading.Event()

    def fails() -> None:
        release.wait(5)
        raise RuntimeError("boom")

    jobs.start([("s1", "r1"), ("s1", "r2")], fails)
    with pytest.raises(StillRunning):
        jobs.settle(("s1", "r1"), 0.05)
    release.set()
    had, error = jobs.settle(("s1", "r1"), 5)
    assert had and isinstance(error, RuntimeError) and str(error) == "boom"
    assert jobs.settle(("s1", "r1"), 5) == (False, None)  # told once: a retry deploys again
    had, error = jobs.settle(("s1", "r2"), 5)  # the same run, for the batch's other link
    assert had and isinstance(error, RuntimeError)
    jobs.close(5)


def test_success_and_forgotten_slivers() -> None:
    jobs = StitchJobs("pip-t")
    ran: list[str] = []
    jobs.start([("s1", "r1")], lambda: ran.append("s1"))
    jobs.start([("s2", "r1")], lambda: ran.append("s2"))
    jobs.close(5)
    assert sorted(ran) == ["s1", "s2"]
    assert jobs.settle(("s1", "r1"), 1) == (True, None)
    jobs.forget("s2")
    assert jobs.settle(("s2", "r1"), 1) == (False, None)
    assert jobs.settle(("none", "r1"), 1) == (False, None)
