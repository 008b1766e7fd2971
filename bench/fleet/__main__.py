"""Substrate hosts over SSH against the netns connection, and a fleet of lab
hosts over SSH (issue #15).

    .venv/bin/python -m bench.fleet [--runs 1] [--fleet 50] [--only NAME ...]
                                    [--variant WORD ...]

About 15 minutes on a quiet 2-core machine with the defaults; a smoke run:
`--only fleet --fleet 4 --runs 0 --variant settings`.

Rows (each up and down the median of --runs warm runs, the first run apart):
- `compare`: Figure 6 and a 100-node ring directly on a 3-host lab, with the
  netns connection and with an sshd in every host (same process, same run);
- `fleet`: one deployment of a VNet that touches every host of a --fleet-host
  lab over SSH (2 nodes per host), with Ansible settings varied one at a time
  from the chosen ones (forks, pipelining, ControlPersist; `--variant`
  picks among all, compression and forks 100 included), and the failures;
- `frozen`: the same with one host's sshd frozen (SIGSTOP): the time until
  the deployment fails naming that host, with the rest rolled back.
Needs root; removes everything it made.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.players.workload import ring_vnet
from vnetlib import paths
from vnetlib.deploy import ansible as runner
from vnetlib.deploy.ansible import DeployError
from vnetlib.instantiate import destroy, instantiate, local_vnets
from vnetlib.lab import manage, sshd
from vnetlib.lab.layout import LabConfig
from vnetlib.spec import dump_vnet

FIGURE6 = Path("examples/figure6.xml")
MGMT = "198.18.{}.0/24"


@dataclass(frozen=True, slots=True)
class Row:
    what: str
    connection: str
    up: float | None
    down: float | None
    first_up: float | None = None
    note: str = ""


def _free_slots(count: int) -> list[int]:
    """Third octets of 198.18.x.0/24 management networks nobody here uses
    (other labs on this machine hold theirs in the root namespace)."""
    shown = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True,
                           check=True).stdout
    free = [x for x in range(249, 200, -1) if f" 198.18.{x}." not in shown]
    if len(free) < count:
        raise RuntimeError("no free management network in 198.18.201-249.0/24")
    return free[:count]


def _lab(hosts: int, connection: str, slot: int, cpu: float = 64.0) -> LabConfig:
    return LabConfig(name="bf" + secrets.token_hex(2), hosts=hosts, cpu=cpu,
                     memory_mb=1 << 16, data_network=f"198.18.{slot - 200}.0/24",
                     mgmt_network=MGMT.format(slot), connection=connection,
                     locations=("berlin",))


@contextmanager
def _substrate(config: LabConfig) -> Iterator[str]:
    try:
        manage.up(config)
        yield config.name
    finally:
        manage.down(config.name)


def _spec_file(spec: Any, directory: Path) -> Path:
    path = directory / f"{spec.name}.xml"
    path.write_bytes(dump_vnet(spec))
    return path


def _runs(spec: Path, substrate: str, runs: int) -> tuple[list[float], list[float]]:
    ups: list[float] = []
    downs: list[float] = []
    for _ in range(runs + 1):
        start = time.perf_counter()
        made = instantiate(spec, substrate)
        ups.append(time.perf_counter() - start)
        start = time.perf_counter()
        destroy(made.vnet_id)
        downs.append(time.perf_counter() - start)
    return ups, downs


def compare(runs: int, work: Path) -> list[Row]:
    """Figure 6 and a 100-node ring, netns against ssh, on 3 hosts."""
    ring = _spec_file(ring_vnet("ring100", 100, ["berlin"]), work)
    rows = []
    for slot, connection in zip(_free_slots(2), ("netns", "ssh"), strict=True):
        with _substrate(_lab(3, connection, slot)) as substrate:
            for title, spec in (("Figure 6, 3 hosts", FIGURE6), ("100-node ring, 3 hosts", ring)):
                ups, downs = _runs(spec, substrate, runs)
                rows.append(Row(title, connection, statistics.median(ups[1:]),
                                statistics.median(downs[1:]), ups[0]))
                print(f"  {title} over {connection}: up {rows[-1].up:.2f} s, "
                      f"down {rows[-1].down:.2f} s (first up {ups[0]:.2f} s)", flush=True)
    return rows


@contextmanager
def _forks(forks: int | None) -> Iterator[None]:
    """Run the deployments with ANSIBLE_FORKS=`forks` (None: as vnet sets it)."""
    original = runner._environment
    if forks is None:
        yield
        return

    def patched(*args: Any, **kwargs: Any) -> dict[str, str]:
        env = original(*args, **kwargs)
        env["ANSIBLE_FORKS"] = str(forks)
        return env

    runner._environment = patched
    try:
        yield
    finally:
        runner._environment = original


def _set_host_vars(substrate: str, change: Callable[[dict[str, Any]], None]) -> None:
    path = paths.substrate_dir(substrate) / manage.INVENTORY_FILE
    inventory = yaml.safe_load(path.read_text())
    for host in inventory["all"]["children"]["substrate"]["hosts"].values():
        change(host)
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))


VARIANTS: dict[str, tuple[int | None, Callable[[dict[str, Any]], None]]] = {
    "vnet's settings (forks 20, pipelining, ControlPersist 60 s)": (None, lambda h: None),
    "forks 50": (50, lambda h: None),
    "forks 100": (100, lambda h: None),
    "no pipelining": (None, lambda h: h.update(ansible_ssh_pipelining=False)),
    "no ControlPersist": (None, lambda h: h.update(ansible_ssh_args="")),
    "with compression (-C, Ansible's default)": (
        None, lambda h: h.update(ansible_ssh_args="-C " + sshd.SSH_ARGS)),
}
DEFAULT_VARIANTS = ("vnet's settings", "forks 50", "no pipelining", "no ControlPersist")


def fleet(hosts: int, runs: int, work: Path, only: list[str] | None) -> list[Row]:
    """One VNet with 2 nodes on each of `hosts` SSH hosts, per settings variant."""
    spec = _spec_file(ring_vnet(f"fleet{hosts}", 2 * hosts, ["berlin"], cpu=2.0), work)
    rows = []
    config = _lab(hosts, "ssh", _free_slots(1)[0], cpu=4.5)
    with _substrate(config) as substrate:
        inventory = paths.substrate_dir(substrate) / manage.INVENTORY_FILE
        chosen = inventory.read_text()
        for title, (forks, change) in VARIANTS.items():
            if not any(word in title for word in (only or DEFAULT_VARIANTS)):
                continue
            inventory.write_text(chosen)
            _set_host_vars(substrate, change)
            failures, used = 0, 0
            ups: list[float] = []
            downs: list[float] = []
            with _forks(forks):
                for _ in range(runs + 1):
                    start = time.perf_counter()
                    try:
                        made = instantiate(spec, substrate)
                    except DeployError:
                        failures += 1
                        _clear(substrate)
                        continue
                    ups.append(time.perf_counter() - start)
                    used = len(set(made.node_map.values()))
                    start = time.perf_counter()
                    try:
                        destroy(made.vnet_id)
                    except DeployError:
                        failures += 1
                        _clear(substrate)
                        continue
                    downs.append(time.perf_counter() - start)
            warm = ups[1:] or ups
            if used and used != hosts:
                print(f"  warning: the VNet used {used} of {hosts} hosts", flush=True)
            rows.append(Row(f"{2 * hosts} nodes on {used} hosts: {title}", "ssh",
                            statistics.median(warm) if warm else None,
                            statistics.median(downs[1:] or downs) if downs else None,
                            ups[0] if ups else None, f"{failures} failed"))
            print(f"  {rows[-1].what}: up {_fmt(rows[-1].up)} s, down {_fmt(rows[-1].down)} s,"
                  f" {failures} failed", flush=True)
        inventory.write_text(chosen)
        rows.append(frozen(config, spec))
    return rows


def frozen(config: LabConfig, spec: Path) -> Row:
    """One host's sshd frozen: how long until the deployment fails by name."""
    files = sshd.files_of(paths.substrate_dir(config.name))
    victim = config.host_names[-1]
    sshd.signal_host(files, victim, signal.SIGSTOP)
    note = "did not fail"
    start = time.perf_counter()
    try:
        made = instantiate(spec, config.name)
        destroy(made.vnet_id)
    except DeployError as err:
        named = victim in str(err)
        note = f"failed naming {victim}: {named}"
    finally:
        elapsed = time.perf_counter() - start
        sshd.signal_host(files, victim, signal.SIGCONT)
    _clear(config.name)
    row = Row(f"{config.hosts} hosts, {victim}'s sshd frozen", "ssh", elapsed, None, None, note)
    print(f"  {row.what}: failed after {elapsed:.2f} s ({note})", flush=True)
    return row


