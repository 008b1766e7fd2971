"""A PIP needs its host back (issue #13): `vnet drain HOST --substrate S
--evict` at a PIP whose only host it is asks the VNP that owns each node on
it to take the node away. A node that asked for no location moves to the
other PIP (its links carry traffic after, both ways); a node that must stay
in Berlin, which no other PIP offers, is refused and stays, and the command
says so (exit 3). The VNO learns an event, never a PIP or host. One lab of
two PIPs of one host each, real Ansible, the players as processes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Lab, Vnet, netns_list, new_lab, ping
from tests.e2e.test_migrate_between import _vno_text
from vnetlib.core.ledger import Ledger
from vnetlib.lab.players import service_provider
from vnetlib.players.config import load as load_config
from vnetlib.spec import parse_vnet

SPEC = b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="evictee">
  <node id="x" kind="netns" cpu="1" memory="128"/>
  <node id="a1" kind="netns" location="berlin" cpu="1" memory="128"/>
  <node id="b1" kind="netns" location="london" cpu="1" memory="128"/>
  <link id="lxa"><endpoint node="x" interface="e0"><address>198.19.247.1/30</address>
    </endpoint><endpoint node="a1" interface="e0"><address>198.19.247.2/30</address>
    </endpoint></link>
  <link id="lxb"><endpoint node="x" interface="e1"><address>198.19.247.5/30</address>
    </endpoint><endpoint node="b1" interface="e0"><address>198.19.247.6/30</address>
    </endpoint></link>
  <link id="lab"><endpoint node="a1" interface="e1"><address>198.19.247.9/30</address>
    </endpoint><endpoint node="b1" interface="e1"><address>198.19.247.10/30</address>
    </endpoint></link>
</vnet>"""


@pytest.fixture(scope="module")
def chain(vnet: Vnet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, str]]:
    made = new_lab(vnet, "--pips", "2", "--hosts", "1")
    try:
        spec = tmp_path_factory.mktemp("evict") / "evictee.xml"
        spec.write_bytes(SPEC)
        up = vnet.json("up", str(spec), "--lab", made.name)
        assert up["status"] == "ready"
        yield made, up["vnet"]
    finally:
        vnet.run("lab", "down", "--name", made.name, check=False)


def _where(lab: Lab) -> dict[str, str]:
    """node -> the PIP substrate whose namespaces hold it."""
    out: dict[str, str] = {}
    for ns in netns_list():
        for sub in (f"{lab.name}p1", f"{lab.name}p2"):
            if ns.startswith(f"vn-{sub}-"):
                node = ns.rsplit("-", 1)[1]
                assert node not in out, f"{node} is on two substrates"
                out[node] = sub
    return out


def _ns(lab: Lab, node: str) -> str:
    (ns,) = [n for n in netns_list() if n.startswith(f"vn-{lab.name}p") and
             n.endswith(f"-{node}")]
    return ns


def _links_ping(lab: Lab) -> None:
    for link in parse_vnet(SPEC).links:
        for src, dst in ((link.a, link.b), (link.b, link.a)):
            peer = dst.interface.addresses[0].split("/")[0]
            ns = _ns(lab, src.node)
            assert ping(ns, peer) or ping(ns, peer, wait=3), f"{link.id}: {src.node}->{dst.node}"


def test_a_pip_drains_its_only_host_and_its_vnp_takes_nodes_away(
        vnet: Vnet, chain: tuple[Lab, str]) -> None:
    lab, vnet_id = chain
    before = _where(lab)
    assert before["a1"] == f"{lab.name}p1" and before["b1"] == f"{lab.name}p2"
    source = before["x"]
    other = ({f"{lab.name}p1", f"{lab.name}p2"} - {source}).pop()
    stays = "a1" if source.endswith("p1") else "b1"  # its location is at the source only

    done = vnet.run("drain", "h1", "--substrate", source, "--evict", "--json", check=False)
    assert done.returncode == 3, done.stderr  # one node could not go: said, not hidden
    out = json.loads(done.stdout)
    assert out["drained"] is True and out["moved"] == []
    assert [(e["node"], e["owner"]) for e in out["evicted"]] == [("x", "vnp")]
    assert [s["node"] for s in out["stuck"]] == [stays]
    assert f"no other provider can take node {stays}" in done.stderr
    assert "it stays" in done.stderr

    after = _where(lab)
    assert after == {**before, "x": other}
    _links_ping(lab)

    view = service_provider(lab.name).status(vnet_id)
    assert view.status == "ready"
    assert [(e.kind, e.node) for e in view.events] == [("node-moved", "x")]
    assert view.providers == ()
    status = vnet.json("status", vnet_id, "--lab", lab.name)
    assert [(e["kind"], e["node"]) for e in status["events"]] == [("node-moved", "x")]
    text = json.dumps(status) + _vno_text(vnet, lab)
    players = vnet.json("lab", "status", "--name", lab.name)["players"]
    pips = [name for name, p in players.items() if p["role"] == "pip"]
    for secret in (f"{lab.name}p1", f"{lab.name}p2", *pips, "h1"):
        assert secret not in text, f"the VNO knows {secret!r}"

    # x's new PIP asks it away: the VNP has no other PIP with room (the
    # source's only host is drained), so it refuses and x stays
    refused = vnet.run("evict", _sliver_at(vnet, lab, other, "x"), "x", "--substrate", other,
                       check=False)
    assert refused.returncode == 3, refused.stderr
    assert "no other provider can take node x elsewhere" in refused.stderr
    assert _where(lab) == after
    _links_ping(lab)

    vnet.run("drain", "h1", "--substrate", source, "--undo")


def _sliver_at(vnet: Vnet, lab: Lab, substrate: str, node: str) -> str:
    """The VNP's name for the sliver that holds `node` at a PIP (its ledger)."""
    pip = f"pip{substrate[-1]}"
    config = load_config(Path(vnet.env["VNET_HOME"]) / "labs" / lab.name / "players" /
                         f"{pip}.toml")
    ledger = Ledger(config.store, substrate)
    try:
        (s,) = [s for s in ledger.slivers() if node in s.embedding.node_map
                and s.state.value == "ready"]
        return s.name
    finally:
        ledger.close()
