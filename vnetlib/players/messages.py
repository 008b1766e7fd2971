"""The API v1 documents: typed values, and pure functions to write and read them.

Every document is in the RDL namespace and valid against
``vnetlib/spec/schema/vnet-api-1.xsd`` (which includes the RDL schema, so a
``<vnet>`` travels inside ``<allocate>`` or ``<service-request>``). ``read``
parses and validates a request body and raises the server's errors: 400 for
malformed XML, 422 naming line and element for schema or semantic problems.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Literal, cast

import netaddr
from lxml import etree

from vnetlib.players.server import BadRequest, Unprocessable, parse_xml, validate
from vnetlib.spec.build import vnet_from
from vnetlib.spec.checks import MAX_CHILDREN, check_structure, check_vnet
from vnetlib.spec.errors import more_errors
from vnetlib.spec.model import RDL_NAMESPACE, VNetSpec
from vnetlib.spec.serialize import dump_vnet, number

NS = RDL_NAMESPACE
API_SCHEMA_FILE = "vnet-api-1.xsd"
STITCH_VERSION = "1"
MAX_LISTED = 10  # errors described in one refusal; the others are counted
# The range any PIP stitches with: the ledger's (core/ledger.py VNI_MIN..VNI_MAX,
# held equal by a unit test), written out so that the SP's client, which uses
# these messages, does not import the ledger's SQLAlchemy (issue #8: CLI start).
STITCH_VNI_MIN = 4096
"""The lowest VNI any PIP stitches with."""
STITCH_VNI_MAX = 2**24 - 1
# Characters XML 1.0 cannot carry; command output is sanitized before it travels.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

Element = etree._Element
SliverStatus = Literal["allocated", "provisioning", "provisioned", "ready", "deleting",
                       "failed"]
QuoteStatus = Literal["offer", "counter", "declined"]
StitchState = Literal["propose", "accept", "counter", "reject"]
StitchRole = Literal["initiator", "responder"]


@functools.cache
def api_schema() -> etree.XMLSchema:
    """The API schema (with RDL included), parsed once per process."""
    directory = resources.files("vnetlib.spec").joinpath("schema")
    with resources.as_file(directory.joinpath(API_SCHEMA_FILE)) as path:
        return etree.XMLSchema(etree.parse(str(path)))


def _q(tag: str) -> str:
    return f"{{{NS}}}{tag}"


def _root(tag: str, **attrs: str | None) -> Element:
    el = etree.Element(_q(tag), nsmap={None: NS})  # type: ignore[dict-item]
    _set(el, attrs)
    return el


def _sub(parent: Element, tag: str, text: str | None = None, **attrs: str | None) -> Element:
    el = etree.SubElement(parent, _q(tag))
    _set(el, attrs)
    if text is not None:
        el.text = text
    return el


def _set(el: Element, attrs: dict[str, str | None]) -> None:
    for key, value in attrs.items():
        if value is not None:
            el.set(key.replace("_", "-"), value)


def _bytes(el: Element) -> bytes:
    return etree.tostring(el, xml_declaration=True, encoding="UTF-8")


def _children(el: Element, tag: str) -> list[Element]:
    return el.findall(_q(tag))


class BadValue(Unprocessable, ValueError):
    """A schema-valid value out of range: 422 to a caller that sent it in a
    request, a ValueError (a bad answer) where it came in a reply."""


def _where(el: Element, attr: str) -> str:
    return f"line {el.sourceline}, element /{etree.QName(el).localname}, attribute '{attr}'"


def _float(el: Element, attr: str) -> float | None:
    value = el.get(attr)
    return None if value is None else _finite(el, attr, value)


def _finite(el: Element, attr: str, value: str) -> float:
    """`value` as a float; the schema's xs:decimal has no upper bound, so a long
    enough number reads as infinity, which is refused here."""
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise BadValue(f"{_where(el, attr)}: {value[:40]!r} is not a finite number of at "
                       "least 0")
    return number


def _vni(el: Element, attr: str = "vni") -> int:
    value = int(el.get(attr, "0"))
    if not STITCH_VNI_MIN <= value <= STITCH_VNI_MAX:
        raise BadValue(f"{_where(el, attr)}: VNI {value} is outside the stitching range "
                       f"{STITCH_VNI_MIN}..{STITCH_VNI_MAX}")
    return value


def _tunnel_address(el: Element, attr: str = "address") -> str:
    """A unicast IPv4 or IPv6 address a VXLAN tunnel can point at."""
    text = el.get(attr, "")
    try:
        ip = netaddr.IPAddress(text, flags=netaddr.INET_PTON)
    except (netaddr.AddrFormatError, ValueError):
        raise BadValue(f"{_where(el, attr)}: {text!r} is not an IP address") from None
    if ip.is_multicast() or ip.is_loopback() or ip.is_link_local() or any(
            ip in net for net in _NOT_UNICAST[ip.version]):
        raise BadValue(f"{_where(el, attr)}: {ip} is not a unicast address a tunnel can "
                       "reach")
    return str(ip)


_NOT_UNICAST = {
    4: tuple(netaddr.IPNetwork(n) for n in ("0.0.0.0/8", "240.0.0.0/4")),  # incl. broadcast
    6: tuple(netaddr.IPNetwork(n) for n in ("::/128", "::ffff:0:0/96")),
}


def xml_text(text: str) -> str:
    """`text` without the characters XML 1.0 cannot hold."""
    return _NOT_XML.sub("\ufffd", text)


# -- reading requests ------------------------------------------------------------------


def read(body: bytes, expected: str) -> Element:
    """Parse and validate a request body whose root must be `<expected>`."""
    doc = parse_xml(body)
    qname = etree.QName(doc)
    if qname.namespace != NS or qname.localname != expected:
        raise Unprocessable(
            f"line {doc.sourceline}, element /{qname.localname}: expected <{expected}> "
            f'in namespace {NS}, found <{qname.localname}>'
        )
    shape = check_structure(doc, "request", limit=1)
    if shape.errors:
        e = shape.errors[0]
        raise Unprocessable(f"line {e.line}, element {e.element}: {e.message} "
                            f"(at most {MAX_CHILDREN:,} children per element)")
    validate(doc, api_schema())
    return doc


def vnet_of(el: Element, source: str = "request") -> VNetSpec:
    """The `<vnet>` element (itself or its child) as a model, after the RDL semantic
    rules; problems are 422 naming line and element."""
    vnet = el if etree.QName(el).localname == "vnet" else el.find(_q("vnet"))
    if vnet is None:
        raise Unprocessable(f"line {el.sourceline}: a <vnet> description is required")
    found = check_vnet(vnet, source, limit=MAX_LISTED)
    if found.errors:
        listed = [f"line {e.line}, element {e.element}: {e.message}" for e in found.errors]
        if found.omitted:
            listed.append(more_errors(found.omitted))
        raise Unprocessable("invalid VNet description: " + "; ".join(listed))
    return vnet_from(vnet, source)


def parse_reply(body: bytes, expected: str) -> Element:
    """A reply from another player: parsed and validated like a request, but a
    bad reply is the other side's fault, so it is a BadRequest-free ValueError."""
    try:
        return read(body, expected)
    except (BadRequest, Unprocessable) as exc:
        raise ValueError(f"bad <{expected}> reply: {exc.message}") from exc


