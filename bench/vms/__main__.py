"""Figure 6 with VM routers (examples/figure6-vm.xml), booted on demand and taken
from the pool of booted VMs, directly on a PIP substrate and through the
players, and the latency of each control action, next to the paper's figures
and this project's targets; then where the time of one take goes (bench/vms/take.py).

    .venv/bin/python -m bench.vms [--runs 3] [--only pool]

Needs root, QEMU and libvirt (scripts/install.sh --test). Builds its own labs
in a private VNET_HOME and removes everything it made. Each run instantiates
and removes the VNet, so every run boots its four VMs anew (TCG here: no KVM).
Where a take's time goes inside the deployment, task by task and step by
step: `python -m bench.vms.profile`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.vms.take import take_breakdown

SPEC = Path("examples/figure6-vm.xml")
PAPER = {"on demand": 109.5, "pool": 16.8}
TARGETS = {"on demand": 15.0, "pool": 3.0}


def vnet(*args: str, env: dict[str, str] | None = None) -> dict:
    done = subprocess.run([sys.executable, "-m", "vnetlib.cli.main", *args, "--json"],
                          capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"vnet {' '.join(args)}: {done.stderr.strip()}")
    out = json.loads(done.stdout)
    return out if isinstance(out, dict) else {"list": out}


def timed(*args: str) -> tuple[float, dict]:
    start = time.perf_counter()
    out = vnet(*args)
    return time.perf_counter() - start, out


def pool_sizes(substrate: str) -> str:
    """Pool sizes per host that cover figure6-vm's routers where they land."""
    where = vnet("up", str(SPEC), "--substrate", substrate, "--check")
    routers = Counter(where["node_map"][n] for n in ("r1", "r2", "r3", "r4"))
    return ",".join(f"{h}={k}" for h, k in sorted(routers.items()))


def pool_domains(lab: str) -> dict[str, str]:
    """The lab's pool domains and their libvirt states."""
    done = subprocess.run(["virsh", "-q", "-c", "qemu:///system", "list", "--all"],
                          capture_output=True, text=True, check=False)
    prefix = f"vn-{lab}p1-pool-"
    return {p[1]: p[2] for p in (line.split(None, 2) for line in done.stdout.splitlines())
            if len(p) == 3 and p[1].startswith(prefix)}


