"""End-to-end: build and install vnet.infra, deploy a plan onto two throwaway
substrate-host namespaces through the netns connection, in the three passes
of community.libvirt's integration tests, ping across the VXLAN, remove it.

Needs root, iproute2 and a kernel with veth, bridge and vxlan.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BINDIR = Path(sys.executable).parent
RECAP = re.compile(
    r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"
    ),
]


def sh(*argv: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60, cwd=cwd)


def netns_list() -> set[str]:
    out = sh("ip", "-json", "netns", "list").stdout.strip()
    return {e["name"] for e in json.loads(out)} if out else set()


def veth_peer(netns: str, ifname: str) -> tuple[str, str]:
    """(namespace, name) of the other end of veth `ifname` in `netns`, looked
    up by index in the namespace its link-netnsid names."""
    entry = json.loads(sh("ip", "-n", netns, "-json", "link", "show", ifname).stdout)[0]
    ids = json.loads(sh("ip", "-n", netns, "-json", "netns", "list-id").stdout)
    other = next(i["name"] for i in ids if i["nsid"] == entry["link_netnsid"])
    found = json.loads(sh("ip", "-n", other, "-json", "link", "show").stdout)
    return other, next(e["ifname"] for e in found if e["ifindex"] == entry["link_index"])


def links_in(netns: str) -> set[str]:
    out = sh("ip", "-n", netns, "-json", "link", "show").stdout
    return {e["ifname"] for e in json.loads(out)}


@dataclass(frozen=True)
class Substrate:
    prefix: str
    hosts: dict[str, str]  # inventory name -> namespace
    addresses: dict[str, str]  # inventory name -> substrate address
    inventory: Path

    def node(self, name: str) -> str:
        return f"{self.prefix}-n-{name}"


@pytest.fixture(scope="session")
def collections_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the collection from the working tree and install it."""
    work = tmp_path_factory.mktemp("collection")
    galaxy = str(BINDIR / "ansible-galaxy")
    sh(galaxy, "collection", "build", "--output-path", str(work), str(ROOT), cwd=work)
    tarball = next(work.glob("vnet-infra-*.tar.gz"))
    sh(
        galaxy,
        "collection",
        "install",
        "--force",
        "-p",
        str(work / "installed"),
        str(tarball),
        cwd=work,
    )
    return work / "installed"


@pytest.fixture
def substrate(tmp_path: Path) -> Iterator[Substrate]:
    """Two substrate-host namespaces joined by a veth, removed afterwards."""
    prefix = "vt" + secrets.token_hex(3)
    hosts = {"h1": f"{prefix}-h1", "h2": f"{prefix}-h2"}
    octet = secrets.randbelow(250) + 1
    addresses = {"h1": f"198.18.{octet}.1", "h2": f"198.18.{octet}.2"}
    try:
        for ns in hosts.values():
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh(
            "ip",
            "-n",
            hosts["h1"],
            "link",
            "add",
            "sub0",
            "type",
            "veth",
            "peer",
            "name",
            "sub0",
            "netns",
            hosts["h2"],
        )
        for name, ns in hosts.items():
            sh("ip", "-n", ns, "address", "add", f"{addresses[name]}/24", "dev", "sub0")
            sh("ip", "-n", ns, "link", "set", "sub0", "up")
        inventory = tmp_path / "inventory.json"
        inventory.write_text(
            json.dumps(
                {
                    "all": {
                        "hosts": {
                            name: {
                                "ansible_connection": "vnet.infra.netns",
                                "ansible_netns_name": ns,
                                "ansible_python_interpreter": sys.executable,
                            }
                            for name, ns in hosts.items()
                        },
                    },
                }
            )
        )
        yield Substrate(prefix, hosts, addresses, inventory)
    finally:
        for ns in sorted(netns_list()):
            if ns.startswith(prefix + "-"):
                sh("ip", "netns", "delete", ns, check=False)


def make_plan(sub: Substrate) -> dict:
    """Nodes a and c on h1, b on h2; link ab crosses by VXLAN, link ac is local."""

    def port(node: str, peer: str, address: str, mtu: int) -> dict:
        return {
            "netns": sub.node(node),
            "ifname": "eth0" if node != "a" or peer != "vpac" else "eth1",
            "peer": peer,
            "addresses": [address],
            "mtu": mtu,
        }

    def tunnel(here: str, there: str) -> dict:
        return {
            "kind": "vxlan",
            "device": "vxab",
            "vni": 4242,
            "local": sub.addresses[here],
            "remote": sub.addresses[there],
            "dstport": 4789,
        }

    def node(name: str) -> dict:
        return {"vnode": name, "netns": sub.node(name), "driver": "netns", "forwarding": True}

    return {
        "vnet": "t",
        "hosts": {
            "h1": {
                "host": "h1",
                "nodes": [node("a"), node("c")],
                "links": [
                    {
                        "link": "ab",
                        "bridge": "vbab",
                        "ports": [port("a", "vpab", "198.19.1.1/24", 1450)],
                        "tunnel": tunnel("h1", "h2"),
                        "bandwidth_mbps": None,
                    },
                    {
                        "link": "ac",
                        "bridge": "vbac",
                        "ports": [
                            port("a", "vpac", "198.19.2.1/24", 1500),
                            port("c", "vpca", "198.19.2.2/24", 1500),
                        ],
                        "tunnel": None,
                        "bandwidth_mbps": 50.0,
                    },
                ],
            },
            "h2": {
                "host": "h2",
                "nodes": [node("b")],
                "links": [
                    {
                        "link": "ab",
                        "bridge": "vbab",
                        "ports": [port("b", "vpba", "198.19.1.2/24", 1450)],
                        "tunnel": tunnel("h2", "h1"),
                        "bandwidth_mbps": None,
                    },
                ],
            },
        },
    }