def _clear(substrate: str) -> None:
    """Remove what a failed run left on `substrate` (retried once)."""
    for _ in range(2):
        left = [v.id for v in local_vnets() if v.lab == substrate]
        for vnet_id in left:
            try:
                destroy(vnet_id)
            except DeployError as err:
                print(f"  removal of {vnet_id} failed: {str(err).splitlines()[0]}", flush=True)
        if not left:
            return


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet")
    parser.add_argument("--runs", type=int, default=1,
                        help="warm runs per row, after a first one (0: the first only)")
    parser.add_argument("--fleet", type=int, default=50, help="hosts of the fleet lab")
    parser.add_argument("--only", nargs="+", default=None, choices=["compare", "fleet"])
    parser.add_argument("--variant", nargs="+", default=None,
                        help="fleet variants whose title holds one of these words "
                             f"(default: {', '.join(DEFAULT_VARIANTS)}; "
                             f"all: {', '.join(VARIANTS)})")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root: labs are made of network namespaces")
    os.environ.setdefault("VNET_HOME", tempfile.mkdtemp(prefix="vnet-bench-"))
    work = Path(tempfile.mkdtemp(prefix="vnet-bench-fleet-"))
    rows: list[Row] = []
    if args.only is None or "compare" in args.only:
        rows += compare(args.runs, work)
    if args.only is None or "fleet" in args.only:
        rows += fleet(args.fleet, args.runs, work, args.variant)
    print(f"\nload average: {Path('/proc/loadavg').read_text().strip()}; warm controller: "
          f"{'off' if os.environ.get('VNET_WARM_CONTROLLER') == '0' else 'on'}")
    print("| what | connection | up (s) | down (s) | first up (s) | note |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.what} | {r.connection} | {_fmt(r.up)} | {_fmt(r.down)} | "
              f"{_fmt(r.first_up)} | {r.note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
