"""End-user attachment across two PIPs: a device plugged in at London (PIP 2)
authenticates through London's proxy with the VNO and lands in a VNet whose
attachment node runs in Berlin (PIP 1), through a tunnel London's access
switch and Berlin's host build on request of London's access controller."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Vnet, links_in, netns_list, new_lab, ping
from vnetlib import naming
from vnetlib.cli.users import attached as attached_users
from vnetlib.lab import attach as lab_attach
from vnetlib.lab.players import service_provider

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("freeradius", "hostapd", "wpa_supplicant", "dnsmasq",
                                         "busybox")),
    reason="scripts/install-aaa.sh installs FreeRADIUS, hostapd, wpa_supplicant, dnsmasq",
)

SPEC = """<?xml version="1.0"?>
<vnet xmlns="urn:vnet:rdl:1" version="1" name="berlin">
  <constraints><location>berlin</location></constraints>
  <node id="e1"/>
  <node id="e2"/>
  <link id="l1">
    <endpoint node="e1" interface="eth1"><address>198.19.0.1/30</address></endpoint>
    <endpoint node="e2" interface="eth1"><address>198.19.0.2/30</address></endpoint>
  </link>
  <attach node="e1" pool="198.19.8.0/24" realm="vno"/>
</vnet>
"""


@pytest.fixture(scope="module")
def roaming(vnet: Vnet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    made = new_lab(vnet, "--pips", "2", "--hosts", "2", "--attach")
    try:
        spec = tmp_path_factory.mktemp("roam") / "berlin.xml"
        spec.write_text(SPEC)
        vnet_id = vnet.json("up", str(spec), "--lab", made.name)["vnet"]
        secret = spec.parent / "alice.pw"
        secret.touch(mode=0o600)
        secret.write_text("wonder1and\n")
        vnet.run("users", "add", "alice@vno", "--password-file", str(secret), "--vnet", vnet_id,
                 "--node", "e1", "--lab", made.name)
        vnet.run("lab", "device", "add", "d2", "--pip", "2", "--lab", made.name)
        yield made.name, vnet_id
    finally:
        vnet.run("lab", "down", "--name", made.name, check=False)
    assert not [n for n in netns_list() if n.startswith(f"vl-{made.name}p")]


def tunnels(lab: str) -> list[str]:
    found = [n for n in links_in(naming.access_netns(f"{lab}p2")) if n.startswith(("vc", "vt"))]
    for host in ("h1", "h2"):
        found += [n for n in links_in(f"vl-{lab}p1-{host}") if n.startswith(("va", "vr"))]
    return found


def test_device_at_london_reaches_a_vnet_in_berlin(vnet: Vnet, roaming: tuple[str, str]) -> None:
    lab, vnet_id = roaming
    e1 = [n for n in netns_list() if n.startswith(f"vn-{lab}p1-") and n.endswith("-e1")]
    assert len(e1) == 1  # the attachment node runs in Berlin
    directory = Path(vnet.env["VNET_HOME"]) / "labs" / lab
    got = lab_attach.attach(directory, "d2", "alice@vno", "wonder1and")
    assert got.outcome == "connected", got
    device_ns = naming.device_netns(f"{lab}p2", "d2")
    assert ping(device_ns, "198.19.8.1", count=2)
    assert sorted(n[:2] for n in tunnels(lab)) == ["va", "vc", "vr", "vt"]
    # London relayed for the realm; Berlin's access switch saw no RADIUS at all
    assert "vno" in (directory / "aaa" / "pip2" / "decisions.log").read_text()
    assert not (directory / "aaa" / "pip1" / "decisions.log").exists()
    sessions = json.loads((directory / "aaa" / "pip2" / "sessions.json").read_text())
    assert sessions["p-d2"]["peer"].endswith("pip1")
    sp = service_provider(lab)
    assert [(a["identity"], a["port"]) for a in attached_users(sp, vnet_id)] == [
        ("alice@vno", "p-d2")]

    lab_attach.detach(directory, "d2")
    assert not ping(device_ns, "198.19.8.1", wait=1)
    deadline = time.monotonic() + 3  # Berlin removes its end on its next round
    while tunnels(lab) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tunnels(lab) == []
    assert attached_users(sp, vnet_id) == []
