# Copyright (c) 2026, vnet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading a namespace's links, addresses and root qdiscs over rtnetlink, in-process.

``ip -n NS -json -details address show`` costs a process per namespace
(a few milliseconds each, a hundred per run on a host with a hundred
virtual nodes). This module opens a NETLINK_ROUTE socket inside the
namespace (``setns`` for the socket's creation only: a socket stays in
the namespace it was made in) and dumps links, addresses and qdiscs,
parsed into the same ``Iface`` and ``Qdisc`` records as the ``ip -json``
parsers of ``_iproute``. Standard library only, so that it runs with any
target's Python; a caller falls back to ``ip`` when ``NetlinkUnavailable``
is raised.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import struct

from ansible_collections.vnet.infra.plugins.module_utils._iproute import Iface, Qdisc, VxlanParams

NETLINK_ROUTE = 0
RTM_GETLINK = 18
RTM_GETADDR = 22
RTM_GETQDISC = 38
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
IFF_UP = 0x1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINK = 5
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
IFLA_VXLAN_ID = 1
IFLA_VXLAN_GROUP = 2
IFLA_VXLAN_LOCAL = 4
IFLA_VXLAN_LEARNING = 7
IFLA_VXLAN_PORT = 15
IFA_ADDRESS = 1
IFA_LOCAL = 2
TCA_KIND = 1
TCA_OPTIONS = 2
TCA_TBF_PARMS = 1
TCA_TBF_RATE64 = 4
TC_H_ROOT = 0xFFFFFFFF
CLONE_NEWNET = 0x40000000
RT_SCOPE_UNIVERSE = 0

_HDR = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_TCMSG = struct.Struct("=BxxxiIII")
_RTA = struct.Struct("=HH")
_libc = None


class NetlinkUnavailable(Exception):
    """This host or namespace cannot be read over rtnetlink from here."""


def _attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    while offset + 4 <= len(data):
        length, kind = _RTA.unpack_from(data, offset)
        if length < 4:
            break
        found[kind & 0x3FFF] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return found


def _u32(data: bytes | None) -> int | None:
    return None if data is None or len(data) < 4 else struct.unpack("=I", data[:4])[0]


