"""Instantiation time through the players against the number of PIPs and of
virtual nodes, and the CPU each player spends on it (the paper's Table 1).

    .venv/bin/python -m bench.players [--pips 1 2 4] [--nodes 10 50 100] [--hosts 3]

For each PIP count it builds a lab (PIPs, VNP, VNO as processes), then for each
size requests a generated ring VNet from the VNO (`vnet up`), measures wall
time and each player's CPU time (its own and its children's, i.e. Ansible),
removes the VNet, and finally the lab. Needs root; cleans up after itself.
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.players.workload import ring_vnet
from vnetlib import paths
from vnetlib.lab import testbed
from vnetlib.lab.players import load_players, service_provider
from vnetlib.lab.testbed import PIP_LOCATIONS, LabSpec

PAPER_CPU = {"vno": 12.5, "vnp": 23.5, "pip (substrate node)": 19.2}
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system time of `pid` and of its children it has waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime + cutime + cstime) / TICK


@dataclass
class Row:
    pips: int
    nodes: int
    links: int
    crossing: int
    wall: float
    down: float
    cpu: dict[str, float]


def run_lab(pips: int, sizes: list[int], hosts: int, cpu: float) -> list[Row]:
    name = "b" + secrets.token_hex(1) + "x"
    spec = LabSpec(name=name, pips=pips, hosts=hosts, cpu=cpu, mgmt_offset=100 - 4)
    rows = []
    try:
        testbed.up(spec)
        players = load_players(paths.lab_dir(name))
        pids = {p: int((paths.lab_dir(name) / "run" / f"{p}.pid").read_text()) for p in players}
        sp = service_provider(name)
        for size in sizes:
            vnet = ring_vnet(f"ring{size}", size, list(PIP_LOCATIONS[:pips]))
            crossing = sum(
                1
                for k in vnet.links
                if vnet.node(k.a.node).location != vnet.node(k.b.node).location
            )
            before = {p: cpu_seconds(pid) for p, pid in pids.items()}
            start = time.perf_counter()
            view = sp.request_vnet(vnet)
            wall = time.perf_counter() - start
            used = {p: cpu_seconds(pid) - before[p] for p, pid in pids.items()}
            start = time.perf_counter()
            sp.delete(view.id)
            down = time.perf_counter() - start
            rows.append(Row(pips, size, len(vnet.links), crossing, wall, down, used))
            print(f"  {pips} PIPs, {size} nodes: {wall:.1f} s", flush=True)
    finally:
        testbed.down(name)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.players")
    parser.add_argument("--pips", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--hosts", type=int, default=3, help="hosts per PIP")
    parser.add_argument("--cpu", type=float, default=16.0, help="CPU capacity per host")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root: the lab is made of network namespaces")
    os.environ.setdefault("VNET_HOME", tempfile.mkdtemp(prefix="vnet-bench-"))

    rows: list[Row] = []
    for pips in args.pips:
        rows += run_lab(pips, args.nodes, args.hosts, args.cpu)

    print()
    print("instantiation through SP -> VNO -> VNP -> PIPs (seconds; CPU as % of wall time)")
    header = (
        f"{'PIPs':>4} {'nodes':>5} {'links':>5} {'inter':>5} {'up s':>7} {'down s':>7} "
        f"{'VNO %':>6} {'VNP %':>6} {'PIPs %':>7}"
    )
    print(header)
    for r in rows:
        pip_cpu = sum(v for k, v in r.cpu.items() if k.startswith("pip"))
        print(
            f"{r.pips:4d} {r.nodes:5d} {r.links:5d} {r.crossing:5d} {r.wall:7.2f} "
            f"{r.down:7.2f} {100 * r.cpu['vno'] / r.wall:6.1f} "
            f"{100 * r.cpu['vnp'] / r.wall:6.1f} {100 * pip_cpu / r.wall:7.1f}"
        )
    print("\npaper, Table 1 (one PIP, Figure 6 VNet, Xen on HEN), average %CPU:")
    for who, pct in PAPER_CPU.items():
        print(f"  {who:22s} {pct:5.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
