"""The lab's Open vSwitch (``vnet lab up --switch-vlan``): one ovsdb-server and
ovs-vswitchd per PIP substrate, in the substrate's switch namespace
(``vl-<substrate>-switch``), with their files under the lab's directory (or
under /run/vnet/ovs when that path is too long for unix sockets). Which
instances the lab started is kept in ``ovs.json`` so ``lab down`` stops exactly
those, by pid."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from vnetlib.lab.layout import LabConfig
from vnetlib.switch import daemons

RECORD = "ovs.json"
FALLBACK = Path("/run/vnet/ovs")
POOL = "vlans.sqlite"


def _rundir(directory: Path, substrate: str) -> Path:
    preferred = (directory / "ovs" / substrate).resolve()
    if len(str(preferred / "ovs-vswitchd.ctl")) <= 80:
        return preferred
    return FALLBACK / substrate


def pool_path(directory: Path, substrate: str) -> Path:
    """The substrate's VLAN allocations (vnetlib.switch.daemon.VlanPool)."""
    return directory / "ovs" / f"{substrate}-{POOL}"


def _load(directory: Path) -> dict[str, dict[str, str]]:
    path = directory / RECORD
    if not path.exists():
        return {}
    data: dict[str, dict[str, str]] = json.loads(path.read_text())
    return data


def up(directory: Path, substrates: Iterable[LabConfig]) -> list[str]:
    """Start (idempotently) each substrate's Open vSwitch; what was started."""
    record = _load(directory)
    started = []
    for sub in substrates:
        netns = f"vl-{sub.name}-switch"
        rundir = _rundir(directory, sub.name)
        running = daemons.OvsInstance(rundir, netns).running()
        inst = daemons.start(rundir, netns=netns)
        record[sub.name] = {"rundir": str(inst.rundir), "netns": netns, "db": inst.remote}
        (directory / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if not running:
            started.append(f"Open vSwitch of {sub.name} ({inst.remote})")
    return started


def instances(directory: Path) -> dict[str, daemons.OvsInstance]:
    """The lab's Open vSwitch per substrate, as recorded at ``up``."""
    return {sub: daemons.OvsInstance(Path(r["rundir"]), r["netns"])
            for sub, r in _load(directory).items()}


def down(directory: Path) -> list[str]:
    """Stop the lab's Open vSwitch daemons by pid and remove their files."""
    removed = []
    for sub, inst in instances(directory).items():
        if daemons.stop(inst):
            removed.append(f"Open vSwitch of {sub}")
        shutil.rmtree(inst.rundir, ignore_errors=True)
    (directory / RECORD).unlink(missing_ok=True)
    return removed
