"""The PIP's side of end-user attachment (Interface 6).

In the PIP's access namespace (its access switch) run: the PIP's RADIUS proxy
(FreeRADIUS, routing by realm to the VNOs' servers over RadSec), one hostapd per
access port (wired driver, 802.1X, RADIUS to the proxy) and the access
controller (`python -m vnetlib.aaa.access`). The controller listens to every
hostapd's control socket: on AP-STA-CONNECTED it reads the proxy's decision for
that port (the accept's handle `<sliver name>/<node>` and pool), finds the
sliver in the PIP's ledger and puts the port into the VNet; on
AP-STA-DISCONNECTED (logoff, failed re-authentication, session timeout) or when
the port goes down it takes it out again.

Putting a port into the VNet: the node gets a segment of its own for end users
(a bridge on its substrate host, a veth whose inner end `att0` in the node's
namespace has the pool's first address, dnsmasq on it handing out the rest);
the port joins that bridge through a per-port bridge in the access namespace and
a veth to the host. The last port to leave removes the segment, so nothing of
an attachment stays in the VNet.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import netaddr
from pyroute2 import IPRoute, NetlinkError, NetNS

from vnetlib import naming
from vnetlib.aaa import daemons, logs, radius
from vnetlib.core.ledger import Ledger
from vnetlib.core.records import Sliver
from vnetlib.spec import SpecErrors, VNetSpec, parse_vnet

log = logging.getLogger("vnetlib.aaa.access")

PROXY_CONF = "pip-radius"
PROXY_PORT = 1812
ATT_IF = "att0"
SESSIONS = "sessions.json"


# -- names ------------------------------------------------------------------------------


def segment_key(sliver_id: str, node: str) -> str:
    return naming.short_hash(sliver_id, node)


def port_key(netns: str, port: str) -> str:
    return naming.short_hash(netns, port)


# -- the proxy and the authenticators ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Access:
    """One PIP's access switch: where its files are, its namespace, its ledger."""

    directory: Path
    netns: str
    substrate: str
    store: str
    secret: str
    peers: tuple[Path, ...] = ()  # the other PIPs' access directories (roaming)

    def pidfile(self, what: str) -> Path:
        return self.directory / "run" / f"{what}.pid"


def start_proxy(acc: Access, homes: tuple[radius.HomeServer, ...], tls: radius.Tls,
                response_window: int = 5) -> None:
    """`response_window`: seconds the VNO's server may take per round trip
    before the proxy rejects (with 3 s, 120 of 200 TTLS devices attaching at
    once were rejected on a 2-core machine at load 20-30; FreeRADIUS's
    default is 20 s)."""
    cfg = radius.ProxyConfig(acc.directory, PROXY_PORT, acc.secret, homes, tls, response_window)
    radius.write(acc.directory, radius.proxy_conf(cfg), PROXY_CONF, tls)
    d = acc.directory
    daemons.start(["freeradius", "-f", "-d", str(d), "-n", PROXY_CONF,
                   "-l", str(d / "log" / "radius.log")],
                  pidfile=acc.pidfile("proxy"), log=d / "log" / "proxy.out", marker=str(d),
                  netns=acc.netns, settle=0.3)


def stop_proxy(acc: Access) -> bool:
    return daemons.stop(acc.pidfile("proxy"), str(acc.directory))


def hostapd_conf(acc: Access, port: str) -> str:
    return "\n".join([
        f"interface={port}",
        "driver=wired",
        "ieee8021x=1",
        "eapol_version=2",
        "eap_reauth_period=0",
        "use_pae_group_addr=1",
        "own_ip_addr=127.0.0.1",
        f"nas_identifier={port}",
        "auth_server_addr=127.0.0.1",
        f"auth_server_port={PROXY_PORT}",
        f"auth_server_shared_secret={acc.secret}",
        "acct_server_addr=127.0.0.1",
        f"acct_server_port={PROXY_PORT + 1}",
        f"acct_server_shared_secret={acc.secret}",
        "radius_retry_primary_interval=1",
        f"ctrl_interface={acc.directory / 'ctrl'}",
        "logger_stdout=-1",
        "logger_stdout_level=2",
        "",
    ])