def _embed_vnet(parent: Element, spec: VNetSpec) -> None:
    parent.append(etree.fromstring(dump_vnet(spec)))


# -- documents -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Site:
    """One location of an advertisement: aggregate capacity and prices."""

    location: str
    cpu: float
    memory_mb: float
    price_per_cpu: float
    price_per_mbps: float = 0.0
    kinds: tuple[str, ...] = ("netns",)


@dataclass(frozen=True, slots=True)
class Advertisement:
    provider: str
    sites: tuple[Site, ...]
    encapsulations: tuple[str, ...] = ("vxlan",)


def advertisement_xml(ad: Advertisement) -> bytes:
    root = _root("advertisement", provider=ad.provider)
    for encap in ad.encapsulations:
        _sub(root, "encapsulation", encap)
    for site in ad.sites:
        el = _sub(root, "site", location=site.location, cpu=number(site.cpu),
                  memory=number(site.memory_mb), price_per_cpu=number(site.price_per_cpu),
                  price_per_mbps=number(site.price_per_mbps))
        for kind in site.kinds:
            _sub(el, "kind", kind)
    return _bytes(root)


def advertisement_from(el: Element) -> Advertisement:
    return Advertisement(
        provider=el.get("provider", ""),
        encapsulations=tuple(e.text or "" for e in _children(el, "encapsulation")),
        sites=tuple(
            Site(
                location=s.get("location", ""),
                cpu=_float(s, "cpu") or 0.0,
                memory_mb=_float(s, "memory") or 0.0,
                price_per_cpu=_float(s, "price-per-cpu") or 0.0,
                price_per_mbps=_float(s, "price-per-mbps") or 0.0,
                kinds=tuple(k.text or "" for k in _children(s, "kind")) or ("netns",),
            )
            for s in _children(el, "site")
        ),
    )


