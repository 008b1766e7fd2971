# Copyright (c) 2026, vnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Want, have, plan for vnet's kernel objects (private to the collection).

Everything here is pure: ``want`` comes from module parameters, ``have`` is
parsed from ``ip -json`` / ``tc -json`` output, and the ``plan_*`` functions
return the commands (argv lists) that turn ``have`` into ``want``. An empty
list means the host already matches. The modules only read state, call a
planner and run its commands.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field, replace

Command = list[str]

IP = "ip"
TC = "tc"
BRIDGE_KIND = "bridge"
VETH_KIND = "veth"
VXLAN_KIND = "vxlan"
NODE_DRIVERS = ("netns",)
TBF_LATENCY = "50ms"
TBF_MIN_BURST = 15000
RATE_TOLERANCE = 0.01


class VnetError(Exception):
    """A request that cannot be planned or a command that failed."""

    def __init__(self, msg: str, **details: object) -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details


# --------------------------------------------------------------------------
# State read from the host
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VxlanParams:
    vni: int
    local: str
    remote: str
    dstport: int
    learning: bool = False


@dataclass(frozen=True, slots=True)
class Iface:
    """One network interface as ``ip -json -details addr show`` reports it."""

    name: str
    kind: str = ""
    ifindex: int = 0
    link_index: int | None = None
    up: bool = False
    mtu: int = 1500
    master: str | None = None
    addresses: tuple[str, ...] = ()
    vxlan: VxlanParams | None = None


@dataclass(frozen=True, slots=True)
class Qdisc:
    kind: str
    rate_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class HostState:
    """What the vnet modules need to know about their substrate host, read once.

    ``netns`` holds the interfaces of every *existing* namespace the wanted
    nodes or ports name; a namespace missing from it does not exist.
    ``qdiscs`` holds root qdiscs by device, ``ns_qdiscs`` those inside each
    read namespace, ``forwarding`` IPv4 forwarding by namespace (read only
    for nodes).
    """

    links: dict[str, Iface] = field(default_factory=dict)
    netns: dict[str, dict[str, Iface]] = field(default_factory=dict)
    qdiscs: dict[str, Qdisc] = field(default_factory=dict)
    forwarding: dict[str, bool] = field(default_factory=dict)
    ns_qdiscs: dict[str, dict[str, Qdisc]] = field(default_factory=dict)


def _load(text: str) -> list[dict]:
    text = (text or "").strip()
    if not text:
        return []
    data = json.loads(text)
    if not isinstance(data, list):
        raise VnetError("unexpected JSON from iproute2: %r" % (text[:200],))
    return data


def parse_netns_list(text: str) -> set[str]:
    """Names from ``ip -json netns list``."""
    return {str(entry["name"]) for entry in _load(text) if "name" in entry}


def _address(entry: dict) -> str | None:
    if entry.get("scope") != "global" or "local" not in entry:
        return None
    return "%s/%s" % (entry["local"], entry["prefixlen"])


def parse_ifaces(text: str) -> dict[str, Iface]:
    """Interfaces from ``ip -json -details addr show``, keyed by name."""
    result: dict[str, Iface] = {}
    for entry in _load(text):
        info = entry.get("linkinfo") or {}
        kind = str(info.get("info_kind", ""))
        vxlan = None
        if kind == VXLAN_KIND:
            data = info.get("info_data") or {}
            vxlan = VxlanParams(
                vni=int(data.get("id", 0)),
                local=str(data.get("local", "")),
                remote=str(data.get("remote", "")),
                dstport=int(data.get("port", 0)),
                learning=bool(data.get("learning", True)),
            )
        addresses = tuple(
            a for a in (_address(x) for x in entry.get("addr_info") or []) if a is not None
        )
        result[entry["ifname"]] = Iface(
            name=str(entry["ifname"]),
            kind=kind,
            ifindex=int(entry.get("ifindex", 0)),
            link_index=entry.get("link_index"),
            up="UP" in (entry.get("flags") or []),
            mtu=int(entry.get("mtu", 0)),
            master=entry.get("master"),
            addresses=addresses,
            vxlan=vxlan,
        )
    return result


