"""Click configurations for vnet's virtual link segments (pure, stdlib only).

Shared by the module ``vnet.infra.vnet_click`` (which merges every VNet's
segments on a host into one configuration) and ``vnetlib.click.config``
(which derives segments from a deployment plan). See that module for the
layout of a configuration.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

CLICK_PORT = 47900
"""UDP port of vnet's Click tunnels (not VXLAN's 4789: both may run on a host)."""
OVERHEAD = 14 + 8 + 8 + 20  # inner Ethernet, VXLAN header, UDP, IPv4: as VXLAN
QUEUE = 1000
TX_QUEUE = 4096
DEVICE_NAME = re.compile(r"[A-Za-z0-9_-]{1,15}")
"""Interface names (bridge and veth ends): they are pasted into the Click text."""
LINK_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
"""Link ids (comments of the Click text): no space, comma, newline or slash."""


class ClickConfigError(ValueError):
    """The links cannot share one Click configuration."""


@dataclass(frozen=True, slots=True)
class ClickLink:
    """One host's end of a virtual link carried by Click."""

    link: str
    vni: int
    bridge: str
    device: str  # veth end on the bridge
    click_device: str  # veth end read and written by Click
    local: str  # this host's substrate address
    remote: str  # the peer host's substrate address
    bandwidth_mbps: float | None = None
    latency_ms: float | None = None

    @property
    def tag(self) -> str:
        return self.click_device


def click_device(device: str) -> str:
    """The Click side of a segment's veth pair (``vx1234abcd`` -> ``ck1234abcd``)."""
    return "ck" + device[2:] if len(device) > 2 else "ck" + device


def _address(value: object) -> str | None:
    """None if `value` is an IPv4 address in its usual form, else why not."""
    try:
        if isinstance(value, str) and str(ipaddress.IPv4Address(value)) == value:
            return None
    except ValueError:
        pass
    return f"{value!r} is not an IPv4 address"


def _fields(lk: ClickLink) -> list[str]:
    """What in one segment could not be pasted into a Click configuration as is."""
    errors = []
    if not isinstance(lk.link, str) or not LINK_ID.fullmatch(lk.link):
        errors.append(f"link id {lk.link!r} is not 1-128 of A-Z a-z 0-9 . _ : -")
        return errors
    for kind, name in (("bridge", lk.bridge), ("device", lk.device),
                       ("click_device", lk.click_device)):
        if not isinstance(name, str) or not DEVICE_NAME.fullmatch(name):
            errors.append(f"link {lk.link}: {kind} {name!r} is not an interface name "
                          "(1-15 of A-Z a-z 0-9 _ -)")
    for kind, addr in (("local", lk.local), ("remote", lk.remote)):
        if (why := _address(addr)) is not None:
            errors.append(f"link {lk.link}: {kind} {why}")
    if isinstance(lk.vni, bool) or not isinstance(lk.vni, int) or not 0 < lk.vni < 1 << 24:
        errors.append(f"link {lk.link}: tunnel id {lk.vni!r} is not 24 bits")
    for kind, num in (("bandwidth", lk.bandwidth_mbps), ("latency", lk.latency_ms)):
        if num is not None and (isinstance(num, bool) or not isinstance(num, (int, float))
                                or not math.isfinite(num)):
            errors.append(f"link {lk.link}: {kind} {num!r} is not a finite number")
    return errors


def check(links: Iterable[ClickLink], port: int = CLICK_PORT) -> tuple[ClickLink, ...]:
    """Sorted by device; refuses what could not be pasted into a Click text
    (names, addresses, numbers: a newline or comma would add elements to a
    process running as root) and what would mix two segments' traffic."""
    links = tuple(links)
    errors = [e for lk in links for e in _fields(lk)]
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 1 << 16:
        errors.append(f"port {port!r} is not a UDP port")
    if errors:
        raise ClickConfigError("; ".join(errors))
    ordered = tuple(sorted(links, key=lambda lk: lk.device))
    locals_ = {lk.local for lk in ordered}
    if len(locals_) > 1:
        errors.append(f"one Click process sends from one address, got {sorted(locals_)}")
    seen_dev: dict[str, str] = {}
    seen_key: dict[tuple[str, int], str] = {}
    for lk in ordered:
        for dev in (lk.device, lk.click_device):
            if dev in seen_dev:
                errors.append(f"links {seen_dev[dev]} and {lk.link} share device {dev}")
            seen_dev[dev] = lk.link
        key = (lk.remote, lk.vni)
        if key in seen_key:
            errors.append(f"links {seen_key[key]} and {lk.link} share tunnel id {lk.vni} "
                          f"towards {lk.remote}")
        seen_key[key] = lk.link
        if lk.bandwidth_mbps is not None and lk.bandwidth_mbps <= 0:
            errors.append(f"link {lk.link}: bandwidth must be positive")
        if lk.latency_ms is not None and lk.latency_ms < 0:
            errors.append(f"link {lk.link}: latency must not be negative")
    if errors:
        raise ClickConfigError("; ".join(errors))
    return ordered