def wait_pool(lab: str, count: int, timeout: float = 300.0) -> float:
    """Wait until `count` pool VMs of the lab run and said they are ready."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        running = [d for d, st in pool_domains(lab).items() if st == "running"]
        ready = [d for d in running if "vnet-guest-ready pool" in _serial(d)]
        if len(ready) >= count:
            return time.perf_counter() - started
        time.sleep(0.5)
    raise RuntimeError(f"the pool of lab {lab} did not fill within {timeout:.0f} s")


def _serial(domain: str) -> str:
    try:
        return Path(f"/var/log/libvirt/qemu/{domain}-serial.log").read_text(errors="replace")
    except OSError:
        return ""


def direct_pool(lab: str, runs: int, rows: list[tuple[str, list[float]]],
                phases: dict[str, list[float]]) -> None:
    """figure6-vm from the pool on the direct path; `vnet down` refills."""
    substrate = f"{lab}p1"
    sizes = pool_sizes(substrate)
    took, _ = timed("pool", "fill", "--substrate", substrate, "--size", sizes)
    rows.append(("direct: pool fill (4 VMs at once)", [took]))
    ups, downs = [], []
    for _ in range(runs):
        took, out = timed("up", str(SPEC), "--substrate", substrate)
        ups.append(took)
        domains = vnet("status", out["vnet"])["domains"]
        if not all("-pool-" in d for d in domains.values()):
            raise RuntimeError(f"not every router came from the pool: {domains}")
        for phase, seconds in out["timings"].items():
            phases.setdefault(phase, []).append(seconds)
        took, _ = timed("down", out["vnet"])
        downs.append(took)
    rows += [("direct: up, VMs from the pool", ups), ("direct: down, then refill", downs)]
    vnet("pool", "drain", "--substrate", substrate)


def players_pool(lab: str, sizes: str, runs: int, rows: list[tuple[str, list[float]]],
                 phases: dict[str, list[float]]) -> None:
    """figure6-vm from the pool through the players: the PIP keeps the pool
    ($VNET_POOL_SIZE) and refills it in the background after each down."""
    env = dict(os.environ, VNET_POOL_SIZE=sizes)
    count = sum(int(part.split("=")[1]) for part in sizes.split(","))
    vnet("lab", "up", "--name", lab, "--pips", "1", "--hosts", "3", env=env)
    fills, ups, downs, starts = [], [], [], []
    for _ in range(runs):
        fills.append(wait_pool(lab, count))
        took, out = timed("up", str(SPEC), "--lab", lab)
        ups.append(took)
        # The command's own share: its Python start (imports) and exit.
        starts.append(took - sum(out["timings"].values()))
        for phase, seconds in out["timings"].items():
            phases.setdefault(phase, []).append(seconds)
        others = {d for d in _all_domains(lab) if "-pool-" not in d}
        if others:
            raise RuntimeError(f"VMs booted on demand through the players: {others}")
        took, _ = timed("down", "--lab", lab, out["vnet"])
        downs.append(took)
    rows += [("players: up from the pool (wall)", ups),
             (".. of it the command's start and exit", starts), ("players: down", downs),
             ("players: pool refill after down (bg)", fills[1:] or fills)]


def _all_domains(lab: str) -> set[str]:
    done = subprocess.run(["virsh", "-q", "-c", "qemu:///system", "list", "--name"],
                          capture_output=True, text=True, check=False)
    return {d for d in done.stdout.split() if d.startswith(f"vn-{lab}p1-")}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.vms")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=("pool",), help="only the pool's rows")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # labs removed on a timeout too
    os.environ["VNET_HOME"] = tempfile.mkdtemp(prefix="vnet-bench-vms-")
    rows: list[tuple[str, list[float]]] = []
    phases: dict[str, list[float]] = {}
    chain_phases: dict[str, list[float]] = {}
    take: dict[str, float] = {}
    direct, chain = "v" + secrets.token_hex(1), "w" + secrets.token_hex(1)
    pooled = "x" + secrets.token_hex(1)
    sizes = ""
    try:
        vnet("lab", "up", "--name", direct, "--pips", "1", "--hosts", "3", "--no-players")
        sizes = pool_sizes(f"{direct}p1")
        direct_pool(direct, args.runs, rows, phases)
        take = take_breakdown()
        players_pool(pooled, sizes, args.runs, rows, chain_phases)
        vnet("lab", "down", "--name", pooled)
        if args.only == "pool":
            raise _Done
        ups, downs = [], []
        for _ in range(args.runs):
            took, out = timed("up", str(SPEC), "--substrate", f"{direct}p1")
            ups.append(took)
            took, _ = timed("down", out["vnet"])
            downs.append(took)
        rows += [("direct: up, VMs booted on demand", ups), ("direct: down", downs)]
        vnet("lab", "down", "--name", direct)

        vnet("lab", "up", "--name", chain, "--pips", "1", "--hosts", "3")
        ups, downs = [], []
        actions: dict[str, list[float]] = {a: [] for a in
                                           ("suspend", "resume", "stop", "start", "reboot")}
        for _ in range(args.runs):
            took, out = timed("up", str(SPEC), "--lab", chain)
            ups.append(took)
            for action in actions:
                took, _ = timed("ctl", "--lab", chain, out["vnet"], "r2", action)
                actions[action].append(took)
            took, _ = timed("down", "--lab", chain, out["vnet"])
            downs.append(took)
        rows += [("players: up, VMs booted on demand", ups), ("players: down", downs)]
        rows += [(f"players: ctl {a} (one VM)", t) for a, t in actions.items()]
    except _Done:
        pass
    finally:
        for lab in (direct, chain, pooled):
            subprocess.run([sys.executable, "-m", "vnetlib.cli.main", "lab", "down", "--name",
                            lab], capture_output=True, check=False)

    print(f"\nexamples/figure6-vm.xml (4 QEMU VMs, TCG, 2 netns), {args.runs} runs, seconds")
    print(f"{'what':40} {'median':>8} {'min':>8} {'max':>8}")
    for name, values in rows:
        print(f"{name:40} {statistics.median(values):8.2f} {min(values):8.2f} "
              f"{max(values):8.2f}")
    print(f"{'target: on demand, through the players':40} {TARGETS['on demand']:8.2f}")
    print(f"{'target: from the pool, through players':40} {TARGETS['pool']:8.2f}")
    print(f"{'paper: VMs booted on demand':40} {PAPER['on demand']:8.2f}")
    print(f"{'paper: VMs pre-allocated':40} {PAPER['pool']:8.2f}")
    if phases:
        print(f"\ndirect up from the pool (pool sizes {sizes}), phases, seconds (median)")
        for phase, values in phases.items():
            print(f"  {phase:38} {statistics.median(values):8.2f}")
    if chain_phases:
        print("\nup from the pool through the players, the VNP's phases and the chain (median)")
        for phase, values in chain_phases.items():
            print(f"  {phase:38} {statistics.median(values):8.2f}")
    if take:
        print("\none take of a pool VM for 3 NICs (vnet_domain through ansible-playbook)")
        for what, seconds in take.items():
            print(f"  {what:46} {seconds:8.2f}")
    print(f"load at the end: {os.getloadavg()}")
    return 0


class _Done(Exception):
    """--only pool: the rest is skipped."""


if __name__ == "__main__":
    sys.exit(main())
