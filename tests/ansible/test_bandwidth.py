"""A link's bandwidth on the kernel paths, measured with traffic (root).

Deploys, through the collection's playbook onto two throwaway substrate-host
namespaces, three links with three different rates: across the hosts
(VXLAN, bridge, rate on the host ends), between two nodes of one host (one
veth pair straight between them, rate on the node ends), and the same with
`bridged: true` (bridge, rate on the host ends). Then a TCP stream runs
node to node over each link and the receiver's interface counts what came
through: the rate on the wire (Ethernet frames, what tbf meters) must be
within 5 % of the link's bandwidth, and the TCP payload rate at most that.
Changing a rate is a change (check mode, then applied, then idempotent).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ansible import test_deploy_e2e as e2e
from tests.ansible.test_deploy_e2e import Substrate, deploy, sh

collections_path = e2e.collections_path  # the same fixtures
substrate = e2e.substrate

pytestmark = pytest.mark.e2e

SECONDS = 2.0
RECEIVER = r"""
import json, socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("ready", flush=True)
c, _ = s.accept(); total = 0; first = last = None
while True:
    data = c.recv(1 << 16)
    if not data:
        break
    now = time.monotonic(); first = first or now; last = now; total += len(data)
print(json.dumps({"bytes": total, "seconds": (last or 0) - (first or 0)}), flush=True)
"""
SENDER = r"""
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
chunk = b"x" * (1 << 16); end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    c.sendall(chunk)
c.close()
"""


def rx_bytes(netns: str, ifname: str) -> int:
    entry = json.loads(sh("ip", "-n", netns, "-s", "-json", "link", "show", ifname).stdout)[0]
    return int(entry["stats64"]["rx"]["bytes"])


def stream(src: str, dst: str, dst_if: str, address: str) -> tuple[float, float]:
    """(wire Mbit/s, payload Mbit/s) of a TCP stream from namespace `src`
    to `address` in namespace `dst`, which receives on `dst_if`."""
    receiver = subprocess.Popen(["ip", "netns", "exec", dst, sys.executable, "-c", RECEIVER,
                                 address, "5201"], stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
        before = rx_bytes(dst, dst_if)
        subprocess.run(["ip", "netns", "exec", src, sys.executable, "-c", SENDER, address, "5201",
                        str(SECONDS)], check=True, timeout=60)
        out = receiver.stdout.readline()
        receiver.wait(timeout=30)
        frames = rx_bytes(dst, dst_if) - before
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    done = json.loads(out)
    # both over the receiver's first-to-last byte: frames add headers, handshake, ACK-less FIN
    return frames * 8 / done["seconds"] / 1e6, done["bytes"] * 8 / done["seconds"] / 1e6


def make_plan(sub: Substrate, rate_ac: float = 30.0) -> dict:
    def port(node: str, ifname: str, peer: str, address: str, mtu: int = 1500) -> dict:
        return {"netns": sub.node(node), "ifname": ifname, "peer": peer,
                "addresses": [address], "mtu": mtu}

    def tunnel(here: str, there: str) -> dict:
        return {"kind": "vxlan", "device": "vxbw", "vni": 4343, "local": sub.addresses[here],
                "remote": sub.addresses[there], "dstport": 4789}

    def node(name: str) -> dict:
        return {"vnode": name, "netns": sub.node(name), "driver": "netns", "forwarding": True}

    return {"vnet": "bw", "hosts": {
        "h1": {"host": "h1", "nodes": [node("a"), node("c"), node("d")], "links": [
            {"link": "ab", "bridge": "vbbw", "ports": [port("a", "eth0", "vpab", "198.19.11.1/24",
                                                           1450)],
             "tunnel": tunnel("h1", "h2"), "bandwidth_mbps": 20.0},
            {"link": "ac", "bridge": "vbac", "ports": [port("a", "eth1", "vpac", "198.19.12.1/24"),
                                                       port("c", "eth0", "vpca", "198.19.12.2/24")],
             "tunnel": None, "bandwidth_mbps": rate_ac},
            {"link": "cd", "bridge": "vbcd", "bridged": True,
             "ports": [port("c", "eth1", "vpcd", "198.19.13.1/24"),
                       port("d", "eth0", "vpdc", "198.19.13.2/24")],
             "tunnel": None, "bandwidth_mbps": 40.0},
        ]},
        "h2": {"host": "h2", "nodes": [node("b")], "links": [
            {"link": "ab", "bridge": "vbbw", "ports": [port("b", "eth0", "vpba", "198.19.11.2/24",
                                                           1450)],
             "tunnel": tunnel("h2", "h1"), "bandwidth_mbps": 20.0},
        ]},
    }}


def test_link_bandwidth_on_vxlan_veth_and_bridge_paths(substrate: Substrate,
                                                        collections_path: Path) -> None:
    sub = substrate
    plan = make_plan(sub)
    try:
        assert deploy(sub, collections_path, plan, "present") == {"h1": 1, "h2": 1}
        h1 = sh("ip", "-n", sub.hosts["h1"], "-json", "link", "show").stdout
        assert "vbcd" in h1 and "vbac" not in h1  # bridged kept, the pair has none
        measured = {
            "ab (VXLAN)": (20.0, stream(sub.node("a"), sub.node("b"), "eth0", "198.19.11.2")),
            "ac (veth pair)": (30.0, stream(sub.node("a"), sub.node("c"), "eth0", "198.19.12.2")),
            "cd (bridge)": (40.0, stream(sub.node("c"), sub.node("d"), "eth0", "198.19.13.2")),
        }
        for link, (rate, (wire, payload)) in measured.items():
            print(f"{link}: spec {rate} Mbit/s, wire {wire:.2f}, TCP payload {payload:.2f}")
            assert abs(wire - rate) <= 0.05 * rate, (link, rate, wire, payload)
            assert 0.9 * rate <= payload <= wire * 1.01, (link, rate, wire, payload)

        slower = make_plan(sub, rate_ac=15.0)
        assert deploy(sub, collections_path, slower, "present", check=True) == {"h1": 1, "h2": 0}
        assert deploy(sub, collections_path, slower, "present") == {"h1": 1, "h2": 0}
        assert deploy(sub, collections_path, slower, "present") == {"h1": 0, "h2": 0}
        for node, ifname in (("a", "eth1"), ("c", "eth0")):
            qdisc = sh("tc", "-n", sub.node(node), "qdisc", "show", "dev", ifname).stdout
            assert "tbf" in qdisc and "15Mbit" in qdisc
    finally:
        deploy(sub, collections_path, plan, "absent")
