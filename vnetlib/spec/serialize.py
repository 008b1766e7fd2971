"""Write model objects as RDL v1 documents.

Every attribute with a value is written, defaults included, so a stored
document keeps its meaning if a default changes. Reading the output gives back
an equal object (``line`` and ``source`` are not compared).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from lxml import etree

from vnetlib.spec.checks import Element
from vnetlib.spec.model import (
    RDL_NAMESPACE,
    RDL_VERSION,
    BoundaryLink,
    ConsoleKind,
    LinkEndpoint,
    Substrate,
    VirtualLink,
    VirtualNode,
    VNetSpec,
)


def number(value: float) -> str:
    """An ``xs:decimal`` lexical form that reads back to the same float:
    no exponent, no trailing ``.0``."""
    text = format(Decimal(repr(float(value))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


_NSMAP: Any = {None: RDL_NAMESPACE}


def _el(parent: Element | None, tag_: str, text: str | None = None, **attrs: str | None) -> Element:
    """A child of ``parent`` (or a root); ``max_price=`` becomes ``max-price=``."""
    tag = f"{{{RDL_NAMESPACE}}}{tag_}"
    values = {k.replace("_", "-"): v for k, v in attrs.items() if v is not None}
    el = (
        etree.Element(tag, values, nsmap=_NSMAP)
        if parent is None
        else etree.SubElement(parent, tag, values)
    )
    if text is not None:
        el.text = text
    return el


def _opt(value: float | None) -> str | None:
    return None if value is None else number(value)


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _consoles(parent: Element, consoles: tuple[ConsoleKind, ...]) -> None:
    for console in consoles:
        _el(parent, "console", kind=ConsoleKind(console).value)


def _document(root: Element) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def dump_vnet(spec: VNetSpec) -> bytes:
    root = _el(None, "vnet", version=RDL_VERSION, name=spec.name)
    service = spec.service
    if (
        service.availability is not None
        or service.console_access
        or service.description is not None
    ):
        el = _el(root, "service", availability=_opt(service.availability))
        if service.description is not None:
            _el(el, "description", service.description)
        _consoles(el, service.console_access)
    c = spec.constraints
    el = _el(
        root,
        "constraints",
        max_price=_opt(c.max_price),
        path_splitting=_bool(c.path_splitting),
        max_pips=None if c.max_pips is None else str(c.max_pips),
    )
    for location in c.allowed_locations:
        _el(el, "location", location)
    for node in spec.nodes:
        _node(root, node)
    for link in spec.links:
        _link(root, link)
    for boundary in spec.boundary:
        _boundary(root, boundary)
    for att in spec.attachments:
        _el(root, "attach", node=att.node, link=att.link or None, pool=att.pool,
            realm=att.realm)
    return _document(root)


def _node(root: Element, node: VirtualNode) -> None:
    el = _el(
        root,
        "node",
        id=node.id,
        kind=node.kind.value,
        cpu=number(node.cpu),
        memory=str(node.memory_mb),
        disk=number(node.disk_gb),
        image=node.image,
        location=node.location,
        forwarding=_bool(node.forwarding),
    )
    _consoles(el, node.consoles)


def _link(root: Element, link: VirtualLink) -> None:
    el = _el(
        root,
        "link",
        id=link.id,
        bandwidth=number(link.bandwidth_mbps),
        latency=_opt(link.latency_ms),
    )
    for end in (link.a, link.b):
        _endpoint(el, end)


def _boundary(root: Element, link: BoundaryLink) -> None:
    el = _el(
        root,
        "boundary-link",
        id=link.id,
        bandwidth=number(link.bandwidth_mbps),
        latency=_opt(link.latency_ms),
    )
    _endpoint(el, link.endpoint)
    _el(el, "peer", ref=link.peer_ref)


def _endpoint(link: Element, end: LinkEndpoint) -> None:
    el = _el(link, "endpoint", node=end.node, interface=end.interface.name)
    for address in end.interface.addresses:
        _el(el, "address", address)


def dump_substrate(sub: Substrate) -> bytes:
    """Empty ``encapsulations`` or ``node_kinds`` are written as absent, which
    reads back as the defaults (vxlan, netns)."""
    root = _el(None, "substrate", version=RDL_VERSION, name=sub.name)
    if sub.data_network is not None:
        _el(root, "data-network", sub.data_network)
    if sub.mgmt_network is not None:
        _el(root, "mgmt-network", sub.mgmt_network)
    for encapsulation in sub.encapsulations:
        _el(root, "encapsulation", encapsulation)
    if sub.switch is not None:
        sw = _el(root, "switch", name=sub.switch.name, kind=sub.switch.kind)
        for port in sub.switch.ports:
            _el(sw, "port", host=port)
        ctl = sub.switch.control
        if ctl is not None:
            ssh = ctl.driver == "ssh"
            el = _el(sw, "control", driver=ctl.driver, bridge=ctl.bridge, db=ctl.db,
                     address=ctl.address, port=str(ctl.port) if ssh else None,
                     user=ctl.user if ssh else None, known_hosts=ctl.known_hosts)
            if ctl.host_key is not None:
                _el(el, "host-key", ctl.host_key)
    for host in sub.hosts:
        el = _el(
            root,
            "host",
            name=host.name,
            cpu=number(host.cpu),
            memory=str(host.memory_mb),
            disk=number(host.disk_gb),
            location=host.location,
            data_address=host.data_address,
            mgmt_address=host.mgmt_address,
        )
        for kind in host.node_kinds:
            _el(el, "kind", kind.value)
    for link in sub.links:
        _el(
            root,
            "link",
            a=link.a,
            b=link.b,
            bandwidth=number(link.bandwidth_mbps),
            latency=number(link.latency_ms),
        )
    return _document(root)
