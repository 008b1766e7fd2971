"""End-user attachment on a virtual link's segment (`<attach node link>`): the
accepted port joins the link's own bridge on the node's host, the node's end
of the link hands out the device's address (dnsmasq on its interface), the
device reaches both ends of the link directly, and detaching removes the
port and the DHCP server while the link itself stays as it was."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.e2e.conftest import Lab, Vnet, links_in, netns_list, new_lab, ping
from vnetlib import naming
from vnetlib.cli.users import attached as attached_users
from vnetlib.lab import attach as lab_attach
from vnetlib.lab.players import pip_name, service_provider

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("freeradius", "hostapd", "wpa_supplicant", "dnsmasq",
                                         "busybox")),
    reason="scripts/install-aaa.sh installs FreeRADIUS, hostapd, wpa_supplicant, dnsmasq",
)

# 3 of a lab host's 4 cores each: e1 and e2 run on different hosts, so l1 is a
# bridge and a VXLAN tunnel on each and the device reaches e2 through the
# tunnel (a link of two local nodes keeps its bridge because the planner sees
# the attachment point: tests/unit/test_plan_build.py)
SPEC = """<?xml version="1.0"?>
<vnet xmlns="urn:vnet:rdl:1" version="1" name="segment">
  <node id="e1" cpu="3"/>
  <node id="e2" cpu="3"/>
  <link id="l1">
    <endpoint node="e1" interface="eth1"><address>198.19.4.1/24</address></endpoint>
    <endpoint node="e2" interface="eth1"><address>198.19.4.2/24</address></endpoint>
  </link>
  <attach node="e1" link="l1" pool="198.19.4.128/25" realm="vno"/>
</vnet>
"""


@dataclass(frozen=True)
class World:
    lab: Lab
    vnet_id: str
    directory: Path

    @property
    def pip(self) -> Path:
        return self.directory / "aaa" / "pip1"

    @property
    def device_ns(self) -> str:
        return naming.device_netns(self.lab.substrate, "d1")


@pytest.fixture(scope="module")
def world(vnet: Vnet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    made = new_lab(vnet, "--pips", "1", "--hosts", "2", "--attach")
    try:
        spec = tmp_path_factory.mktemp("link") / "segment.xml"
        spec.write_text(SPEC)
        vnet_id = vnet.json("up", str(spec), "--lab", made.name)["vnet"]
        secret = spec.parent / "bob.pw"
        secret.touch(mode=0o600)
        secret.write_text("b0b-on-the-link\n")
        vnet.run("users", "add", "bob@vno", "--password-file", str(secret), "--vnet", vnet_id,
                 "--node", "e1", "--lab", made.name)
        vnet.run("lab", "device", "add", "d1", "--lab", made.name)
        yield World(made, vnet_id, Path(vnet.env["VNET_HOME"]) / "labs" / made.name)
    finally:
        vnet.run("lab", "down", "--name", made.name, check=False)
    assert not [n for n in netns_list() if n.startswith(f"vl-{made.name}p1-")]
    # every AAA daemon of the lab stopped with it, the log rotator too
    aaa = str(Path(vnet.env["VNET_HOME"]) / "labs" / made.name / "aaa")
    ps = subprocess.run(["pgrep", "-af", aaa], capture_output=True, text=True).stdout
    assert ps == ""


def dnsmasqs(w: World) -> list[str]:
    ps = subprocess.run(["pgrep", "-af", "dnsmasq"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if str(w.pip) in line]


def node_ns(w: World, node: str) -> str:
    found = [n for n in netns_list() if n.startswith(f"vn-{w.lab.substrate}-")
             and n.endswith(f"-{node}")]
    assert len(found) == 1
    return found[0]


def test_device_joins_the_link_segment_and_leaves_it_intact(vnet: Vnet, world: World) -> None:
    got = lab_attach.attach(world.directory, "d1", "bob@vno", "b0b-on-the-link")
    assert got.outcome == "connected", got
    assert got.address is not None
    ip, prefix = got.address.split("/")
    assert prefix == "24" and int(ip.rsplit(".", 1)[1]) >= 128  # from the pool, the link's /24
    assert ping(world.device_ns, "198.19.4.1", count=2)  # the serving end
    assert ping(world.device_ns, "198.19.4.2", count=2)  # the other end, same segment

    session = json.loads((world.pip / "sessions.json").read_text())["p-d1"]
    seg = session["segment"]
    assert (seg["link"], seg["iface"], seg["node"]) == ("l1", "eth1", "e1")
    bridge = naming.link_bridge(seg["sliver"], "l1")
    members = subprocess.run(["ip", "-n", seg["host_ns"], "-o", "link", "show", "master",
                              bridge], capture_output=True, text=True, check=True).stdout
    assert " vd" in members  # the port's veth is in the link's own bridge
    assert "att0" not in links_in(node_ns(world, "e1"))  # no node segment was made
    assert len(dnsmasqs(world)) == 1
    sp = service_provider(world.lab.name)
    assert [(a["identity"], a["port"]) for a in attached_users(sp, world.vnet_id)] == [
        ("bob@vno", "p-d1")]
    # `vnet status VNET`: who is attached, at which PIP and port, since when
    status = vnet.json("status", world.vnet_id, "--lab", world.lab.name)
    [user] = status["end_users"]
    assert (user["identity"], user["pip"], user["port"]) == ("bob@vno", pip_name(1), "p-d1")
    since = datetime.strptime(user["since"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    assert abs(since.timestamp() - time.time()) < 60
    text = vnet.run("status", world.vnet_id, "--lab", world.lab.name).stdout
    assert "bob@vno" in text and "p-d1" in text

    lab_attach.detach(world.directory, "d1")
    assert not ping(world.device_ns, "198.19.4.2", wait=1)
    deadline = time.monotonic() + 3
    while dnsmasqs(world) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert dnsmasqs(world) == []
    assert not [n for n in links_in(naming.access_netns(world.lab.substrate))
                if n.startswith(("vc", "vu"))]
    assert bridge in links_in(seg["host_ns"])  # the link stays
    members = subprocess.run(["ip", "-n", seg["host_ns"], "-o", "link", "show", "master",
                              bridge], capture_output=True, text=True, check=True).stdout
    assert " vd" not in members
    done = subprocess.run(["ip", "netns", "exec", node_ns(world, "e1"), "ping", "-c", "1",
                           "-W", "2", "198.19.4.2"], capture_output=True, check=False)
    assert done.returncode == 0  # the VNet's own link still carries traffic
    assert attached_users(sp, world.vnet_id) == []
    assert vnet.json("status", world.vnet_id, "--lab", world.lab.name)["end_users"] == []
