"""Model objects from schema-valid, semantically checked RDL elements.

Attribute defaults are the model's defaults, so an omitted attribute means the
same thing in a document and in code.
"""

from __future__ import annotations

from vnetlib.spec.checks import Element, children, line_of
from vnetlib.spec.model import (
    Attachment,
    BoundaryLink,
    ConsoleKind,
    Constraints,
    Interface,
    LinkEndpoint,
    NodeKind,
    ServiceRequirements,
    Substrate,
    SubstrateHost,
    SubstrateLink,
    Switch,
    SwitchControl,
    VirtualLink,
    VirtualNode,
    VNetSpec,
)


def _float(el: Element, attr: str, default: float | None = None) -> float | None:
    value = el.get(attr)
    return default if value is None else float(value)


def _req_float(el: Element, attr: str, default: float | None = None) -> float:
    value = _float(el, attr, default)
    if value is None:  # the schema makes the attribute required
        raise ValueError(f"attribute {attr!r} missing on line {line_of(el)}")
    return value


def _int(el: Element, attr: str, default: int | None = None) -> int | None:
    value = el.get(attr)
    return default if value is None else int(value)


def _req_int(el: Element, attr: str, default: int | None = None) -> int:
    value = _int(el, attr, default)
    if value is None:  # the schema makes the attribute required
        raise ValueError(f"attribute {attr!r} missing on line {line_of(el)}")
    return value


def _bool(el: Element, attr: str, default: bool) -> bool:
    value = el.get(attr)
    return default if value is None else value.strip() in ("true", "1")


def _texts(el: Element, name: str) -> tuple[str, ...]:
    return tuple((c.text or "").strip() for c in children(el, name))


def _consoles(el: Element) -> tuple[ConsoleKind, ...]:
    return tuple(ConsoleKind(c.get("kind", "")) for c in children(el, "console"))


def vnet_from(root: Element, source: str) -> VNetSpec:
    service = next(iter(children(root, "service")), None)
    constraints = next(iter(children(root, "constraints")), None)
    return VNetSpec(
        name=root.get("name", ""),
        nodes=tuple(_node(n) for n in children(root, "node")),
        links=tuple(_link(link) for link in children(root, "link")),
        constraints=Constraints() if constraints is None else _constraints(constraints),
        service=ServiceRequirements() if service is None else _service(service),
        source=source,
        boundary=tuple(_boundary(b) for b in children(root, "boundary-link")),
        attachments=tuple(
            Attachment(a.get("node", ""), a.get("pool", ""), a.get("realm", ""), line_of(a),
                       a.get("link", ""))
            for a in children(root, "attach")
        ),
    )


def _boundary(el: Element) -> BoundaryLink:
    end = children(el, "endpoint")[0]
    peer = children(el, "peer")[0]
    return BoundaryLink(
        id=el.get("id", ""),
        endpoint=LinkEndpoint(
            end.get("node", ""), Interface(end.get("interface", ""), _texts(end, "address"))
        ),
        peer_ref=peer.get("ref", ""),
        bandwidth_mbps=_req_float(el, "bandwidth", 10.0),
        latency_ms=_float(el, "latency"),
        line=line_of(el),
    )


def _service(el: Element) -> ServiceRequirements:
    description = next(iter(children(el, "description")), None)
    return ServiceRequirements(
        availability=_float(el, "availability"),
        console_access=_consoles(el),
        description=None if description is None else (description.text or ""),
    )


def _constraints(el: Element) -> Constraints:
    return Constraints(
        max_price=_float(el, "max-price"),
        allowed_locations=_texts(el, "location"),
        path_splitting=_bool(el, "path-splitting", False),
        max_pips=_int(el, "max-pips"),
    )


def _node(el: Element) -> VirtualNode:
    return VirtualNode(
        id=el.get("id", ""),
        cpu=_req_float(el, "cpu", 1.0),
        memory_mb=_req_int(el, "memory", 128),
        disk_gb=_req_float(el, "disk", 0.0),
        image=el.get("image"),
        kind=NodeKind.of(el.get("kind", "netns"), el.get("hypervisor")),
        location=el.get("location"),
        consoles=_consoles(el),
        forwarding=_bool(el, "forwarding", True),
        line=line_of(el),
    )


def _link(el: Element) -> VirtualLink:
    a, b = (
        LinkEndpoint(e.get("node", ""), Interface(e.get("interface", ""), _texts(e, "address")))
        for e in children(el, "endpoint")
    )
    return VirtualLink(
        id=el.get("id", ""),
        a=a,
        b=b,
        bandwidth_mbps=_req_float(el, "bandwidth", 10.0),
        latency_ms=_float(el, "latency"),
        line=line_of(el),
    )


def substrate_from(root: Element, source: str) -> Substrate:
    switch = next(iter(children(root, "switch")), None)
    data = _texts(root, "data-network")
    mgmt = _texts(root, "mgmt-network")
    return Substrate(
        name=root.get("name", ""),
        hosts=tuple(_host(h) for h in children(root, "host")),
        links=tuple(_substrate_link(link) for link in children(root, "link")),
        switch=None if switch is None else _switch(switch),
        data_network=data[0] if data else None,
        mgmt_network=mgmt[0] if mgmt else None,
        encapsulations=_texts(root, "encapsulation") or ("vxlan",),
        source=source,
    )


def _switch(el: Element) -> Switch:
    ports = tuple(p.get("host", "") for p in children(el, "port"))
    control = next(iter(children(el, "control")), None)
    return Switch(name=el.get("name", ""), kind=el.get("kind", "linux-bridge"), ports=ports,
                  control=None if control is None else _control(control))


def _control(el: Element) -> SwitchControl:
    key = next(iter(children(el, "host-key")), None)
    return SwitchControl(
        driver=el.get("driver", "ovsdb"),
        bridge=el.get("bridge", ""),
        db=el.get("db"),
        address=el.get("address"),
        port=int(el.get("port", "22")),
        user=el.get("user", "root"),
        host_key=None if key is None else " ".join((key.text or "").split()),
        known_hosts=el.get("known-hosts"),
    )


def _host(el: Element) -> SubstrateHost:
    kinds = tuple(NodeKind(k) for k in _texts(el, "kind"))
    return SubstrateHost(
        name=el.get("name", ""),
        cpu=_req_float(el, "cpu"),
        memory_mb=_req_int(el, "memory"),
        disk_gb=_req_float(el, "disk", 0.0),
        location=el.get("location"),
        data_address=el.get("data-address"),
        mgmt_address=el.get("mgmt-address"),
        node_kinds=kinds or (NodeKind.NETNS,),
        line=line_of(el),
    )


def _substrate_link(el: Element) -> SubstrateLink:
    return SubstrateLink(
        a=el.get("a", ""),
        b=el.get("b", ""),
        bandwidth_mbps=_req_float(el, "bandwidth"),
        latency_ms=_req_float(el, "latency", 0.0),
        line=line_of(el),
    )
