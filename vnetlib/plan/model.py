"""The deployment plan: plain data that says what each substrate host must hold.

The plan is produced by pure code (``vnetlib.plan.build``) from a spec and an
embedding, and consumed by the Ansible collection: ``to_dict`` gives the exact
structure that ``playbooks/deploy_vnet.yml`` receives as ``vnet_plan``; each host
hands its ``nodes`` and ``links`` to one ``vnet.infra.vnet_link`` run. Field
names here are the module parameters.

A crossing link segment is carried by one of three encapsulations
(``LinkTask.encapsulation``): ``vxlan`` (a kernel VXLAN device, in
``vnet_link``'s own tunnel), ``click`` (the host's Click process,
``vnet.infra.vnet_click``) or ``vlan`` (a veth into the substrate's Open
vSwitch, an access port on the segment's VLAN, ``vnet.infra.vnet_vlan``).
``to_dict`` gives ``vnet_link`` only what it takes (the bridge and ports of
Click and VLAN segments, without their tunnel) and lists the other two
modules' shares as ``click`` and ``vlan`` per host.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

ENCAPSULATIONS = ("vxlan", "click", "vlan")


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
    """The encapsulated part of a virtual link between two substrate hosts.

    ``kind`` is the encapsulation; for ``vlan``, ``vni`` is the VLAN id,
    ``device`` the host end of the veth into the switch and ``port`` the
    switch's end (an access port); for ``click``, ``dstport`` is Click's UDP
    port."""

    kind: str
    device: str
    vni: int
    local: str
    remote: str
    dstport: int = 4789
    port: str | None = None


@dataclass(frozen=True, slots=True)
class LinkTask:
    """One host's segment of a virtual link: a bridge, local ports, a tunnel."""

    link: str
    bridge: str
    ports: tuple[PortTask, ...]
    tunnel: TunnelTask | None = None
    bandwidth_mbps: float | None = None
    encapsulation: str = "vxlan"
    latency_ms: float | None = None
    bridged: bool = False

    def segment(self) -> dict[str, Any]:
        """The ``vnet_link`` item: Click and VLAN segments without their tunnel
        (Click shapes its own segments, so they carry no bandwidth here).
        ``bridged`` only when set: a segment end users join needs its bridge
        even where two local ports would otherwise be one veth pair."""
        data = asdict(self)
        del data["encapsulation"], data["latency_ms"]
        if not self.bridged:
            del data["bridged"]
        if self.tunnel is None or self.encapsulation == "vxlan":
            if data["tunnel"] is not None:
                del data["tunnel"]["port"]
            return data
        data["tunnel"] = None
        if self.encapsulation == "click":
            data["bandwidth_mbps"] = None
        return data

    def click(self) -> dict[str, Any]:
        """The ``vnet_click`` item (``links[]``) of a Click segment."""
        t = self.tunnel
        assert t is not None and self.encapsulation == "click"
        return {"link": self.link, "vni": t.vni, "bridge": self.bridge, "device": t.device,
                "click_device": "ck" + t.device[2:], "local": t.local, "remote": t.remote,
                "bandwidth_mbps": self.bandwidth_mbps, "latency_ms": self.latency_ms}

    def vlan(self) -> dict[str, Any]:
        """The ``vnet_vlan`` item (``links[]``) of a VLAN segment."""
        t = self.tunnel
        assert t is not None and t.port is not None and self.encapsulation == "vlan"
        return {"link": self.link, "vlan": t.vni, "bridge": self.bridge, "device": t.device,
                "port": t.port}


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
class SwitchTask:
    """How a host's ``vnet_vlan`` reaches the substrate's switch (the
    substrate description's ``<switch><control>``): field names are the
    module's options (``switch_key``, the login key, is the inventory's)."""

    driver: str
    bridge: str
    db: str | None = None
    switch_host: str | None = None
    switch_port: int = 22
    switch_user: str = "root"
    switch_host_key: str | None = None
    switch_known_hosts: str | None = None


@dataclass(frozen=True, slots=True)
class HostPlan:
    host: str
    nodes: tuple[NodeTask, ...] = ()
    links: tuple[LinkTask, ...] = ()
    domains: tuple[DomainTask, ...] = ()
    switch: SwitchTask | None = None  # hosts with VLAN segments, when the substrate says


@dataclass(frozen=True, slots=True)
class DeploymentPlan:
    vnet: str
    hosts: tuple[HostPlan, ...]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        hosts = {}
        for host, plain in zip(self.hosts, data["hosts"], strict=True):
            plain["links"] = [t.segment() for t in host.links]
            plain["click"] = [t.click() for t in host.links
                              if t.tunnel is not None and t.encapsulation == "click"]
            plain["vlan"] = [t.vlan() for t in host.links
                             if t.tunnel is not None and t.encapsulation == "vlan"]
            if host.switch is None:
                del plain["switch"]
            hosts[host.host] = plain
        data["hosts"] = hosts
        return data

    def host(self, name: str) -> HostPlan:
        for host in self.hosts:
            if host.host == name:
                return host
        raise KeyError(name)