def run_playbook(
    sub: Substrate, coll: Path, name: str, extra_vars: dict, *, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run a playbook of the collection."""
    extra = sub.inventory.parent / "extra-vars.json"
    extra.write_text(json.dumps(extra_vars))
    env = {
        "PATH": f"{BINDIR}{os.pathsep}{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
        "HOME": os.environ.get("HOME", "/root"),
        "ANSIBLE_COLLECTIONS_PATH": str(coll),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_LOCAL_TEMP": str(sub.inventory.parent / "tmp"),
    }
    argv = [str(BINDIR / "ansible-playbook"), "-i", str(sub.inventory), "-e", f"@{extra}"]
    argv += ["--diff", *(["--check"] if check else []), f"vnet.infra.{name}"]
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd=sub.inventory.parent, timeout=120
    )


def playbook(
    sub: Substrate, coll: Path, name: str, extra_vars: dict, *, check: bool = False
) -> dict[str, int]:
    """Run a playbook of the collection; return changed counts per host."""
    proc = run_playbook(sub, coll, name, extra_vars, check=check)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    recap = {m[0]: m for m in RECAP.findall(proc.stdout)}
    assert set(recap) == {"h1", "h2"}, proc.stdout[-2000:]
    return {host: int(m[2]) for host, m in recap.items()}


def deploy(
    sub: Substrate, coll: Path, plan: dict, state: str, *, check: bool = False
) -> dict[str, int]:
    """Run vnet.infra.deploy_vnet; return changed counts per host."""
    return playbook(sub, coll, "deploy_vnet", {"vnet_plan": plan, "vnet_state": state}, check=check)


def test_deploy_three_passes_ping_and_remove(substrate: Substrate, collections_path: Path) -> None:
    sub = substrate
    plan = make_plan(sub)
    nodes = {sub.node(n) for n in "abc"}

    changed = deploy(sub, collections_path, plan, "present", check=True)
    assert changed["h1"] > 0 and changed["h2"] > 0
    assert not nodes & netns_list(), "check mode created namespaces"
    assert links_in(sub.hosts["h1"]) == {"lo", "sub0"}, "check mode created links"

    # One module run per host and phase: nodes and link segments together.
    assert deploy(sub, collections_path, plan, "present") == {"h1": 1, "h2": 1}
    assert nodes <= netns_list()
    assert {"vbab", "vxab", "vpab"} <= links_in(sub.hosts["h1"])
    # Link ac has two ports on h1 and nothing else: one veth pair straight
    # between a and c, no bridge and no host ends.
    assert not {"vbac", "vpac", "vpca"} & links_in(sub.hosts["h1"])
    assert veth_peer(sub.node("a"), "eth1") == (sub.node("c"), "eth0")

    assert deploy(sub, collections_path, plan, "present", check=True) == {"h1": 0, "h2": 0}
    assert deploy(sub, collections_path, plan, "present") == {"h1": 0, "h2": 0}

    ping = ["ping", "-c", "2", "-W", "2", "-i", "0.2"]
    across = sh("ip", "netns", "exec", sub.node("a"), *ping, "198.19.1.2", check=False)
    assert across.returncode == 0, across.stdout + across.stderr
    local = sh("ip", "netns", "exec", sub.node("a"), *ping, "198.19.2.2", check=False)
    assert local.returncode == 0, local.stdout + local.stderr
    pings = [
        {"netns": sub.node("a"), "address": "198.19.1.2"},
        {"netns": sub.node("b"), "address": "198.19.1.1"},
        {"netns": sub.node("c"), "address": "198.19.2.1"},
    ]
    assert playbook(
        sub, collections_path, "ping_vnet", {"vnet_plan": plan, "vnet_pings": pings}
    ) == {
        "h1": 0,
        "h2": 0,
    }
    for node, ifname in (("a", "eth1"), ("c", "eth0")):
        qdisc = sh("tc", "-n", sub.node(node), "qdisc", "show", "dev", ifname).stdout
        assert "tbf" in qdisc and "50Mbit" in qdisc

    assert deploy(sub, collections_path, plan, "absent") == {"h1": 1, "h2": 1}
    assert not nodes & netns_list()
    for ns in sub.hosts.values():
        assert links_in(ns) == {"lo", "sub0"}
    assert deploy(sub, collections_path, plan, "absent") == {"h1": 0, "h2": 0}


def test_conflicting_object_fails_naming_it(substrate: Substrate, collections_path: Path) -> None:
    sub = substrate
    plan = make_plan(sub)
    sh("ip", "-n", sub.hosts["h1"], "link", "add", "vbab", "type", "veth", "peer", "name", "vbabx")
    proc = run_playbook(
        sub, collections_path, "deploy_vnet", {"vnet_plan": plan, "vnet_state": "present"}
    )
    assert proc.returncode != 0
    assert "vbab exists and is a veth, not a bridge: remove it" in proc.stdout
    # h2 is independent (strategy free) and converged; absent cleans up both
    # and leaves the foreign veth alone.
    assert deploy(sub, collections_path, plan, "absent")["h2"] > 0
    assert not {sub.node(n) for n in "abc"} & netns_list()
    assert links_in(sub.hosts["h1"]) == {"lo", "sub0", "vbab", "vbabx"}
    assert links_in(sub.hosts["h2"]) == {"lo", "sub0"}


SINGLE_OBJECT_PLAY = """
- name: The single-object forms of the modules
  hosts: h1
  gather_facts: false
  tasks:
    - name: One node
      vnet.infra.vnet_node:
        name: "{{ node }}"
        forwarding: false
        state: "{{ state }}"
      when: state == 'present'
    - name: One link segment
      vnet.infra.vnet_link:
        bridge: vbsingle
        ports:
          - {netns: "{{ node }}", ifname: eth0, peer: vpsingle, addresses: [198.19.3.1/24]}
        bandwidth_mbps: 20
        state: "{{ state }}"
    - name: The node again
      vnet.infra.vnet_node:
        name: "{{ node }}"
        state: "{{ state }}"
      when: state == 'absent'
"""


def test_single_object_forms(substrate: Substrate, collections_path: Path) -> None:
    sub = substrate
    play = sub.inventory.parent / "single.yml"
    play.write_text(SINGLE_OBJECT_PLAY)
    node = sub.node("s")

    def run(state: str) -> int:
        env = {
            "PATH": f"{BINDIR}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": os.environ.get("HOME", "/root"),
            "ANSIBLE_COLLECTIONS_PATH": str(collections_path),
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCAL_TEMP": str(sub.inventory.parent / "tmp"),
        }
        argv = [str(BINDIR / "ansible-playbook"), "-i", str(sub.inventory), str(play)]
        argv += ["-e", json.dumps({"node": node, "state": state})]
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=env, cwd=play.parent, timeout=120
        )
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        return int(RECAP.findall(proc.stdout)[0][2])

    assert run("present") == 2
    forwarding = sh("ip", "netns", "exec", node, "sysctl", "-n", "net.ipv4.ip_forward").stdout
    assert forwarding.strip() == "0"
    assert sh("ip", "-n", node, "-br", "address", "show", "eth0").stdout.split()[2] == (
        "198.19.3.1/24"
    )
    assert "tbf" in sh("tc", "-n", sub.hosts["h1"], "qdisc", "show", "dev", "vpsingle").stdout
    assert run("present") == 0
    assert run("absent") == 2
    assert node not in netns_list()
    assert links_in(sub.hosts["h1"]) == {"lo", "sub0"}
    assert run("absent") == 0


def test_a_removal_step_that_fails_does_not_keep_the_others_from_running(
        substrate: Substrate, collections_path: Path) -> None:
    """h1's VLAN segment cannot be taken off its switch (the plan gives the
    SSH driver no switch address, so vnet_vlan fails): the host's nodes and
    links go all the same, and h1 fails naming what is left; a removal
    without that part leaves nothing more to do."""
    sub = substrate
    plan = make_plan(sub)
    assert deploy(sub, collections_path, plan, "present") == {"h1": 1, "h2": 1}
    broken = json.loads(json.dumps(plan))
    broken["hosts"]["h1"]["vlan"] = [
        {"link": "ab", "vlan": 2, "bridge": "vbab", "device": "vxab", "port": "vwab"}]
    broken["hosts"]["h1"]["switch"] = {"driver": "ssh"}
    proc = run_playbook(sub, collections_path, "deploy_vnet",
                        {"vnet_plan": broken, "vnet_state": "absent"})
    assert proc.returncode != 0
    assert "driver is ssh but all of the following are missing: switch_host" in proc.stdout
    assert ("removal incomplete on h1: Click or VLAN segments (Wire the crossing segments "
            "to the switch's VLANs) left; every other step ran") in proc.stdout, proc.stdout[-3000:]
    assert not {sub.node(n) for n in "abc"} & netns_list()
    for ns in sub.hosts.values():
        assert links_in(ns) == {"lo", "sub0"}
    assert deploy(sub, collections_path, plan, "absent") == {"h1": 0, "h2": 0}
