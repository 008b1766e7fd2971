"""VM virtual nodes end to end: figure6-vm (routers r1..r4 are QEMU VMs through
libvirt, e1/e2 namespaces) deployed directly on a real lab; `vnet exec` on VM
nodes through their serial console; stop/start/suspend/resume seen by libvirt
and by the neighbours; down leaves no domain, tap or namespace."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import EXAMPLES, Lab, Vnet, netns_list, new_lab
from vnetlib import naming
from vnetlib.spec import load_vnet
from vnetlib.vm import serial

FIGURE6_VM = EXAMPLES / "figure6-vm.xml"
SPEC = load_vnet(FIGURE6_VM)

pytestmark = pytest.mark.skipif(
    not (shutil.which("virsh") and shutil.which("qemu-system-x86_64") and shutil.which("libvirtd")),
    reason="libvirt and QEMU are not installed (scripts/install.sh --test installs them)",
)


@dataclass(frozen=True)
class Deployed:
    lab: Lab
    vnet_id: str

    def domain(self, node: str) -> str:
        return naming.vnode_netns(self.lab.substrate, self.vnet_id, node)


def _virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-c", serial.URI, *args], capture_output=True, text=True,
                          check=True).stdout


def _listed(prefix: str) -> set[str]:
    """libvirt's domains named `prefix`* (none when its daemon is gone: the
    lab stops the one it started)."""
    listed = subprocess.run(["virsh", "-c", serial.URI, "list", "--all", "--name"],
                            capture_output=True, text=True, check=False)
    return {d for d in listed.stdout.split() if d.startswith(prefix)}


def _qemus(prefix: str) -> set[str]:
    """The domains named `prefix`* that a QEMU process still runs."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-system-x86_64"):
            found |= {a.decode().removeprefix("guest=").split(",")[0] for a in argv
                      if a.startswith(b"guest=" + prefix.encode())}
    return found


def _state(domain: str) -> str:
    return _virsh("domstate", domain).strip()


def _address(node: str, link: str) -> str:
    ends = SPEC.link(link)
    end = ends.a if ends.a.node == node else ends.b
    return end.interface.addresses[0].split("/")[0]


def _pings(vnet: Vnet, d: Deployed, src: str, address: str, wait: int = 2) -> bool:
    done = vnet.run("exec", d.vnet_id, src, "--", "ping", "-c", "1", "-W", str(wait), address,
                    check=False)
    return done.returncode == 0


@pytest.fixture(scope="module")
def deployed(vnet: Vnet) -> Iterator[Deployed]:
    lab = new_lab(vnet, "--pips", "1", "--hosts", "2", "--no-players")
    try:
        result = vnet.json("up", str(FIGURE6_VM), "--substrate", lab.substrate)
        yield Deployed(lab, result["vnet"])
    finally:
        vnet.run("lab", "down", "--name", lab.name, check=False)


def test_every_link_pings_both_ways_from_namespaces_and_vms(vnet: Vnet,
                                                            deployed: Deployed) -> None:
    kinds = {n.id: n.kind.value for n in SPEC.nodes}
    assert {kinds[n] for n in ("r1", "r2", "r3", "r4")} == {"qemu"}
    for node in ("r1", "r2", "r3", "r4"):
        assert _state(deployed.domain(node)) == "running"
    for link in SPEC.links:
        for src, dst in ((link.a, link.b), (link.b, link.a)):
            peer = _address(dst.node, link.id)
            assert _pings(vnet, deployed, src.node, peer), \
                f"{link.id}: {src.node} ({kinds[src.node]}) cannot reach {dst.node} ({peer})"


