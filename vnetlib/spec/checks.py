"""Semantic rules of RDL v1 that XML Schema cannot express.

The checks run on the schema-valid element tree rather than on the model, so
every error can name the exact element and line (an address, an endpoint, a
console) that the model does not keep.

Every rule is linear in the size of the document (sets and dicts, no scans
of all elements per element), because documents come from other players:
a 1 MiB body (the servers' limit) is judged in well under a second. Errors
beyond :data:`~vnetlib.spec.errors.MAX_REPORTED` are counted, not described,
and "did you mean" hints share a bounded budget of comparisons.
"""

from __future__ import annotations

import base64
import binascii
import difflib
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass

import netaddr
from lxml import etree

from vnetlib.spec.errors import MAX_REPORTED, SpecError
from vnetlib.spec.model import RDL_NAMESPACE, ConsoleKind, NodeKind

Element = etree._Element

CONSOLES_BY_KIND: dict[NodeKind, frozenset[ConsoleKind]] = {
    NodeKind.NETNS: frozenset({ConsoleKind.SERIAL}),
    NodeKind.QEMU: frozenset({ConsoleKind.SERIAL, ConsoleKind.VNC}),
    NodeKind.XEN: frozenset({ConsoleKind.SERIAL, ConsoleKind.VNC}),
}


def line_of(el: Element) -> int | None:
    """The element's line (lxml-stubs mistype ``sourceline``)."""
    line: object = el.sourceline
    return line if isinstance(line, int) else None


def local(el: Element) -> str:
    return etree.QName(el).localname


def children(el: Element, name: str) -> list[Element]:
    return el.findall(f"{{{RDL_NAMESPACE}}}{name}")


def element_path(el: Element) -> str:
    """``/vnet/link[@id='l3']/endpoint[2]``: ids where elements have them,
    positions among same-named siblings otherwise."""
    steps: list[str] = []
    node: Element | None = el
    while node is not None:
        name = local(node)
        key = next((k for k in ("id", "name") if node.get(k) is not None), None)
        parent = node.getparent()
        if key is not None and parent is not None:
            name += f"[@{key}='{node.get(key)}']"
        elif parent is not None:
            same = [c for c in parent if isinstance(c.tag, str) and c.tag == node.tag]
            if len(same) > 1:
                name += f"[{same.index(node) + 1}]"
        steps.append(name)
        node = parent
    return "/" + "/".join(reversed(steps))


Text = str | Callable[[], str]
"""A message or hint, or a function that makes it: only called for errors
that are reported in full."""

SUGGESTION_BUDGET = 50_000
"""Name comparisons that "did you mean" hints may make per document (about
0.2 s); past it an unknown name gets the generic hint."""


@dataclass(frozen=True, slots=True)
class Findings:
    """The errors of the semantic phase: the first ones in full, the rest counted."""

    errors: tuple[SpecError, ...]
    omitted: int = 0

    @property
    def total(self) -> int:
        return len(self.errors) + self.omitted


class Collector:
    """Accumulates the errors of one document: the first `limit` in full (their
    element paths and lazy texts computed), the rest only counted."""

    def __init__(self, file: str, limit: int = MAX_REPORTED) -> None:
        self.file = file
        self.limit = limit
        self.errors: list[SpecError] = []
        self.omitted = 0
        self._budget = SUGGESTION_BUDGET

    def add(self, el: Element, message: Text, hint: Text | None = None) -> None:
        if len(self.errors) >= self.limit:
            self.omitted += 1
            return
        self.errors.append(
            SpecError(self.file, line_of(el), element_path(el), _text(message),
                      None if hint is None else _text(hint))
        )

    def findings(self) -> Findings:
        return Findings(tuple(self.errors), self.omitted)

    def did_you_mean(self, word: str, known: Collection[str]) -> str | None:
        """The closest known name, while the document's comparison budget lasts."""
        if len(known) > self._budget:
            return None
        self._budget -= len(known)
        return _did_you_mean(word, known)


def _text(text: Text) -> str:
    return text if isinstance(text, str) else text()


