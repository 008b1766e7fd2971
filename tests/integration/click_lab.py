"""A two-host lab for the Click data plane tests and benchmark: two substrate
hosts (network namespaces joined by a veth pair, 198.18.0.0/15 addresses),
virtual nodes (namespaces) attached to link bridges on the hosts, and each
host's Click instance driven through ``vnetlib.click.process.apply`` (what
the module ``vnet.infra.vnet_click`` runs)."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from vnetlib.click.config import CLICK_PORT, OVERHEAD, ClickLink, click_device
from vnetlib.click.process import Instance, apply

SUBSTRATE = ("198.18.200.1", "198.18.200.2")
NODE_MTU = 1500 - OVERHEAD


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(argv), capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {res.stderr.strip()}")
    return res


def nsx(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *argv, check=check)


def throughput(sender: str, receiver: str, dst: str, seconds: float) -> float:
    """Goodput of one TCP stream in Mbit/s (a timed transfer; iperf3 is not installed)."""
    server = (
        "import socket,time\n"
        "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('0.0.0.0',5201)); s.listen(1); print('ready', flush=True)\n"
        "c,_=s.accept(); n=0; t0=None\n"
        "while True:\n"
        "    d=c.recv(1<<16)\n"
        "    if not d: break\n"
        "    if t0 is None: t0=time.monotonic()\n"
        "    else: n+=len(d)\n"
        "print(n*8/(time.monotonic()-t0)/1e6, flush=True)\n"
    )
    client = (
        "import socket,sys,time\n"
        "c=socket.create_connection((sys.argv[1],5201)); b=b'x'*65536\n"
        "end=time.monotonic()+float(sys.argv[2])\n"
        "while time.monotonic()<end: c.sendall(b)\n"
        "c.close()\n"
    )
    srv = subprocess.Popen(["ip", "netns", "exec", receiver, sys.executable, "-c", server],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        nsx(sender, sys.executable, "-c", client, dst, str(seconds))
        out, _ = srv.communicate(timeout=60)
        return float(out.strip())
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()


@dataclass
class Lab:
    prefix: str
    rundir: Path
    hosts: tuple[str, str]
    namespaces: list[str] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)

    def instance(self, i: int) -> Instance:
        return Instance(name=self.hosts[i], netns=self.hosts[i], rundir=self.rundir)

    def node(self, name: str, host: int, bridge: str, addr: str) -> str:
        """A virtual node namespace with eth0 (`addr`) on `bridge` of host `host`."""
        ns = f"{self.prefix}-{name}"
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        hns = self.hosts[host]
        if sh("ip", "-n", hns, "link", "show", bridge, check=False).returncode != 0:
            sh("ip", "-n", hns, "link", "add", bridge, "type", "bridge")
            sh("ip", "-n", hns, "link", "set", bridge, "up")
        port = f"p{secrets.token_hex(4)}"
        sh("ip", "-n", hns, "link", "add", port, "mtu", str(NODE_MTU), "type", "veth",
           "peer", "name", "eth0", "netns", ns, "mtu", str(NODE_MTU))
        sh("ip", "-n", hns, "link", "set", port, "master", bridge, "up")
        sh("ip", "-n", ns, "addr", "add", addr, "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def segment(self, link: str, vni: int, bridge: str, host: int,
                bandwidth_mbps: float | None = None,
                latency_ms: float | None = None) -> ClickLink:
        device = f"vx{secrets.token_hex(4)}"
        return ClickLink(link=link, vni=vni, bridge=bridge, device=device,
                         click_device=click_device(device), local=SUBSTRATE[host],
                         remote=SUBSTRATE[1 - host], bandwidth_mbps=bandwidth_mbps,
                         latency_ms=latency_ms)

    def deploy(self, owner: str, per_host: Sequence[Sequence[ClickLink]],
               present: bool = True) -> list[str]:
        """Applies `owner`'s segments on both hosts; the actions taken."""
        actions = []
        for i, links in enumerate(per_host):
            out = apply(self.instance(i), owner, links, present=present, click=None,
                        port=CLICK_PORT, check_mode=False)
            actions.append(out.action)
        return actions


@contextmanager
def two_hosts(rundir: Path) -> Iterator[Lab]:
    prefix = f"gc{secrets.token_hex(3)}"
    lab = Lab(prefix, rundir, (f"{prefix}-h1", f"{prefix}-h2"))
    try:
        for ns in lab.hosts:
            sh("ip", "netns", "add", ns)
            lab.namespaces.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", lab.hosts[0], "link", "add", "data0", "type", "veth",
           "peer", "name", "data0", "netns", lab.hosts[1])
        for i, ns in enumerate(lab.hosts):
            sh("ip", "-n", ns, "addr", "add", f"{SUBSTRATE[i]}/24", "dev", "data0")
            sh("ip", "-n", ns, "link", "set", "data0", "up")
        yield lab
    finally:
        for i in range(2):
            with contextlib.suppress(Exception):
                lab.instance(i).stop()
        for ns in reversed(lab.namespaces):
            sh("ip", "netns", "del", ns, check=False)
