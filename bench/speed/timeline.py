"""Where a deployment's Ansible run spends its time, task by task and host by
host, from ansible-runner's own events (issue #11).

    .venv/bin/python -m bench.speed.timeline [--nodes 100] [--hosts 3] [--runs 2]

Instantiates and destroys a ring of --nodes nodes directly on a fresh
--hosts-host lab (as `vnet up` on a lab does), --runs times, and for each
run prints: the call's wall time, when ansible-runner was entered, the
playbook's start, each task's start and its per-host results (a worker
each, skipped ones included) relative to the call, and the time after the
playbook's end. Needs root; removes what it made.
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ansible_runner

from bench.players.workload import ring_vnet
from vnetlib.instantiate import destroy, instantiate
from vnetlib.lab import manage
from vnetlib.lab.layout import LabConfig
from vnetlib.spec.serialize import dump_vnet

Event = tuple[float, str, str, str]  # (seconds since the call, kind, task, host)


@contextmanager
def recorded() -> Iterator[list[Event]]:
    """Every ansible-runner event of the runs made inside, timestamped on
    arrival (ansible-runner hands them over as they are written)."""
    events: list[Event] = []
    original: Callable[..., Any] = ansible_runner.run
    start = [0.0]

    def run(**kwargs: Any) -> Any:
        start[0] = time.perf_counter()
        events.append((0.0, "runner entered", "", ""))
        handler = kwargs.get("event_handler")

        def on_event(event: dict[str, Any]) -> bool:
            data = event.get("event_data", {})
            events.append((time.perf_counter() - start[0], str(event.get("event", "")),
                           str(data.get("task", "")), str(data.get("host", ""))))
            return True if handler is None else bool(handler(event))

        kwargs["event_handler"] = on_event
        try:
            return original(**kwargs)
        finally:
            events.append((time.perf_counter() - start[0], "runner returned", "", ""))

    ansible_runner.run = run
    try:
        yield events
    finally:
        ansible_runner.run = original


INTERESTING = ("runner entered", "playbook_on_start", "playbook_on_task_start",
               "playbook_on_include", "runner_on_ok", "runner_on_skipped", "runner_on_failed",
               "playbook_on_stats", "runner returned")


def show(title: str, wall: float, events: list[Event]) -> None:
    print(f"{title}: {wall:.3f} s")
    for at, kind, task, host in events:
        if kind in INTERESTING:
            print(f"  {at:7.3f}  {kind:24s} {task[:44]:44s} {host}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.speed.timeline")
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--locations", nargs="+", default=["berlin"],
                        help="a block of the ring per location (lab hosts: berlin, london, ...)")
    args = parser.parse_args()
    os.environ.setdefault("VNET_HOME", tempfile.mkdtemp(prefix="vnet-bench-"))
    lab = "bt" + secrets.token_hex(2)
    spec = Path(tempfile.mkdtemp(prefix="vnet-timeline-")) / "ring.xml"
    spec.write_bytes(dump_vnet(ring_vnet("ring", args.nodes, args.locations)))
    manage.up(LabConfig(name=lab, hosts=args.hosts, cpu=64.0, memory_mb=1 << 16,
                        data_network="198.18.246.0/24", mgmt_network="198.18.247.0/24"))
    try:
        for run in range(args.runs):
            with recorded() as events:
                start = time.perf_counter()
                made = instantiate(spec, lab)
                show(f"run {run} up", time.perf_counter() - start, events)
            with recorded() as events:
                start = time.perf_counter()
                destroy(made.vnet_id)
                show(f"run {run} down", time.perf_counter() - start, events)
    finally:
        manage.down(lab)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
