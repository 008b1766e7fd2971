"""A VNet across two PIPs with different encapsulations, through the players
(SP -> VNO -> VNP -> PIPs): PIP 1 carries its crossing links with Click,
PIP 2 with its switch's VLANs and offers Click between PIPs too
(`--encap click,vlan+click,vlan`), so the inter-PIP links are stitched with
Click, agreed in the stitching message: no kernel VXLAN device anywhere;
every link pings both ways, and `vnet down` leaves the hosts and switches
as they were. Then a VNet across PIPs 2 and 3, both with VLANs inside
(their switches programmed over SSH, `--switch ssh`; the switches are not
joined): the links between them are stitched with VXLAN, the carrier both
offer, and ping. (VXLAN, the fallback when the two offer no other carrier in
common, is agreed and deployed in tests/integration/test_players_encap.py
and runs between PIPs in every other players test.)"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import EXAMPLES, Lab, Vnet, new_lab
from tests.e2e.test_encap_direct import (
    CLICK_RUNDIR,
    click_pids,
    devices,
    ovs_ports,
    vxlan_devices,
)
from vnetlib.spec import load_vnet

TWO_PIPS = EXAMPLES / "figure6-2pip.xml"


@pytest.fixture(scope="module")
def mixed(vnet: Vnet) -> Iterator[Lab]:
    # hosts of 2 CPUs: three nodes of one CPU per PIP take both of its hosts
    made = new_lab(vnet, "--pips", "3", "--hosts", "2", "--cpu", "2", "--encap",
                   "click,vlan+click,vlan", "--switch", "ssh")
    try:
        yield made
    finally:
        vnet.run("lab", "down", "--name", made.name, check=False)


def data_network(vnet: Vnet, substrate: str) -> str:
    """The first three octets of the substrate's data network ("198.18.2.")."""
    text = (Path(vnet.env["VNET_HOME"]) / "substrates" / substrate / "substrate.xml").read_text()
    match = re.search(r'data-address="([0-9.]+)\.[0-9]+', text)
    assert match is not None, substrate
    return match.group(1) + "."


def crossing_bridges(substrate: str) -> set[str]:
    """Link bridges found on two hosts of the substrate: links that cross its hosts."""
    seen: dict[str, int] = {}
    for ns, names in devices(substrate).items():
        if ns.endswith("-switch"):
            continue
        for name in names:
            if name.startswith("vb"):
                seen[name] = seen.get(name, 0) + 1
    return {b for b, n in seen.items() if n > 1}


def pings_everywhere(vnet: Vnet, lab: Lab, vnet_id: str, spec_file: Path) -> None:
    """Every link both ways: one `vnet exec` per node pings its link peers."""
    peers: dict[str, list[str]] = {}
    for link in load_vnet(spec_file).links:
        for src, dst in ((link.a, link.b), (link.b, link.a)):
            peers.setdefault(src.node, []).append(dst.interface.addresses[0].split("/")[0])
    for node, addresses in peers.items():
        script = "for a in " + " ".join(addresses) + \
            '; do ping -c 1 -W 2 "$a" >/dev/null || { echo "$a"; exit 1; }; done'
        out = vnet.json("exec", "--lab", lab.name, vnet_id, node, "--", "sh", "-c", script)
        assert out["rc"] == 0, f"{node} cannot reach {out}"


def test_vnet_across_a_click_pip_and_a_vlan_pip_pings(vnet: Vnet, mixed: Lab) -> None:
    p1, p2 = f"{mixed.name}p1", f"{mixed.name}p2"
    home = Path(vnet.env["VNET_HOME"])
    described = {s: (home / "substrates" / s / "substrate.xml").read_text() for s in (p1, p2)}
    assert "<encapsulation>click</encapsulation>" in described[p1]
    assert "<encapsulation>vlan</encapsulation>\n  <encapsulation>click" in described[p2]
    before = {**devices(p1), **devices(p2)}
    ports_before = ovs_ports(vnet, p2)

    result = vnet.json("up", str(TWO_PIPS), "--lab", mixed.name)
    vnet_id = result["vnet"]
    assert result["status"] == "ready"
    pings_everywhere(vnet, mixed, vnet_id, TWO_PIPS)
    spec = load_vnet(TWO_PIPS)

    where = {n.id: n.location for n in spec.nodes}
    inter = [k.id for k in spec.links if where[k.a.node] != where[k.b.node]]
    # Click carries both ends of every inter-PIP link: no kernel VXLAN device,
    # a Click process at each PIP whose configuration reaches the other PIP
    assert inter
    assert not [d for ns in before if not ns.endswith("-switch") for d in vxlan_devices(ns)]
    for here, there in ((p1, mixed.name + "p2"), (p2, mixed.name + "p1")):
        configs = [f.read_text() for ns in click_pids(here)
                   for f in (CLICK_RUNDIR / ns).glob("**/owners/*.json")]
        peer_net = data_network(vnet, there)
        assert any(peer_net in text for text in configs), f"{here}: no Click segment to {there}"
    # inside London the VLANs carry the links between its hosts
    vlan_ports = {k: v for k, v in ovs_ports(vnet, p2).items() if k not in ports_before}
    assert len(vlan_ports) == 2 * len(crossing_bridges(p2))
    assert crossing_bridges(p1) and crossing_bridges(p2), "no link crossed hosts in a PIP"

    vnet.run("down", "--lab", mixed.name, vnet_id)
    assert {**devices(p1), **devices(p2)} == before
    assert not click_pids(p1)
    assert ovs_ports(vnet, p2) == ports_before


def test_vnet_across_two_vlan_pips_is_stitched_with_vxlan(vnet: Vnet, mixed: Lab,
                                                          tmp_path: Path) -> None:
    p2, p3 = f"{mixed.name}p2", f"{mixed.name}p3"
    spec_file = tmp_path / "figure6-london-paris.xml"
    spec_file.write_text(TWO_PIPS.read_text().replace('location="london"', 'location="paris"')
                         .replace('location="berlin"', 'location="london"'))
    before = {**devices(p2), **devices(p3)}
    ports_before = {p: ovs_ports(vnet, p) for p in (p2, p3)}

    result = vnet.json("up", str(spec_file), "--lab", mixed.name)
    vnet_id = result["vnet"]
    assert result["status"] == "ready"
    pings_everywhere(vnet, mixed, vnet_id, spec_file)
    spec = load_vnet(spec_file)
    where = {n.id: n.location for n in spec.nodes}
    inter = [k.id for k in spec.links if where[k.a.node] != where[k.b.node]]
    # one kernel VXLAN device at each end of each inter-PIP link, none inside
    hosts = [ns for ns in before if not ns.endswith("-switch")]
    assert len([d for ns in hosts for d in vxlan_devices(ns)]) == 2 * len(inter)
    assert not click_pids(p2) and not click_pids(p3)
    for p in (p2, p3):  # inside each PIP its own switch's VLANs
        assert crossing_bridges(p), f"{p}: no link crossed its hosts"
        vlan_ports = {k: v for k, v in ovs_ports(vnet, p).items() if k not in ports_before[p]}
        assert len(vlan_ports) == 2 * len(crossing_bridges(p))

    vnet.run("down", "--lab", mixed.name, vnet_id)
    assert {**devices(p2), **devices(p3)} == before
    assert {p: ovs_ports(vnet, p) for p in (p2, p3)} == ports_before