def test_vm_interfaces_on_tunnelled_links_lose_the_vxlan_overhead(vnet: Vnet,
                                                                   deployed: Deployed) -> None:
    """A VM's end of a link between hosts has the namespaces' 1450, so full-size
    frames fit the VXLAN encapsulation on the 1500-byte substrate."""
    node_map = vnet.json("status", deployed.vnet_id)["embedding"]["node_map"]
    assert any(node_map[k.a.node] != node_map[k.b.node] for k in SPEC.links
               if {k.a.node, k.b.node} & {"r1", "r2", "r3", "r4"}), "no VM link crosses hosts"
    for node in ("r1", "r2", "r3", "r4"):
        crossing = sum(1 for k in SPEC.links if node in (k.a.node, k.b.node)
                       and node_map[k.a.node] != node_map[k.b.node])
        out = vnet.json("exec", deployed.vnet_id, node, "--", "ip", "-o", "link")
        assert out["stdout"].count(" mtu 1450 ") == crossing, (node, out["stdout"])


def test_exec_on_a_vm_reports_output_and_exit_status(vnet: Vnet, deployed: Deployed) -> None:
    started = time.monotonic()
    out = vnet.json("exec", deployed.vnet_id, "r1", "--", "ip", "-o", "addr", "show")
    round_trip = time.monotonic() - started
    assert out["rc"] == 0
    assert "198.19.0.2/30" in out["stdout"] and "198.19.0.5/30" in out["stdout"]
    assert "__vnet_" not in out["stdout"] and "r1# " not in out["stdout"]
    assert round_trip < 10, f"exec on a VM took {round_trip:.1f} s"

    done = vnet.run("exec", "--json", deployed.vnet_id, "r1", "--", "sh", "-c",
                    "echo \"it's $0\"; echo to-stderr >&2; exit 3", "a b", check=False)
    assert done.returncode == 3
    quoted = json.loads(done.stdout)
    assert quoted["rc"] == 3
    assert quoted["stdout"] == "it's a b\nto-stderr\n"

    # The exec took the line and gave it back: the lock is free again.
    assert not serial.busy(deployed.domain("r1"))


def test_exec_waits_for_nobody_but_is_refused_while_the_console_is_held(
        vnet: Vnet, deployed: Deployed) -> None:
    lock = serial.hold(deployed.domain("r4"))
    try:
        with pytest.raises(serial.SerialBusy):
            serial.run(deployed.domain("r4"), ["true"], 5, 100, wait=0.5)
    finally:
        serial.release(lock)
    assert serial.run(deployed.domain("r4"), ["echo", "free"], 10, 100) == (0, "free\n")


def test_exec_times_out_with_124_and_the_shell_stays_usable(deployed: Deployed) -> None:
    domain = deployed.domain("r3")
    started = time.monotonic()
    rc, _ = serial.run(domain, ["sleep", "30"], 3, 100)
    assert rc == serial.INTERRUPTED
    assert time.monotonic() - started < 10
    assert serial.run(domain, ["echo", "after"], 10, 100) == (0, "after\n")
    rc, out = serial.run(domain, ["seq", "1", "20000"], 20, 1000)
    assert rc == 0 and out.startswith("1\n2\n") and "[output truncated:" in out


def test_stop_makes_neighbours_lose_it_and_start_boots_it_anew(vnet: Vnet,
                                                               deployed: Deployed) -> None:
    domain = deployed.domain("r2")
    boot_before = serial.run(domain, ["cat", "/proc/sys/kernel/random/boot_id"], 10, 100)[1]
    r2_l2, r2_l5 = _address("r2", "l2"), _address("r2", "l5")
    assert _pings(vnet, deployed, "r1", r2_l2)

    vnet.run("ctl", deployed.vnet_id, "r2", "stop")
    assert _state(domain) == "shut off"
    assert not _pings(vnet, deployed, "r1", r2_l2, wait=1)
    assert not _pings(vnet, deployed, "r4", r2_l5, wait=1)
    refused = vnet.run("exec", deployed.vnet_id, "r2", "--", "true", check=False)
    assert refused.returncode != 0 and "not running" in refused.stderr

    started = time.monotonic()
    vnet.run("ctl", deployed.vnet_id, "r2", "start")
    assert _state(domain) == "running"
    assert _pings(vnet, deployed, "r1", r2_l2)
    assert _pings(vnet, deployed, "r4", r2_l5)
    print(f"r2 start to answering pings: {time.monotonic() - started:.1f} s")
    boot_after = serial.run(domain, ["cat", "/proc/sys/kernel/random/boot_id"], 10, 100)[1]
    assert boot_after.strip() and boot_after != boot_before, "r2 did not boot anew"