def _qdisc(entry: dict) -> Qdisc:
    rate = (entry.get("options") or {}).get("rate")
    return Qdisc(kind=str(entry.get("kind", "")), rate_bytes=None if rate is None else int(rate))


def parse_root_qdisc(text: str) -> Qdisc | None:
    """The root qdisc from ``tc -json qdisc show dev DEV``."""
    for entry in _load(text):
        if entry.get("root"):
            return _qdisc(entry)
    return None


def parse_root_qdiscs(text: str) -> dict[str, Qdisc]:
    """Root qdiscs of every device from ``tc -json qdisc show``, keyed by device."""
    return {str(e["dev"]): _qdisc(e) for e in _load(text) if e.get("root") and "dev" in e}


# --------------------------------------------------------------------------
# Virtual nodes
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeWant:
    name: str
    state: str = "present"
    forwarding: bool = True
    driver: str = "netns"
    label: str = ""  # the virtual node's name in the plan, for messages

    def what(self) -> str:
        return "virtual node %s (%s)" % (self.label, self.name) if self.label else "virtual node %s" % self.name


@dataclass(frozen=True, slots=True)
class NodeHave:
    exists: bool
    lo_up: bool = False
    forwarding: bool = False


def node_want(params: dict) -> NodeWant:
    forwarding = params.get("forwarding")
    want = NodeWant(
        name=params.get("name") or params["netns"],  # netns: the plan's key, an alias
        state=params.get("state") or "present",
        forwarding=True if forwarding is None else bool(forwarding),
        driver=params.get("driver") or "netns",
        label=params.get("vnode") or "",
    )
    if want.driver not in NODE_DRIVERS:
        raise VnetError("virtual node %s: driver %s is not supported" % (want.name, want.driver))
    return want


def nodes_want(items: list[dict], state: str) -> tuple[NodeWant, ...]:
    """The wants of an aggregate `nodes` list; every error of the list at once."""
    wants: list[NodeWant] = []
    errors: list[str] = []
    for item in items:
        try:
            wants.append(node_want({**item, "state": state}))
        except VnetError as exc:
            errors.append(exc.msg)
    seen: set[str] = set()
    for want in wants:
        if want.name in seen:
            errors.append("virtual node %s: namespace %s is listed twice" % (want.label or want.name, want.name))
        seen.add(want.name)
    _raise_all(errors)
    return tuple(wants)


def _raise_all(errors: list[str]) -> None:
    if len(errors) == 1:
        raise VnetError(errors[0], errors=errors)
    if errors:
        raise VnetError("%d errors: %s" % (len(errors), "; ".join(errors)), errors=errors)


def node_have(have: HostState, name: str) -> NodeHave:
    """A node's part of a host state read for nodes (see ``HostState``)."""
    ifaces = have.netns.get(name)
    if ifaces is None:
        return NodeHave(exists=False)
    lo = ifaces.get("lo")
    return NodeHave(exists=True, lo_up=bool(lo and lo.up), forwarding=have.forwarding.get(name, False))


def parse_forwarding(text: str) -> bool:
    return (text or "").strip() == "1"


def plan_node(want: NodeWant, have: NodeHave) -> list[Command]:
    """Commands that make the namespace of `want` exist (or not) as asked."""
    if want.state == "absent":
        return [[IP, "netns", "delete", want.name]] if have.exists else []
    commands: list[Command] = []
    if not have.exists:
        commands.append([IP, "netns", "add", want.name])
    if not have.exists or not have.lo_up:
        commands.append([IP, "-n", want.name, "link", "set", "lo", "up"])
    if not have.exists or have.forwarding != want.forwarding:
        value = "1" if want.forwarding else "0"
        commands.append(
            [IP, "netns", "exec", want.name, "sysctl", "-w", "net.ipv4.ip_forward=%s" % value]
        )
    return commands


