"""Request RSpecs (GENI RSpec v3) to and from VNet descriptions.

How a `VNetSpec` is written (and read back):

| vnet | RSpec v3 |
| --- | --- |
| VNet name, service, constraints, attachments | `<vnet:vnet>` on `<rspec>` |
| virtual node `id` | `<node client_id>`, `exclusive="false"` |
| node kind | `<sliver_type name="netns|qemu|xen">` (image: its `<disk_image name>`) |
| CPU shares, memory, disk, location, consoles, forwarding | `<vnet:node>` in the node |
| interface `name` of node `n` | `<interface client_id="n:name">` |
| interface address `a.b.c.d/p` | `<ip address netmask type="ipv4">` (IPv6: prefix length) |
| virtual link `id` | `<link client_id>` with two `<interface_ref>` |
| bandwidth (Mbit/s), latency (ms) | `<property capacity>` (kbit/s), `latency`; `<vnet:link>` |
| boundary link, `peer/@ref` | a link with one `<interface_ref>` and `<vnet:link><vnet:peer ref>` |
| encapsulation | `<link_type name="vxlan">` |

`vnet` is the namespace `urn:vnet:geni:1` (`schemas/vnet-geni-1.xsd`). A
request without our extension (from another GENI tool) is read too: kinds
from `sliver_type`, bandwidth and latency from `property`, defaults for the
rest, and the VNet named after the file. What is read is checked as an RDL
description is (schema and semantic rules), so a VNetSpec from an RSpec is
as valid as one from RDL.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from lxml import etree

from vnetlib.geni.schema import (
    GENI_NS,
    SCHEMA_URLS,
    VNET_NS,
    XSI_NS,
    Kind,
    kind_of,
    parse,
    validate,
)
from vnetlib.spec import dump_vnet, parse_vnet
from vnetlib.spec.checks import line_of
from vnetlib.spec.model import (
    Attachment,
    BoundaryLink,
    ConsoleKind,
    Constraints,
    Interface,
    LinkEndpoint,
    NodeKind,
    ServiceRequirements,
    VirtualLink,
    VirtualNode,
    VNetSpec,
)
from vnetlib.spec.serialize import number

Element = etree._Element
NSMAP: Any = {None: GENI_NS, "vnet": VNET_NS, "xsi": XSI_NS}
ENCAPSULATION = "vxlan"
GENERATOR = "vnet"


def g(tag: str) -> str:
    return f"{{{GENI_NS}}}{tag}"


def v(tag: str) -> str:
    return f"{{{VNET_NS}}}{tag}"


def sub(parent: Element, tag: str, **attrs: str | None) -> Element:
    return etree.SubElement(parent, tag, {k.replace("_", "-") if tag.startswith(f"{{{VNET_NS}}}")
                                          else k: val for k, val in attrs.items()
                                          if val is not None})


def root_element(kind: Kind) -> Element:
    root = etree.Element(g("rspec"), nsmap=NSMAP)
    root.set("type", kind)
    root.set(f"{{{XSI_NS}}}schemaLocation",
             f"{GENI_NS} {SCHEMA_URLS[kind]} {VNET_NS} {VNET_NS}/vnet-geni-1.xsd")
    root.set("generated", dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    root.set("generated_by", GENERATOR)
    return root


def document(root: Element) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _opt(value: float | None) -> str | None:
    return None if value is None else number(value)


def interface_id(node: str, interface: str) -> str:
    return f"{node}:{interface}"


# -- writing -------------------------------------------------------------------------


def _ip(parent: Element, cidr: str) -> None:
    iface = ipaddress.ip_interface(cidr)
    netmask = str(iface.netmask) if iface.version == 4 else str(iface.network.prefixlen)
    sub(parent, g("ip"), address=str(iface.ip), netmask=netmask, type=f"ipv{iface.version}")


def write_node(root: Element, node: VirtualNode, interfaces: Iterable[Interface],
               **attrs: str | None) -> Element:
    """A request or manifest `<node>`; `attrs` adds e.g. sliver_id in manifests."""
    el = sub(root, g("node"), client_id=node.id, exclusive="false", **attrs)
    sliver = sub(el, g("sliver_type"), name=node.kind.value)
    if node.image is not None:
        sub(sliver, g("disk_image"), name=node.image)
    for iface in interfaces:
        i = sub(el, g("interface"), client_id=interface_id(node.id, iface.name))
        for address in iface.addresses:
            _ip(i, address)
    ext = sub(el, v("node"), kind=node.kind.value, cpu=number(node.cpu),
              memory=str(node.memory_mb), disk=number(node.disk_gb), location=node.location,
              image=node.image, forwarding=_bool(node.forwarding))
    for console in node.consoles:
        sub(ext, v("console"), kind=ConsoleKind(console).value)
    return el


def write_link(root: Element, link_id: str, ends: Iterable[LinkEndpoint], bandwidth: float,
               latency: float | None, peer_ref: str | None = None,
               **attrs: str | None) -> Element:
    ends = list(ends)
    el = sub(root, g("link"), client_id=link_id, **attrs)
    ids = [interface_id(e.node, e.interface.name) for e in ends]
    for iid in ids:
        sub(el, g("interface_ref"), client_id=iid)
    if len(ids) == 2:
        for src, dst in (ids, ids[::-1]):
            sub(el, g("property"), source_id=src, dest_id=dst,
                capacity=number(round(bandwidth * 1000, 6)), latency=_opt(latency))
    sub(el, g("link_type"), name=ENCAPSULATION)
    ext = sub(el, v("link"), bandwidth=number(bandwidth), latency=_opt(latency))
    if peer_ref is not None:
        sub(ext, v("peer"), ref=peer_ref)
    return el


def interfaces_of(spec: VNetSpec) -> dict[str, list[Interface]]:
    """Each node's interfaces, in link order (links, then boundary links)."""
    out: dict[str, list[Interface]] = {n.id: [] for n in spec.nodes}
    for link in spec.links:
        for end in (link.a, link.b):
            out[end.node].append(end.interface)
    for b in spec.boundary:
        out[b.endpoint.node].append(b.endpoint.interface)
    return out


