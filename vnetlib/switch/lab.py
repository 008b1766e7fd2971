"""The lab's Open vSwitch (``vnet lab up --switch-vlan``): one ovsdb-server and
ovs-vswitchd per PIP substrate, in the substrate's switch namespace
(``vl-<substrate>-switch``), with their files under the lab's directory (or
under /run/vnet/ovs when that path is too long for unix sockets). Which
instances the lab started is kept in ``ovs.json`` so ``lab down`` stops exactly
those, by pid."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import yaml

from vnetlib import paths
from vnetlib.instantiate import INVENTORY_FILE, SUBSTRATE_FILE
from vnetlib.lab.layout import LabConfig
from vnetlib.spec import dump_substrate, load_substrate
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


def bridge_of(substrate: str) -> str:
    """The Open vSwitch bridge of a lab substrate's switch."""
    return f"vs-{substrate}"


def encapsulations(encap: str, count: int) -> list[str]:
    """Per PIP, its encapsulation from ``vxlan``, ``click,vlan``... (the i-th
    for PIP i, the last one for the PIPs after). A PIP's item may list more
    than one, in its order of preference, joined by ``+``: ``vlan+click``
    carries its own links on VLANs and offers Click between PIPs."""
    names = [e.strip() for e in encap.split(",")]
    return [names[min(i, len(names) - 1)] for i in range(count)]


def offered(item: str) -> tuple[str, ...]:
    """A PIP's encapsulations from its item of ``--encap`` (``vlan+click``):
    those, then VXLAN, the fallback between providers."""
    return tuple(dict.fromkeys((*(e.strip() for e in item.split("+")), "vxlan")))


def set_encapsulation(directory: Path, substrates: Iterable[LabConfig],
                      encaps: str) -> list[str]:
    """Make each substrate's encapsulation (:func:`encapsulations` of `encaps`)
    the first of its description (VXLAN stays listed, the fallback between
    providers) and, for ``vlan``, make the switch's bridge and tell the
    inventory's hosts where it is (``vnet_ovs_db``,
    ``vnet_ovs_bridge``, ``vnet_ovs_netns``); what changed."""
    changed = []
    ovs = instances(directory)
    subs = list(substrates)
    for sub, encap in zip(subs, encapsulations(encaps, len(subs)), strict=True):
        files = paths.substrate_dir(sub.name)
        described = load_substrate(files / SUBSTRATE_FILE)
        want = offered(encap)
        if described.encapsulations != want:
            (files / SUBSTRATE_FILE).write_bytes(
                dump_substrate(dataclasses.replace(described, encapsulations=want)))
            changed.append(f"encapsulation {', '.join(want)} on {sub.name}")
        inventory = yaml.safe_load((files / INVENTORY_FILE).read_text())
        variables = inventory["all"].setdefault("vars", {})
        keys = {"vnet_ovs_db", "vnet_ovs_bridge", "vnet_ovs_netns"}
        if want[0] == "vlan":
            # imported here: the OVS driver loads the collection's module_utils,
            # which a lab without VLANs (and `vnet` at start-up) must not need
            from vnetlib.switch.driver import OvsDriver

            inst = ovs[sub.name]
            with OvsDriver(inst.remote, bridge_of(sub.name)):
                pass  # the switch's bridge exists from the start
            switch = {"vnet_ovs_db": inst.remote, "vnet_ovs_bridge": bridge_of(sub.name),
                      "vnet_ovs_netns": inst.netns or ""}
        else:
            switch = {}
        if {k: variables.get(k) for k in keys if k in variables} != switch:
            for k in keys:
                variables.pop(k, None)
            variables.update(switch)
            (files / INVENTORY_FILE).write_text(yaml.safe_dump(inventory, sort_keys=False))
    return changed
