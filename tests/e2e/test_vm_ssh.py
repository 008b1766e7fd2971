"""A VM node on a substrate host reached over SSH (`vnet lab up --connection
ssh`, players as processes): deployed by vnet_domain running on the host
(libvirtd, shared by the lab's hosts, opens its tap in the root namespace;
the module moves it into the host's and onto the link's bridge there), it
answers pings over its link; its serial console, exec and VNC display go
through the host's sshd (an agent there finds the domain through the
host's libvirt), not through the PIP machine's own libvirt; the lab's
hosts share this machine's libvirt, so what proves the path is the
agent's place in the process tree (below the host's sshd) and that with
the host's sshd stopped every one of them fails, naming the host in the
PIP's log, and an open console session ends with a notice."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import Lab, Vnet, ancestors, new_lab, until_in
from vnetlib import naming, paths
from vnetlib.hosts import Hosts
from vnetlib.lab import sshd
from vnetlib.vm import remote, serial
from vnetlib.vm.domain import domain_logs

SPEC = """<?xml version="1.0" encoding="UTF-8"?>
<vnet xmlns="urn:vnet:rdl:1" version="1" name="sshvm">
  <node id="vm1" kind="vm" hypervisor="qemu" cpu="1" memory="128">
    <console kind="serial"/>
    <console kind="vnc"/>
  </node>
  <node id="n1" kind="netns" cpu="1" memory="64"/>
  <link id="l1" bandwidth="100">
    <endpoint node="n1" interface="eth0"><address>198.19.7.1/30</address></endpoint>
    <endpoint node="vm1" interface="eth0"><address>198.19.7.2/30</address></endpoint>
  </link>
