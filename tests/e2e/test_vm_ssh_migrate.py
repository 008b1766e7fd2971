"""A VM node migrates live between two substrate hosts reached over SSH
(`vnet lab up --connection ssh`), through the hosts (issues #15, #13): the
mover opens each host's own libvirt with `qemu+ssh://` (libvirt's remote
helper runs below each host's sshd while it moves) and runs its host
commands over the hosts' ssh; the lab's hosts share one libvirtd, so the
move is QEMU's migration between two of its domains (vnetlib.vm.ssh_move).
The guest is not booted again (its boot id), a loop in it runs on, QEMU
syncs its dirty bitmap twice (vnetlib.vm.migrate.DOWNTIME_LIMIT_MS), and a
10 ms ping from a namespace node over the VM's link answers again from the
new host (the destination's tap made in the shared libvirtd's root
namespace, moved into the target host's and onto its bridge before the
switch: nothing of the VM left in the source host's or the root
namespace). With the target's sshd stopped the move fails naming it and
the guest runs on where it was. Direct path (`vnet migrate --to`, no
players)."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.migrate.ping import Pinger, longest_gap, reachable
from tests.e2e.conftest import Lab, Vnet, ancestors, new_lab
from tests.e2e.test_vm_ssh import _domains, _taps
from vnetlib import naming, paths
from vnetlib.hosts import Hosts
from vnetlib.lab import sshd
from vnetlib.vm import migrate, remote, serial
from vnetlib.vm.domain import domain_logs

SPEC = """<?xml version="1.0" encoding="UTF-8"?>
<vnet xmlns="urn:vnet:rdl:1" version="1" name="sshmv">
  <node id="vm1" kind="vm" hypervisor="qemu" cpu="1" memory="128">
    <console kind="serial"/>
  </node>
  <node id="n1" kind="netns" cpu="1" memory="64"/>
  <link id="l1" bandwidth="100">
    <endpoint node="n1" interface="eth0"><address>198.19.8.1/30</address></endpoint>
    <endpoint node="vm1" interface="eth0"><address>198.19.8.2/30</address></endpoint>
  </link>
