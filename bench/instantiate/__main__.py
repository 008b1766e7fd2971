"""Time `vnet up` of the paper's Figure 6 VNet on a fresh local lab, phase by
phase, over several runs, next to the paper's prototype figures.

    .venv/bin/python -m bench.instantiate [--runs 5] [--spec examples/figure6.xml]

Needs root (it builds a lab of namespaces) and removes everything it made.
Each run instantiates and then removes the VNet, so every run starts from the
same empty substrate.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from vnetlib.instantiate import destroy, instantiate
from vnetlib.lab import manage
from vnetlib.lab.layout import LabConfig

PAPER = {  # the paper's section 5.1, HEN testbed, Xen VMs, 20 runs
    "paper: VMs pre-allocated": (16.8, 0.4),
    "paper: VMs booted on demand": (109.5, 4.4),
}
PHASES = ("parse", "embed", "plan", "deploy")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instantiate")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--spec", type=Path, default=Path("examples/figure6.xml"))
    parser.add_argument("--hosts", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root: the lab is made of network namespaces")

    os.environ.setdefault("VNET_HOME", tempfile.mkdtemp(prefix="vnet-bench-"))
    lab = "b" + secrets.token_hex(2)
    config = LabConfig(name=lab, hosts=args.hosts, mgmt_network="198.19.253.0/24")
    samples: dict[str, list[float]] = {p: [] for p in (*PHASES, "total", "down")}
    try:
        manage.up(config)
        for run in range(1, args.runs + 1):
            result = instantiate(args.spec, lab)
            for phase in PHASES:
                samples[phase].append(result.timings[phase])
            samples["total"].append(sum(result.timings.values()))
            start = time.perf_counter()
            destroy(result.vnet_id)
            samples["down"].append(time.perf_counter() - start)
            print(f"run {run}: {samples['total'][-1]:.2f} s", flush=True)
    finally:
        manage.down(lab)

    print()
    print(f"vnet up {args.spec} on a {args.hosts}-host lab, {args.runs} runs (seconds)")
    print(f"{'phase':32s} {'mean':>8s} {'stdev':>8s} {'min':>8s} {'max':>8s}")
    for name, values in samples.items():
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        print(
            f"{name:32s} {statistics.mean(values):8.3f} {sd:8.3f} "
            f"{min(values):8.3f} {max(values):8.3f}"
        )
    for name, (mean, sd) in PAPER.items():
        print(f"{name:32s} {mean:8.1f} {sd:8.1f}")
    speedup = PAPER["paper: VMs pre-allocated"][0] / statistics.mean(samples["total"])
    print(f"\ntotal vs the paper's pre-allocated prototype: {speedup:.1f}x faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
