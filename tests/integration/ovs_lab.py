"""A throwaway Open vSwitch with node namespaces for the switch VLAN tests:
the OVS daemons in a short private directory, nodes as namespaces joined by a
veth whose host end becomes a switch port; all removed on exit, daemons
stopped by pid."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vnetlib.switch import daemons

PY = sys.executable

# Runs inside a node namespace: counts frames on eth0 that carry the marker.
LISTEN = r"""
import socket, sys, time
marker = bytes.fromhex(sys.argv[1]); seconds = float(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("eth0", 0)); s.settimeout(0.1)
print("ready", flush=True)
n, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    try:
        if marker in s.recv(65535):
            n += 1
    except TimeoutError:
        pass
print(n, flush=True)
"""

# Runs inside a node namespace: sends one raw frame (hex) on eth0, N times.
SEND = r"""
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for _ in range(int(sys.argv[2])):
    s.send(bytes.fromhex(sys.argv[1])); time.sleep(0.05)
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60)


def nsx(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *argv, check=check)


def pings(ns: str, addr: str, count: int = 2) -> bool:
    out = nsx(ns, "ping", "-c", str(count), "-i", "0.2", "-W", "1", addr, check=False)
    return out.returncode == 0


@dataclass
class Lab:
    """Nodes are namespaces ``<prefix>n<i>`` with eth0; their host ends
    ``<prefix>h<i>`` are what the switch daemon makes access ports."""

    ovs: daemons.OvsInstance
    prefix: str
    nodes: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    def node(self, addr: str, mac: str | None = None) -> tuple[str, str]:
        """A node with ``addr`` on eth0: (namespace, host-side port name)."""
        i = len(self.nodes)
        ns, port = f"{self.prefix}n{i}", f"{self.prefix}h{i}"
        sh("ip", "netns", "add", ns)
        self.nodes.append(ns)
        sh("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self.links.append(port)
        sh("ip", "link", "set", port, "up")
        if mac:
            nsx(ns, "ip", "link", "set", "eth0", "address", mac)
        nsx(ns, "ip", "link", "set", "eth0", "up")
        nsx(ns, "ip", "addr", "add", addr, "dev", "eth0")
        return ns, port

    def veth(self, a: str, b: str) -> None:
        """A veth pair in the root namespace (e.g. a trunk between two bridges)."""
        sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        self.links.append(a)
        sh("ip", "link", "set", a, "up")
        sh("ip", "link", "set", b, "up")

    def mac(self, ns: str) -> str:
        return nsx(ns, "cat", "/sys/class/net/eth0/address").stdout.strip()

    def frames(self, sender: str, frame: bytes, receiver: str, marker: bytes,
               count: int = 5) -> int:
        """How many of ``count`` copies of ``frame`` sent from ``sender``'s eth0
        reach ``receiver``'s eth0 (frames carrying ``marker``)."""
        lst = subprocess.Popen(["ip", "netns", "exec", receiver, PY, "-c", LISTEN,
                                marker.hex(), "2.0"], stdout=subprocess.PIPE, text=True)
        try:
            assert lst.stdout is not None
            assert lst.stdout.readline().strip() == "ready"
            nsx(sender, PY, "-c", SEND, frame.hex(), str(count))
            out, _ = lst.communicate(timeout=30)
            return int(out.strip())
        finally:
            if lst.poll() is None:
                lst.kill()
                lst.wait()


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def tagged_frame(src: str, vlans: list[int], marker: bytes,
                 dst: str = "ff:ff:ff:ff:ff:ff") -> bytes:
    """An Ethernet frame with 802.1Q tags (outermost first), ethertype 0x88b5
    (local experimental) and ``marker`` as payload."""
    tags = b"".join(b"\x81\x00" + vid.to_bytes(2, "big") for vid in vlans)
    body = marker.ljust(46, b"\0")
    return mac_bytes(dst) + mac_bytes(src) + tags + b"\x88\xb5" + body


@contextlib.contextmanager
def ovs_lab() -> Iterator[Lab]:
    try:
        daemons.find_tools()
    except daemons.OvsError as exc:  # pragma: no cover - depends on the machine
        import pytest
        pytest.skip(str(exc))
    rundir = Path(tempfile.mkdtemp(prefix="vnet-ovs-", dir="/tmp"))
    lab = Lab(ovs=daemons.OvsInstance(rundir), prefix="v" + secrets.token_hex(2))
    try:
        lab.ovs = daemons.start(rundir)
        yield lab
    finally:
        for link in lab.links:
            sh("ip", "link", "del", link, check=False)
        for ns in lab.nodes:
            sh("ip", "netns", "del", ns, check=False)
        daemons.stop(lab.ovs)
        shutil.rmtree(rundir, ignore_errors=True)