def _name(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode()


def _dump(sock: socket.socket, kind: int, body: bytes, seq: int) -> list[tuple[int, bytes]]:
    """Every message of one NLM_F_DUMP request, as (type, payload)."""
    sock.send(_HDR.pack(_HDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
    messages: list[tuple[int, bytes]] = []
    while True:
        data = sock.recv(1 << 20)
        offset = 0
        while offset + _HDR.size <= len(data):
            length, mtype, _flags, mseq, _pid = _HDR.unpack_from(data, offset)
            if length < _HDR.size:
                raise NetlinkUnavailable("malformed netlink message")
            payload = data[offset + _HDR.size:offset + length]
            offset += (length + 3) & ~3
            if mseq != seq:
                continue
            if mtype == NLMSG_DONE:
                return messages
            if mtype == NLMSG_ERROR:
                code = struct.unpack_from("=i", payload)[0]
                if code:
                    raise NetlinkUnavailable(os.strerror(-code))
                return messages
            messages.append((mtype, payload))


def _vxlan(data: bytes | None) -> VxlanParams | None:
    if data is None:
        return None
    a = _attrs(data)
    group = a.get(IFLA_VXLAN_GROUP)
    remote = ""
    if group is not None and len(group) == 4:
        address = ipaddress.IPv4Address(group)
        remote = "" if address.is_multicast else str(address)
    local = a.get(IFLA_VXLAN_LOCAL)
    port = a.get(IFLA_VXLAN_PORT)
    learning = a.get(IFLA_VXLAN_LEARNING)
    return VxlanParams(
        vni=_u32(a.get(IFLA_VXLAN_ID)) or 0,
        local=str(ipaddress.IPv4Address(local)) if local is not None and len(local) == 4 else "",
        remote=remote,
        dstport=struct.unpack("!H", port[:2])[0] if port else 0,
        learning=bool(learning[0]) if learning else True,
    )


def _links(sock: socket.socket) -> dict[int, dict]:
    found: dict[int, dict] = {}
    for _t, payload in _dump(sock, RTM_GETLINK, _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0), 1):
        _family, _type, index, flags, _change = _IFINFO.unpack_from(payload)
        a = _attrs(payload, _IFINFO.size)
        info = _attrs(a[IFLA_LINKINFO]) if IFLA_LINKINFO in a else {}
        kind = _name(info[IFLA_INFO_KIND]) if IFLA_INFO_KIND in info else ""
        found[index] = dict(
            name=_name(a.get(IFLA_IFNAME, b"")), kind=kind, ifindex=index,
            link_index=_u32(a.get(IFLA_LINK)), up=bool(flags & IFF_UP),
            mtu=_u32(a.get(IFLA_MTU)) or 0, master=_u32(a.get(IFLA_MASTER)),
            vxlan=_vxlan(info.get(IFLA_INFO_DATA)) if kind == "vxlan" else None,
        )
    return found


def _addresses(sock: socket.socket) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for _t, payload in _dump(sock, RTM_GETADDR, _IFADDR.pack(socket.AF_UNSPEC, 0, 0, 0, 0), 2):
        family, prefixlen, _flags, scope, index = _IFADDR.unpack_from(payload)
        if scope != RT_SCOPE_UNIVERSE:
            continue
        a = _attrs(payload, _IFADDR.size)
        raw = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS)
        if raw is None or family not in (socket.AF_INET, socket.AF_INET6):
            continue
        found.setdefault(index, []).append("%s/%d" % (ipaddress.ip_address(raw), prefixlen))
    return found


def _qdiscs(sock: socket.socket) -> dict[int, Qdisc]:
    found: dict[int, Qdisc] = {}
    for _t, payload in _dump(sock, RTM_GETQDISC, _TCMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0), 3):
        _family, index, _handle, parent, _info = _TCMSG.unpack_from(payload)
        if parent != TC_H_ROOT:
            continue
        a = _attrs(payload, _TCMSG.size)
        kind = _name(a.get(TCA_KIND, b""))
        rate = None
        if kind == "tbf" and TCA_OPTIONS in a:
            options = _attrs(a[TCA_OPTIONS])
            if TCA_TBF_RATE64 in options:
                rate = struct.unpack("=Q", options[TCA_TBF_RATE64][:8])[0]
            elif TCA_TBF_PARMS in options and len(options[TCA_TBF_PARMS]) >= 12:
                rate = struct.unpack_from("=I", options[TCA_TBF_PARMS], 8)[0]
        found[index] = Qdisc(kind=kind, rate_bytes=rate)
    return found


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def _socket_in(netns: str | None) -> socket.socket:
    """A NETLINK_ROUTE socket of namespace `netns` (None: this process's)."""
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    if "/" in netns or netns in ("", ".", ".."):
        raise NetlinkUnavailable("invalid namespace name %r" % (netns,))
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        fd = os.open("/run/netns/" + netns, os.O_RDONLY)
        try:
            _setns(fd)
            try:
                return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            finally:
                _setns(home)
        finally:
            os.close(fd)
    finally:
        os.close(home)


def read(netns: str | None, *, qdiscs: bool = False) -> tuple[dict[str, Iface], dict[str, Qdisc]]:
    """(interfaces by name, root qdiscs by device) of `netns` (None: this process's).

    Raises NetlinkUnavailable where netlink or setns cannot be used (the
    caller then reads with ``ip``); FileNotFoundError when the namespace does
    not exist."""
    try:
        sock = _socket_in(netns)
    except FileNotFoundError:
        raise
    except (OSError, AttributeError) as exc:
        raise NetlinkUnavailable(str(exc)) from exc
    try:
        sock.bind((0, 0))
        links = _links(sock)
        addresses = _addresses(sock)
        roots = _qdiscs(sock) if qdiscs else {}
    except OSError as exc:
        raise NetlinkUnavailable(str(exc)) from exc
    finally:
        sock.close()
    names = {index: entry["name"] for index, entry in links.items()}
    ifaces: dict[str, Iface] = {}
    for index, entry in links.items():
        master = entry.pop("master")
        ifaces[entry["name"]] = Iface(master=names.get(master) if master else None,
                                      addresses=tuple(addresses.get(index, ())), **entry)
    return ifaces, {names[i]: q for i, q in roots.items() if i in names}