def node_view(exists: bool, lo_up: bool, forwarding: bool) -> dict:
    if not exists:
        return {}
    return {"netns": True, "lo_up": lo_up, "forwarding": forwarding}


def node_before_after(want: NodeWant, have: NodeHave) -> tuple[dict, dict]:
    """Diff of one node; for a node to delete, only whether its namespace exists
    (deleting needs nothing else, so nothing else is read)."""
    if want.state == "absent":
        return ({"netns": True} if have.exists else {}), {}
    return node_view(have.exists, have.lo_up, have.forwarding), node_view(True, True, want.forwarding)


def plan_nodes(wants: tuple[NodeWant, ...], have: HostState) -> list[Command]:
    """Commands for every node of an aggregate from one host state (scheduled)."""
    commands: list[Command] = []
    for want in wants:
        commands += plan_node(want, node_have(have, want.name))
    return schedule(commands)


def nodes_left(wants: tuple[NodeWant, ...], have: HostState) -> list[str]:
    """Descriptions of the nodes that `have` does not match yet (after applying)."""
    return ["%s: %s" % (w.what(), plan_node(w, node_have(have, w.name)))
            for w in wants if plan_node(w, node_have(have, w.name))]


def nodes_before_after(wants: tuple[NodeWant, ...], have: HostState) -> tuple[dict, dict]:
    """Diff of an aggregate: the views of its nodes keyed by namespace."""
    before: dict = {}
    after: dict = {}
    for want in wants:
        b, a = node_before_after(want, node_have(have, want.name))
        if b:
            before[want.name] = b
        if a:
            after[want.name] = a
    return before, after


# --------------------------------------------------------------------------
# Virtual link segments
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PortWant:
    netns: str
    ifname: str
    peer: str
    addresses: tuple[str, ...] = ()
    mtu: int = 1500
    up: bool = True  # False: the node is stopped, its end of the pair is down


@dataclass(frozen=True, slots=True)
class TunnelWant:
    kind: str
    device: str
    vni: int
    local: str
    remote: str
    dstport: int = 4789

    def params(self) -> VxlanParams:
        return VxlanParams(self.vni, self.local, self.remote, self.dstport, False)


@dataclass(frozen=True, slots=True)
class LinkWant:
    bridge: str
    ports: tuple[PortWant, ...] = ()
    tunnel: TunnelWant | None = None
    bandwidth_mbps: float | None = None
    state: str = "present"
    label: str = ""  # the virtual link's name in the plan, for messages
    bridged: bool | None = None  # True: a bridge even where a veth pair would do

    def netns_names(self) -> list[str]:
        return sorted({p.netns for p in self.ports})

    def direct(self) -> bool:
        """Two local ports in two namespaces and nothing else: one veth pair
        straight between the nodes, no bridge (nothing else can join it)."""
        return (self.bridged is not True and self.tunnel is None and len(self.ports) == 2
                and self.ports[0].netns != self.ports[1].netns)

    def what(self) -> str:
        return "link %s (bridge %s)" % (self.label, self.bridge) if self.label else "bridge %s" % self.bridge

    def names(self) -> list[str]:
        """The host-side interface names this segment owns."""
        return [self.bridge] + [p.peer for p in self.ports] + ([self.tunnel.device] if self.tunnel else [])


def _normalize_address(text: str) -> str:
    try:
        return str(ipaddress.ip_interface(text))
    except ValueError as exc:
        raise VnetError("invalid interface address %r: %s" % (text, exc)) from exc