def _vni_hex(vni: int) -> str:
    return f"{vni:06x}"


def _egress(lk: ClickLink, port: int) -> list[str]:
    t = lk.tag
    chain = [f"FromDevice({lk.click_device}, HEADROOM 64)"]
    lines = []
    if lk.bandwidth_mbps is not None:
        rate = round(lk.bandwidth_mbps * 1_000_000 / 8)
        lines.append(f"{t}_shq :: Queue({QUEUE});")
        chain += [f"{t}_shq", f"BandwidthRatedUnqueue({rate}Bps)"]
    if lk.latency_ms:
        lines.append(f"{t}_dlq :: Queue({QUEUE});")
        chain += ["SetTimestamp", f"{t}_dlq", f"DelayUnqueue({lk.latency_ms / 1000:.6f})"]
    chain += [
        "Unstrip(8)",
        f"StoreData(0, \\<08000000 {_vni_hex(lk.vni)}00>)",
        f"UDPIPEncap({lk.local}, {port}, {lk.remote}, {port}, CHECKSUM false)",
        "tx",
    ]
    lines.append(f"{t}_in :: " + "\n    -> ".join(chain) + ";")
    return lines


def render(links: Iterable[ClickLink], *, port: int = CLICK_PORT) -> str:
    """The Click configuration carrying `links` (one host's segments).

    Deterministic: the same links give the same text, whatever their order,
    so the module can compare configurations to decide on a hot swap."""
    ordered = check(links, port)
    out = ["// vnet Click configuration (generated by vnetlib.click.config; do not edit)"]
    if not ordered:
        out.append("Idle -> Discard;")
        return "\n".join(out) + "\n"
    local = ordered[0].local
    out += [f"// host {local}, UDP port {port}; links:"]
    out += [f"//   {lk.link}: {lk.device} <-> {lk.remote} id {lk.vni}"
            + (f", {lk.bandwidth_mbps:g} Mbit/s" if lk.bandwidth_mbps is not None else "")
            + (f", {lk.latency_ms:g} ms" if lk.latency_ms else "")
            for lk in ordered]
    out += [
        "",
        "rs :: RawSocket(UDP, SNAPLEN 9100);",
        f"tx :: Queue({TX_QUEUE});",
        "tx -> rs;",
        "",
    ]
    remotes = sorted({lk.remote for lk in ordered})
    patterns = [f"src host {r} and dst host {local} and udp dst port {port}" for r in remotes]
    out.append("rx :: IPClassifier(" + ",\n    ".join([*patterns, "-"]) + ");")
    out.append("rs -> CheckIPHeader -> rx;")
    out.append(f"rx[{len(remotes)}] -> Discard;")
    for i, remote in enumerate(remotes):
        mine = [lk for lk in ordered if lk.remote == remote]
        name = f"from{i}"
        pats = [f"0/08 4/{_vni_hex(lk.vni)}" for lk in mine]
        out.append(f"// from {remote}")
        out.append(f"{name} :: Classifier(" + ", ".join([*pats, "-"]) + ");")
        out.append(f"rx[{i}] -> StripIPHeader -> Strip(8) -> {name};")
        out.append(f"{name}[{len(mine)}] -> Discard;")
        for j, lk in enumerate(mine):
            out.append(f"{name}[{j}] -> Strip(8) -> {lk.tag}_out :: Queue({QUEUE}) "
                       f"-> ToDevice({lk.click_device});")
    for lk in ordered:
        out.append(f"// link {lk.link}")
        out += _egress(lk, port)
    return "\n".join(out) + "\n"