@dataclass(frozen=True, slots=True)
class QuoteRequest:
    spec: VNetSpec
    bid: float | None = None


def quote_request_xml(req: QuoteRequest) -> bytes:
    root = _root("quote-request", bid=None if req.bid is None else number(req.bid))
    _embed_vnet(root, req.spec)
    return _bytes(root)


def quote_request_from(el: Element) -> QuoteRequest:
    return QuoteRequest(vnet_of(el, "quote-request"), _float(el, "bid"))


@dataclass(frozen=True, slots=True)
class Quote:
    status: QuoteStatus
    price: float | None = None
    reason: str | None = None


def quote_xml(quote: Quote) -> bytes:
    return _bytes(_root("quote", status=quote.status,
                        price=None if quote.price is None else number(quote.price),
                        reason=quote.reason))


def quote_from(el: Element) -> Quote:
    status = el.get("status", "declined")
    return Quote(cast(QuoteStatus, status), _float(el, "price"), el.get("reason"))


@dataclass(frozen=True, slots=True)
class Allocate:
    spec: VNetSpec
    price: float | None = None
    expires_in: float | None = None
    callback: str | None = None  # the customer's URL, for <evict>


def allocate_xml(req: Allocate) -> bytes:
    root = _root("allocate", price=None if req.price is None else number(req.price),
                 expires_in=None if req.expires_in is None else number(req.expires_in),
                 callback=req.callback)
    _embed_vnet(root, req.spec)
    return _bytes(root)


def allocate_from(el: Element) -> Allocate:
    return Allocate(vnet_of(el, "allocate"), _float(el, "price"), _float(el, "expires-in"),
                    el.get("callback"))


@dataclass(frozen=True, slots=True)
class Peer:
    """The provider at the other end of a boundary link, as the VNP names it."""

    ref: str
    name: str
    url: str
    role: StitchRole


@dataclass(frozen=True, slots=True)
class Provision:
    peers: tuple[Peer, ...] = ()
    callback: str | None = None  # the customer's URL of now, for <evict>


def provision_xml(req: Provision) -> bytes:
    root = _root("provision", callback=req.callback)
    for p in req.peers:
        _sub(root, "peer", ref=p.ref, name=p.name, url=p.url, role=p.role)
    return _bytes(root)


def provision_from(el: Element) -> Provision:
    peers = []
    for p in _children(el, "peer"):
        role = p.get("role", "initiator")
        peers.append(Peer(p.get("ref", ""), p.get("name", ""), p.get("url", ""),
                          cast(StitchRole, role)))
    return Provision(tuple(peers), el.get("callback"))


@dataclass(frozen=True, slots=True)
class Move:
    """Move a virtual node, anywhere else or to a location: asked of a VNP by
    its VNO, of a PIP by its VNP. Hosts and providers are never named."""

    node: str
    location: str | None = None


def move_xml(req: Move) -> bytes:
    return _bytes(_root("move", node=req.node, location=req.location))


def move_from(el: Element) -> Move:
    return Move(el.get("node", ""), el.get("location"))


@dataclass(frozen=True, slots=True)
class Reshape:
    """A deployed sliver's new partial description and the peers of all its
    boundary links (a VNP moved a node between providers)."""

    spec: VNetSpec
    peers: tuple[Peer, ...] = ()


def reshape_xml(req: Reshape) -> bytes:
    root = _root("reshape")
    _embed_vnet(root, req.spec)
    for p in req.peers:
        _sub(root, "peer", ref=p.ref, name=p.name, url=p.url, role=p.role)
    return _bytes(root)


def reshape_from(el: Element) -> Reshape:
    return Reshape(vnet_of(el, "reshape"), provision_from(el).peers)


EvictReason = Literal["maintenance", "capacity", "decommission", "other"]
EVICT_REASONS: tuple[EvictReason, ...] = ("maintenance", "capacity", "decommission", "other")
EvictScope = Literal["provider", "host"]


@dataclass(frozen=True, slots=True)
class Evict:
    """A PIP asks the VNP that owns sliver `sliver` (the VNP's name for it) to
    take `node` to another provider; `deadline` (epoch seconds) is when the
    PIP needs the host. Names no host: the reason is one of a few words.
    `scope` "host": the PIP has room elsewhere but cannot move the node
    alone (it ends links to other providers); the VNP may re-place it there."""

    sliver: str
    node: str
    reason: EvictReason = "maintenance"
    deadline: float | None = None
    scope: EvictScope = "provider"


