"""End-user attachment (Interface 6) on a real lab: a device namespace plugged
into a PIP's access port authenticates with 802.1X (wpa_supplicant, hostapd's
wired driver), the PIP's FreeRADIUS proxy relays by realm over RadSec to the
VNO's FreeRADIUS, and on accept the PIP's access controller puts the port into
the VNet, where dnsmasq on the attachment node gives the device an address."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Lab, Vnet, links_in, netns_list, new_lab, ping
from vnetlib import naming
from vnetlib.cli.users import attached as attached_users
from vnetlib.lab import attach as lab_attach
from vnetlib.lab import testbed
from vnetlib.lab.players import service_provider

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("freeradius", "hostapd", "wpa_supplicant", "dnsmasq",
                                         "busybox")),
    reason="scripts/install-aaa.sh installs FreeRADIUS, hostapd, wpa_supplicant, dnsmasq",
)

SPEC = """<?xml version="1.0"?>
<vnet xmlns="urn:vnet:rdl:1" version="1" name="users">
  <node id="e1"/>
  <node id="e2"/>
  <link id="l1">
    <endpoint node="e1" interface="eth1"><address>198.19.0.1/30</address></endpoint>
    <endpoint node="e2" interface="eth1"><address>198.19.0.2/30</address></endpoint>
  </link>
  <attach node="e1" pool="198.19.8.0/24" realm="vno"/>