def write_vnet_extension(root: Element, spec: VNetSpec) -> None:
    ext = sub(root, v("vnet"), name=spec.name)
    s = spec.service
    if s.availability is not None or s.console_access or s.description is not None:
        el = sub(ext, v("service"), availability=_opt(s.availability))
        if s.description is not None:
            sub(el, v("description")).text = s.description
        for console in s.console_access:
            sub(el, v("console"), kind=ConsoleKind(console).value)
    c = spec.constraints
    el = sub(ext, v("constraints"), max_price=_opt(c.max_price),
             path_splitting=_bool(c.path_splitting),
             max_pips=None if c.max_pips is None else str(c.max_pips))
    for location in c.allowed_locations:
        sub(el, v("allowed-location")).text = location
    for att in spec.attachments:
        sub(ext, v("attach"), node=att.node, link=att.link or None, pool=att.pool,
            realm=att.realm)


def request_rspec(spec: VNetSpec, component_manager: str | None = None) -> bytes:
    """The request RSpec of a VNet description (bound to one aggregate if
    `component_manager`, a URN, is given)."""
    root = root_element("request")
    write_vnet_extension(root, spec)
    ifaces = interfaces_of(spec)
    for node in spec.nodes:
        write_node(root, node, ifaces[node.id], component_manager_id=component_manager)
    for link in spec.links:
        write_link(root, link.id, (link.a, link.b), link.bandwidth_mbps, link.latency_ms)
    for b in spec.boundary:
        write_link(root, b.id, (b.endpoint,), b.bandwidth_mbps, b.latency_ms, b.peer_ref)
    data = document(root)
    validate(root, "request")
    return data


# -- reading -------------------------------------------------------------------------


def _float(text: str | None, default: float | None = None) -> float | None:
    return default if text is None else float(text)


def _bool_of(text: str | None, default: bool) -> bool:
    return default if text is None else text.strip() in ("true", "1")


def _consoles(el: Element | None) -> tuple[ConsoleKind, ...]:
    if el is None:
        return ()
    return tuple(ConsoleKind(c.get("kind", "")) for c in el.findall(v("console")))


def _cidr(ip: Element) -> str:
    address, mask = ip.get("address", ""), ip.get("netmask")
    if not mask:
        return address
    if mask.isdigit():
        return f"{address}/{mask}"
    return str(ipaddress.ip_interface(f"{address}/{mask}"))


def _node(el: Element) -> tuple[VirtualNode, dict[str, Interface]]:
    node_id = el.get("client_id", "")
    ext = el.find(v("node"))
    sliver = el.find(g("sliver_type"))
    image_el = sliver.find(g("disk_image")) if sliver is not None else None
    kind_name = ext.get("kind") if ext is not None else (
        sliver.get("name") if sliver is not None else None)
    kind = NodeKind(kind_name) if kind_name in {k.value for k in NodeKind} else NodeKind.NETNS
    image = ext.get("image") if ext is not None else (
        image_el.get("name") if image_el is not None else None)
    ifaces: dict[str, Interface] = {}
    for i in el.findall(g("interface")):
        cid = i.get("client_id", "")
        name = cid[len(node_id) + 1:] if cid.startswith(f"{node_id}:") else cid
        ifaces[cid] = Interface(name, tuple(_cidr(ip) for ip in i.findall(g("ip"))))
    defaults = VirtualNode(node_id)
    if ext is None:
        return replace(defaults, kind=kind, image=image, line=line_of(el)), ifaces
    return VirtualNode(
        id=node_id, cpu=float(ext.get("cpu", defaults.cpu)),
        memory_mb=int(ext.get("memory", defaults.memory_mb)),
        disk_gb=float(ext.get("disk", defaults.disk_gb)), image=image, kind=kind,
        location=ext.get("location"), consoles=_consoles(ext),
        forwarding=_bool_of(ext.get("forwarding"), defaults.forwarding),
        line=line_of(el)), ifaces