def evict_xml(req: Evict) -> bytes:
    deadline = None if req.deadline is None else _iso(req.deadline, "milliseconds")
    return _bytes(_root("evict", sliver=req.sliver, node=req.node, reason=req.reason,
                        deadline=deadline,
                        scope=None if req.scope == "provider" else req.scope))


def evict_from(el: Element) -> Evict:
    deadline = el.get("deadline")
    return Evict(el.get("sliver", ""), el.get("node", ""),
                 cast(EvictReason, el.get("reason", "other")),
                 None if deadline is None else _epoch(deadline),
                 cast(EvictScope, el.get("scope", "provider")))


@dataclass(frozen=True, slots=True)
class Eviction:
    """The VNP's answer: the node left the PIP's sliver (in `seconds`)."""

    sliver: str
    node: str
    seconds: float | None = None


def eviction_xml(r: Eviction) -> bytes:
    return _bytes(_root("eviction", sliver=r.sliver, node=r.node, status="moved",
                        seconds=None if r.seconds is None else number(r.seconds)))


def eviction_from(el: Element) -> Eviction:
    return Eviction(el.get("sliver", ""), el.get("node", ""), _float(el, "seconds"))


def _epoch(text: str) -> float:
    """An xs:dateTime as epoch seconds (UTC when it names no zone)."""
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def renew_xml(expires_in: float) -> bytes:
    return _bytes(_root("renew", expires_in=number(expires_in)))


def renew_from(el: Element) -> float:
    return _float(el, "expires-in") or 0.0


@dataclass(frozen=True, slots=True)
class BoundaryState:
    ref: str
    link: str
    stitched: bool
    vni: int | None = None


@dataclass(frozen=True, slots=True)
class Manifest:
    """Describe/Status of a sliver: what the customer may know of it."""

    id: str
    status: SliverStatus
    price: float
    nodes: tuple[str, ...] = ()
    boundary: tuple[BoundaryState, ...] = ()
    expires: float | None = None  # epoch seconds; None once provisioned


def _iso(epoch: float, timespec: str = "seconds") -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec=timespec)


def manifest_xml(m: Manifest) -> bytes:
    return _bytes(_manifest_el(m))


def slivers_xml(manifests: list[Manifest]) -> bytes:
    root = _root("slivers")
    for one in manifests:
        root.append(_manifest_el(one))
    return _bytes(root)


def slivers_from(el: Element) -> list[Manifest]:
    return [manifest_from(s) for s in _children(el, "sliver")]


def _manifest_el(m: Manifest) -> Element:
    root = _root("sliver", id=m.id, status=m.status, price=number(m.price),
                 expires=None if m.expires is None else _iso(m.expires))
    for node in m.nodes:
        _sub(root, "node", id=node)
    for b in m.boundary:
        _sub(root, "boundary", ref=b.ref, link=b.link, stitched="true" if b.stitched else "false",
             vni=None if b.vni is None else str(b.vni))
    return root


def manifest_from(el: Element) -> Manifest:
    status = el.get("status", "failed")
    expires = el.get("expires")
    return Manifest(
        id=el.get("id", ""),
        status=cast(SliverStatus, status),
        price=_float(el, "price") or 0.0,
        nodes=tuple(n.get("id", "") for n in _children(el, "node")),
        boundary=tuple(
            BoundaryState(b.get("ref", ""), b.get("link", ""), b.get("stitched") in ("true", "1"),
                          None if b.get("vni") is None else _vni(b))
            for b in _children(el, "boundary")
        ),
        expires=None if expires is None else dt.datetime.fromisoformat(expires).timestamp(),
    )


ActionName = Literal["start", "stop", "restart", "suspend", "resume", "exec"]
NODE_ACTIONS = ("start", "stop", "restart", "suspend", "resume")


@dataclass(frozen=True, slots=True)
class Action:
    """PerformOperationalAction: on a sliver, `start` joins its boundary links;
    on a node (`node` set), `start`, `stop`, `restart`, `suspend`, `resume`
    control it and `exec` runs a command in it."""

    name: ActionName
    node: str | None = None
    argv: tuple[str, ...] = ()
    timeout: float | None = None


