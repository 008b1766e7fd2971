"""A VNet across two PIPs with different encapsulations, through the players
(SP -> VNO -> VNP -> PIPs): PIP 1 carries its crossing links with Click,
PIP 2 with its switch's VLANs, the inter-PIP links are stitched with VXLAN
(the common fallback); every link pings both ways, and `vnet down` leaves
the hosts and switches as they were."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import EXAMPLES, Lab, Vnet, new_lab
from tests.e2e.test_encap_direct import click_pids, devices, ovs_ports, vxlan_devices
from vnetlib.spec import load_vnet

TWO_PIPS = EXAMPLES / "figure6-2pip.xml"


@pytest.fixture(scope="module")
def mixed(vnet: Vnet) -> Iterator[Lab]:
    # hosts of 2 CPUs: three nodes of one CPU per PIP take both of its hosts
    made = new_lab(vnet, "--pips", "2", "--hosts", "2", "--cpu", "2", "--encap", "click,vlan")
    try:
        yield made
    finally:
        vnet.run("lab", "down", "--name", made.name, check=False)


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


def test_vnet_across_a_click_pip_and_a_vlan_pip_pings(vnet: Vnet, mixed: Lab) -> None:
    p1, p2 = f"{mixed.name}p1", f"{mixed.name}p2"
    home = Path(vnet.env["VNET_HOME"])
    described = {s: (home / "substrates" / s / "substrate.xml").read_text() for s in (p1, p2)}
    assert "<encapsulation>click</encapsulation>" in described[p1]
    assert "<encapsulation>vlan</encapsulation>" in described[p2]
    before = {**devices(p1), **devices(p2)}
    ports_before = ovs_ports(vnet, p2)

    result = vnet.json("up", str(TWO_PIPS), "--lab", mixed.name)
    vnet_id = result["vnet"]
    assert result["status"] == "ready"
    spec = load_vnet(TWO_PIPS)
    for link in spec.links:
        for src, dst in ((link.a, link.b), (link.b, link.a)):
            peer = dst.interface.addresses[0].split("/")[0]
            out = vnet.json("exec", "--lab", mixed.name, vnet_id, src.node, "--",
                            "ping", "-c", "1", "-W", "2", peer)
            assert out["rc"] == 0, f"{link.id}: {src.node} -> {dst.node} failed: {out}"

    where = {n.id: n.location for n in spec.nodes}
    inter = [k.id for k in spec.links if where[k.a.node] != where[k.b.node]]
    # both ends of every inter-PIP link, and nothing else, are kernel VXLAN devices
    tunnels = [d for ns in before if not ns.endswith("-switch") for d in vxlan_devices(ns)]
    assert len(tunnels) == 2 * len(inter)
    # inside Berlin Click carries the links between hosts, inside London the VLANs
    assert bool(click_pids(p1)) == bool(crossing_bridges(p1))
    vlan_ports = {k: v for k, v in ovs_ports(vnet, p2).items() if k not in ports_before}
    assert len(vlan_ports) == 2 * len(crossing_bridges(p2))
    assert crossing_bridges(p1) and crossing_bridges(p2), "no link crossed hosts in a PIP"

    vnet.run("down", "--lab", mixed.name, vnet_id)
    assert {**devices(p1), **devices(p2)} == before
    assert not click_pids(p1)
    assert ovs_ports(vnet, p2) == ports_before