def start_port(acc: Access, port: str) -> None:
    """The 802.1X authenticator of access port `port` (an interface of the
    access namespace)."""
    conf = acc.directory / "ports" / f"{port}.conf"
    daemons.private_dir(conf.parent)
    daemons.write_private(conf, hostapd_conf(acc, port))
    daemons.start(["hostapd", str(conf)], pidfile=acc.pidfile(f"hostapd-{port}"),
                  log=acc.directory / "log" / f"hostapd-{port}.log", marker=str(conf),
                  netns=acc.netns, settle=0.2)


def stop_port(acc: Access, port: str) -> bool:
    conf = acc.directory / "ports" / f"{port}.conf"
    stopped = daemons.stop(acc.pidfile(f"hostapd-{port}"), str(conf))
    (acc.directory / "ctrl" / port).unlink(missing_ok=True)
    return stopped


def start_controller(acc: Access) -> None:
    d = acc.directory
    peers = [arg for peer in acc.peers for arg in ("--peer", str(peer))]
    daemons.start([sys.executable, "-m", "vnetlib.aaa.access", "--dir", str(d),
                   "--netns", acc.netns, "--substrate", acc.substrate, "--store", acc.store,
                   *peers],
                  pidfile=acc.pidfile("controller"), log=d / "log" / "controller.log",
                  marker=str(d), settle=0.3)


def stop_controller(acc: Access) -> bool:
    return daemons.stop(acc.pidfile("controller"), str(acc.directory))


