"""The four players as separate processes: `vnet up` goes SP -> VNO -> VNP ->
PIPs, a VNet spans two PIPs and pings across its inter-PIP links, locations
decide the PIP, the VNO sees no substrate names, state survives a restart, and
`vnet lab down` leaves no process, namespace or link behind."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import EXAMPLES, Lab, Vnet, netns_list, new_lab
from vnetlib.spec import load_vnet

TWO_PIPS = EXAMPLES / "figure6-2pip.xml"


@pytest.fixture(scope="module")
def chain(vnet: Vnet) -> Iterator[Lab]:
    """A lab of two PIPs (two hosts each), a VNP and a VNO, as processes."""
    made = new_lab(vnet, "--pips", "2", "--hosts", "2")
    try:
        yield made
    finally:
        vnet.run("lab", "down", "--name", made.name, check=False)


def _players(vnet: Vnet, lab: Lab) -> dict[str, dict[str, object]]:
    players: dict[str, dict[str, object]] = vnet.json("lab", "status", "--name", lab.name)[
        "players"
    ]
    return players


def _pid(vnet: Vnet, lab: Lab, player: str) -> int:
    home = Path(vnet.env["VNET_HOME"])
    return int((home / "labs" / lab.name / "run" / f"{player}.pid").read_text())


def test_players_run_as_separate_processes(vnet: Vnet, chain: Lab) -> None:
    players = _players(vnet, chain)
    assert {p["role"] for p in players.values()} == {"pip", "vnp", "vno"}
    assert all(p["running"] for p in players.values())
    pids = {_pid(vnet, chain, name) for name in players}
    assert len(pids) == len(players) == 4


def test_vnet_across_two_pips_pings_over_inter_pip_links(vnet: Vnet, chain: Lab) -> None:
    result = vnet.json("up", str(TWO_PIPS), "--lab", chain.name)
    vnet_id = result["vnet"]
    assert result["status"] == "ready"
    spec = load_vnet(TWO_PIPS)
    assert result["name"] == spec.name
    assert set(result["timings"]) == {"parse", "negotiate", "allocate", "provision", "stitch",
                                      "chain"}

    # Locations decide the PIP: PIP 1 owns Berlin, PIP 2 owns London.
    where = {node.id: node.location for node in spec.nodes}
    namespaces = netns_list()
    for node, location in where.items():
        substrate = f"{chain.name}p1" if location == "berlin" else f"{chain.name}p2"
        assert any(n.startswith(f"vn-{substrate}-") and n.endswith(f"-{node}")
                   for n in namespaces), f"{node} ({location}) is not on {substrate}"

    # Every link, inter-PIP ones included (l3, l4, l5), carries traffic both ways.
    crossing = [k.id for k in spec.links if where[k.a.node] != where[k.b.node]]
    assert crossing == ["l3", "l4", "l5"]
    for link in spec.links:
        for src, dst in ((link.a, link.b), (link.b, link.a)):
            peer = dst.interface.addresses[0].split("/")[0]
            out = vnet.json("exec", "--lab", chain.name, vnet_id, src.node, "--",
                            "ping", "-c", "1", "-W", "2", peer)
            assert out["rc"] == 0, f"{link.id}: {src.node} -> {dst.node} failed: {out}"

    # Out-of-VNet exec runs in the node's network, unprivileged: it cannot
    # read the PIP's keys and state or change the node's interfaces.
    out = vnet.json("exec", "--lab", chain.name, vnet_id, "r1", "--", "id", "-u")
    assert 200_000 <= int(out["stdout"]) < 300_000  # the VNet's own uid, not root or nobody
    home = vnet.env["VNET_HOME"]
    for probe in (["ls", f"{home}/labs/{chain.name}/pki"], ["cat", "/etc/shadow"],
                  ["ip", "link", "set", "lo", "down"]):
        done = vnet.run("exec", "--json", "--lab", chain.name, vnet_id, "r1", "--", *probe,
                        check=False)
        assert json.loads(done.stdout)["rc"] != 0, f"{probe} should be refused: {done.stdout}"

    # Control through the chain (Interface 5): a stopped node stops answering
    # across the inter-PIP link l3, started it answers again.
    l3 = next(k for k in spec.links if k.id == "l3")
    far = l3.b.interface.addresses[0].split("/")[0]

    def l3_answers() -> bool:
        done = vnet.run("exec", "--json", "--lab", chain.name, vnet_id, l3.a.node, "--",
                        "ping", "-c", "1", "-W", "1", far, check=False)
        return json.loads(done.stdout)["rc"] == 0

    ctl = vnet.json("ctl", "--lab", chain.name, vnet_id, l3.b.node, "stop")
    assert ctl["state"] == "stopped"
    assert not l3_answers()
    states = vnet.json("status", "--lab", chain.name, vnet_id)["node_states"]
    assert states[l3.b.node] == "stopped" and states[l3.a.node] == "running"
    assert vnet.json("ctl", "--lab", chain.name, vnet_id, l3.b.node, "start")["state"] == "running"
    assert l3_answers()

    # The VNO's view names no PIP, substrate or host.
    view = json.dumps(vnet.json("status", "--lab", chain.name, vnet_id))
    for secret in (f"{chain.name}p1", f"{chain.name}p2", "pip1", "pip2", '"h1"', '"h2"',
                   "198.18."):
        assert secret not in view

    vnet.run("down", "--lab", chain.name, vnet_id)
    assert not [n for n in netns_list() if n.startswith(f"vn-{chain.name}p")]


def test_a_restarted_vno_recovers_its_vnets(vnet: Vnet, chain: Lab) -> None:
    vnet_id = vnet.json("up", str(EXAMPLES / "figure6.xml"), "--lab", chain.name)["vnet"]
    offset = vnet.json("lab", "status", "--name", chain.name)["config"]["mgmt_offset"]
    os.kill(_pid(vnet, chain, "vno"), signal.SIGTERM)
    done = vnet.run("status", "--lab", chain.name, vnet_id, check=False)
    assert done.returncode == 5, done.stderr  # the lab runs no VNO now
    assert vnet.run("lab", "status", "--name", chain.name, check=False).returncode == 1
    # `lab up` again starts what is missing: a new VNO process on the same store.
    vnet.run("lab", "up", "--name", chain.name, "--pips", "2", "--hosts", "2",
             "--mgmt-offset", str(offset))
    assert vnet.json("status", "--lab", chain.name, vnet_id)["status"] == "ready"
    out = vnet.json("exec", "--lab", chain.name, vnet_id, "e1", "--",
                    "ping", "-c", "1", "-W", "2", "198.19.0.2")
    assert out["rc"] == 0
    vnet.run("down", "--lab", chain.name, vnet_id)


def test_lab_down_stops_players_and_removes_everything(vnet: Vnet) -> None:
    lab = new_lab(vnet, "--pips", "2", "--hosts", "1")
    try:
        pids = [_pid(vnet, lab, p) for p in ("pip1", "pip2", "vnp", "vno")]
    finally:
        vnet.run("lab", "down", "--name", lab.name)
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # gone, as it should be
        assert b"serve" not in cmdline, f"player {pid} still runs"
    assert not [n for n in netns_list() if lab.name in n]


def test_direct_work_on_a_substrate_its_pip_manages_is_refused(vnet: Vnet, chain: Lab) -> None:
    done = vnet.run("up", str(EXAMPLES / "figure6.xml"), "--substrate", f"{chain.name}p1",
                    check=False)
    assert done.returncode == 2
    assert f"substrate {chain.name}p1 is managed by pip1 of lab {chain.name}" in done.stderr