def link_want(params: dict) -> LinkWant:
    ports = tuple(
        PortWant(
            netns=p["netns"],
            ifname=p["ifname"],
            peer=p["peer"],
            addresses=tuple(_normalize_address(a) for a in p.get("addresses") or ()),
            mtu=int(p.get("mtu") or 1500),
            up=bool(p.get("up", True)),
        )
        for p in params.get("ports") or ()
    )
    tunnel = None
    if params.get("tunnel"):
        t = params["tunnel"]
        if (t.get("kind") or VXLAN_KIND) != VXLAN_KIND:
            raise VnetError("bridge %s: tunnel kind %s is not supported" % (params["bridge"], t.get("kind")))
        tunnel = TunnelWant(
            kind=VXLAN_KIND,
            device=t["device"],
            vni=int(t["vni"]),
            local=str(t["local"]),
            remote=str(t["remote"]),
            dstport=int(t.get("dstport") or 4789),
        )
    bandwidth = params.get("bandwidth_mbps")
    want = LinkWant(
        bridge=params["bridge"],
        ports=ports,
        tunnel=tunnel,
        bandwidth_mbps=None if bandwidth is None else float(bandwidth),
        state=params.get("state") or "present",
        label=params.get("link") or "",
        bridged=params.get("bridged"),
    )
    names = want.names()
    for name in names + [p.ifname for p in ports]:
        if not 0 < len(name) <= 15:
            raise VnetError("interface name %r must have 1 to 15 characters" % (name,))
    if len(set(names)) != len(names):
        raise VnetError("bridge %s: bridge, port peers and tunnel device must differ" % want.bridge)
    if want.bandwidth_mbps is not None and want.bandwidth_mbps <= 0:
        raise VnetError("bridge %s: bandwidth_mbps must be positive" % want.bridge)
    return want


def rate_kbit(mbps: float) -> int:
    return max(1, int(round(mbps * 1000)))


