"""Moving a virtual node (issue #13): total time, downtime and whether an
open console session is kept, per kind of move.

    .venv/bin/python -m bench.migrate [--runs 5] [--quick] [--no-vm] [--no-between]
        [--no-netns]

A private lab (one PIP, four hosts) holds e1 - r1 - e2, requested through
the players, which run in this process (`bench.migrate.chain`: the PIP's
core moves the node, as the PIP process does, so its console sessions
follow); routes from e1 to e2 go through r1. Before the moves a console
session is opened on r1 through SP -> VNO -> VNP -> PIP, and after each
move it must answer a command. Per move: the wall time of `PipCore.migrate`
(no command start), the longest gap between two answers of a 10 ms ping
from e1 to e2 (`ping -D -i 0.01`, from 0.5 s before the move to 2 s after
it: the downtime through the node), QEMU's own downtime for VMs. Rows:

- VM within a PIP, onto an empty host: r1 leaves the host the embedding put
  all three on (its links become crossing);
- VM within a PIP, onto the neighbours' host: r1 comes back (they become
  local again);
- netns within a PIP: e1 and e2 spread first, r1 moved between the two free
  hosts (made again there: break before make; a new shell for the console);
- between PIPs: `bench.migrate.between` (a lab of its own with
  two PIPs; r1 a namespace moved by the SP's request through the chain).

`--quick`: one move of each kind (a smoke run). Needs root; removes
everything it made.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.migrate.between import bench_between
from bench.migrate.chain import Chain, Session, chain
from bench.migrate.ping import Pinger, longest_gap, reachable
from vnetlib import naming
from vnetlib.lab import testbed
from vnetlib.lab.testbed import LabSpec

SPEC = """<?xml version="1.0" encoding="UTF-8"?>
<vnet xmlns="urn:vnet:rdl:1" version="1" name="{name}">
  <service><description>A router between two edge nodes.</description></service>
  <node id="e1" kind="netns" cpu="1" memory="128"/>
  <node id="r1" {router} cpu="1" memory="128"/>
  <node id="e2" kind="netns" cpu="1" memory="128"/>
  <link id="l1" bandwidth="100">
    <endpoint node="e1" interface="eth0"><address>198.19.0.1/30</address></endpoint>
    <endpoint node="r1" interface="eth0"><address>198.19.0.2/30</address></endpoint>
  </link>
  <link id="l2" bandwidth="100">
    <endpoint node="r1" interface="eth1"><address>198.19.0.5/30</address></endpoint>
    <endpoint node="e2" interface="eth0"><address>198.19.0.6/30</address></endpoint>
  </link>