def action_xml(a: Action) -> bytes:
    root = _root("action", name=a.name, node=a.node,
                 timeout=None if a.timeout is None else number(a.timeout))
    for arg in a.argv:
        _sub(root, "arg", arg)
    return _bytes(root)


def action_from(el: Element) -> Action:
    name = el.get("name", "")
    argv = tuple(a.text or "" for a in _children(el, "arg"))
    return Action(cast(ActionName, name), el.get("node"), argv,
                  _float(el, "timeout"))


@dataclass(frozen=True, slots=True)
class ActionResult:
    name: str
    rc: int
    stdout: str = ""
    stderr: str = ""


def action_result_xml(r: ActionResult) -> bytes:
    root = _root("action-result", name=r.name, rc=str(r.rc))
    _sub(root, "stdout", xml_text(r.stdout))
    _sub(root, "stderr", xml_text(r.stderr))
    return _bytes(root)


def action_result_from(el: Element) -> ActionResult:
    return ActionResult(el.get("name", ""), int(el.get("rc", "-1")),
                        el.findtext(_q("stdout")) or "", el.findtext(_q("stderr")) or "")


ConsoleKindName = Literal["shell", "serial", "vnc"]


@dataclass(frozen=True, slots=True)
class ConsoleRequest:
    """Interface 5: a console on one node (`shell`: a login shell in a netns
    node; `serial`: a VM's serial line)."""

    node: str
    kind: ConsoleKindName = "shell"


def console_request_xml(r: ConsoleRequest) -> bytes:
    return _bytes(_root("console-request", node=r.node, kind=r.kind))


def console_request_from(el: Element) -> ConsoleRequest:
    return ConsoleRequest(el.get("node", ""), cast(ConsoleKindName, el.get("kind", "shell")))


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """The next hop of a console session: `tls://host:port` and a single-use
    token that expires (epoch seconds) unless used before."""

    url: str
    token: str
    expires: float


def console_session_xml(s: ConsoleSession) -> bytes:
    return _bytes(_root("console-session", url=s.url, token=s.token, expires=_iso(s.expires)))


def console_session_from(el: Element) -> ConsoleSession:
    return ConsoleSession(el.get("url", ""), el.get("token", ""),
                          dt.datetime.fromisoformat(el.get("expires", "")).timestamp())


@dataclass(frozen=True, slots=True)
class StitchEndpoint:
    role: StitchRole
    address: str
    port: int = 4789


@dataclass(frozen=True, slots=True)
class Stitch:
    """Interface 4: one message of the exchange that joins an inter-provider link.

    The initiator proposes a VNI and its tunnel endpoint; the responder accepts
    (adding its endpoint), counters with a VNI that is free on its side, or
    rejects. `key` is carried for encapsulations that use one; VXLAN has none.
    """

    ref: str
    vni: int
    state: StitchState
    endpoints: tuple[StitchEndpoint, ...]
    encapsulation: str = "vxlan"
    key: str | None = None
    reason: str | None = None

    def endpoint(self, role: StitchRole) -> StitchEndpoint | None:
        return next((e for e in self.endpoints if e.role == role), None)


def stitch_xml(s: Stitch) -> bytes:
    root = _root("stitch", version=STITCH_VERSION, ref=s.ref, encapsulation=s.encapsulation,
                 vni=str(s.vni), state=s.state, reason=s.reason)
    for e in s.endpoints:
        _sub(root, "endpoint", role=e.role, address=e.address, port=str(e.port))
    if s.key is not None:
        _sub(root, "key", s.key)
    return _bytes(root)


def stitch_from(el: Element) -> Stitch:
    state = el.get("state", "reject")
    endpoints = []
    for e in _children(el, "endpoint"):
        role = e.get("role", "initiator")
        endpoints.append(StitchEndpoint(cast(StitchRole, role), _tunnel_address(e),
                                        int(e.get("port", "4789"))))
    key = el.find(_q("key"))
    return Stitch(el.get("ref", ""), _vni(el), cast(StitchState, state),
                  tuple(endpoints),
                  el.get("encapsulation", "vxlan"), None if key is None else key.text or "",
                  el.get("reason"))


MAX_STITCHES = 4096


def stitches_xml(items: Sequence[Stitch]) -> bytes:
    """The stitching messages of every link between one pair of providers in one
    body: `<stitches>` holding `<stitch>` elements, each as it is sent alone
    (one exchange per pair of providers instead of one per link)."""
    root = _root("stitches", version=STITCH_VERSION)
    for item in items:
        root.append(etree.fromstring(stitch_xml(item)))
    return _bytes(root)