def tbf_command(dev: str, mbps: float, netns: str | None = None) -> Command:
    """A root tbf at `mbps` on `dev` (in `netns`): a bucket of 4 ms at the
    rate, at least 10 full frames, and 50 ms of queue."""
    kbit = rate_kbit(mbps)
    burst = max(TBF_MIN_BURST, kbit * 1000 // 8 // 250)
    where = [TC, "-n", netns] if netns else [TC]
    return where + ["qdisc", "replace", "dev", dev, "root", "tbf",
                    "rate", "%dkbit" % kbit, "burst", str(burst), "latency", TBF_LATENCY]


def _rate_matches(qdisc: Qdisc | None, mbps: float) -> bool:
    if qdisc is None or qdisc.kind != "tbf" or qdisc.rate_bytes is None:
        return False
    want = rate_kbit(mbps) * 1000 / 8
    return abs(qdisc.rate_bytes - want) <= want * RATE_TOLERANCE


def _is_pair(host: Iface | None, node: Iface | None) -> bool:
    return (
        host is not None
        and node is not None
        and host.kind == VETH_KIND
        and node.kind == VETH_KIND
        and host.link_index == node.ifindex
        and node.link_index == host.ifindex
    )


def _plan_port(want: LinkWant, port: PortWant, have: HostState, check_missing_netns: bool) -> list[Command]:
    commands: list[Command] = []
    node_ifaces = have.netns.get(port.netns)
    if node_ifaces is None and check_missing_netns:
        raise VnetError(
            "network namespace %s of port %s does not exist: create the virtual node first"
            % (port.netns, port.peer)
        )
    host = have.links.get(port.peer)
    node = (node_ifaces or {}).get(port.ifname)
    if host is not None and host.kind != VETH_KIND:
        raise VnetError("%s exists and is a %s, not a veth: remove it" % (port.peer, host.kind or "plain link"))
    if node is not None and node.kind != VETH_KIND:
        raise VnetError(
            "%s in namespace %s exists and is a %s, not a veth: remove it"
            % (port.ifname, port.netns, node.kind or "plain link")
        )
    if not _is_pair(host, node):
        if host is not None:
            commands.append([IP, "link", "delete", port.peer])
        if node is not None:
            commands.append([IP, "-n", port.netns, "link", "delete", port.ifname])
        commands.append([IP, "link", "add", port.peer, "mtu", str(port.mtu), "type", VETH_KIND,
                         "peer", "name", port.ifname, "mtu", str(port.mtu), "netns", port.netns])
        host = Iface(name=port.peer, kind=VETH_KIND, mtu=port.mtu)
        node = Iface(name=port.ifname, kind=VETH_KIND, mtu=port.mtu)
    if host.mtu != port.mtu:
        commands.append([IP, "link", "set", "dev", port.peer, "mtu", str(port.mtu)])
    if host.master != want.bridge:
        commands.append([IP, "link", "set", "dev", port.peer, "master", want.bridge])
    if not host.up:
        commands.append([IP, "link", "set", "dev", port.peer, "up"])
    commands += _plan_end(port, node, have, None)
    if want.bandwidth_mbps is not None and not _rate_matches(have.qdiscs.get(port.peer), want.bandwidth_mbps):
        commands.append(tbf_command(port.peer, want.bandwidth_mbps))
    return commands


def _plan_tunnel(want: LinkWant, tunnel: TunnelWant, have: HostState) -> list[Command]:
    commands: list[Command] = []
    dev = have.links.get(tunnel.device)
    if dev is not None and (dev.kind != VXLAN_KIND or dev.vxlan != tunnel.params()):
        commands.append([IP, "link", "delete", tunnel.device])
        dev = None
    if dev is None:
        commands.append([IP, "link", "add", tunnel.device, "type", VXLAN_KIND,
                         "id", str(tunnel.vni), "local", tunnel.local, "remote", tunnel.remote,
                         "dstport", str(tunnel.dstport), "nolearning"])
        dev = Iface(name=tunnel.device, kind=VXLAN_KIND)
    if dev.master != want.bridge:
        commands.append([IP, "link", "set", "dev", tunnel.device, "master", want.bridge])
    if not dev.up:
        commands.append([IP, "link", "set", "dev", tunnel.device, "up"])
    return commands


def plan_link(want: LinkWant, have: HostState, check_missing_netns: bool = True) -> list[Command]:
    """Commands that bring one link segment from `have` to `want`.

    `check_missing_netns` makes a port whose namespace does not exist an
    error; check mode turns it off, since the node task before it only
    pretended to create the namespace.
    """
    if want.state == "absent":
        return _plan_link_absent(want, have)
    if want.direct():
        return _plan_direct(want, have, check_missing_netns)
    commands: list[Command] = []
    bridge = have.links.get(want.bridge)
    if bridge is not None and bridge.kind != BRIDGE_KIND:
        raise VnetError("%s exists and is a %s, not a bridge: remove it" % (want.bridge, bridge.kind or "plain link"))
    if bridge is None:
        commands.append([IP, "link", "add", want.bridge, "type", BRIDGE_KIND])
    if bridge is None or not bridge.up:
        commands.append([IP, "link", "set", "dev", want.bridge, "up"])
    if want.tunnel is not None:
        commands += _plan_tunnel(want, want.tunnel, have)
    for port in want.ports:
        commands += _plan_port(want, port, have, check_missing_netns)
    return commands


def _node_end(have: HostState, port: PortWant) -> Iface | None:
    return (have.netns.get(port.netns) or {}).get(port.ifname)


def _plan_end(port: PortWant, node: Iface, have: HostState, mbps: float | None) -> list[Command]:
    """A node's end of a link, bridged or one of a direct pair: MTU, exactly
    the wanted addresses, up or down, and the rate limit on its egress when
    `mbps` is given (a direct pair's; a bridged link shapes its host end)."""
    commands: list[Command] = []
    if node.mtu != port.mtu:
        commands.append([IP, "-n", port.netns, "link", "set", "dev", port.ifname, "mtu", str(port.mtu)])
    current = set(node.addresses)
    for address in node.addresses:
        if address not in port.addresses:
            commands.append([IP, "-n", port.netns, "address", "delete", address, "dev", port.ifname])
    for address in port.addresses:
        if address not in current:
            commands.append([IP, "-n", port.netns, "address", "add", address, "dev", port.ifname])
    if port.up and not node.up:
        commands.append([IP, "-n", port.netns, "link", "set", "dev", port.ifname, "up"])
    elif not port.up and node.up:
        commands.append([IP, "-n", port.netns, "link", "set", "dev", port.ifname, "down"])
    if mbps is not None and not _rate_matches((have.ns_qdiscs.get(port.netns) or {}).get(port.ifname), mbps):
        commands.append(tbf_command(port.ifname, mbps, port.netns))
    return commands


def _plan_direct(want: LinkWant, have: HostState, check_missing_netns: bool) -> list[Command]:
    """A link between two namespaces of this host: one veth pair, each end in
    its node, made in one ``ip link add`` (the kernel creates each end in its
    namespace). A bridged form of the same segment (bridge, host ends) is
    removed first; rate limits sit on both ends' egress."""
    commands: list[Command] = []
    a, b = want.ports
    ends = []
    for port in want.ports:
        if have.netns.get(port.netns) is None and check_missing_netns:
            raise VnetError("network namespace %s of port %s does not exist: create the virtual node first"
                            % (port.netns, port.peer))
        node = _node_end(have, port)
        if node is not None and node.kind != VETH_KIND:
            raise VnetError("%s in namespace %s exists and is a %s, not a veth: remove it"
                            % (port.ifname, port.netns, node.kind or "plain link"))
        ends.append(node)
    paired = _is_pair(ends[0], ends[1])
    for port, node in zip(want.ports, ends):
        host = have.links.get(port.peer)
        if host is not None and host.kind != VETH_KIND:
            raise VnetError("%s exists and is a %s, not a veth: remove it" % (port.peer, host.kind or "plain link"))
        if host is not None:
            commands.append([IP, "link", "delete", port.peer])  # and its node end, if paired with it
        if node is not None and not paired and not _is_pair(host, node):
            commands.append([IP, "-n", port.netns, "link", "delete", port.ifname])
    bridge = have.links.get(want.bridge)
    if bridge is not None and bridge.kind != BRIDGE_KIND:
        raise VnetError("%s exists and is a %s, not a bridge: remove it" % (want.bridge, bridge.kind or "plain link"))
    if bridge is not None:
        commands.append([IP, "link", "delete", want.bridge])
    if not paired:
        commands.append([IP, "link", "add", a.ifname, "mtu", str(a.mtu), "netns", a.netns, "type", VETH_KIND,
                         "peer", "name", b.ifname, "mtu", str(b.mtu), "netns", b.netns])
        ends = [Iface(name=p.ifname, kind=VETH_KIND, mtu=p.mtu) for p in want.ports]
        have = replace(have, ns_qdiscs={})  # new ends have no qdisc
    for port, node in zip(want.ports, ends):
        if node is None:
            raise AssertionError(f"no node end for {port.ifname} in {port.netns}")
        commands += _plan_end(port, node, have, want.bandwidth_mbps)
    return commands


def _plan_link_absent(want: LinkWant, have: HostState) -> list[Command]:
    commands: list[Command] = []
    gone: set[tuple[str, int]] = set()  # (netns, ifindex) of node ends deleted along
    for port in want.ports:
        host = have.links.get(port.peer)
        node = _node_end(have, port)
        if host is not None and host.kind == VETH_KIND:
            commands.append([IP, "link", "delete", port.peer])
        elif node is not None and node.kind == VETH_KIND and (port.netns, node.ifindex) not in gone:
            commands.append([IP, "-n", port.netns, "link", "delete", port.ifname])
            other = [p for p in want.ports if p is not port]
            if len(other) == 1 and want.direct():
                peer = _node_end(have, other[0])
                if _is_pair(node, peer):
                    if peer is None:
                        raise AssertionError("a pair without its peer")
                    gone.add((other[0].netns, peer.ifindex))
    if want.tunnel is not None:
        dev = have.links.get(want.tunnel.device)
        if dev is not None and dev.kind == VXLAN_KIND:
            commands.append([IP, "link", "delete", want.tunnel.device])
    bridge = have.links.get(want.bridge)
    if bridge is not None and bridge.kind == BRIDGE_KIND:
        commands.append([IP, "link", "delete", want.bridge])
    return commands


def _end_view(port: PortWant, node: Iface, mbps: float | None, have: HostState | None) -> dict:
    view: dict = {"netns": port.netns, "ifname": port.ifname, "mtu": node.mtu, "up": node.up,
                  "addresses": sorted(node.addresses)}
    if mbps is not None:
        if have is None:
            view["rate_kbit"] = rate_kbit(mbps)
        else:
            q = (have.ns_qdiscs.get(port.netns) or {}).get(port.ifname)
            view["rate_kbit"] = rate_kbit(q.rate_bytes * 8 / 1e6) if q and q.kind == "tbf" and q.rate_bytes else None
    return view


def _direct_view_have(want: LinkWant, have: HostState) -> dict:
    view: dict = {}
    ends = [_node_end(have, p) for p in want.ports]
    if _is_pair(ends[0], ends[1]):
        view["veth"] = {p.peer: _end_view(p, e, want.bandwidth_mbps, have)
                        for p, e in zip(want.ports, ends) if e is not None}
    if want.bridge in have.links:
        view["bridge"] = {"name": want.bridge}
    return view


def link_view_have(want: LinkWant, have: HostState) -> dict:
    """The part of `have` that `want` talks about, shaped like link_view_want."""
    if want.direct():
        return _direct_view_have(want, have)
    view: dict = {}
    bridge = have.links.get(want.bridge)
    if bridge is not None:
        view["bridge"] = {"name": want.bridge, "up": bridge.up}
    if want.tunnel is not None:
        dev = have.links.get(want.tunnel.device)
        if dev is not None and dev.vxlan is not None:
            view["tunnel"] = {
                "device": want.tunnel.device, "vni": dev.vxlan.vni, "local": dev.vxlan.local,
                "remote": dev.vxlan.remote, "dstport": dev.vxlan.dstport,
                "master": dev.master, "up": dev.up,
            }
    ports = {}
    for port in want.ports:
        host = have.links.get(port.peer)
        node = have.netns.get(port.netns, {}).get(port.ifname)
        if host is None and node is None:
            continue
        entry: dict = {}
        if host is not None:
            entry["host"] = {"master": host.master, "mtu": host.mtu, "up": host.up}
            if want.bandwidth_mbps is not None:
                q = have.qdiscs.get(port.peer)
                entry["host"]["rate_kbit"] = (
                    rate_kbit(q.rate_bytes * 8 / 1e6) if q and q.kind == "tbf" and q.rate_bytes else None
                )
        if node is not None:
            entry["node"] = {"netns": port.netns, "ifname": port.ifname, "mtu": node.mtu,
                             "up": node.up, "addresses": sorted(node.addresses)}
        ports[port.peer] = entry
    if ports:
        view["ports"] = ports
    return view


def link_view_want(want: LinkWant) -> dict:
    if want.state == "absent":
        return {}
    if want.direct():
        ends = {p.peer: Iface(p.ifname, VETH_KIND, mtu=p.mtu, up=p.up, addresses=p.addresses)
                for p in want.ports}
        return {"veth": {p.peer: _end_view(p, ends[p.peer], want.bandwidth_mbps, None)
                         for p in want.ports}}
    view: dict = {"bridge": {"name": want.bridge, "up": True}}
    if want.tunnel is not None:
        t = want.tunnel
        view["tunnel"] = {"device": t.device, "vni": t.vni, "local": t.local, "remote": t.remote,
                          "dstport": t.dstport, "master": want.bridge, "up": True}
    ports = {}
    for port in want.ports:
        host: dict = {"master": want.bridge, "mtu": port.mtu, "up": True}
        if want.bandwidth_mbps is not None:
            host["rate_kbit"] = rate_kbit(want.bandwidth_mbps)
        ports[port.peer] = {
            "host": host,
            "node": {"netns": port.netns, "ifname": port.ifname, "mtu": port.mtu, "up": port.up,
                     "addresses": sorted(port.addresses)},
        }
    if ports:
        view["ports"] = ports
    return view


# --------------------------------------------------------------------------
# Aggregates: every segment of a host from one read of its state
# --------------------------------------------------------------------------


def links_want(items: list[dict], state: str) -> tuple[LinkWant, ...]:
    """The wants of an aggregate `links` list; every error of the list at once.

    Segments must not share interface names (bridge, peers, tunnel device,
    or a node interface), so that planning each against one host state is
    the same as converging them one after the other.
    """
    wants: list[LinkWant] = []
    errors: list[str] = []
    for item in items:
        try:
            wants.append(link_want({**item, "state": state}))
        except VnetError as exc:
            label = item.get("link")
            errors.append("link %s: %s" % (label, exc.msg) if label else exc.msg)
    owner: dict[tuple[str, str], LinkWant] = {}
    for want in wants:
        keys = [("", name) for name in want.names()] + [(p.netns, p.ifname) for p in want.ports]
        for key in keys:
            other = owner.setdefault(key, want)
            if other is not want:
                where = " in namespace %s" % key[0] if key[0] else ""
                errors.append("%s and %s both use interface %s%s" % (other.what(), want.what(), key[1], where))
    _raise_all(errors)
    return tuple(wants)


def _stage(argv: Command) -> tuple[int, str]:
    if argv[0] != IP:
        return (3, argv[2] if argv[1:2] == ["-n"] else "")
    netns = argv[2] if argv[1:2] == ["-n"] else ""
    words = argv[3:] if netns else argv[1:]
    if words[:2] == ["link", "delete"]:
        return (0, "")
    return (2, netns) if netns else (1, "")


def schedule(commands: list[Command]) -> list[Command]:
    """The commands of an aggregate, reordered so that few batches run them.

    Stable, in stages: every ``link delete`` (so a name is free before it is
    created again), then the host's own ``ip`` commands (namespaces, bridges,
    tunnels, veth pairs, enslaving), then the ``ip -n NS`` commands namespace
    by namespace, then ``tc`` (the host's, then namespace by namespace). Within a stage the planned order is kept, and
    objects of an aggregate never share a name, so this order is as valid as
    the planned one.
    """
    return sorted(commands, key=_stage)


def plan_links(wants: tuple[LinkWant, ...], have: HostState, check_missing_netns: bool = True) -> list[Command]:
    """Commands for every segment of an aggregate from one host state (scheduled).

    Raises one VnetError naming every segment that cannot be planned.
    """
    commands: list[Command] = []
    errors: list[str] = []
    for want in wants:
        try:
            commands += plan_link(want, have, check_missing_netns)
        except VnetError as exc:
            errors.append("%s: %s" % (want.what(), exc.msg) if want.label else exc.msg)
    _raise_all(errors)
    return schedule(commands)


def links_left(wants: tuple[LinkWant, ...], have: HostState) -> list[str]:
    """Descriptions of the segments that `have` does not match yet (after applying)."""
    left = []
    for want in wants:
        try:
            commands = plan_link(want, have)
        except VnetError as exc:
            left.append("%s: %s" % (want.what(), exc.msg))
            continue
        if commands:
            left.append("%s: %s" % (want.what(), commands))
    return left


def links_before_after(wants: tuple[LinkWant, ...], have: HostState) -> tuple[dict, dict]:
    """Diff of an aggregate: the views of its segments keyed by bridge."""
    before: dict = {}
    after: dict = {}
    for want in wants:
        b = link_view_have(want, have)
        a = link_view_want(want)
        if b:
            before[want.bridge] = b
        if a:
            after[want.bridge] = a
    return before, after
