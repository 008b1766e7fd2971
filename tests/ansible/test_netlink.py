"""The in-process rtnetlink reader and writer of vnet.infra against iproute2 (root).

Each test makes a throwaway namespace, reads it both ways (``_netlink`` and
``ip -json`` / ``tc -json`` through the parsers of ``_iproute``) and compares,
and applies planned commands over netlink and checks them with ``ip``.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest
from ansible_collections.vnet.infra.plugins.module_utils import _netlink
from ansible_collections.vnet.infra.plugins.module_utils._iproute import (
    parse_ifaces,
    parse_root_qdiscs,
    tbf_command,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def netns() -> Iterator[str]:
    name = "vt-nl-" + secrets.token_hex(3)
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def ip_view(name: str) -> tuple[dict, dict]:
    return (parse_ifaces(sh("ip", "-n", name, "-json", "-details", "address", "show")),
            parse_root_qdiscs(sh("tc", "-n", name, "-json", "qdisc", "show")))


def test_read_matches_iproute2(netns: str) -> None:
    ip = ["ip", "-n", netns]
    sh(*ip, "link", "set", "lo", "up")
    sh(*ip, "link", "add", "vta", "mtu", "1450", "type", "veth", "peer", "name", "vtb")
    sh(*ip, "link", "add", "vtbr", "type", "bridge")
    sh(*ip, "link", "set", "dev", "vtb", "master", "vtbr")
    sh(*ip, "address", "add", "198.19.7.1/30", "dev", "vta")
    sh(*ip, "address", "add", "2001:db8:7::1/64", "dev", "vta")
    sh(*ip, "address", "add", "198.18.7.1/24", "dev", "vtbr")
    sh(*ip, "link", "set", "dev", "vta", "up")
    sh(*ip, "link", "set", "dev", "vtbr", "up")
    sh(*ip, "link", "add", "vtx", "type", "vxlan", "id", "4711", "local", "198.18.7.1",
       "remote", "198.18.7.2", "dstport", "4789", "nolearning")
    sh(*ip, "link", "set", "dev", "vtx", "master", "vtbr")
    sh("tc", "-n", netns, "qdisc", "replace", "dev", "vta", "root", "tbf", "rate", "25mbit",
       "burst", "15000", "latency", "50ms")
    ifaces, qdiscs = _netlink.read(netns, qdiscs=True)
    want_ifaces, want_qdiscs = ip_view(netns)
    # ip names a veth peer in the same namespace instead of giving its index
    for name in ("vta", "vtb"):
        assert ifaces[name].link_index == want_ifaces[name].ifindex ^ ifaces["vta"].ifindex \
            ^ ifaces["vtb"].ifindex
        ifaces[name] = want_ifaces[name]
    assert ifaces == want_ifaces
    assert ifaces["vtx"].vxlan is not None and ifaces["vtx"].vxlan.remote == "198.18.7.2"
    assert qdiscs == want_qdiscs
    assert qdiscs["vta"].rate_bytes == 25_000_000 // 8
    with pytest.raises(FileNotFoundError):
        _netlink.read(netns + "-gone")


def test_apply_does_what_ip_and_tc_would(netns: str) -> None:
    sh("ip", "-n", netns, "link", "add", "vta", "type", "veth", "peer", "name", "vtb")
    n = ["ip", "-n", netns]
    _netlink.apply(netns, [
        [*n, "link", "set", "lo", "up"],
        [*n, "link", "set", "dev", "vta", "mtu", "1400"],
        [*n, "address", "add", "198.19.8.1/30", "dev", "vta"],
        [*n, "address", "add", "2001:db8:8::1/64", "dev", "vta"],
        [*n, "link", "set", "dev", "vta", "up"],
        tbf_command("vta", 12.5, netns),
    ])
    ifaces, qdiscs = ip_view(netns)
    assert ifaces["lo"].up and ifaces["vta"].up and ifaces["vta"].mtu == 1400
    assert set(ifaces["vta"].addresses) == {"198.19.8.1/30", "2001:db8:8::1/64"}
    assert qdiscs["vta"].kind == "tbf" and qdiscs["vta"].rate_bytes == 12_500_000 // 8
    # the same qdisc as tc makes from the same command line
    sh("ip", "-n", netns, "link", "add", "vtc", "type", "veth", "peer", "name", "vtd")
    sh(*tbf_command("vtc", 12.5, netns))

    def options(dev: str) -> dict:
        return json.loads(sh("tc", "-n", netns, "-json", "qdisc", "show", "dev", dev))[0]["options"]

    assert options("vta") == options("vtc")

    _netlink.apply(netns, [[*n, "address", "delete", "198.19.8.1/30", "dev", "vta"],
                           [*n, "link", "set", "dev", "vta", "down"]])
    ifaces, _ = ip_view(netns)
    assert not ifaces["vta"].up and "198.19.8.1/30" not in ifaces["vta"].addresses


def test_apply_names_the_refused_command_and_skips_unknown_ones(netns: str) -> None:
    sh("ip", "-n", netns, "link", "add", "vta", "type", "veth", "peer", "name", "vtb")
    n = ["ip", "-n", netns]
    with pytest.raises(_netlink.CommandFailed) as failed:
        _netlink.apply(netns, [[*n, "address", "add", "198.19.9.1/30", "dev", "vta"],
                               [*n, "address", "add", "198.19.9.1/30", "dev", "vta"],
                               [*n, "link", "set", "dev", "vta", "up"]])
    assert failed.value.index == 1 and "File exists" in failed.value.message
    ifaces, _ = ip_view(netns)
    assert ifaces["vta"].addresses == ("198.19.9.1/30",) and not ifaces["vta"].up
    with pytest.raises(_netlink.CommandFailed) as missing:
        _netlink.apply(netns, [[*n, "link", "set", "dev", "nothere", "up"]])
    assert missing.value.index == 0 and "No such device" in missing.value.message
    # a command it does not know: nothing runs, the caller uses ip
    with pytest.raises(_netlink.NetlinkUnavailable):
        _netlink.apply(netns, [[*n, "link", "set", "dev", "vta", "up"],
                               [*n, "route", "add", "default", "dev", "vta"]])
    assert not ip_view(netns)[0]["vta"].up