# --------------------------------------------------------------------------
# Applying a namespace's planned commands
# --------------------------------------------------------------------------

RTM_NEWLINK = 16
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_NEWQDISC = 36
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
TCA_TBF_BURST = 6
TC_LINKLAYER_ETHERNET = 1
PSCHED_TICKS_PER_USEC = 1000 / 64  # PSCHED_SHIFT 6: a tick is 64 ns
_UNITS = {"kbit": 1000, "mbit": 1000 ** 2, "gbit": 1000 ** 3, "bit": 1}


class CommandFailed(Exception):
    """The kernel refused the command at `index` of a batch (those before it ran)."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.message = message


def _attr(kind: int, data: bytes) -> bytes:
    raw = _RTA.pack(4 + len(data), kind) + data
    return raw + b"\0" * ((4 - len(raw) % 4) % 4)


def _ifname(name: str) -> bytes:
    return _attr(IFLA_IFNAME, name.encode() + b"\0")


def _rate_bytes(text: str) -> int:
    for unit, factor in _UNITS.items():
        if text.endswith(unit) and text[:-len(unit)].isdigit():
            return int(text[:-len(unit)]) * factor // 8
    raise NetlinkUnavailable("rate %r" % (text,))


def _usec(text: str) -> int:
    for unit, factor in (("ms", 1000), ("us", 1), ("s", 1000000)):
        if text.endswith(unit) and text[:-len(unit)].isdigit():
            return int(text[:-len(unit)]) * factor
    raise NetlinkUnavailable("time %r" % (text,))


def _tbf(words: list[str]) -> bytes:
    """TCA_OPTIONS of ``tbf rate R burst B latency L``, as tc sends them
    (Ethernet link layer, so the kernel needs no rate table)."""
    if len(words) != 7 or words[0] != "tbf" or words[1::2] != ["rate", "burst", "latency"]:
        raise NetlinkUnavailable("tbf %r" % (words,))
    rate = _rate_bytes(words[2])
    if not words[4].isdigit() or not 0 < rate < 1 << 32:
        raise NetlinkUnavailable("tbf %r" % (words,))
    burst = int(words[4])
    limit = int(rate * _usec(words[6]) / 1e6 + burst)
    ratespec = struct.pack("=BBHhHI", 0, TC_LINKLAYER_ETHERNET, 0, -1, 0, rate)
    buffer = int(1e6 * burst / rate * PSCHED_TICKS_PER_USEC)
    qopt = ratespec + struct.pack("=BBHhHI", 0, 0, 0, 0, 0, 0) + struct.pack("=III", limit, buffer, 0)
    return _attr(TCA_TBF_PARMS, qopt) + _attr(TCA_TBF_BURST, struct.pack("=I", burst))


def _request(argv: list[str]) -> tuple[int, int, bytes | tuple[str, str, object]]:
    """(message type, flags, body) of one planned ``ip -n NS ...`` or
    ``tc -n NS ...`` command; NetlinkUnavailable for any other."""
    program, words = argv[0], argv[3:]
    request = NLM_F_REQUEST | NLM_F_ACK
    if program == "ip" and words[:2] == ["link", "set"]:
        rest = words[3:] if words[2:3] == ["dev"] else words[2:]
        name, change = (rest[0], rest[1:]) if rest else ("", [])
        if change in (["up"], ["down"]):
            up = IFF_UP if change == ["up"] else 0
            return RTM_NEWLINK, request, _IFINFO.pack(socket.AF_UNSPEC, 0, 0, up, IFF_UP) + _ifname(name)
        if len(change) == 2 and change[0] == "mtu" and change[1].isdigit():
            return RTM_NEWLINK, request, (_IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _ifname(name)
                                          + _attr(IFLA_MTU, struct.pack("=I", int(change[1]))))
    if program == "ip" and len(words) == 5 and words[0] == "address" and words[3] == "dev" \
            and words[1] in ("add", "delete"):
        try:
            interface = ipaddress.ip_interface(words[2])
        except ValueError:
            raise NetlinkUnavailable("address %r" % (words[2],)) from None
        return (RTM_NEWADDR if words[1] == "add" else RTM_DELADDR,
                request | (NLM_F_CREATE | NLM_F_EXCL if words[1] == "add" else 0),
                ("dev", words[4], interface))  # the device's index is looked up when sent
    if program == "tc" and len(words) >= 5 and words[:2] == ["qdisc", "replace"] \
            and words[2] == "dev" and words[4] == "root":
        return (RTM_NEWQDISC, request | NLM_F_CREATE | NLM_F_REPLACE,
                ("qdisc", words[3], _attr(TCA_KIND, b"tbf\0") + _attr(TCA_OPTIONS, _tbf(words[5:]))))
    raise NetlinkUnavailable("not done over netlink: %s" % " ".join(argv))


def _ack(sock: socket.socket, seq: int) -> int:
    """The error code (0: done) of request `seq`."""
    while True:
        data = sock.recv(65536)
        offset = 0
        while offset + _HDR.size <= len(data):
            length, mtype, _flags, mseq, _pid = _HDR.unpack_from(data, offset)
            payload = data[offset + _HDR.size:offset + length]
            offset += (length + 3) & ~3
            if mtype == NLMSG_ERROR and mseq == seq:
                return -struct.unpack_from("=i", payload)[0]


def apply(netns: str, commands: list[list[str]]) -> None:
    """Run `commands` (``ip -n NETNS`` / ``tc -n NETNS`` argv lists, in order)
    as rtnetlink requests from this process, through one socket of the
    namespace. Every command is translated before any runs:
    NetlinkUnavailable, with nothing done, when one cannot be (the caller
    runs them with ``ip``/``tc``); CommandFailed names the first refused."""
    requests = [_request(argv) for argv in commands]
    try:
        sock = _socket_in(netns)
    except (OSError, AttributeError) as exc:
        raise NetlinkUnavailable(str(exc)) from exc
    sent = -1
    try:
        sock.bind((0, 0))
        indexes: dict[str, int] | None = None
        for seq, (kind, flags, body) in enumerate(requests, start=100):
            sent = seq - 100
            if isinstance(body, tuple):
                if indexes is None:
                    indexes = {entry["name"]: index for index, entry in _links(sock).items()}
                what, name, detail = body
                index = indexes.get(name)
                if index is None:
                    raise CommandFailed(seq - 100, 'Cannot find device "%s"' % name)
                if what == "dev":
                    family = socket.AF_INET if detail.version == 4 else socket.AF_INET6
                    raw = detail.ip.packed
                    body = (_IFADDR.pack(family, detail.network.prefixlen, 0, RT_SCOPE_UNIVERSE, index)
                            + _attr(IFA_LOCAL, raw) + _attr(IFA_ADDRESS, raw))
                else:
                    body = _TCMSG.pack(socket.AF_UNSPEC, index, 0, TC_H_ROOT, 0) + detail
            sock.send(_HDR.pack(_HDR.size + len(body), kind, flags, seq, 0) + body)
            code = _ack(sock, seq)
            if code:
                raise CommandFailed(seq - 100, "RTNETLINK answers: %s" % os.strerror(code))
    except OSError as exc:
        if sent <= 0:
            raise NetlinkUnavailable(str(exc)) from exc
        raise CommandFailed(sent, str(exc)) from exc
    finally:
        sock.close()