def read_stitches(body: bytes) -> tuple[list[Stitch], bool]:
    """The stitching messages of a body and whether it was a `<stitches>` batch;
    a single `<stitch>` is read as before. Each `<stitch>` of a batch is
    validated against the API schema as a document of its own (the schema
    knows `<stitch>` only); the batch holds 1 to MAX_STITCHES of them and
    nothing else."""
    doc = parse_xml(body)
    qname = etree.QName(doc)
    if qname.namespace != NS or qname.localname != "stitches":
        return [stitch_from(read(body, "stitch"))], False
    children = list(doc)
    if not 0 < len(children) <= MAX_STITCHES:
        raise Unprocessable(f"line {doc.sourceline}, element /stitches: 1 to {MAX_STITCHES} "
                            f"<stitch> elements, not {len(children)}")
    items = []
    for child in children:
        if not isinstance(child.tag, str) or etree.QName(child).localname != "stitch":
            raise Unprocessable(f"line {child.sourceline}, element /stitches: "
                                "only <stitch> elements")
        items.append(stitch_from(read(etree.tostring(child), "stitch")))
    return items, True


def stitches_reply(body: bytes) -> list[Stitch]:
    """The answers of a `<stitches>` reply; ValueError if it is not one."""
    try:
        items, batch = read_stitches(body)
    except (BadRequest, Unprocessable) as exc:
        raise ValueError(f"bad <stitches> reply: {exc.message}") from exc
    if not batch:
        raise ValueError("bad <stitches> reply: a single <stitch>")
    return items


def service_request_xml(spec: VNetSpec) -> bytes:
    root = _root("service-request")
    _embed_vnet(root, spec)
    return _bytes(root)


@dataclass(frozen=True, slots=True)
class VNetView:
    """A VNet as its VNO or SP sees it: ids, status, price; providers only when
    the contract discloses them."""

    id: str
    name: str
    status: str
    nodes: tuple[str, ...] = ()
    price: float | None = None
    providers: tuple[tuple[str, str], ...] = ()  # (node, provider) when disclosed
    timings: tuple[tuple[str, float], ...] = ()  # (phase, seconds) of the instantiation
    node_states: tuple[tuple[str, str], ...] = ()  # (node, run state) other than running
    events: tuple[Event, ...] = ()


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened to a VNet, without who or where: `node-moved`
    (its provider needed the host, and the VNP moved it elsewhere)."""

    at: float
    kind: Literal["node-moved"]
    node: str | None = None


def _view_into(el: Element, v: VNetView) -> None:
    _set(el, {"id": v.id, "name": v.name, "status": v.status,
              "price": None if v.price is None else number(v.price)})
    where, states = dict(v.providers), dict(v.node_states)
    for node in v.nodes:
        _sub(el, "node", id=node, provider=where.get(node), state=states.get(node))
    for phase, seconds in v.timings:
        _sub(el, "timing", phase=phase, seconds=number(seconds))
    for e in v.events:
        _sub(el, "event", at=_iso(e.at), kind=e.kind, node=e.node)


def vnet_view_xml(v: VNetView) -> bytes:
    root = _root("vnet-status")
    _view_into(root, v)
    return _bytes(root)


def vnet_list_xml(views: list[VNetView]) -> bytes:
    root = _root("vnet-list")
    for v in views:
        _view_into(_sub(root, "vnet-status"), v)
    return _bytes(root)


def vnet_view_from(el: Element) -> VNetView:
    nodes = _children(el, "node")
    return VNetView(
        id=el.get("id", ""),
        name=el.get("name", ""),
        status=el.get("status", ""),
        nodes=tuple(n.get("id", "") for n in nodes),
        price=_float(el, "price"),
        providers=tuple((n.get("id", ""), n.get("provider", "")) for n in nodes
                        if n.get("provider")),
        timings=tuple((t.get("phase", ""), _float(t, "seconds") or 0.0)
                      for t in _children(el, "timing")),
        node_states=tuple((n.get("id", ""), n.get("state", "")) for n in nodes
                          if n.get("state") not in (None, "running")),
        events=tuple(Event(_epoch(e.get("at", "")), "node-moved", e.get("node"))
                     for e in _children(el, "event")),
    )


def vnet_list_from(el: Element) -> list[VNetView]:
    return [vnet_view_from(v) for v in _children(el, "vnet-status")]


def version_xml(name: str, role: str) -> bytes:
    return _bytes(_root("version", api="v1", rdl="1", role=role, name=name))
