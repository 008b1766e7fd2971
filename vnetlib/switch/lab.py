"""The lab's Open vSwitch (``vnet lab up --switch-vlan``): one ovsdb-server and
ovs-vswitchd per PIP substrate, in the substrate's switch namespace
(``vl-<substrate>-switch``), with their files under the lab's directory (or
under /run/vnet/ovs when that path is too long for unix sockets). Which
instances the lab started is kept in ``ovs.json`` so ``lab down`` stops exactly
those, by pid.

With ``--switch ssh`` the switch also answers SSH (the lab's sshd launcher,
:mod:`vnetlib.lab.sshd`, in the switch namespace, at the switch's address on
the substrate's management network, ``.4``; keys made by the lab under
``<substrate dir>/switch-ssh``), and the substrate
description says so (``<switch><control driver="ssh">`` with the switch's host
key): the deployment programs its VLANs over SSH. The cabling (a segment's
veth end moved into the switch namespace) stays the lab's."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import netaddr
import yaml

from vnetlib import naming, paths
from vnetlib.instantiate import INVENTORY_FILE, SUBSTRATE_FILE
from vnetlib.lab import kernel, sshd
from vnetlib.lab.layout import LabConfig
from vnetlib.spec import Substrate, dump_substrate, load_substrate
from vnetlib.spec.model import SwitchControl
from vnetlib.switch import daemons

CONTROLS = ("ovsdb", "ssh")
SWITCH_HOST = "switch"  # the switch namespace is vl-<substrate>-switch: sshd's host "switch"
SSH_DIR = "switch-ssh"
MGMT_OFFSET = 4  # .1 root, .2 a PIP apart, .5 the access switch, .11... the hosts
MGMT_IF = "mgmt0"
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


def ssh_files(substrate: str) -> sshd.SshFiles:
    """The switch's SSH keys (host key, the client key that logs in)."""
    return sshd.SshFiles(paths.substrate_dir(substrate) / SSH_DIR)


def mgmt_address(sub: LabConfig) -> str:
    """The switch's address on the substrate's management network."""
    return str(netaddr.IPNetwork(sub.mgmt_network).network + MGMT_OFFSET)


def ssh_up(sub: LabConfig) -> list[str]:
    """Put the substrate's switch on its management network (a veth from the
    lab's management bridge) and start (idempotently) its sshd there."""
    changes = kernel.Changes()
    sw_ns = naming.switch_netns(sub.name)
    uplink = f"{naming.root_link_prefix(sub.name)}swm"
    kernel.ensure_veth(None, uplink, sw_ns, MGMT_IF, changes)
    with kernel.namespace(None) as root:
        kernel.attach_up(root, uplink, kernel.link_index(root, naming.mgmt_bridge(sub.name)))
    with kernel.namespace(sw_ns) as ipr:
        idx = kernel.attach_up(ipr, MGMT_IF, None)
        kernel.ensure_addr(ipr, idx, mgmt_address(sub), sub.mgmt_prefixlen)
    front = sshd.SshHost(SWITCH_HOST, sw_ns, mgmt_address(sub))
    return changes.created + sshd.start_hosts(sub.name, [front], ssh_files(sub.name))


def _load(directory: Path) -> dict[str, dict[str, str]]:
    path = directory / RECORD
    if not path.exists():
        return {}
    data: dict[str, dict[str, str]] = json.loads(path.read_text())
    return data


