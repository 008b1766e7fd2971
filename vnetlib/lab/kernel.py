"""Creating and removing the lab's kernel objects (namespaces, veths, bridges)
through netlink with pyroute2. Every step reads before it writes, so running
`up` twice changes nothing the second time and `down` removes by name prefix,
which also cleans up after an `up` that crashed half-way."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pyroute2 import IPRoute, NetlinkError, NetNS, netns

from vnetlib import naming
from vnetlib.lab.layout import LabConfig

SWITCH_BRIDGE = "sw0"
DATA_IF = "eth0"
MGMT_IF = "mgmt0"


@dataclass(slots=True)
class Changes:
    """What a lab operation did, for reporting and for idempotence tests."""

    created: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.removed)


@contextmanager
def namespace(name: str | None) -> Iterator[IPRoute]:
    handle = IPRoute() if name is None else NetNS(name)
    try:
        yield handle
    finally:
        handle.close()


def link_index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def ensure_netns(name: str, changes: Changes) -> None:
    if name not in netns.listnetns():
        netns.create(name)
        changes.created.append(f"netns {name}")
    with namespace(name) as ipr:
        lo = link_index(ipr, "lo")
        if lo is not None:
            ipr.link("set", index=lo, state="up")


def ensure_bridge(ipr: IPRoute, name: str, where: str, changes: Changes) -> int:
    idx = link_index(ipr, name)
    if idx is None:
        ipr.link("add", ifname=name, kind="bridge")
        changes.created.append(f"bridge {name} in {where}")
        idx = link_index(ipr, name)
        assert idx is not None
    ipr.link("set", index=idx, state="up")
    return idx


def ensure_addr(ipr: IPRoute, idx: int, address: str, prefixlen: int) -> None:
    present = {
        (a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=idx, family=2)
    }
    if (address, prefixlen) not in present:
        ipr.addr("add", index=idx, address=address, prefixlen=prefixlen)


def ensure_veth(
    near_ns: str | None,
    near: str,
    far_ns: str,
    far: str,
    changes: Changes,
) -> None:
    """A veth pair with one end `near` in `near_ns` (None: root) and `far` in `far_ns`."""
    with namespace(near_ns) as ipr:
        if link_index(ipr, near) is not None:
            return
    with namespace(far_ns) as ipr:
        stale = link_index(ipr, far)
        if stale is not None:
            ipr.link("del", index=stale)
    with namespace(near_ns) as ipr:
        ipr.link("add", ifname=near, kind="veth", peer={"ifname": far, "net_ns_fd": far_ns})
    changes.created.append(f"veth {near}<->{far_ns}:{far}")


def attach_up(ipr: IPRoute, ifname: str, master: int | None) -> int:
    idx = link_index(ipr, ifname)
    if idx is None:
        raise RuntimeError(f"interface {ifname} vanished while the lab was being set up")
    if master is not None:
        ipr.link("set", index=idx, master=master)
    ipr.link("set", index=idx, state="up")
    return idx


def up(config: LabConfig) -> Changes:
    changes = Changes()
    lab = config.name
    sw_ns = naming.switch_netns(lab)
    ensure_netns(sw_ns, changes)
    with namespace(sw_ns) as sw:
        sw_bridge = ensure_bridge(sw, SWITCH_BRIDGE, sw_ns, changes)
    with namespace(None) as root:
        mgmt = ensure_bridge(root, naming.mgmt_bridge(lab), "root namespace", changes)
        ensure_addr(root, mgmt, config.mgmt_gateway, config.mgmt_prefixlen)

    for i, host in enumerate(config.host_names, start=1):
        host_ns = naming.host_netns(lab, host)
        ensure_netns(host_ns, changes)
        ensure_veth(host_ns, DATA_IF, sw_ns, host, changes)
        with namespace(sw_ns) as sw:
            attach_up(sw, host, sw_bridge)
        ensure_veth(None, naming.mgmt_port(lab, i), host_ns, MGMT_IF, changes)
        with namespace(None) as root:
            attach_up(root, naming.mgmt_port(lab, i), mgmt)
        with namespace(host_ns) as ipr:
            data = attach_up(ipr, DATA_IF, None)
            ensure_addr(ipr, data, config.data_address(i), config.data_prefixlen)
            mgmt_if = attach_up(ipr, MGMT_IF, None)
            ensure_addr(ipr, mgmt_if, config.mgmt_address(i), config.mgmt_prefixlen)
    return changes


def all_namespaces() -> list[str]:
    return list(netns.listnetns())


def lab_namespaces(lab: str) -> list[str]:
    """Every namespace belonging to a lab: its substrate and its virtual nodes."""
    prefixes = (naming.lab_netns_prefix(lab), naming.vnode_netns_prefix(lab))
    return sorted(n for n in netns.listnetns() if n.startswith(prefixes))


def lab_root_links(lab: str) -> list[str]:
    prefix = naming.root_link_prefix(lab)
    with namespace(None) as root:
        names = [link.get_attr("IFLA_IFNAME") for link in root.get_links()]
    return sorted(n for n in names if n.startswith(prefix))


def down(lab: str, timeout: float = 10.0) -> Changes:
    """Remove everything of `lab`; waits until the kernel has really let go of
    the interfaces (namespace teardown is asynchronous)."""
    naming.check_lab_name(lab)
    changes = Changes()
    for name in lab_namespaces(lab):
        with namespace(name) as ipr:
            for link in ipr.get_links():
                if link.get_attr("IFLA_IFNAME") != "lo":
                    try:
                        ipr.link("del", index=link["index"])
                    except NetlinkError as err:
                        if err.code != 19:  # ENODEV: the peer's removal took it already
                            raise
        netns.remove(name)
        changes.removed.append(f"netns {name}")
    with namespace(None) as root:
        for name in lab_root_links(lab):
            idx = link_index(root, name)
            if idx is not None:
                try:
                    root.link("del", index=idx)
                except NetlinkError as err:
                    if err.code != 19:
                        raise
                changes.removed.append(f"link {name}")
    deadline = time.monotonic() + timeout
    while lab_root_links(lab) and time.monotonic() < deadline:
        time.sleep(0.05)
    return changes


@dataclass(frozen=True, slots=True)
class LabState:
    name: str
    namespaces: tuple[str, ...]
    root_links: tuple[str, ...]

    @property
    def exists(self) -> bool:
        return bool(self.namespaces or self.root_links)


def state(lab: str) -> LabState:
    return LabState(lab, tuple(lab_namespaces(lab)), tuple(lab_root_links(lab)))