</vnet>
"""
KINDS = {"netns": 'kind="netns"', "vm": 'kind="vm" hypervisor="qemu"'}
HOSTS = ("h1", "h2", "h3", "h4")
BEFORE, AFTER = 0.5, 2.0  # seconds of ping kept around a move


@dataclass(frozen=True, slots=True)
class Sample:
    total: float
    gap: float
    qemu_ms: float | None
    console: bool | None  # the session answered after the move (None: none open)


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    samples: tuple[Sample, ...]
    note: str = ""


class Bench:
    """The requested VNet, its namespaces and console on the chain."""

    def __init__(self, c: Chain, substrate: str, kind: str) -> None:
        self.c = c
        self.vnet_id, s = c.request(SPEC.format(name=f"bm{kind}", router=KINDS[kind]))
        self.e1 = naming.vnode_netns(substrate, s.id, "e1")
        self.e2 = naming.vnode_netns(substrate, s.id, "e2")
        self.console: Session | None = None

    def routes(self) -> None:
        for netns, net, via in ((self.e1, "198.19.0.4/30", "198.19.0.2"),
                                (self.e2, "198.19.0.0/30", "198.19.0.5")):
            subprocess.run(["ip", "-n", netns, "route", "replace", net, "via", via],
                           check=True)
        if not reachable(self.e1, "198.19.0.6", 60):
            raise RuntimeError("e1 does not reach e2 through r1")

    def open_console(self, kind: str) -> None:
        self.console = self.c.console(self.vnet_id, "r1", kind)
        self.console.ask("uname -n", "open")

    def where(self) -> dict[str, str]:
        return dict(self.c.sliver().embedding.node_map)

    def move(self, target: str) -> Sample:
        pinger = Pinger(self.e1, "198.19.0.6")
        try:
            time.sleep(1.0)
            start = time.time()
            moved = self.c.move("r1", target)
            end = time.time()
            time.sleep(AFTER)
        finally:
            stamps = pinger.stop()
        kept = None
        if self.console is not None:
            try:
                self.console.ask("uname -n", "moved")
                kept = True
            except (AssertionError, TimeoutError, OSError):
                kept = False
        qemu = moved.timings.get("qemu", {}).get("downtime_ms")
        syncs = moved.timings.get("qemu", {}).get("syncs")
        sample = Sample(end - start, longest_gap(stamps, start - BEFORE, end + AFTER), qemu,
                        kept)
        vm = f", QEMU downtime {qemu:.0f} ms, {syncs} dirty-bitmap syncs" if qemu is not None \
            else ""
        print(f"  {moved.source} -> {moved.target}: {sample.total:.2f} s, longest gap "
              f"{sample.gap:.3f} s{vm}, console answered: {kept}", flush=True)
        return sample

    def close(self) -> None:
        if self.console is not None:
            self.console.close()
        self.c.sp.delete(self.vnet_id)


def vm_rows(c: Chain, substrate: str, runs: int) -> list[Row]:
    b = Bench(c, substrate, "vm")
    try:
        home = b.where()["r1"]
        if set(b.where().values()) != {home}:
            raise RuntimeError(f"expected e1, r1, e2 on one host: {b.where()}")
        empty = next(h for h in HOSTS if h != home)
        b.routes()
        b.open_console("serial")
        away, back = [], []
        for _ in range(runs):
            away.append(b.move(empty))
            back.append(b.move(home))
        return [Row("VM within a PIP, onto an empty host", tuple(away)),
                Row("VM within a PIP, onto the neighbours' host", tuple(back))]
    finally:
        b.close()


def netns_row(c: Chain, substrate: str, runs: int) -> list[Row]:
    b = Bench(c, substrate, "netns")
    try:
        where = b.where()
        free = [h for h in HOSTS if h != where["r1"]]
        for node, host in (("e1", free[0]), ("e2", free[1])):
            if where[node] == where["r1"]:
                c.move(node, host)
        b.routes()
        b.open_console("shell")
        targets = [free[2], where["r1"]]
        samples = [b.move(targets[i % 2]) for i in range(runs)]
        return [Row("netns within a PIP", tuple(samples), "made again: state lost")]
    finally:
        b.close()


def between_row(runs: int, mgmt_offset: int) -> list[Row]:
    got = bench_between(runs=runs, mgmt_offset=mgmt_offset)
    mid = sorted(got, key=lambda s: s.total)[len(got) // 2] if got else None
    if mid is not None:
        print("  phases of the median move: "
              + ", ".join(f"{k} {v:.2f} s" for k, v in mid.phases))
    return [Row("between PIPs (netns)", tuple(Sample(s.total, s.gap, None, None) for s in got),
                "console kept (new shell), checked by tests/e2e/test_migrate_between.py")]


def table(rows: list[Row], runs: int) -> None:
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"\nmoves of r1 (e1 - r1 - e2), median of {runs} (load average {' '.join(load)})")
    print(f"{'move':44} {'total s':>8} {'gap s':>7} {'max gap s':>10} {'QEMU ms':>8} "
          f"{'console':>9}")
    for row in rows:
        s = row.samples
        if not s:
            print(f"{row.name:44} {'-':>8} {'-':>7} {'-':>10} {'-':>8} {'-':>9}  {row.note}")
            continue
        qemus = [x.qemu_ms for x in s if x.qemu_ms is not None]
        answered = [x.console for x in s if x.console is not None]
        console = f"{sum(answered)}/{len(answered)}" if answered else "-"
        qemu = f"{statistics.median(qemus):.0f}" if qemus else "-"
        print(f"{row.name:44} {statistics.median(x.total for x in s):8.2f} "
              f"{statistics.median(x.gap for x in s):7.3f} {max(x.gap for x in s):10.3f} "
              f"{qemu:>8} {console:>9}  {row.note}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.migrate")
    parser.add_argument("--runs", type=int, default=5, help="moves of each kind")
    parser.add_argument("--quick", action="store_true", help="one move of each kind")
    parser.add_argument("--no-vm", action="store_true", help="no VM rows")
    parser.add_argument("--no-between", action="store_true", help="no between-PIPs row")
    parser.add_argument("--no-netns", action="store_true", help="no netns row")
    parser.add_argument("--mgmt-offset", type=int, default=60)
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    os.environ.setdefault("VNET_HOME", tempfile.mkdtemp(prefix="vnet-bench-migrate-"))
    name = "bm" + secrets.token_hex(1)[:1] + secrets.choice("abcdefghij")
    substrate = f"{name}p1"
    rows: list[Row] = []
    testbed.up(LabSpec(name=name, pips=1, hosts=4, players=False,
                       mgmt_offset=args.mgmt_offset))
    try:
        with tempfile.TemporaryDirectory() as tmp, chain(substrate, Path(tmp)) as c:
            kinds: list[Callable[[Chain, str, int], list[Row]]] = (
                [] if args.no_netns else [netns_row])
            if not args.no_vm:
                kinds.insert(0, vm_rows)
            for kind in kinds:
                rows += kind(c, substrate, runs)
    finally:
        testbed.down(name)
    if not args.no_between:
        rows += between_row(max(runs, 2) if not args.quick else 1, args.mgmt_offset + 8)
    table(rows, runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
