"""The remote switch driver end to end: a real OpenSSH sshd in a switch
namespace fronting that namespace's Open vSwitch; the switch daemon, in the
root namespace, sets VLANs over SSH (paramiko) and the nodes behind the switch
ping in the same VLAN and not across VLANs; an unknown host key is refused."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from ovs_lab import nsx, pings, sh

from vnetlib.switch import daemons
from vnetlib.switch.daemon import PortRef, SwitchDaemon, VlanPool
from vnetlib.switch.driver import OvsError
from vnetlib.switch.remote import SshOvsDriver

SSHD = os.path.realpath(shutil.which("sshd") or "/usr/sbin/sshd")
pytestmark = pytest.mark.skipif(not Path(SSHD).exists(), reason="openssh-server missing")
ADDR, PEER, PORT = "198.18.30.2", "198.18.30.1", 2222


@dataclass
class Switch:
    ns: str
    ovs: daemons.OvsInstance
    key: Path  # the client's private key file
    host_key: str  # the sshd's public key line
    prefix: str


@pytest.fixture
def switch() -> Iterator[Switch]:
    daemons.find_tools()
    prefix = "s" + secrets.token_hex(2)
    ns = f"{prefix}sw"
    work = Path(tempfile.mkdtemp(prefix="vnet-ssh-", dir="/tmp"))
    sshd: subprocess.Popen[bytes] | None = None
    ovs = daemons.OvsInstance(work / "ovs", ns)
    try:
        sh("ip", "netns", "add", ns)
        nsx(ns, "ip", "link", "set", "lo", "up")
        sh("ip", "link", "add", f"{prefix}m", "type", "veth", "peer", "name", "mgmt",
           "netns", ns)
        sh("ip", "addr", "add", f"{PEER}/30", "dev", f"{prefix}m")
        sh("ip", "link", "set", f"{prefix}m", "up")
        nsx(ns, "ip", "addr", "add", f"{ADDR}/30", "dev", "mgmt")
        nsx(ns, "ip", "link", "set", "mgmt", "up")
        ovs = daemons.start(work / "ovs", netns=ns)
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "host"))
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "client"))
        (work / "authorized_keys").write_text((work / "client.pub").read_text())
        (work / "sshd_config").write_text(
            f"ListenAddress {ADDR}\nPort {PORT}\nHostKey {work / 'host'}\n"
            f"AuthorizedKeysFile {work / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
            f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            f"StrictModes no\nPidFile {work / 'sshd.pid'}\nLoginGraceTime 5\n")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        sshd = subprocess.Popen(["ip", "netns", "exec", ns, SSHD, "-D", "-e", "-f",
                                 str(work / "sshd_config")], stderr=subprocess.DEVNULL)
        end = time.monotonic() + 10
        while nsx(ns, "ss", "-Htln", f"sport = :{PORT}").stdout.strip() == "":
            assert sshd.poll() is None and time.monotonic() < end, "sshd did not start"
            time.sleep(0.05)
        yield Switch(ns, ovs, work / "client", (work / "host.pub").read_text(), prefix)
    finally:
        if sshd is not None:
            sshd.terminate()
            sshd.wait(timeout=10)
            _end_sessions(ns)
        daemons.stop(ovs)
        sh("ip", "link", "del", f"{prefix}m", check=False)
        for i in range(3):
            sh("ip", "netns", "del", f"{prefix}n{i}", check=False)
        sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(work, ignore_errors=True)


def _end_sessions(ns: str) -> None:
    """Our sshd's per-connection processes outlive it: end those in the
    switch namespace (only our sshd runs there)."""
    try:
        target = os.stat(f"/run/netns/{ns}")
    except FileNotFoundError:
        return
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            st = os.stat(proc / "ns" / "net")
            exe = os.readlink(proc / "exe")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino) and exe == SSHD:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGTERM)


def _node(sw: Switch, i: int, addr: str) -> str:
    """A node namespace whose eth0's peer ``<prefix>h<i>`` is in the switch namespace."""
    ns, port = f"{sw.prefix}n{i}", f"{sw.prefix}h{i}"
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", port, "netns", sw.ns, "type", "veth", "peer", "name", "eth0",
       "netns", ns)
    nsx(sw.ns, "ip", "link", "set", port, "up")
    nsx(ns, "ip", "link", "set", "eth0", "up")
    nsx(ns, "ip", "addr", "add", addr, "dev", "eth0")
    return port


def test_ssh_driver_sets_vlans_end_to_end(switch: Switch, tmp_path: Path) -> None:
    sw = switch
    with SshOvsDriver(ADDR, f"{sw.prefix}br", port=PORT, key_file=sw.key,
                      host_key=sw.host_key, db=sw.ovs.remote) as drv:
        ports = [_node(sw, i, f"198.18.31.{i + 1}/24") for i in range(3)]
        d = SwitchDaemon(VlanPool(tmp_path / "vlans.sqlite", "remote"), {"s": drv},
                         {"s": []})
        v1 = d.attach("v1", "l1", [PortRef("s", ports[0]), PortRef("s", ports[1])])
        v2 = d.attach("v2", "l1", [PortRef("s", ports[2])])
        have = drv.ports()
        assert (have[ports[0]].mode, have[ports[0]].tag) == ("access", v1)
        assert have[ports[2]].tag == v2 != v1
        assert not drv.set_access(ports[0], v1)  # idempotent: nothing sent
        assert pings(f"{sw.prefix}n0", "198.18.31.2")
        assert not pings(f"{sw.prefix}n0", "198.18.31.3", count=1)
        assert drv.set_trunk(ports[2], [v2, v1]) and drv.ports()[ports[2]].trunks == (v1, v2)
        d.detach("v1", "l1")
        assert ports[0] not in drv.ports() and d.pool.lookup("v1", "l1") is None


def test_ssh_driver_refuses_unknown_host_key(switch: Switch, tmp_path: Path) -> None:
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other"))
    other = (tmp_path / "other.pub").read_text()
    with pytest.raises(OvsError, match=f"switch {ADDR}:{PORT}: .*(host key|Host key)"):
        SshOvsDriver(ADDR, "br0", port=PORT, key_file=switch.key, host_key=other,
                     db=switch.ovs.remote)
    known = tmp_path / "known_hosts"
    known.write_text(f"[{ADDR}]:{PORT} {other}")
    with pytest.raises(OvsError, match=f"switch {ADDR}:{PORT}: .*(host key|Host key)"):
        SshOvsDriver(ADDR, "br0", port=PORT, key_file=switch.key, known_hosts=known,
                     db=switch.ovs.remote)
    known.write_text(f"[{ADDR}]:{PORT} {switch.host_key}")
    with SshOvsDriver(ADDR, "br0", port=PORT, key_file=switch.key, known_hosts=known,
                      db=switch.ovs.remote) as drv:
        assert drv.ports() == {}
