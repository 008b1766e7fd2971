"""Typed, immutable model of the vnet resource description language (RDL v1).

Two document kinds share the language: a *VNet description* (what a VNO asks
for: virtual nodes, virtual links, constraints) and a *substrate description*
(what a PIP owns: hosts with capacities, links, switch, management addresses).
The XML schema lives in ``schema/vnet-rdl-1.xsd``; ``parse`` and ``serialize``
convert between documents and these classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

RDL_NAMESPACE = "urn:vnet:rdl:1"
RDL_VERSION = "1"


class NodeKind(str, Enum):  # noqa: UP042 (str() must stay as is)
    """How a virtual node is realized on a substrate host."""

    NETNS = "netns"
    QEMU = "qemu"
    XEN = "xen"

    @classmethod
    def of(cls, kind: str, hypervisor: str | None = None) -> NodeKind:
        """The kind an RDL node names: `vm` is a VM of its hypervisor (QEMU unless
        it says xen)."""
        if kind == "vm":
            return cls(hypervisor or "qemu")
        return cls(kind)

    @property
    def is_vm(self) -> bool:
        return self is not NodeKind.NETNS


class ConsoleKind(str, Enum):  # noqa: UP042
    SERIAL = "serial"
    VNC = "vnc"


@dataclass(frozen=True, slots=True)
class Interface:
    """A virtual node's interface on one virtual link."""

    name: str
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class VirtualNode:
    id: str
    cpu: float = 1.0
    memory_mb: int = 128
    disk_gb: float = 0.0
    image: str | None = None
    kind: NodeKind = NodeKind.NETNS
    location: str | None = None
    consoles: tuple[ConsoleKind, ...] = ()
    forwarding: bool = True
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class LinkEndpoint:
    node: str
    interface: Interface


@dataclass(frozen=True, slots=True)
class VirtualLink:
    id: str
    a: LinkEndpoint
    b: LinkEndpoint
    bandwidth_mbps: float = 10.0
    latency_ms: float | None = None
    line: int | None = field(default=None, compare=False)

    @property
    def nodes(self) -> tuple[str, str]:
        return (self.a.node, self.b.node)


@dataclass(frozen=True, slots=True)
class BoundaryLink:
    """A virtual link of a partial description with only one end at this provider.

    The other end is at another provider; `peer_ref` is the VNP's opaque
    stitching id of the link, which both providers quote in the Interface 4
    stitching exchange. Nothing else about the far side is disclosed.
    """

    id: str
    endpoint: LinkEndpoint
    peer_ref: str
    bandwidth_mbps: float = 10.0
    latency_ms: float | None = None
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Constraints:
    """VNet-level constraints the VNO adds to the SP's requirements."""

    max_price: float | None = None
    allowed_locations: tuple[str, ...] = ()
    path_splitting: bool = False
    max_pips: int | None = None


@dataclass(frozen=True, slots=True)
class ServiceRequirements:
    """What the SP needs to deploy and run its service."""

    availability: float | None = None
    console_access: tuple[ConsoleKind, ...] = ()
    description: str | None = None


@dataclass(frozen=True, slots=True)
class Attachment:
    """Where end users join the VNet (Interface 6): at `node`, addresses from
    `pool`, authenticated by `realm`. With `link`, they join that link's
    segment instead, and `node`'s end of the link serves their addresses."""

    node: str
    pool: str
    realm: str
    line: int | None = field(default=None, compare=False)
    link: str = ""


@dataclass(frozen=True, slots=True)
class VNetSpec:
    name: str
    nodes: tuple[VirtualNode, ...]
    links: tuple[VirtualLink, ...] = ()
    constraints: Constraints = Constraints()
    service: ServiceRequirements = ServiceRequirements()
    source: str | None = field(default=None, compare=False)
    boundary: tuple[BoundaryLink, ...] = ()
    attachments: tuple[Attachment, ...] = ()

    def node(self, node_id: str) -> VirtualNode:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def link(self, link_id: str) -> VirtualLink:
        for link in self.links:
            if link.id == link_id:
                return link
        raise KeyError(link_id)


@dataclass(frozen=True, slots=True)
class SubstrateHost:
    name: str
    cpu: float
    memory_mb: int
    disk_gb: float = 0.0
    location: str | None = None
    data_address: str | None = None
    mgmt_address: str | None = None
    node_kinds: tuple[NodeKind, ...] = (NodeKind.NETNS,)
    line: int | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class SubstrateLink:
    a: str
    b: str
    bandwidth_mbps: float
    latency_ms: float = 0.0
    line: int | None = field(default=None, compare=False)


SWITCH_DRIVERS = ("ovsdb", "ssh")


@dataclass(frozen=True, slots=True)
class SwitchControl:
    """How the PIP programs its switch's VLANs (``<control>``): through OVSDB
    at ``db`` as the substrate hosts reach it, or over SSH (``driver="ssh"``)
    at ``address``:``port`` as ``user``, the switch proving ``host_key`` (an
    OpenSSH public key line) or a key that ``known_hosts`` (a file on the
    hosts) lists; then ``db`` is ovs-vsctl's on the switch. The login key is
    the inventory's (``vnet_switch_key``), never in a description."""

    driver: str
    bridge: str
    db: str | None = None
    address: str | None = None
    port: int = 22
    user: str = "root"
    host_key: str | None = None
    known_hosts: str | None = None


@dataclass(frozen=True, slots=True)
class Switch:
    """The PIP's switch that joins its hosts' data interfaces."""

    name: str
    kind: str = "linux-bridge"
    ports: tuple[str, ...] = ()
    control: SwitchControl | None = None


@dataclass(frozen=True, slots=True)
class Substrate:
    name: str
    hosts: tuple[SubstrateHost, ...]
    links: tuple[SubstrateLink, ...] = ()
    switch: Switch | None = None
    data_network: str | None = None
    mgmt_network: str | None = None
    encapsulations: tuple[str, ...] = ("vxlan",)
    source: str | None = field(default=None, compare=False)

    def host(self, name: str) -> SubstrateHost:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)
