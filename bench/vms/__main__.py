"""Figure 6 with VM routers (examples/figure6-vm.xml), booted on demand, directly
on a PIP substrate and through the players, and the latency of each control
action, next to the paper's figures and this project's targets.

    .venv/bin/python -m bench.vms [--runs 3]

Needs root, QEMU and libvirt (scripts/install.sh --test). Builds its own labs
in a private VNET_HOME and removes everything it made. Each run instantiates
and removes the VNet, so every run boots its four VMs anew (TCG here: no KVM).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = Path("examples/figure6-vm.xml")
PAPER = {"on demand": 109.5, "pool": 16.8}
TARGETS = {"on demand": 15.0, "pool": 3.0}


def vnet(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "vnetlib.cli.main", *args, "--json"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"vnet {' '.join(args)}: {done.stderr.strip()}")
    out = json.loads(done.stdout)
    return out if isinstance(out, dict) else {"list": out}


def timed(*args: str) -> tuple[float, dict]:
    start = time.perf_counter()
    out = vnet(*args)
    return time.perf_counter() - start, out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.vms")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root")
    os.environ["VNET_HOME"] = tempfile.mkdtemp(prefix="vnet-bench-vms-")
    rows: list[tuple[str, list[float]]] = []
    direct, chain = "v" + secrets.token_hex(1), "w" + secrets.token_hex(1)
    try:
        vnet("lab", "up", "--name", direct, "--pips", "1", "--hosts", "3", "--no-players")
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
    finally:
        for lab in (direct, chain):
            subprocess.run([sys.executable, "-m", "vnetlib.cli.main", "lab", "down", "--name",
                            lab], capture_output=True, check=False)

    print(f"\nexamples/figure6-vm.xml (4 QEMU VMs, TCG, 2 netns), {args.runs} runs, seconds")
    print(f"{'what':40} {'median':>8} {'min':>8} {'max':>8}")
    for name, values in rows:
        print(f"{name:40} {statistics.median(values):8.2f} {min(values):8.2f} "
              f"{max(values):8.2f}")
    print(f"{'target: on demand, through the players':40} {TARGETS['on demand']:8.2f}")
    print(f"{'target: from the pool, through players':40} {TARGETS['pool']:8.2f}"
          "   (no pool yet)")
    print(f"{'paper: VMs booted on demand':40} {PAPER['on demand']:8.2f}")
    print(f"{'paper: VMs pre-allocated':40} {PAPER['pool']:8.2f}")
    print(f"load: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