</vnet>
"""
NODE_ADDRESS = "198.19.8.1"


@dataclass(frozen=True)
class World:
    lab: Lab
    vnet_id: str
    home: Path

    @property
    def aaa(self) -> Path:
        return self.home / "labs" / self.lab.name / "aaa"

    @property
    def access_ns(self) -> str:
        return naming.access_netns(self.lab.substrate)

    def device_ns(self, name: str) -> str:
        return naming.device_netns(self.lab.substrate, name)


@pytest.fixture(scope="module")
def lab_world(vnet: Vnet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    made = new_lab(vnet, "--pips", "1", "--hosts", "2", "--attach")
    try:
        spec = tmp_path_factory.mktemp("attach") / "users.xml"
        spec.write_text(SPEC)
        vnet_id = vnet.json("up", str(spec), "--lab", made.name)["vnet"]
        for user, password in (("alice", "wonder1and"), ("carol", "s3cret")):
            vnet.run("users", "add", f"{user}@vno", "--password-file",
                     str(secret_file(spec.parent, password)), "--vnet", vnet_id,
                     "--node", "e1", "--lab", made.name)
        vnet.run("lab", "device", "add", "d1", "--lab", made.name)
        yield World(made, vnet_id, Path(vnet.env["VNET_HOME"]))
    finally:
        vnet.run("lab", "down", "--name", made.name, check=False)
    assert not [n for n in netns_list() if n.startswith(f"vl-{made.name}p1-")]


def secret_file(directory: Path, password: str) -> Path:
    """A password for the command line, in a file only its owner reads."""
    path = directory / f"pw-{time.monotonic_ns()}"
    path.touch(mode=0o600)
    path.write_text(password + "\n")
    return path


@pytest.fixture
def world(lab_world: World) -> Iterator[World]:
    """The lab, device d1 logged off after each test whatever happened (one
    failure does not leave the next test an attached port)."""
    try:
        yield lab_world
    finally:
        detach(lab_world)


def attach(vnet: Vnet, w: World, identity: str, password: str,
           device: str = "d1") -> dict[str, Any]:
    """In process (the command line's own test is the first one)."""
    got = lab_attach.attach(w.home / "labs" / w.lab.name, device, identity, password)
    return {"outcome": got.outcome, "address": got.address, "seconds": got.seconds}


def detach(w: World, device: str = "d1") -> None:
    lab_attach.detach(w.home / "labs" / w.lab.name, device)


def attach_cli(vnet: Vnet, w: World, identity: str, password: str,
               device: str = "d1") -> dict[str, Any]:
    done = vnet.run("lab", "device", "attach", device, "--identity", identity,
                    "--password-file", str(secret_file(w.aaa.parent, password)),
                    "--lab", w.lab.name, "--json", check=False)
    result: dict[str, Any] = json.loads(done.stdout)
    assert done.returncode == (0 if result["outcome"] == "connected" else 1)
    return result


def sessions(w: World) -> dict[str, Any]:
    path = w.aaa / "pip1" / "sessions.json"
    return json.loads(path.read_text()) if path.exists() else {}


def segment_left(w: World) -> list[str]:
    """What of an attachment is on the substrate: access bridges, end-user
    segments on the hosts, dnsmasq processes of the lab."""
    found = [n for n in links_in(w.access_ns) if n.startswith(("vc", "vu"))]
    for host in ("h1", "h2"):
        found += [n for n in links_in(f"vl-{w.lab.substrate}-{host}")
                  if n.startswith(("va", "vn", "vd"))]
    ps = subprocess.run(["pgrep", "-af", "dnsmasq"], capture_output=True, text=True).stdout
    found += [line for line in ps.splitlines() if str(w.aaa) in line]
    return found


def wait_for(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return bool(check())


def test_attach_ping_detach_and_accounting(vnet: Vnet, world: World) -> None:
    got = attach_cli(vnet, world, "alice@vno", "wonder1and")
    assert got["outcome"] == "connected", got
    assert got["address"].startswith("198.19.8.") and got["address"].endswith("/24")
    assert ping(world.device_ns("d1"), NODE_ADDRESS, count=2)
    listed = vnet.json("lab", "device", "list", "--lab", world.lab.name)
    assert [(a["device"], a["realm"]) for a in listed["attached"]] == [("d1", "vno")]
    sp = service_provider(world.lab.name)
    assert [(a["identity"], a["port"]) for a in attached_users(sp, world.vnet_id)] == [
        ("alice@vno", "p-d1")]
    # the PIP learned the realm and the handle, never the user name or password
    decisions = (world.aaa / "pip1" / "decisions.log").read_text()
    assert "alice" not in decisions and "wonder1and" not in decisions
    assert "wonder1and" not in (world.aaa / "pip1" / "log" / "radius.log").read_text()

    vnet.run("lab", "device", "detach", "d1", "--lab", world.lab.name)
    assert sessions(world) == {}
    assert not ping(world.device_ns("d1"), NODE_ADDRESS, wait=1)
    assert segment_left(world) == []
    e1 = [n for n in netns_list() if n.startswith(f"vn-{world.lab.substrate}-")
          and n.endswith("-e1")]
    assert len(e1) == 1 and "att0" not in links_in(e1[0])
    assert attached_users(sp, world.vnet_id) == []
    records = vnet.json("users", "accounting", "--lab", world.lab.name)
    mine = [(r["status"], r["identity"], r["port"]) for r in records]
    assert ("Start", "alice@vno", "p-d1") in mine and ("Stop", "alice@vno", "p-d1") in mine


@pytest.mark.parametrize(("identity", "password"), [
    ("alice@vno", "wrong-password"),   # wrong password
    ("mallory@vno", "wonder1and"),     # not a user of the VNO
    ("alice@elsewhere", "wonder1and"),  # a realm no VNO of this PIP answers for
])
def test_rejected_devices_get_no_connectivity(vnet: Vnet, world: World, identity: str,
                                              password: str) -> None:
    got = attach(vnet, world, identity, password)
    assert got["outcome"] == "rejected", got
    assert got["address"] is None
    assert sessions(world) == {}
    assert segment_left(world) == []
    assert not ping(world.device_ns("d1"), NODE_ADDRESS, wait=1)


def test_session_end_after_the_user_is_removed_disconnects(vnet: Vnet, world: World) -> None:
    vnet.run("users", "add", "dave@vno", "--password-file",
             str(secret_file(world.aaa.parent, "pw-of-dave")), "--vnet", world.vnet_id,
             "--node", "e1", "--session-timeout", "3", "--lab", world.lab.name)
    got = attach(vnet, world, "dave@vno", "pw-of-dave")
    assert got["outcome"] == "connected", got
    vnet.run("users", "remove", "dave@vno", "--lab", world.lab.name)
    assert "dave@vno" not in [u["identity"] for u in vnet.json("users", "list", "--lab",
                                                                world.lab.name)]
    # at the session's end hostapd re-authenticates; the VNO no longer knows dave
    assert wait_for(lambda: sessions(world) == {}, 12)
    assert not ping(world.device_ns("d1"), NODE_ADDRESS, wait=1)
    assert segment_left(world) == []


def test_port_down_disconnects(vnet: Vnet, world: World) -> None:
    assert attach(vnet, world, "carol@vno", "s3cret")["outcome"] == "connected"
    subprocess.run(["ip", "-n", world.device_ns("d1"), "link", "set", "eth0", "down"],
                   check=True)
    try:
        assert wait_for(lambda: sessions(world) == {}, 5)
        assert segment_left(world) == []
    finally:
        subprocess.run(["ip", "-n", world.device_ns("d1"), "link", "set", "eth0", "up"],
                       check=True)


FLOOD = """
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
mac = open("/sys/class/net/eth0/address").read().strip()
frame = bytes.fromhex("0180c2000003" + mac.replace(":", "") + "888e" + "01010000") + bytes(42)
end = time.monotonic() + float(sys.argv[1])
sent = 0
while time.monotonic() < end:
    s.send(frame)
    sent += 1
print(sent)
"""


def test_eapol_start_flood_opens_nothing(vnet: Vnet, world: World) -> None:
    conf = world.aaa / "pip1" / "ports" / "p-d1.conf"
    hostapd = int((world.aaa / "pip1" / "run" / "hostapd-p-d1.pid").read_text())
    done = subprocess.run(["ip", "netns", "exec", world.device_ns("d1"), sys.executable, "-c",
                           FLOOD, "3"], capture_output=True, text=True, check=True, timeout=30)
    assert int(done.stdout) > 1000
    assert sessions(world) == {} and segment_left(world) == []
    assert not ping(world.device_ns("d1"), NODE_ADDRESS, wait=1)
    assert str(conf).encode() in Path(f"/proc/{hostapd}/cmdline").read_bytes()
    # the port still serves a well-behaved device afterwards
    assert attach(vnet, world, "carol@vno", "s3cret")["outcome"] == "connected"


def test_vno_radius_down_rejects(vnet: Vnet, world: World) -> None:
    pidfile = world.aaa / "vno" / "run" / "server.pid"
    pid = int(pidfile.read_text())
    subprocess.run(["kill", str(pid)], check=True)
    try:
        assert wait_for(lambda: not Path(f"/proc/{pid}").exists(), 5)
        got = attach(vnet, world, "carol@vno", "s3cret")
        assert got["outcome"] == "rejected", got
        assert got["seconds"] < 15
        assert sessions(world) == {} and segment_left(world) == []
    finally:
        # the lab brings the server back on its port (the proxy retries it
        # after 10 s, so later tests of this module would wait; this one is
        # the last)
        lab_attach.up(world.home / "labs" / world.lab.name,
                      testbed.load_spec(world.lab.name).substrates())
    assert Path(f"/proc/{int(pidfile.read_text())}").exists()
