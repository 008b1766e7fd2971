"""Where the time of a Figure 6 VM variant from the pool goes, phase by phase.

    .venv/bin/python -m bench.vms.profile [--runs 3] [--keep-lab]

The PIP core (what a PIP's `vnet serve` runs for a Provision) on a lab
substrate without players, with a deployer that runs the same playbook the
same way as `AnsibleDeployer` (ansible-runner, the warm controller, the same
environment) but keeps every event's arrival time and every module result:
the phases of one up are then the core's own (take, plan), the controller's
start, each task per host and, inside `vnet_domain`, each domain's steps
(define, ip, attach, configure, ready). The players' share (negotiation,
allocation, the chain's HTTPS) is in `python -m bench.vms`'s players row and
in the VNP's timings, not here.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner

from vnetlib.core.pool import READY, PoolSettings
from vnetlib.deploy import ansible as deploy
from vnetlib.deploy import warm
from vnetlib.instantiate import OPERATOR, local_core
from vnetlib.spec import load_vnet

SPEC = Path("examples/figure6-vm.xml")


@dataclass
class Run:
    """One playbook run: events as (seconds since the run started, kind, host, task)."""

    state: str
    wall: float = 0.0
    events: list[tuple[float, str, str, str]] = field(default_factory=list)
    results: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)


@dataclass
class ProfilingDeployer:
    """`AnsibleDeployer`'s run, with its events and module results kept."""

    inventory: Path
    runs: list[Run] = field(default_factory=list)

    def apply(self, plan: Mapping[str, Any], state: str, *, check: bool = False,
              progress: Any = None) -> None:
        location = deploy.find_collection()
        binary = deploy.playbook_binary()
        server = warm.controller(binary)
        run = Run(state)
        started = time.perf_counter()

        def on_event(event: dict[str, Any]) -> bool:
            data = event.get("event_data", {})
            kind = str(event.get("event", ""))
            host, task = str(data.get("host", "")), str(data.get("task", ""))
            run.events.append((time.perf_counter() - started, kind, host, task))
            if kind in ("runner_on_ok", "runner_on_failed"):
                run.results[(host, task)] = dict(data.get("res", {}))
            return True

        workdir = Path(tempfile.mkdtemp(prefix="vnet-profile-"))
        try:
            runner = ansible_runner.run(
                private_data_dir=str(workdir), playbook=deploy.DEPLOY_PLAYBOOK,
                inventory=str(self.inventory),
                extravars={"vnet_plan": dict(plan), "vnet_state": state},
                envvars=deploy._environment(deploy._collection_root(location), binary,
                                            server.bindir if server is not None else None),
                cmdline=" ".join(["--diff", *(["--check"] if check else []), "--limit",
                                  ",".join(sorted(plan["hosts"]))]),
                event_handler=on_event, quiet=True, timeout=300, fact_cache_type="memory")
            run.wall = time.perf_counter() - started
            if not check:
                self.runs.append(run)
            if runner.status != "successful":
                tail = runner.stdout.read()[-2000:] if runner.stdout else ""
                raise deploy.DeployError(str(runner.status), [], tail)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def phases(run: Run) -> dict[str, float]:
    """Seconds per phase of one deploy run: the controller's start (to the
    playbook's first event), per host each task (from the host's previous
    result to this one: the strategy's share included), the module steps of
    vnet_domain (the slowest domain's), the end."""
    out: dict[str, float] = {}
    first = next((t for t, k, _, _ in run.events if k == "playbook_on_start"), 0.0)
    out["controller start (to playbook_on_start)"] = first
    last: dict[str, float] = {}
    for t, kind, host, task in run.events:
        if host and task and kind.startswith("runner_on_") and kind != "runner_on_start":
            key = f"{host}: {task[:48]}"
            out[key] = out.get(key, 0.0) + t - last.get(host, first)
            last[host] = t
    for (host, _task), res in run.results.items():
        for dom in (res.get("domains") or {}).values():
            for step, secs in (dom.get("timings") or {}).items():
                key = f"  {host} vnet_domain {step} (slowest domain)"
                out[key] = max(out.get(key, 0.0), float(secs))
    end = max((t for t, _, _, _ in run.events), default=0.0)
    out["after the last event (controller exit, runner)"] = run.wall - end
    out["playbook run (wall)"] = run.wall
    return out