def _link_values(el: Element) -> tuple[float, float | None, str | None]:
    """Bandwidth (Mbit/s), latency (ms) and boundary ref of a `<link>`."""
    ext = el.find(v("link"))
    if ext is not None:
        peer = ext.find(v("peer"))
        return (float(ext.get("bandwidth", "10")), _float(ext.get("latency")),
                None if peer is None else peer.get("ref"))
    prop = el.find(g("property"))
    if prop is None:
        return 10.0, None, None
    capacity = _float(prop.get("capacity"))
    return (10.0 if capacity is None else capacity / 1000, _float(prop.get("latency")), None)


def _vnet_extension(root: Element, name: str) -> tuple[str, ServiceRequirements, Constraints,
                                                       tuple[Attachment, ...]]:
    ext = root.find(v("vnet"))
    if ext is None:
        return name, ServiceRequirements(), Constraints(), ()
    s = ext.find(v("service"))
    service = ServiceRequirements()
    if s is not None:
        desc = s.find(v("description"))
        service = ServiceRequirements(_float(s.get("availability")), _consoles(s),
                                      None if desc is None else desc.text or "")
    c = ext.find(v("constraints"))
    constraints = Constraints()
    if c is not None:
        pips = c.get("max-pips")
        constraints = Constraints(
            _float(c.get("max-price")), tuple(a.text or "" for a in c.findall(
                v("allowed-location"))), _bool_of(c.get("path-splitting"), False),
            None if pips is None else int(pips))
    atts = tuple(Attachment(a.get("node", ""), a.get("pool", ""), a.get("realm", ""),
                            line_of(a), a.get("link", "")) for a in ext.findall(v("attach")))
    return ext.get("name", name), service, constraints, atts


def spec_from_root(root: Element, name: str = "imported") -> VNetSpec:
    """A VNetSpec from a validated request (or manifest) RSpec; not yet checked."""
    vnet_name, service, constraints, attachments = _vnet_extension(root, name)
    nodes: list[VirtualNode] = []
    ifaces: dict[str, tuple[str, Interface]] = {}
    for el in root.findall(g("node")):
        node, found = _node(el)
        nodes.append(node)
        ifaces.update({cid: (node.id, iface) for cid, iface in found.items()})
    links: list[VirtualLink] = []
    boundary: list[BoundaryLink] = []
    for el in root.findall(g("link")):
        ends = [LinkEndpoint(*ifaces[cid]) for r in el.findall(g("interface_ref"))
                if (cid := r.get("client_id", "")) in ifaces]
        bandwidth, latency, ref = _link_values(el)
        link_id = el.get("client_id", "")
        if ref is not None and len(ends) == 1:
            boundary.append(BoundaryLink(link_id, ends[0], ref, bandwidth, latency,
                                         line_of(el)))
        elif len(ends) == 2:
            links.append(VirtualLink(link_id, ends[0], ends[1], bandwidth, latency,
                                     line_of(el)))
        else:
            raise ValueError(f"line {line_of(el)}: link {link_id} joins {len(ends)} known "
                             "interfaces; vnet links join exactly two")
    return VNetSpec(vnet_name, tuple(nodes), tuple(links), constraints, service,
                    boundary=tuple(boundary), attachments=attachments)


def checked(spec: VNetSpec, source: str) -> VNetSpec:
    """`spec` as RDL would give it: through the RDL schema and semantic rules."""
    return parse_vnet(dump_vnet(spec), source)


def parse_request(data: bytes, source: str = "<rspec>", name: str = "imported") -> VNetSpec:
    """A VNet description from a request RSpec: validated against GENI's request
    schema and our extension, then against RDL's rules (SpecErrors either way)."""
    root = parse(data, source)
    kind = kind_of(root, source)
    if kind != "request":
        raise ValueError(f"{source}: a {kind} RSpec, not a request RSpec")
    validate(root, kind, source)
    return checked(spec_from_root(root, name), source)