</vnet>
"""
VM_ADDRESS = "198.19.8.2"
STALL = 2.0  # seconds without an answer that would mean the link did not follow
LAB_ARGS = ("--pips", "1", "--hosts", "2", "--connection", "ssh", "--no-players")
COUNTER = "/tmp/vnet-counter"

pytestmark = pytest.mark.skipif(
    not (shutil.which("virsh") and shutil.which("qemu-system-x86_64") and shutil.which("libvirtd")),
    reason="libvirt and QEMU are not installed (scripts/install.sh --test installs them)",
)


@dataclass(frozen=True, slots=True)
class Up:
    lab: Lab
    vnet_id: str
    host: str  # where vm1 runs at first

    @property
    def files(self) -> sshd.SshFiles:
        return sshd.files_of(paths.substrate_dir(self.lab.substrate))

    @property
    def hosts(self) -> Hosts:
        return Hosts(paths.substrate_dir(self.lab.substrate) / "inventory.yml")

    @property
    def other(self) -> str:
        return "h2" if self.host == "h1" else "h1"


@pytest.fixture(scope="module")
def up(vnet: Vnet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    lab = new_lab(vnet, *LAB_ARGS)
    try:
        spec = tmp_path_factory.mktemp("sshmv") / "sshmv.xml"
        spec.write_text(SPEC)
        made = vnet.json("up", str(spec), "--substrate", lab.substrate)
        yield Up(lab, made["vnet"], made["node_map"]["vm1"])
    finally:
        vnet.run("lab", "down", "--name", lab.name, check=False)
    assert _domains(f"vn-{lab.substrate}-") == []


def _helpers() -> list[list[int]]:
    """The ancestors of each of libvirt's remote ends of a `qemu+ssh://`
    connection (virt-ssh-helper, or its legacy mode's nc to libvirt-sock)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"virt-ssh-helper" in a or b"libvirt-sock" in a for a in argv[:3]):
            found.append(ancestors(int(cmdline.parent.name)))
    return found


def _guest(up: Up, host: str, script: str) -> str:
    [domain] = _domains(f"vn-{up.lab.substrate}-")
    rc, out = remote.run(up.hosts, host, domain, ["sh", "-c", script], 30, 1000)
    assert rc == 0, out
    return out.strip()


def _nic_taps(domain: str) -> list[str]:
    xml = subprocess.run(["virsh", "-c", serial.URI, "dumpxml", domain],
                         capture_output=True, text=True, check=True).stdout
    return [t.get("dev", "") for t in ET.fromstring(xml).iterfind("devices/interface/target")]


def _move(vnet: Vnet, up: Up, target: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """`vnet migrate --to target`, watching the process tree meanwhile: the
    run, and the hosts under whose sshd a libvirt helper ran."""
    listeners = {h: sshd.running(up.files, h) for h in ("h1", "h2")}
    proc = subprocess.Popen([sys.executable, "-m", "vnetlib.cli.main", "migrate", up.vnet_id,
                             "vm1", "--to", target, "--json"],
                            env=vnet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    seen: set[str] = set()
    try:
        while proc.poll() is None:
            for chain in _helpers():
                seen |= {h for h, pid in listeners.items() if pid is not None and pid in chain}
            time.sleep(0.05)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), seen


def test_a_vm_migrates_live_between_ssh_hosts_through_their_libvirt(
        vnet: Vnet, up: Up) -> None:
    boot = _guest(up, up.host, "cat /proc/sys/kernel/random/boot_id")
    _guest(up, up.host, f"(i=0; while :; do i=$((i+1)); echo $i > {COUNTER}; sleep 0.1; done)"
                        " </dev/null >/dev/null 2>&1 &")
    [before] = _domains(f"vn-{up.lab.substrate}-")

    # The target's sshd stopped: the move fails naming it, the guest runs on.
    assert sshd.stop_host(up.files, up.other)
    try:
        failed, _ = _move(vnet, up, up.other)
        assert failed.returncode != 0 and up.other in failed.stderr, failed.stderr[-1500:]
        # (that one the deployment's check on the target refused); the mover
        # itself, asked directly, cannot open the target's libvirt either
        move = migrate.VmMove(before, f"{before}+x", up.host, up.other, (), None,
                              migrate.Remote(up.hosts.inventory, up.host, up.other))
        with pytest.raises(migrate.MigrationError,
                           match=f"host {up.other}'s libvirt cannot be reached over SSH"):
            migrate.migrate(move)
        assert _domains(f"vn-{up.lab.substrate}-") == [before]
    finally:
        status = json.loads(vnet.run("lab", "status", "--name", up.lab.name, "--json",
                                     check=False).stdout)
        vnet.run("lab", "up", "--name", up.lab.name, *LAB_ARGS,
                 "--mgmt-offset", str(status["config"]["mgmt_offset"]))
    # A move that fails once the destination runs on its tap (no such bridge
    # on the target): the destination and its tap go, from the root
    # namespace and the hosts' alike, and the guest runs on.
    tap = f"vtf{secrets.token_hex(4)}"
    move = migrate.VmMove(before, f"{before}-f", up.host, up.other,
                          (migrate.Nic(tap, "vnf-nobridge"),), None,
                          migrate.Remote(up.hosts.inventory, up.host, up.other))
    with pytest.raises(migrate.MigrationError, match=f"on host {up.other}: .*vnf-nobridge"):
        migrate.migrate(move)
    assert _domains(f"vn-{up.lab.substrate}-") == [before]
    assert [log for log in domain_logs(move.dest) if Path(log).exists()] == []
    for where in (None, *(naming.host_netns(up.lab.substrate, h) for h in ("h1", "h2"))):
        assert tap not in _taps(where), f"the failed move left {tap} in {where or 'root'}"
    assert _guest(up, up.host, "cat /proc/sys/kernel/random/boot_id") == boot
    count = int(_guest(up, up.host, f"cat {COUNTER}"))
    n1 = f"vn-{up.lab.substrate}-{up.vnet_id}-n1"
    assert reachable(n1, VM_ADDRESS, 20), "no ping over the VM's link before the move"

    source_taps = _nic_taps(before)
    assert source_taps, "the VM has no NIC"
    pinger = Pinger(n1, VM_ADDRESS)
    try:
        start = time.time()
        done, through = _move(vnet, up, up.other)
        end = time.time()
        assert reachable(n1, VM_ADDRESS, 10), "no ping over the VM's link after the move"
    finally:
        stamps = pinger.stop()
    gap = longest_gap(stamps, start, end)
    assert done.returncode == 0, done.stderr[-2000:]
    moved: dict[str, Any] = json.loads(done.stdout)
    qemu = moved["timings"]["qemu"]
    print(f"VM migration over SSH {up.host} -> {up.other}: {moved['timings']['total']} s, "
          f"QEMU downtime {qemu['downtime_ms']} ms, {qemu['syncs']} syncs, "
          f"longest ping gap {gap:.3f} s")
    assert gap < STALL, f"the ping over the VM's link stopped for {gap:.1f} s"
    assert moved["to"] == up.other and moved["domain"], moved
    assert through == {"h1", "h2"}, f"libvirt's ssh helper ran below the sshd of {through}"
    assert qemu["syncs"] == 2, qemu
    assert _domains(f"vn-{up.lab.substrate}-") == [moved["domain"]]
    assert _guest(up, up.other, "cat /proc/sys/kernel/random/boot_id") == boot, "rebooted"
    time.sleep(0.3)
    assert int(_guest(up, up.other, f"cat {COUNTER}")) > count, "the guest's loop stopped"
    # the source's definition went with it, and its taps and logs
    assert subprocess.run(["virsh", "-c", serial.URI, "dominfo", before],
                          capture_output=True, check=False).returncode != 0
    assert [log for log in domain_logs(before) if Path(log).exists()] == []
    [tap] = _nic_taps(moved["domain"])
    on_target = _taps(naming.host_netns(up.lab.substrate, up.other))
    assert on_target.get(tap), f"tap {tap} is not on a bridge on {up.other}: {on_target}"
    left = {tap, *source_taps} & (set(_taps(naming.host_netns(up.lab.substrate, up.host)))
                                  | set(_taps(None)))
    assert not left, f"taps {left} left in {up.host}'s or libvirtd's (root) namespace"