</vnet>
"""
HOST = "h1"
OFFSET_ARGS = ("--pips", "1", "--hosts", "1", "--connection", "ssh")

pytestmark = pytest.mark.skipif(
    not (shutil.which("virsh") and shutil.which("qemu-system-x86_64") and shutil.which("libvirtd")),
    reason="libvirt and QEMU are not installed (scripts/install.sh --test installs them)",
)


@dataclass(frozen=True, slots=True)
class Up:
    lab: Lab
    vnet_id: str
    domain: str
    taps: tuple[str, ...]  # the domain's, by its XML

    @property
    def files(self) -> sshd.SshFiles:
        return sshd.files_of(paths.substrate_dir(self.lab.substrate))

    @property
    def hosts(self) -> Hosts:
        return Hosts(paths.substrate_dir(self.lab.substrate) / "inventory.yml")


def _domains(prefix: str) -> list[str]:
    listed = subprocess.run(["virsh", "-c", serial.URI, "list", "--name"],
                            capture_output=True, text=True, check=False)
    return [d for d in listed.stdout.split() if d.startswith(prefix)]


@pytest.fixture(scope="module")
def up(vnet: Vnet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    lab = new_lab(vnet, *OFFSET_ARGS)
    try:
        spec = tmp_path_factory.mktemp("sshvm") / "sshvm.xml"
        spec.write_text(SPEC)
        vnet_id = vnet.json("up", str(spec), "--lab", lab.name)["vnet"]
        domains = _domains(f"vn-{lab.substrate}-")
        assert len(domains) == 1, domains
        xml = subprocess.run(["virsh", "-c", serial.URI, "dumpxml", domains[0]],
                             capture_output=True, text=True, check=True).stdout
        taps = tuple(t.get("dev", "") for t in ET.fromstring(xml).iterfind(
            "devices/interface/target"))
        yield Up(lab, vnet_id, domains[0], taps)
    finally:
        vnet.run("lab", "down", "--name", lab.name, check=False)
    assert _domains(f"vn-{lab.substrate}-") == []


def _taps(netns: str | None) -> dict[str, str | None]:
    """Tap devices in `netns` (None: the root namespace) and their masters."""
    shown = subprocess.run(["ip", *(["-n", netns] if netns else []), "-json", "-details",
                            "link", "show", "type", "tun"],
                           capture_output=True, text=True, check=True)
    return {e["ifname"]: e.get("master") for e in json.loads(shown.stdout or "[]")}


def test_a_vm_with_a_link_answers_over_it_its_tap_in_the_hosts_namespace(
        vnet: Vnet, up: Up) -> None:
    ping = vnet.run("exec", "--lab", up.lab.name, up.vnet_id, "n1", "--",
                    "ping", "-c", "3", "-i", "0.2", "-W", "2", "198.19.7.2", check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    [tap] = up.taps
    on_host = _taps(naming.host_netns(up.lab.substrate, HOST))
    assert on_host.get(tap), f"tap {tap} is not on a bridge in the host's namespace: {on_host}"
    assert tap not in _taps(None), f"tap {tap} left in libvirtd's (root) namespace"


def _console(vnet: Vnet, up: Up, kind: str, linger: float = 1.0) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "vnetlib.cli.main", "console", up.vnet_id, "vm1", "--kind", kind,
         "--lab", up.lab.name, "--linger", str(linger)],
        env=vnet.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)






def _agents(op: str, domain: str) -> list[int]:
    """Processes of the host-side agent serving `op` on `domain`."""
    needle = f'"op": "{op}", "domain": "{domain}"'.encode()
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        program = argv[0].rsplit(b"/", 1)[-1]  # a host's python3 may be a full path
        if (program.startswith(b"python3") and argv[1:2] == [b"-c"]
                and any(needle in a for a in argv[3:])):
            found.append(int(cmdline.parent.name))
    return found


def _finish(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


def test_serial_exec_and_vnc_of_a_vm_go_through_the_hosts_sshd(vnet: Vnet, up: Up) -> None:
    listener = sshd.running(up.files, HOST)
    assert listener is not None
    proc = _console(vnet, up, "serial")
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"echo serial-$((6 * 7))\n")
        proc.stdin.flush()
        seen = until_in(proc, b"serial-42", 60)
        assert b"serial-42" in seen, seen[-400:]
        agents = _agents("serial", up.domain)
        assert len(agents) == 1, agents
        chain = ancestors(agents[0])
        assert listener in chain, f"serial agent not below {HOST}'s sshd {listener}: {chain}"
        # The line is held on the host for the session: an exec is refused.
        busy = vnet.run("exec", "--lab", up.lab.name, up.vnet_id, "vm1", "--", "true",
                        check=False)
        assert busy.returncode != 0 and "console in use" in busy.stderr, busy.stderr
        proc.stdin.close()
        proc.stdin = None
        proc.communicate(timeout=30)
    finally:
        _finish(proc)
    deadline = time.monotonic() + 10
    while _agents("serial", up.domain) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _agents("serial", up.domain) == [], "the session's agent outlived it"
    assert not serial.busy(up.domain)

    ran = vnet.run("exec", "--json", "--lab", up.lab.name, up.vnet_id, "vm1", "--", "sh", "-c",
                   "echo exec-$((6 * 7)); exit 3", check=False)
    done = json.loads(ran.stdout)
    assert ran.returncode == done["rc"] == 3 and done["stdout"] == "exec-42\n", done
    # What the operator's direct `vnet exec` runs: the same agent, over the inventory's SSH.
    assert remote.run(up.hosts, HOST, up.domain, ["echo", "direct"], 30, 100) == (0, "direct\n")

    vnc = _console(vnet, up, "vnc")
    try:
        assert until_in(vnc, b"RFB 003.008\n", 30).startswith(b"RFB 003.008\n")
        assert len(_agents("vnc", up.domain)) == 1
        assert listener in ancestors(_agents("vnc", up.domain)[0])
    finally:
        _finish(vnc)


def test_with_the_hosts_sshd_stopped_sessions_end_and_everything_fails_by_name(
        vnet: Vnet, up: Up) -> None:
    proc = _console(vnet, up, "serial")
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"echo before-$((6 * 7))\n")
        proc.stdin.flush()
        assert b"before-42" in until_in(proc, b"before-42", 60)
        assert sshd.stop_host(up.files, HOST)
        tail = until_in(proc, remote.DROPPED.strip(), 30)
        assert remote.DROPPED.strip() in tail, tail[-300:]
        proc.stdin.close()
        proc.stdin = None
        proc.communicate(timeout=30)
        # The agent on the host ended with the connection: the line is free.
        assert _agents("serial", up.domain) == []
        assert not serial.busy(up.domain)

        started = time.monotonic()
        done = vnet.run("exec", "--lab", up.lab.name, up.vnet_id, "vm1", "--", "true",
                        check=False)
        assert done.returncode != 0
        assert "vm1's host does not answer" in done.stderr, done.stderr
        assert time.monotonic() - started < 30
        with pytest.raises(remote.HostUnreachable, match=f"host {HOST} cannot be reached"):
            remote.run(up.hosts, HOST, up.domain, ["true"], 30, 100)
        for kind in ("serial", "vnc"):
            refused = _console(vnet, up, kind)
            assert refused.stdin is not None
            refused.stdin.close()
            refused.stdin = None
            out, err = refused.communicate(timeout=60)
            assert b"vm1's host does not answer" in out + err, (kind, out[-300:], err[-300:])
        log = (paths.lab_dir(up.lab.name) / "log").rglob("*")
        pip_log = "".join(p.read_text(errors="replace") for p in log
                          if p.is_file() and "p1" in p.name)
        assert f"host {HOST} cannot be reached over SSH" in pip_log
    finally:
        _finish(proc)
        if sshd.running(up.files, HOST) is None:
            status = vnet.run("lab", "status", "--name", up.lab.name, "--json", check=False)
            config = json.loads(status.stdout)["config"]
            vnet.run("lab", "up", "--name", up.lab.name, *OFFSET_ARGS,
                     "--mgmt-offset", str(config["mgmt_offset"]))
    # Back: the host answers again, and the VNet is removed through it.
    assert vnet.json("exec", "--lab", up.lab.name, up.vnet_id, "vm1", "--", "true")["rc"] == 0
    vnet.run("down", "--lab", up.lab.name, up.vnet_id)
    assert _domains(f"vn-{up.lab.substrate}-") == []
    assert _taps(naming.host_netns(up.lab.substrate, HOST)) == {}, "taps left on the host"
    assert not set(_taps(None)) & set(up.taps), "taps left in libvirtd's namespace"
    assert [log for log in domain_logs(up.domain) if Path(log).exists()] == []
