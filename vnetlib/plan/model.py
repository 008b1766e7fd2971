"""The deployment plan: plain data that says what each substrate host must hold.

The plan is produced by pure code (``vnetlib.plan.build``) from a spec and an
embedding, and consumed by the Ansible collection: ``to_dict`` gives the exact
structure that ``playbooks/deploy_vnet.yml`` receives as ``vnet_plan``; each host
hands its ``nodes`` to one ``vnet.infra.vnet_node`` run and its ``links`` to one
``vnet.infra.vnet_link`` run. Field names here are the module parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class NodeTask:
    """A virtual node realized as a network namespace on one host."""

    vnode: str
    netns: str
    driver: str = "netns"
    forwarding: bool = True


@dataclass(frozen=True, slots=True)
class PortTask:
    """A veth pair from a link's host bridge into a virtual node."""

    netns: str
    ifname: str
    peer: str
    addresses: tuple[str, ...] = ()
    mtu: int = 1500
    up: bool = True  # False while the node is stopped


@dataclass(frozen=True, slots=True)
class TunnelTask:
    """The encapsulated part of a virtual link between two substrate hosts."""

    kind: str
    device: str
    vni: int
    local: str
    remote: str
    dstport: int = 4789


@dataclass(frozen=True, slots=True)
class LinkTask:
    """One host's segment of a virtual link: a bridge, local ports, a tunnel."""

    link: str
    bridge: str
    ports: tuple[PortTask, ...]
    tunnel: TunnelTask | None = None
    bandwidth_mbps: float | None = None


@dataclass(frozen=True, slots=True)
class DomainNic:
    """A VM's interface: a tap on the host, joined to a link's bridge."""

    tap: str
    mac: str
    bridge: str


@dataclass(frozen=True, slots=True)
class DomainTask:
    """A virtual node realized as a VM (a libvirt domain) on one host; the
    module is ``vnet.infra.vnet_domain``. The guest configures its addresses
    from ``cmdline`` (matched by MAC)."""

    vnode: str
    name: str
    hypervisor: str
    vcpus: int
    memory_mb: int
    kernel: str
    initrd: str
    cmdline: str
    interfaces: tuple[DomainNic, ...] = ()
    state: str = "running"  # running | shutdown | paused
    vnc: bool = False  # the node asks for a VNC console: a VNC server on 127.0.0.1
    pool: bool = False  # a pool VM (ACPI for NIC hot-plug), or a node that took one


@dataclass(frozen=True, slots=True)
class HostPlan:
    host: str
    nodes: tuple[NodeTask, ...] = ()
    links: tuple[LinkTask, ...] = ()
    domains: tuple[DomainTask, ...] = ()


@dataclass(frozen=True, slots=True)
class DeploymentPlan:
    vnet: str
    hosts: tuple[HostPlan, ...]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hosts"] = {h["host"]: h for h in data["hosts"]}
        return data

    def host(self, name: str) -> HostPlan:
        for host in self.hosts:
            if host.host == name:
                return host
        raise KeyError(name)