def up(directory: Path, substrates: Iterable[LabConfig], control: str = "ovsdb") -> list[str]:
    """Start (idempotently) each substrate's Open vSwitch and, with ``control``
    ``ssh``, the sshd in front of it; what was started."""
    if control not in CONTROLS:
        raise ValueError(f"switch control {control!r} is not one of {', '.join(CONTROLS)}")
    record = _load(directory)
    started = []
    for sub in substrates:
        netns = f"vl-{sub.name}-switch"
        rundir = _rundir(directory, sub.name)
        running = daemons.OvsInstance(rundir, netns).running()
        inst = daemons.start(rundir, netns=netns)
        record[sub.name] = {"rundir": str(inst.rundir), "netns": netns, "db": inst.remote}
        if control == "ssh":
            record[sub.name]["ssh"] = str(ssh_files(sub.name).directory)
        (directory / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if not running:
            started.append(f"Open vSwitch of {sub.name} ({inst.remote})")
        if control == "ssh":
            try:
                started += ssh_up(sub)
            except BaseException:
                sshd.stop(ssh_files(sub.name))  # an sshd that never answered goes too
                raise
    return started


def instances(directory: Path) -> dict[str, daemons.OvsInstance]:
    """The lab's Open vSwitch per substrate, as recorded at ``up``."""
    return {sub: daemons.OvsInstance(Path(r["rundir"]), r["netns"])
            for sub, r in _load(directory).items()}


def down(directory: Path) -> list[str]:
    """Stop the lab's Open vSwitch daemons by pid and remove their files."""
    removed = []
    for entry in _load(directory).values():
        if "ssh" in entry:
            removed += sshd.stop(sshd.SshFiles(Path(entry["ssh"])))
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


def control_of(sub: LabConfig, inst: daemons.OvsInstance, ssh: str | None) -> SwitchControl:
    """The substrate description's ``<control>`` of the lab's switch: OVSDB at
    its socket, or SSH at the switch's management address with its host key
    pinned."""
    if ssh is None:
        return SwitchControl(driver="ovsdb", bridge=bridge_of(sub.name), db=inst.remote)
    files = sshd.SshFiles(Path(ssh))
    kind, key = files.host_key(SWITCH_HOST).with_suffix(".pub").read_text().split()[:2]
    return SwitchControl(driver="ssh", bridge=bridge_of(sub.name), db=inst.remote,
                         address=mgmt_address(sub), port=sshd.SSH_PORT, user="root",
                         host_key=f"{kind} {key}")


def _with_control(described: Substrate, control: SwitchControl | None) -> Substrate:
    switch = described.switch
    if switch is None:
        return described
    kind = "openvswitch" if control is not None else "linux-bridge"
    return dataclasses.replace(described, switch=dataclasses.replace(switch, control=control,
                                                                     kind=kind))


def set_encapsulation(directory: Path, substrates: Iterable[LabConfig],
                      encaps: str) -> list[str]:
    """Make each substrate's encapsulation (:func:`encapsulations` of `encaps`)
    the first of its description (VXLAN stays listed, the fallback between
    providers) and, for ``vlan``, make the switch's bridge, describe how it
    is programmed (``<switch><control>``: OVSDB, or SSH when the lab started
    its sshd) and tell the inventory's hosts where it is (``vnet_ovs_db``,
    ``vnet_ovs_bridge``, ``vnet_ovs_netns``; ``vnet_switch_key``, the key
    that logs in to it over SSH); what changed."""
    changed = []
    ovs = instances(directory)
    record = _load(directory)
    subs = list(substrates)
    for sub, encap in zip(subs, encapsulations(encaps, len(subs)), strict=True):
        files = paths.substrate_dir(sub.name)
        described = load_substrate(files / SUBSTRATE_FILE)
        want = offered(encap)
        control: SwitchControl | None = None
        inventory = yaml.safe_load((files / INVENTORY_FILE).read_text())
        variables = inventory["all"].setdefault("vars", {})
        keys = {"vnet_ovs_db", "vnet_ovs_bridge", "vnet_ovs_netns", "vnet_switch_key"}
        switch: dict[str, Any] = {}
        if want[0] == "vlan":
            # imported here: the OVS driver loads the collection's module_utils,
            # which a lab without VLANs (and `vnet` at start-up) must not need
            from vnetlib.switch.driver import OvsDriver

            inst = ovs[sub.name]
            with OvsDriver(inst.remote, bridge_of(sub.name)):
                pass  # the switch's bridge exists from the start
            ssh = record[sub.name].get("ssh")
            control = control_of(sub, inst, ssh)
            switch = {"vnet_ovs_db": inst.remote, "vnet_ovs_bridge": bridge_of(sub.name),
                      "vnet_ovs_netns": inst.netns or ""}
            if ssh is not None:
                switch["vnet_switch_key"] = str(sshd.SshFiles(Path(ssh)).client_key)
        wanted = _with_control(dataclasses.replace(described, encapsulations=want), control)
        if wanted != described:
            (files / SUBSTRATE_FILE).write_bytes(dump_substrate(wanted))
            changed.append(f"encapsulation {', '.join(want)} on {sub.name}"
                           + (f", switch through {control.driver}" if control else ""))
        if {k: variables.get(k) for k in keys if k in variables} != switch:
            for k in keys:
                variables.pop(k, None)
            variables.update(switch)
            (files / INVENTORY_FILE).write_text(yaml.safe_dump(inventory, sort_keys=False))
    return changed