def sessions(directory: Path) -> dict[str, dict[str, object]]:
    """The ports in a VNet now: port -> session (device, realm, handle, since)."""
    try:
        data: dict[str, dict[str, object]] = json.loads((directory / SESSIONS).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data


# -- decisions --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    accepted: bool
    port: str
    device: str
    realm: str
    handle: str
    pool: str
    session_timeout: int


def mac_of(text: str) -> str:
    return text.replace("-", ":").lower()


def last_decision(directory: Path, port: str, device: str) -> Decision | None:
    """The proxy's latest decision for the device on the port, from the log's
    tail (the decision an AP-STA-CONNECTED follows was written just before)."""
    path = directory / radius.DECISIONS_LOG
    lines = daemons.tail_lines(path)
    if not any(port in line for line in lines):  # rotated meanwhile (vnetlib.aaa.logs)
        lines = daemons.tail_lines(logs.rotated(path)) + lines
    for line in reversed(lines):
        fields = line.split()
        if len(fields) != 7 or fields[1] != port or mac_of(fields[2]) != mac_of(device):
            continue
        kind, _, mac, realm, handle, pool, timeout = fields
        return Decision(kind == "Access-Accept", port, mac_of(mac), realm, handle, pool,
                        int(timeout) if timeout.isdigit() else 0)
    return None


# -- the data plane -----------------------------------------------------------------------


_kept: dict[str, IPRoute] = {}
_kept_locks: dict[str, threading.RLock] = {}
_kept_guard = threading.Lock()
KEEP_PREFIXES: list[str] = []  # set by the controller: namespaces it keeps a handle into


def _kept_name(name: str) -> bool:
    """The access switch and the substrate's hosts: they outlive the
    controller. Never a node's or device's namespace: an open handle would
    keep a deleted namespace, and the links in it, alive."""
    return any(name == p or (name.startswith(p) and "+" not in name[len(p):])
               for p in KEEP_PREFIXES)


@contextlib.contextmanager
def netns(name: str) -> Iterator[IPRoute]:
    """A netlink handle in namespace `name`. Opening one forks a helper
    (pyroute2's NetNS), tens of milliseconds on a loaded machine, several
    times per connected port: the controller keeps those of `KEEP_PREFIXES`
    open, one user at a time each."""
    if not _kept_name(name):
        handle = NetNS(name)
        try:
            yield handle
        finally:
            handle.close()
        return
    with _kept_guard:
        lock = _kept_locks.setdefault(name, threading.RLock())
    with lock:
        kept = _kept.get(name)
        if kept is None:
            kept = _kept[name] = NetNS(name)
        try:
            yield kept
        except (OSError, NetlinkError):
            _kept.pop(name, None)
            kept.close()
            raise


def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def _delete(ipr: IPRoute, name: str) -> bool:
    idx = _index(ipr, name)
    if idx is None:
        return False
    with contextlib.suppress(NetlinkError):
        ipr.link("del", index=idx)
    return True


def _bridge(ipr: IPRoute, name: str) -> int:
    idx = _index(ipr, name)
    if idx is None:
        ipr.link("add", ifname=name, kind="bridge")
        idx = _index(ipr, name)
        assert idx is not None
    ipr.link("set", index=idx, state="up")
    return idx


@dataclass(frozen=True, slots=True)
class Segment:
    """Where a handle leads at this PIP: the node's own end-user segment, or
    (with `link`) the virtual link's segment on the node's host, where the
    node's interface `iface` on the link hands out the addresses."""

    sliver: str
    node: str
    host_ns: str
    node_ns: str
    link: str = ""
    iface: str = ""

    @property
    def key(self) -> str:
        if self.link:
            return naming.short_hash(self.sliver, self.node, self.link)
        return segment_key(self.sliver, self.node)

    @property
    def bridge(self) -> str:
        return naming.link_bridge(self.sliver, self.link) if self.link else f"va{self.key}"

    @property
    def dhcp_if(self) -> str:
        return self.iface or ATT_IF


class UnknownHandle(LookupError):
    pass


def _names(sliver_name: str, order: str) -> bool:
    """A sliver is `<VNP order>.<index>` (or the order itself, in a lab of one PIP)."""
    if sliver_name == order:
        return True
    head, dot, index = sliver_name.rpartition(".")
    return bool(dot) and head == order and index.isdigit()


def find_segment(slivers: Iterable[Sliver], substrate: str, handle: str,
                 realm: str) -> Segment:
    """The segment an accept's handle names: `<VNP order>/<node>`. The node
    must be a declared attachment point (`<attach>`) of the realm that accepted:
    another VNO's server cannot send its users into this VNet, and a VNet
    without attachment points takes no end users."""
    name, _, node = handle.partition("/")
    if not name or not node:
        raise UnknownHandle(f"handle {handle!r} is not <vnet>/<node>")
    for s in slivers:
        if not _names(s.name, name) or node not in s.embedding.node_map:
            continue
        spec = parse_vnet(s.spec_xml.encode())
        points = {a.node: a for a in spec.attachments}
        point = points.get(node)
        if point is None or point.realm != realm:
            raise UnknownHandle(f"node {node} of {name} is no attachment point of "
                                f"realm {realm!r}")
        host = s.embedding.node_map[node]
        return Segment(s.id, node, naming.host_netns(substrate, host),
                       naming.vnode_netns(substrate, s.id, node), point.link,
                       _link_iface(spec, point.link, node) if point.link else "")
    raise UnknownHandle(f"no VNet at this PIP has a node for handle {handle!r}")


def _link_iface(spec: VNetSpec, link: str, node: str) -> str:
    """The node's interface on `link` (a link of the PIP's part, or a boundary link)."""
    ends = [e for v in spec.links if v.id == link for e in (v.a, v.b)]
    ends += [b.endpoint for b in spec.boundary if b.id == link]
    for end in ends:
        if end.node == node:
            return end.interface.name
    raise UnknownHandle(f"node {node} is no end of link {link}")


def resolve(substrate: str, store: str, handle: str, realm: str) -> Segment:
    """`find_segment` among the slivers of this PIP's ledger."""
    ledger = Ledger(store, substrate)
    try:
        return find_segment(ledger.slivers(), substrate, handle, realm)
    finally:
        ledger.close()


def ensure_segment(directory: Path, seg: Segment, pool: str) -> None:
    """The node's end-user segment: bridge, `att0` with the pool's first
    address, dnsmasq handing out the others; or, on a link, dnsmasq on the
    node's end of the link's segment."""
    if seg.link:
        _ensure_link_segment(directory, seg, pool)
        return
    net = netaddr.IPNetwork(pool)
    inner = f"vn{seg.key}"
    with netns(seg.host_ns) as host:
        bridge = _bridge(host, seg.bridge)
        if _index(host, inner) is None:
            with netns(seg.node_ns) as node:
                _delete(node, ATT_IF)
            host.link("add", ifname=inner, kind="veth",
                      peer={"ifname": ATT_IF, "net_ns_fd": seg.node_ns})
        idx = _index(host, inner)
        assert idx is not None
        host.link("set", index=idx, master=bridge, state="up")
    with netns(seg.node_ns) as node:
        att = _index(node, ATT_IF)
        assert att is not None
        node.link("set", index=att, state="up")
        have = {a.get_attr("IFA_ADDRESS") for a in node.get_addr(index=att, family=2)}
        if str(net.network + 1) not in have:
            node.addr("add", index=att, address=str(net.network + 1), prefixlen=net.prefixlen)
    _dnsmasq(directory, seg, net.network + 2, net.broadcast - 1, net.netmask,
             net.network + 1)


def _ensure_link_segment(directory: Path, seg: Segment, pool: str) -> None:
    """The link's bridge is the VNet's own (its planner made it): only
    checked; the node's address on the link is the devices' gateway."""
    with netns(seg.host_ns) as host:
        if _index(host, seg.bridge) is None:
            raise RuntimeError(f"link {seg.link} has no bridge {seg.bridge} on {seg.host_ns} "
                               "(a bare veth pair between two local nodes, or not the "
                               "kernel bridge path: no end users)")
    with netns(seg.node_ns) as node:
        idx = _index(node, seg.iface)
        if idx is None:
            raise RuntimeError(f"node {seg.node} has no interface {seg.iface}")
        mtu = int(node.get_links(idx)[0].get_attr("IFLA_MTU"))
        addrs = [netaddr.IPNetwork(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
                 for a in node.get_addr(index=idx, family=2)]
    want = netaddr.IPNetwork(pool)
    subnet = next((a for a in addrs if want in a.cidr), None)
    if subnet is None:
        raise RuntimeError(f"{seg.node}'s end of {seg.link} has no address around {pool}")
    first = max(want.first, subnet.first + 1)
    last = min(want.last, subnet.last - 1)
    _dnsmasq(directory, seg, netaddr.IPAddress(first), netaddr.IPAddress(last),
             subnet.netmask, subnet.ip, mtu)


def _dnsmasq(directory: Path, seg: Segment, first: netaddr.IPAddress,
             last: netaddr.IPAddress, netmask: netaddr.IPAddress,
             gateway: netaddr.IPAddress, mtu: int | None = None) -> None:
    leases = directory / "run" / f"dnsmasq-{seg.key}.leases"
    daemons.start(["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
                   f"--interface={seg.dhcp_if}", "--bind-interfaces", "--except-interface=lo",
                   f"--dhcp-range={first},{last},{netmask},1h",
                   f"--dhcp-option=3,{gateway}",
                   *([f"--dhcp-option-force=26,{mtu}"] if mtu else []),
                   f"--dhcp-leasefile={leases}",
                   "--dhcp-authoritative", "--no-ping", "--log-dhcp", "--log-facility=-"],
                  pidfile=directory / "run" / f"dnsmasq-{seg.key}.pid",
                  log=directory / "log" / f"dnsmasq-{seg.key}.log", marker=str(leases),
                  netns=seg.node_ns, settle=0.1)


def remove_segment(directory: Path, seg: Segment) -> None:
    leases = directory / "run" / f"dnsmasq-{seg.key}.leases"
    daemons.stop(directory / "run" / f"dnsmasq-{seg.key}.pid", str(leases))
    leases.unlink(missing_ok=True)
    if seg.link:
        return  # the link's bridge is the VNet's
    with contextlib.suppress(OSError, NetlinkError), netns(seg.host_ns) as host:
        _delete(host, f"vn{seg.key}")
        _delete(host, seg.bridge)


def _members(host_ns: str, bridge: str) -> list[str]:
    with netns(host_ns) as host:
        idx = _index(host, bridge)
        if idx is None:
            return []
        return [link.get_attr("IFLA_IFNAME") for link in host.get_links()
                if link.get_attr("IFLA_MASTER") == idx]


def connect_port(acc: Access, port: str, seg: Segment, pool: str) -> None:
    ensure_segment(acc.directory, seg, pool)
    key = port_key(acc.netns, port)
    up, down = f"vu{key}", f"vd{key}"
    with netns(acc.netns) as sw:
        bridge = _bridge(sw, f"vc{key}")
        if _index(sw, up) is None:
            with netns(seg.host_ns) as host:
                _delete(host, down)
            sw.link("add", ifname=up, kind="veth",
                    peer={"ifname": down, "net_ns_fd": seg.host_ns})
        for name in (up, port):
            idx = _index(sw, name)
            if idx is None:
                raise RuntimeError(f"port {name} vanished")
            sw.link("set", index=idx, master=bridge, state="up")
    with netns(seg.host_ns) as host:
        idx = _index(host, down)
        seg_bridge = _index(host, seg.bridge)
        assert idx is not None and seg_bridge is not None
        host.link("set", index=idx, master=seg_bridge, state="up")


ROAM_PORT = 4790  # VXLAN port of roaming tunnels (the VNets' links use 4789)
DATA_IF = "data0"  # the access switch's interface on the PIP's data network


def _ipv4(ns: str, ifname: str) -> str:
    with netns(ns) as ipr:
        idx = _index(ipr, ifname)
        if idx is None:
            raise RuntimeError(f"{ns} has no {ifname}")
        for a in ipr.get_addr(index=idx, family=2):
            return str(a.get_attr("IFA_ADDRESS"))
    raise RuntimeError(f"{ifname} in {ns} has no IPv4 address")


def _vxlan(ns: str, name: str, vni: int, local: str, remote: str, master: str) -> None:
    with netns(ns) as ipr:
        _delete(ipr, name)
        ipr.link("add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_local=local,
                 vxlan_group=remote, vxlan_port=ROAM_PORT)
        idx, bridge = _index(ipr, name), _index(ipr, master)
        assert idx is not None and bridge is not None
        ipr.link("set", index=idx, master=bridge, state="up", mtu=1450)


def serve_roaming(acc: Access) -> None:
    """Requests of other PIPs whose devices attach to a VNet segment here: a
    VXLAN tunnel from the node's host to their access switch, into the
    segment's bridge (`state: up`), or its removal (`state: down`)."""
    d = acc.directory / "remote"
    if not d.is_dir():
        return
    for req in sorted(d.glob("*.json")):
        done = req.with_suffix(".done")
        try:
            want = json.loads(req.read_text())
        except ValueError:
            continue
        key = req.stem
        if want.get("state") == "up" and not done.exists():
            try:
                seg = resolve(acc.substrate, acc.store, want["handle"], want["realm"])
                ensure_segment(acc.directory, seg, want["pool"])
                local = _ipv4(seg.host_ns, "eth0")
                _vxlan(seg.host_ns, f"vr{key}", int(want["vni"]), local, want["remote"],
                       seg.bridge)
                answer: dict[str, object] = {"ok": True, "remote": local,
                                             "segment": asdict(seg)}
                log.info("roaming port %s: tunnel to %s into %s", key, want["remote"],
                         want["handle"])
            except (UnknownHandle, OSError, NetlinkError, RuntimeError, ValueError,
                    SpecErrors) as exc:
                answer = {"ok": False, "error": str(exc)}
            daemons.write_private(done, json.dumps(answer))
        elif want.get("state") == "down":
            answer = json.loads(done.read_text()) if done.exists() else {}
            seg_data = answer.get("segment")
            if isinstance(seg_data, dict):
                seg = Segment(**seg_data)
                with contextlib.suppress(OSError, NetlinkError):
                    with netns(seg.host_ns) as host:
                        _delete(host, f"vr{key}")
                    left = [m for m in _members(seg.host_ns, seg.bridge)
                            if m.startswith(("vd", "vr"))]
                    if not left:
                        remove_segment(acc.directory, seg)
            done.unlink(missing_ok=True)
            req.unlink(missing_ok=True)
            log.info("roaming port %s: tunnel removed", key)


def roam(acc: Access, port: str, decision: Decision, timeout: float = 5.0) -> Path:
    """Ask the other PIPs for the segment of an accept this PIP does not host;
    the first that has it builds its end of a tunnel, this PIP the other
    (into the port's bridge). Returns the peer's directory."""
    key = port_key(acc.netns, port)
    local = _ipv4(acc.netns, DATA_IF)
    errors = []
    for peer in acc.peers:
        req = peer / "remote" / f"{key}.json"
        daemons.private_dir(req.parent)
        req.with_suffix(".done").unlink(missing_ok=True)
        daemons.write_private(req, json.dumps({"state": "up", "handle": decision.handle,
                                   "realm": decision.realm, "pool": decision.pool,
                                   "remote": local, "vni": int(key[:6], 16)}))
        deadline = time.monotonic() + timeout
        while not req.with_suffix(".done").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        answer = json.loads(req.with_suffix(".done").read_text()) \
            if req.with_suffix(".done").exists() else {"ok": False, "error": "no answer"}
        if answer.get("ok"):
            with netns(acc.netns) as sw:
                bridge = _bridge(sw, f"vc{key}")
                idx = _index(sw, port)
                if idx is None:
                    raise RuntimeError(f"port {port} vanished")
                sw.link("set", index=idx, master=bridge, state="up")
            _vxlan(acc.netns, f"vt{key}", int(key[:6], 16), local, str(answer["remote"]),
                   f"vc{key}")
            return peer
        errors.append(f"{peer.name}: {answer.get('error')}")
        daemons.write_private(req, json.dumps({"state": "down"}))
    raise UnknownHandle("; ".join(errors) or "no other PIP to ask")


def unroam(acc: Access, port: str, peer: Path) -> None:
    key = port_key(acc.netns, port)
    with netns(acc.netns) as sw:
        _delete(sw, f"vt{key}")
        _delete(sw, f"vc{key}")
    req = peer / "remote" / f"{key}.json"
    if req.exists():
        daemons.write_private(req, json.dumps({"state": "down"}))


def disconnect_port(acc: Access, port: str, seg: Segment | None) -> None:
    key = port_key(acc.netns, port)
    with netns(acc.netns) as sw:
        _delete(sw, f"vu{key}")
        _delete(sw, f"vc{key}")
    if seg is not None:
        with contextlib.suppress(OSError, NetlinkError):
            left = [m for m in _members(seg.host_ns, seg.bridge) if m.startswith("vd")]
            if left:
                return
        remove_segment(acc.directory, seg)


def _ask(s: socket.socket, command: str, timeout: float = 1.0) -> str:
    """A command on an attached control socket; events arriving meanwhile
    (they start with `<`) are skipped."""
    s.setblocking(True)
    s.settimeout(timeout)
    try:
        s.send(command.encode())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = s.recv(8192).decode(errors="replace")
            if not data.startswith("<"):
                return data
        return ""
    except OSError:
        return ""
    finally:
        s.setblocking(False)


# -- the controller -------------------------------------------------------------------------


class Controller:
    """Reacts to the authenticators' events; the only writer of the sessions file."""

    def __init__(self, acc: Access) -> None:
        self.acc = acc
        KEEP_PREFIXES[:] = [acc.netns, naming.lab_netns_prefix(acc.substrate)]
        self.ctrl = acc.directory / "ctrl"
        self.socks: dict[str, socket.socket] = {}
        self.sessions: dict[str, dict[str, object]] = sessions(acc.directory)
        self.stopping = False
        # roaming waits for another PIP's controller: in threads, so this one
        # keeps serving events and the other PIPs' requests meanwhile
        self._lock = threading.RLock()
        self._roaming: set[str] = set()
        self._cancelled: set[str] = set()

    def _save(self) -> None:
        with self._lock:
            text = json.dumps(self.sessions, indent=1, sort_keys=True)
            daemons.write_private(self.acc.directory / SESSIONS, text)

    def _attach(self) -> None:
        present = {p.name for p in self.ctrl.iterdir()} if self.ctrl.is_dir() else set()
        for port in list(self.socks):
            if port not in present:
                self.socks.pop(port).close()
        for port in sorted(present - set(self.socks)):
            local = self.acc.directory / "run" / f"c{os.getpid()}-{port}"
            local.unlink(missing_ok=True)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                s.bind(str(local))
                s.connect(str(self.ctrl / port))
                s.send(b"ATTACH")
                s.settimeout(1.0)
                if not s.recv(64).startswith(b"OK"):
                    raise OSError("hostapd refused ATTACH")
                s.setblocking(False)
            except OSError as exc:
                log.info("port %s: no control socket yet (%s)", port, exc)
                s.close()
                continue
            self.socks[port] = s
            log.info("port %s: listening to its authenticator", port)
            self._reconcile(port, s)

    def _reconcile(self, port: str, s: socket.socket) -> None:
        """After a restart: a recorded session whose device the authenticator
        no longer holds authorized ended meanwhile."""
        session = self.sessions.get(port)
        if session is None:
            return
        reply = _ask(s, f"STA {session['device']}")
        if "[AUTHORIZED]" not in reply:
            self.disconnected(port, "ended while the controller was away")

    def _event(self, port: str, text: str) -> None:
        words = text.split()
        if len(words) < 2:
            return
        event, mac = words[0], words[1]
        if event == "AP-STA-CONNECTED":
            self.connected(port, mac)
        elif event == "AP-STA-DISCONNECTED":
            self.disconnected(port, "logoff or end of session")

    def connected(self, port: str, mac: str) -> None:
        decision = last_decision(self.acc.directory, port, mac)
        if decision is None or not decision.accepted:
            log.warning("port %s: %s authorized without an accept on record: left out", port, mac)
            return
        began = time.monotonic()
        try:
            try:
                seg = resolve(self.acc.substrate, self.acc.store, decision.handle,
                              decision.realm)
                resolved = time.monotonic()
            except UnknownHandle:
                if not self.acc.peers:
                    raise
                with self._lock:
                    self._roaming.add(port)
                    self._cancelled.discard(port)
                threading.Thread(target=self._roam, args=(port, mac, decision),
                                 name=f"roam-{port}", daemon=True).start()
                return
            connect_port(self.acc, port, seg, decision.pool)
        except (UnknownHandle, OSError, NetlinkError, RuntimeError, ValueError,
                SpecErrors) as exc:
            log.warning("port %s: %s accepted by %s but not connected: %s", port, mac,
                        decision.realm, exc)
            with contextlib.suppress(OSError, NetlinkError):
                disconnect_port(self.acc, port, None)
            return
        with self._lock:
            self.sessions[port] = {"device": mac_of(mac), "realm": decision.realm,
                                   "handle": decision.handle, "since": time.time(),
                                   "segment": asdict(seg), "pool": decision.pool}
            self._save()
        log.info("port %s: %s of realm %s connected to %s (resolve %.0f ms, connect %.0f ms)",
                 port, mac, decision.realm, decision.handle, (resolved - began) * 1000,
                 (time.monotonic() - resolved) * 1000)

    def _roam(self, port: str, mac: str, decision: Decision) -> None:
        """A thread: the tunnel to the PIP that hosts the accept's segment."""
        try:
            peer = roam(self.acc, port, decision)
        except (UnknownHandle, OSError, NetlinkError, RuntimeError, ValueError) as exc:
            log.warning("port %s: %s accepted by %s but not connected: %s", port, mac,
                        decision.realm, exc)
            with contextlib.suppress(OSError, NetlinkError):
                disconnect_port(self.acc, port, None)
            with self._lock:
                self._roaming.discard(port)
            return
        with self._lock:
            self._roaming.discard(port)
            cancelled = port in self._cancelled
            self._cancelled.discard(port)
            if not cancelled:
                self.sessions[port] = {"device": mac_of(mac), "realm": decision.realm,
                                       "handle": decision.handle, "since": time.time(),
                                       "peer": str(peer), "pool": decision.pool}
                self._save()
        if cancelled:
            with contextlib.suppress(OSError, NetlinkError):
                unroam(self.acc, port, peer)
            log.info("port %s: disconnected while its tunnel was built: removed", port)
            return
        log.info("port %s: %s of realm %s connected to %s at %s", port, mac,
                 decision.realm, decision.handle, peer.name)

    def disconnected(self, port: str, why: str) -> None:
        with self._lock:
            if port in self._roaming:
                self._cancelled.add(port)
            session = self.sessions.pop(port, None)
        seg_data = session.get("segment") if session else None
        seg = Segment(**seg_data) if isinstance(seg_data, dict) else None
        with contextlib.suppress(OSError, NetlinkError):
            if session is not None and "peer" in session:
                unroam(self.acc, port, Path(str(session["peer"])))
            else:
                disconnect_port(self.acc, port, seg)
        if session is not None:
            self._save()
            log.info("port %s: disconnected (%s)", port, why)

    def _sessions_now(self) -> list[str]:
        with self._lock:
            return list(self.sessions)

    def _check_ports(self) -> None:
        """A port whose link went down (device unplugged) leaves its VNet."""
        ports = self._sessions_now()
        if not ports:
            return
        with netns(self.acc.netns) as sw:
            for port in ports:
                idx = _index(sw, port)
                state = None
                if idx is not None:
                    state = sw.get_links(idx)[0].get_attr("IFLA_OPERSTATE")
                if state != "UP":
                    self.disconnected(port, "port down")

    def run(self) -> None:
        for stale in (self.acc.directory / "run").glob("c*-*"):
            with contextlib.suppress(OSError):
                stale.unlink()
        signal.signal(signal.SIGTERM, self._stop)
        last_check = 0.0
        while not self.stopping:
            self._attach()
            ready, _, _ = select.select(list(self.socks.values()), [], [], 0.2)
            for s in ready:
                port = next(p for p, sock in self.socks.items() if sock is s)
                try:
                    data = s.recv(4096).decode(errors="replace")
                except OSError:
                    self.socks.pop(port).close()
                    continue
                text = data.split(">", 1)[-1] if data.startswith("<") else data
                self._event(port, text)
            if time.monotonic() - last_check > 0.3:
                last_check = time.monotonic()
                try:
                    serve_roaming(self.acc)
                    self._check_ports()
                except (OSError, NetlinkError) as exc:
                    log.warning("checking ports: %s", exc)
        for s in self.socks.values():
            s.close()

    def _stop(self, *_: object) -> None:
        self.stopping = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vnetlib.aaa.access")
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--netns", required=True)
    parser.add_argument("--substrate", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--peer", action="append", type=Path, default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(message)s")
    acc = Access(args.dir, args.netns, args.substrate, args.store, secret="",
                 peers=tuple(args.peer))
    os.chdir(args.dir)
    Controller(acc).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