def _did_you_mean(word: str, known: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f"did you mean {close[0]!r}?" if close else None


def _suggest(out: Collector, word: str, known: Collection[str], otherwise: str) -> Text:
    """A hint for an unknown name, made only if the error is reported in full."""
    return lambda: out.did_you_mean(word, known) or otherwise


def _unique(out: Collector, elements: Iterable[Element], attr: str, what: str) -> None:
    seen: dict[str, Element] = {}
    for el in elements:
        value = el.get(attr, "")
        if value in seen:
            out.add(
                el,
                f"duplicate {what} {value!r} (first at line {line_of(seen[value])})",
                f"{what}s must be unique",
            )
        else:
            seen[value] = el


# ------------------------------------------------------------------ structure

MAX_CHILDREN = 10_000
"""Child elements one element may have. libxml2 names each schema error by a
path whose sibling positions it counts from the first sibling, so schema
errors among n siblings cost O(n) each: 36,000 invalid nodes take 2.5 s. No
VNet or substrate comes near this many nodes or links."""


def check_structure(root: Element, file: str, limit: int = MAX_REPORTED) -> Findings:
    """Elements with more than :data:`MAX_CHILDREN` children (run before the schema)."""
    out = Collector(file, limit)
    for el in root.iter():
        count = len(el)
        if count > MAX_CHILDREN:
            out.add(
                el,
                f"<{local(el)}> has {count:,} child elements, more than {MAX_CHILDREN:,}",
                "split the description; no VNet or substrate needs this many elements",
            )
    return out.findings()


MAX_AMOUNT = 1e15
"""Largest capacity, demand or price: xs:decimal is unbounded, and a long enough
number reads as infinity (or a value no store or embedding can hold)."""
AMOUNTS = frozenset({"cpu", "memory", "disk", "bandwidth", "latency", "max-price"})
POSITIVE = frozenset({"cpu", "bandwidth"})  # xs:decimal > 0 that may read as 0.0


def _check_amounts(out: Collector, root: Element) -> None:
    for el in root.iter():
        for attr in AMOUNTS.intersection(el.attrib):
            value = el.get(attr, "")
            number = float(value)
            if not number <= MAX_AMOUNT:
                out.add(
                    el,
                    f"attribute '{attr}': {value[:40]!r} is larger than {MAX_AMOUNT:.0e}",
                    "use a realistic amount (numbers carry no units)",
                )
            elif attr in POSITIVE and number <= 0:
                out.add(
                    el,
                    f"attribute '{attr}': {value[:40]!r} is too small to be told from 0",
                    "use a number greater than 0 (no units)",
                )


# ----------------------------------------------------------------- VNet rules


def check_vnet(root: Element, file: str, limit: int = MAX_REPORTED) -> Findings:
    out = Collector(file, limit)
    nodes = children(root, "node")
    links = children(root, "link")
    boundary = children(root, "boundary-link")
    _unique(out, nodes, "id", "node id")
    _unique(out, links + boundary, "id", "link id")
    kinds = {n.get("id", ""): NodeKind.of(n.get("kind", "netns"), n.get("hypervisor"))
             for n in nodes}
    for node in nodes:
        _check_consoles(out, node, kinds[node.get("id", "")])
    _check_locations(out, root, nodes)
    used_ifaces: dict[tuple[str, str], Element] = {}
    for link in links:
        ends = children(link, "endpoint")
        names = [e.get("node", "") for e in ends]
        if names[0] == names[1]:
            out.add(
                link,
                f"link connects node {names[0]!r} to itself",
                "a link joins two different nodes",
            )
        for end in ends:
            _check_endpoint(out, end, kinds, used_ifaces)
    for link in boundary:
        for end in children(link, "endpoint"):
            _check_endpoint(out, end, kinds, used_ifaces)
    _check_addresses(out, links)
    _check_attachments(out, children(root, "attach"), kinds)
    _check_link_attachments(out, children(root, "attach"), links + boundary)
    _check_amounts(out, root)
    return out.findings()


def _check_attachments(out: Collector, attachments: list[Element],
                       kinds: dict[str, NodeKind]) -> None:
    """An attachment point names a namespace node, once, with an IPv4 pool of
    at least four addresses (the node's, the devices', network, broadcast)."""
    seen: set[str] = set()
    for att in attachments:
        node = att.get("node", "")
        if node not in kinds:
            out.add(att, f"attachment point at unknown node {node!r}",
                    _suggest(out, node, kinds, "declare the node with <node id=...>"))
            continue
        if kinds[node] is not NodeKind.NETNS:
            out.add(att, f"attachment point at node {node!r} of kind {kinds[node].value}",
                    "end users attach to namespace nodes only")
        if node in seen:
            out.add(att, f"node {node!r} has a second attachment point",
                    "declare one <attach> per node")
        seen.add(node)
        try:
            pool = netaddr.IPNetwork(att.get("pool", ""))
        except (netaddr.AddrFormatError, ValueError):
            out.add(att, f"pool {att.get('pool')!r} is not a network", "write it as 198.19.1.0/24")
            continue
        if pool.version != 4 or pool.size < 4 or pool.ip != pool.network:
            out.add(att, f"pool {att.get('pool')} is not an IPv4 network of 4 addresses or more",
                    "write a network such as 198.19.1.0/24")


def _check_link_attachments(out: Collector, attachments: list[Element],
                            links: list[Element]) -> None:
    """An attachment on a link names a link (or, in a PIP's part, a boundary
    link) that `node` ends on, with an IPv4 address whose subnet holds the
    pool; no address of the link is in the pool (the devices take them all)."""
    by_id = {link.get("id", ""): link for link in links}
    for att in attachments:
        name, node = att.get("link"), att.get("node", "")
        if name is None:
            continue
        link = by_id.get(name)
        if link is None:
            out.add(att, f"attachment point on unknown link {name!r}",
                    _suggest(out, name, by_id, "declare the link with <link id=...>"))
            continue
        ends = children(link, "endpoint")
        own = [e for e in ends if e.get("node") == node]
        if not own:
            out.add(att, f"node {node!r} is no end of link {name!r}",
                    "name the link's end that hands out the devices' addresses")
            continue
        try:
            pool = netaddr.IPNetwork(att.get("pool", ""))
        except (netaddr.AddrFormatError, ValueError):
            continue  # reported with the node's attachment rules
        nets = [netaddr.IPNetwork((a.text or "").strip()) for a in children(own[0], "address")
                if _is_ipv4(a.text)]
        if not any(pool in n.cidr for n in nets):
            out.add(att, f"pool {pool} is not inside the subnet of {node}'s end of {name}",
                    "give the node an address on the link whose subnet holds the pool")
        for e in ends:
            for a in children(e, "address"):
                if _is_ipv4(a.text) and netaddr.IPNetwork((a.text or "").strip()).ip in pool:
                    out.add(att, f"pool {pool} holds {e.get('node')}'s address on {name}",
                            "choose a pool outside the link's own addresses")


def _is_ipv4(text: str | None) -> bool:
    try:
        return netaddr.IPNetwork((text or "").strip()).version == 4
    except (netaddr.AddrFormatError, ValueError):
        return False


def _check_consoles(out: Collector, node: Element, kind: NodeKind) -> None:
    allowed = CONSOLES_BY_KIND[kind]
    seen: set[str] = set()
    for console in children(node, "console"):
        ckind = console.get("kind", "")
        if ConsoleKind(ckind) not in allowed:
            names = ", ".join(sorted(c.value for c in allowed))
            out.add(
                console,
                f"a {kind.value} node has no {ckind} console",
                f"{kind.value} nodes support: {names}",
            )
        elif ckind in seen:
            out.add(console, f"duplicate {ckind} console", "list each console kind once")
        seen.add(ckind)


def _check_locations(out: Collector, root: Element, nodes: list[Element]) -> None:
    allowed = [
        (loc.text or "").strip()
        for c in children(root, "constraints")
        for loc in children(c, "location")
    ]
    if not allowed:
        return
    known = set(allowed)
    for node in nodes:
        where = node.get("location")
        if where is not None and where not in known:
            out.add(
                node,
                f"location {where!r} is not among the allowed locations",
                lambda: f"use one of: {', '.join(allowed)}; or extend <constraints>",
            )


def _check_endpoint(
    out: Collector,
    end: Element,
    kinds: dict[str, NodeKind],
    used: dict[tuple[str, str], Element],
) -> None:
    node, iface = end.get("node", ""), end.get("interface", "")
    if node not in kinds:
        out.add(
            end,
            f"endpoint refers to unknown node {node!r}",
            _suggest(out, node, kinds, "declare the node with <node id=...>"),
        )
        return
    first = used.get((node, iface))
    if first is not None:
        out.add(
            end,
            lambda: f"interface {iface!r} of node {node!r} is already used at line "
            f"{line_of(first)} ({element_path(first)})",
            "give each of a node's links its own interface name",
        )
    else:
        used[(node, iface)] = end


def _interfaces(out: Collector, end: Element) -> Iterator[tuple[Element, netaddr.IPNetwork]]:
    """The endpoint's valid interface addresses; reports the invalid ones."""
    for el in children(end, "address"):
        text = (el.text or "").strip()
        try:
            net = netaddr.IPNetwork(text)
        except (netaddr.AddrFormatError, ValueError):
            out.add(
                el,
                f"{text!r} is not a valid address with prefix length",
                "write an interface address such as 198.19.0.1/30",
            )
            continue
        if net.version == 4 and net.prefixlen < 31 and net.ip in (net.network, net.broadcast):
            which = "network" if net.ip == net.network else "broadcast"
            out.add(
                el,
                f"{text} is the {which} address of {net.cidr}",
                "use a host address of the subnet",
            )
            continue
        yield el, net


def _check_addresses(out: Collector, links: list[Element]) -> None:
    seen: dict[netaddr.IPAddress, Element] = {}
    for link in links:
        first, second = (list(_interfaces(out, end)) for end in children(link, "endpoint"))
        _check_same_subnet(out, first, second)
        in_first = {id(e) for e, _ in first}
        in_second = {id(e) for e, _ in second}
        for el, net in first + second:
            earlier = seen.setdefault(net.ip, el)
            if earlier is el:
                continue
            if id(earlier) in in_first and id(el) in in_second:
                out.add(
                    el,
                    f"both ends of the link have address {net.ip}",
                    "give each end its own address in the link's subnet",
                )
            else:
                out.add(
                    el,
                    _already_used(net.ip, earlier),
                    "every address of a VNet must be unique",
                )


def _already_used(ip: netaddr.IPAddress, earlier: Element) -> Callable[[], str]:
    return lambda: (
        f"address {ip} is already used at line {line_of(earlier)} ({element_path(earlier)})"
    )


def _check_same_subnet(
    out: Collector,
    first: list[tuple[Element, netaddr.IPNetwork]],
    second: list[tuple[Element, netaddr.IPNetwork]],
) -> None:
    """Each address must share its subnet with an address of its family on the
    other end; a one-to-one mismatch is reported once, at the second end."""
    reported: set[int] = set()
    for this, other in ((second, first), (first, second)):
        subnets: dict[int, set[netaddr.IPNetwork]] = {}
        for _, n in other:
            subnets.setdefault(n.version, set()).add(n.cidr)
        for el, net in this:
            if net.version not in subnets or (net.version in reported and this is first):
                continue
            if net.cidr not in subnets[net.version]:
                out.add(
                    el,
                    _not_in_subnet(net, other),
                    "both ends of a link need addresses in the same subnet",
                )
                if this is second:
                    reported.add(net.version)


LISTED_PEERS = 4  # addresses of the other end named in a subnet mismatch


def _not_in_subnet(
    net: netaddr.IPNetwork, other: list[tuple[Element, netaddr.IPNetwork]]
) -> Callable[[], str]:
    def message() -> str:
        peers = [p for _, p in other if p.version == net.version]
        listed = ", ".join(f"{p} (in {p.cidr})" for p in peers[:LISTED_PEERS])
        if len(peers) > LISTED_PEERS:
            listed += f" and {len(peers) - LISTED_PEERS:,} more"
        return f"{net} is in {net.cidr}, not in the subnet of the other end: {listed}"
    return message


# ------------------------------------------------------------ substrate rules


def check_substrate(root: Element, file: str, limit: int = MAX_REPORTED) -> Findings:
    out = Collector(file, limit)
    hosts = children(root, "host")
    switches = children(root, "switch")
    named = [c for c in root if isinstance(c.tag, str) and local(c) in ("host", "switch")]
    _unique(out, named, "name", "host or switch name")
    host_names = {h.get("name", "") for h in hosts}
    ends = host_names | {s.get("name", "") for s in switches}
    for sw in switches:
        _unique(out, children(sw, "port"), "host", "switch port")
        for control in children(sw, "control"):
            _check_control(out, control)
        for port in children(sw, "port"):
            target = port.get("host", "")
            if target not in host_names:
                out.add(
                    port,
                    f"switch port refers to unknown host {target!r}",
                    _suggest(out, target, host_names, "declare it with <host name=...>"),
                )
    for link in children(root, "link"):
        a, b = link.get("a", ""), link.get("b", "")
        for end in (a, b):
            if end not in ends:
                out.add(
                    link,
                    f"link end {end!r} is neither a host nor the switch",
                    _suggest(out, end, ends, "declare it with <host> or <switch>"),
                )
        if a == b:
            out.add(link, f"link connects {a!r} to itself", "a link joins two different ends")
    for host in hosts:
        _unique_text(out, children(host, "kind"), "node kind")
    _unique_text(out, children(root, "encapsulation"), "encapsulation")
    networks = {
        kind: _network(out, el)
        for kind in ("data", "mgmt")
        for el in children(root, f"{kind}-network")
    }
    _check_overlap(out, root, networks)
    _check_host_addresses(out, hosts, networks)
    _check_amounts(out, root)
    return out.findings()


SSH_ONLY = ("address", "port", "user", "known-hosts")


def _check_control(out: Collector, el: Element) -> None:
    """A switch's <control>: the attributes of its driver, a usable host key."""
    keys = children(el, "host-key")
    if el.get("driver", "ovsdb") == "ovsdb":
        extra = [a for a in SSH_ONLY if el.get(a) is not None] + (["host-key"] if keys else [])
        if extra:
            out.add(el, f"switch control through OVSDB has SSH settings: {', '.join(extra)}",
                    'use driver="ssh" to reach the switch over SSH, or drop them')
        return
    address = el.get("address")
    if address is None:
        out.add(el, "switch control over SSH has no address",
                "add the switch's management address: address=\"198.18.1.1\"")
    elif not netaddr.valid_ipv4(address) and not netaddr.valid_ipv6(address):
        out.add(el, f"switch address {address!r} is not an IP address",
                "write the switch's management address, such as 198.18.1.1")
    if bool(keys) == (el.get("known-hosts") is not None):
        out.add(el, "switch control over SSH needs exactly one of <host-key> and known-hosts",
                "pin the switch's host key (<host-key>ssh-ed25519 AAAA...</host-key>) or "
                "name a known_hosts file: an unknown host key is never trusted")
    for key in keys:
        problem = _host_key_problem(key.text or "")
        if problem:
            out.add(key, f"switch host key: {problem}",
                    "copy the switch's /etc/ssh/ssh_host_*_key.pub line")


def _host_key_problem(text: str) -> str:
    """Why an OpenSSH public key line is unusable ('' if it is not): the
    base64 must decode to a key blob of the type the line names."""
    kind, _, rest = text.strip().partition(" ")
    blob = rest.split(" ", 1)[0]
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return f"{blob[:16]!r}... is not base64"
    size = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else -1
    if raw[4:4 + size] != kind.encode():
        return f"the key data is not a {kind} key"
    return ""


def _unique_text(out: Collector, elements: list[Element], what: str) -> None:
    seen: set[str] = set()
    for el in elements:
        if (el.text or "").strip() in seen:
            out.add(el, f"duplicate {what} {(el.text or '').strip()!r}", f"list each {what} once")
        seen.add((el.text or "").strip())


def _network(out: Collector, el: Element) -> netaddr.IPNetwork | None:
    text = (el.text or "").strip()
    try:
        net = netaddr.IPNetwork(text)
    except (netaddr.AddrFormatError, ValueError):
        out.add(el, f"{text!r} is not a valid network", "write a network such as 198.18.0.0/24")
        return None
    if net.ip != net.network:
        out.add(el, f"{text} has host bits set", f"did you mean {net.cidr}?")
        return None
    return net


def _check_overlap(
    out: Collector, root: Element, networks: dict[str, netaddr.IPNetwork | None]
) -> None:
    data, mgmt = networks.get("data"), networks.get("mgmt")
    if data is None or mgmt is None or data.version != mgmt.version:
        return
    if data.first <= mgmt.last and mgmt.first <= data.last:
        el = children(root, "mgmt-network")[0]
        out.add(
            el, f"management network {mgmt} overlaps data network {data}", "use disjoint networks"
        )


def _check_host_addresses(
    out: Collector, hosts: list[Element], networks: dict[str, netaddr.IPNetwork | None]
) -> None:
    seen: dict[netaddr.IPAddress, str] = {}
    for host in hosts:
        for name in ("data", "mgmt"):
            text = host.get(f"{name}-address")
            if text is None:
                continue
            try:
                ip = netaddr.IPAddress(text)
            except (netaddr.AddrFormatError, ValueError):
                out.add(
                    host,
                    f"{name}-address {text!r} is not a valid IP address",
                    "write an IP address such as 198.18.0.11",
                )
                continue
            net = networks.get(name)
            if net is not None and (ip not in net or ip in (net.network, net.broadcast)):
                out.add(
                    host,
                    f"{name}-address {ip} is not a host address of the {name} network {net}",
                    f"pick an address inside {net}",
                )
            if ip in seen:
                out.add(
                    host,
                    f"{name}-address {ip} is already used by {seen[ip]}",
                    "every host address must be unique",
                )
            else:
                seen[ip] = f"{name}-address of host {host.get('name')!r} (line {line_of(host)})"