def sizes_for(core: Any, spec: Any) -> dict[str, int]:
    embedding, _plan = core.dry_run(spec, "probe-" + secrets.token_hex(2))
    counts: dict[str, int] = {}
    for node in spec.nodes:
        if node.kind.is_vm:
            host = embedding.node_map[node.id]
            counts[host] = counts.get(host, 0) + 1
    return counts


def wait_ready(core: Any, count: int, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(vm.state == READY for vm in core.pool.vms()) < count:
        if time.monotonic() > deadline:
            raise RuntimeError("the pool did not fill")
        core.pool.tend(boot=True)


def profile(substrate: str, runs: int) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """(per up: phases, per down: phases) of figure6-vm from the pool."""
    spec = load_vnet(SPEC)
    from vnetlib import paths
    deployer = ProfilingDeployer(paths.substrate_dir(substrate) / "inventory.yml")
    core = local_core(substrate, deployer)
    sizes = sizes_for(core, spec)
    core.pool.configure(PoolSettings(sizes))
    ups, downs = [], []
    try:
        for _ in range(runs):
            wait_ready(core, sum(sizes.values()))
            time.sleep(2.0)  # let the fresh guests settle
            deployer.runs.clear()
            name = f"prof-{secrets.token_hex(2)}"
            t0 = time.perf_counter()
            core.allocate(OPERATOR, name, spec, sliver_id=name)
            t1 = time.perf_counter()
            s = core.provision(OPERATOR, name)
            t2 = time.perf_counter()
            if len(s.domains) != sum(sizes.values()):
                raise RuntimeError(f"not every VM node took a pool VM: {s.domains}")
            up = {"allocate (embed, ledger)": t1 - t0, **{
                f"core {k}": v for k, v in s.timings.items()}}
            up.update(phases(deployer.runs[-1]))
            up["provision (whole)"] = t2 - t1
            ups.append(up)
            deployer.runs.clear()
            t3 = time.perf_counter()
            core.delete(OPERATOR, name)
            core.ledger.purge(s.id)
            down = {"delete (whole)": time.perf_counter() - t3}
            down.update(phases(deployer.runs[-1]))
            downs.append(down)
    finally:
        core.pool.drain()
        core.ledger.close()
    return ups, downs


def table(title: str, rows: list[dict[str, float]]) -> None:
    print(f"\n{title}, seconds: median (min, max) of {len(rows)}")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    for k in keys:
        v = [r[k] for r in rows if k in r]
        print(f"  {k:62} {statistics.median(v):6.2f} ({min(v):.2f}, {max(v):.2f})")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.vms.profile")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # labs removed on a timeout too
    os.environ.setdefault("VNET_HOME", tempfile.mkdtemp(prefix="vnet-bench-profile-"))
    lab = "q" + secrets.token_hex(1)
    cli = [sys.executable, "-m", "vnetlib.cli.main"]
    subprocess.run([*cli, "lab", "up", "--name", lab, "--pips", "1", "--hosts", "3",
                    "--no-players", "--json"], check=True, capture_output=True)
    try:
        load = os.getloadavg()
        ups, downs = profile(f"{lab}p1", args.runs)
    finally:
        subprocess.run([*cli, "lab", "down", "--name", lab], capture_output=True, check=False)
    if args.json:
        print(json.dumps({"up": ups, "down": downs}))
    table("figure6-vm up from the pool (PIP core, Ansible deployer)", ups)
    table("its down", downs)
    print(f"load before: {load}, after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
