"""Moving a virtual node between hosts of one PIP (issue #13): total time and
downtime per kind of move.

    .venv/bin/python -m bench.migrate [--runs 3] [--no-vm]

A private lab (one PIP, four hosts, no players) holds e1 - r1 - e2 with
each node on its own host and routes from e1 to e2 through r1. r1 is moved
between the two free hosts, back and forth, while e1 pings e2 every 10 ms
(`ping -D -i 0.01`); per move: the wall time of `PipCore.migrate` (what `vnet
migrate` runs, without the command's start), the longest gap between two
answers in the window from the move's start to 2 s after its end (the
downtime through the node), and for VMs QEMU's own downtime. Rows: r1 a
namespace (made again on the target: break before make) and r1 a QEMU VM
(live migration). Needs root; removes everything it made.
"""

from __future__ import annotations

import argparse
import itertools
import os
import secrets
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from vnetlib import naming
from vnetlib.instantiate import OPERATOR, destroy, instantiate, local_core
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
AFTER = 2.0  # seconds of ping kept after a move ends


@dataclass(frozen=True, slots=True)
class Sample:
    total: float
    gap: float
    qemu_ms: float | None


class Pinger:
    def __init__(self, netns: str, address: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "ping", "-D", "-n", "-i", "0.01", "-W", "1", address],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def stop(self) -> list[float]:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        return [float(line[1:line.index("]")]) for line in out.splitlines()
                if line.startswith("[") and "bytes from" in line]


def longest_gap(stamps: list[float], start: float, end: float) -> float:
    points = [start, *[t for t in stamps if start <= t <= end], end]
    return max(b - a for a, b in itertools.pairwise(points))


def _reachable(netns: str, address: str, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if subprocess.run(["ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "1", address],
                          capture_output=True).returncode == 0:
            return True
    return False


def bench_kind(kind: str, substrate: str, runs: int, workdir: Path) -> list[Sample]:
    spec = workdir / f"{kind}.xml"
    spec.write_text(SPEC.format(name=f"bm{kind}", router=KINDS[kind]))
    made = instantiate(spec, substrate)
    vnet_id = made.vnet_id
    core = local_core(substrate)
    try:
        where = dict(made.node_map)
        free = [h for h in HOSTS if h != where["r1"]]
        for node, host in (("e1", free[0]), ("e2", free[1])):
            if where[node] == where["r1"]:
                core.migrate(OPERATOR, vnet_id, node, host)
        e1 = naming.vnode_netns(substrate, vnet_id, "e1")
        e2 = naming.vnode_netns(substrate, vnet_id, "e2")
        subprocess.run(["ip", "-n", e1, "route", "add", "198.19.0.4/30", "via", "198.19.0.2"],
                       check=True)
        subprocess.run(["ip", "-n", e2, "route", "add", "198.19.0.0/30", "via", "198.19.0.5"],
                       check=True)
        if not _reachable(e1, "198.19.0.6", 60):
            raise RuntimeError(f"{kind}: e1 does not reach e2 through r1")
        targets = itertools.cycle([free[2], where["r1"]])
        samples = []
        for _ in range(runs):
            pinger = Pinger(e1, "198.19.0.6")
            time.sleep(1.0)
            start = time.time()
            moved = core.migrate(OPERATOR, vnet_id, "r1", next(targets))
            end = time.time()
            time.sleep(AFTER)
            stamps = pinger.stop()
            qemu = moved.timings.get("qemu", {}).get("downtime_ms")
            samples.append(Sample(end - start, longest_gap(stamps, start, end + AFTER), qemu))
            print(f"  {kind}: {moved.source} -> {moved.target}: {end - start:.2f} s, "
                  f"longest gap {samples[-1].gap:.3f} s"
                  + (f", QEMU downtime {qemu:.0f} ms" if qemu is not None else ""))
        return samples
    finally:
        core.ledger.close()
        destroy(vnet_id)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.migrate")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-vm", action="store_true", help="namespace moves only")
    parser.add_argument("--mgmt-offset", type=int, default=60)
    args = parser.parse_args()
    os.environ.setdefault("VNET_HOME", tempfile.mkdtemp(prefix="vnet-bench-migrate-"))
    name = "bm" + secrets.token_hex(1)[:1] + secrets.choice("abcdefghij")
    testbed.up(LabSpec(name=name, pips=1, hosts=4, players=False,
                       mgmt_offset=args.mgmt_offset))
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for kind in ("netns", *(() if args.no_vm else ("vm",))):
                samples = bench_kind(kind, f"{name}p1", args.runs, Path(tmp))
                qemus = [s.qemu_ms for s in samples if s.qemu_ms is not None]
                rows.append((kind, statistics.median(s.total for s in samples),
                             statistics.median(s.gap for s in samples),
                             max(s.gap for s in samples),
                             statistics.median(qemus) if qemus else None))
    finally:
        testbed.down(name)
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"\nmoves of r1 between hosts of one PIP, median of {args.runs} "
          f"(load average {' '.join(load)})")
    print(f"{'node':8} {'total s':>8} {'gap s':>7} {'max gap s':>10} {'QEMU ms':>8}")
    for kind, total, gap, worst, qemu in rows:
        print(f"{kind:8} {total:8.2f} {gap:7.3f} {worst:10.3f} "
              f"{'-' if qemu is None else f'{qemu:.0f}':>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