def test_suspend_pauses_it_and_resume_brings_it_back(vnet: Vnet, deployed: Deployed) -> None:
    domain = deployed.domain("r1")
    r1_l1 = _address("r1", "l1")
    vnet.run("ctl", deployed.vnet_id, "r1", "suspend")
    try:
        assert _state(domain) == "paused"
        assert not _pings(vnet, deployed, "e1", r1_l1, wait=1)
    finally:
        vnet.run("ctl", deployed.vnet_id, "r1", "resume")
    assert _state(domain) == "running"
    assert _pings(vnet, deployed, "e1", r1_l1)
    assert _pings(vnet, deployed, "r1", _address("e1", "l1"))


def test_down_removes_every_domain_and_lab_down_leaves_nothing(vnet: Vnet,
                                                               deployed: Deployed) -> None:
    prefix = naming.vnode_netns_prefix(deployed.lab.substrate)
    assert len(_listed(prefix)) == 4
    assert _qemus(prefix) == _listed(prefix)
    taps = {naming.vm_tap(deployed.vnet_id, link.id, end.node)
            for link in SPEC.links for end in (link.a, link.b) if end.node.startswith("r")}

    vnet.run("down", deployed.vnet_id)
    assert _listed(prefix) == set() and _qemus(prefix) == set()
    assert not any(n.startswith(prefix) for n in netns_list())

    vnet.run("lab", "down", "--name", deployed.lab.name)
    assert _listed(prefix) == set() and _qemus(prefix) == set()
    assert not any(deployed.lab.name in n for n in netns_list())
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=True).stdout
    assert not any(t in links for t in taps)


def test_vm_nodes_through_the_players_exec_console_and_control(vnet: Vnet) -> None:
    """The chain SP -> VNO -> VNP -> PIP on VM nodes: exec runs on the VM's
    serial line, the serial console answers a piped session, ctl stops and
    starts the domain; down leaves no domain of the VNet."""
    lab = new_lab(vnet, "--pips", "1", "--hosts", "2")
    try:
        vnet_id = vnet.json("up", str(FIGURE6_VM), "--lab", lab.name)["vnet"]
        out = vnet.json("exec", "--lab", lab.name, vnet_id, "r1", "--", "cat",
                        "/proc/sys/kernel/hostname")
        assert out["rc"] == 0 and out["stdout"].strip() == "r1"
        peer = _address("r2", "l2")
        out = vnet.json("exec", "--lab", lab.name, vnet_id, "r1", "--", "ping", "-c", "1",
                        "-W", "2", peer)
        assert out["rc"] == 0, out  # VM to VM over their link
        console = subprocess.run(
            [sys.executable, "-m", "vnetlib.cli.main", "console", "--lab", lab.name, "--kind",
             "serial", vnet_id, "r3"],
            input="cat /proc/sys/kernel/hostname\n", capture_output=True, text=True,
            timeout=60, env=vnet.env, check=False)
        assert "r3" in console.stdout, console.stdout + console.stderr
        assert vnet.json("ctl", "--lab", lab.name, vnet_id, "r2", "stop")["state"] == "stopped"
        domains = _listed(f"vn-{lab.name}p1-")
        assert any(_state(d) == "shut off" for d in domains if d.endswith("-r2"))
        assert vnet.json("ctl", "--lab", lab.name, vnet_id, "r2", "start")["state"] == "running"
        assert vnet.json("status", "--lab", lab.name, vnet_id)["node_states"]["r2"] == "running"
        vnet.run("down", "--lab", lab.name, vnet_id)
        assert _listed(f"vn-{lab.name}p1-") == set()
    finally:
        vnet.run("lab", "down", "--name", lab.name, check=False)
    assert _qemus(f"vn-{lab.name}p1-") == set()
