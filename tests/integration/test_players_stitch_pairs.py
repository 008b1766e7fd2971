"""Stitching per pair of PIPs, over real TLS: three inter-PIP links take one
`<stitches>` exchange and one deployment on each side; a single `<stitch>`
still works and a malformed batch is refused."""

from __future__ import annotations

import pytest

from tests.integration.players_fixtures import Players, Substrates
from vnetlib.core.deployer import RecordingDeployer
from vnetlib.players import messages as m
from vnetlib.players.client import PlayerClient, RemoteError
from vnetlib.players.pip import PipService
from vnetlib.players.pki import Role
from vnetlib.spec import parse_vnet

THREE_ACROSS = b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="three">
  <node id="a1" location="berlin"/>
  <node id="a2" location="berlin"/>
  <node id="b1" location="paris"/>
  <node id="b2" location="paris"/>
  <link id="x1"><endpoint node="a1" interface="e0"><address>198.19.251.1/30</address></endpoint>
    <endpoint node="b1" interface="e0"><address>198.19.251.2/30</address></endpoint></link>
  <link id="x2"><endpoint node="a2" interface="e0"><address>198.19.251.5/30</address></endpoint>
    <endpoint node="b2" interface="e0"><address>198.19.251.6/30</address></endpoint></link>
  <link id="x3"><endpoint node="a1" interface="e1"><address>198.19.251.9/30</address></endpoint>
    <endpoint node="b2" interface="e1"><address>198.19.251.10/30</address></endpoint></link>
</vnet>"""


def _pip(players: Players, name: str) -> PipService:
    service = players.nodes[name].service
    assert isinstance(service, PipService)
    return service


def test_three_links_one_exchange_and_one_deployment_per_side(
        players: Players, substrates: Substrates) -> None:
    deployers = {"pip-a": RecordingDeployer(), "pip-b": RecordingDeployer()}
    players.pip("pip-a", substrates.a, deployer=deployers["pip-a"])
    players.pip("pip-b", substrates.b, deployer=deployers["pip-b"])
    players.vnp("vnp", ["pip-a", "pip-b"])
    players.vno("vno", "vnp")
    sp = players.sp("sp", "vno")

    view = sp.request_vnet(parse_vnet(THREE_ACROSS))
    assert view.status == "ready"
    a, b = _pip(players, "pip-a"), _pip(players, "pip-b")
    (sa,), (sb,) = a.core.ledger.slivers(), b.core.ledger.slivers()
    assert len(sa.stitches) == len(sb.stitches) == 3
    for st in sa.stitches:
        other = sb.stitch(st.ref)
        assert other is not None and other.vni == st.vni and st.joined and other.joined
    assert len({st.vni for st in sa.stitches}) == 3
    # provision, then one deployment for all three links on each side
    for name in ("pip-a", "pip-b"):
        assert [state for _, state in deployers[name].runs] == ["present", "present"], name
    sp.delete(view.id)
    for name in ("pip-a", "pip-b"):
        assert deployers[name].runs[-1][1] == "absent"
        assert deployers[name].objects == set()


def test_batch_and_single_proposals_at_a_responder(
        players: Players, substrates: Substrates) -> None:
    deployer = RecordingDeployer()
    node = players.pip("pip-b", substrates.b, deployer=deployer)
    vnp = PlayerClient(node.url, players.creds("vnp", Role.VNP))
    part = parse_vnet(b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="p">
      <node id="c" location="paris"/>
      <boundary-link id="k1"><endpoint node="c" interface="e0"/><peer ref="r1"/></boundary-link>
      <boundary-link id="k2"><endpoint node="c" interface="e1"/><peer ref="r2"/></boundary-link>
    </vnet>""")
    vnp.put("/v1/slivers/s1", m.allocate_xml(m.Allocate(part)))
    peers = tuple(m.Peer(ref, "pip-a", "https://127.0.0.1:9", "responder") for ref in ("r1", "r2"))
    vnp.post("/v1/slivers/s1/provision", m.provision_xml(m.Provision(peers)))
    runs = len(deployer.runs)
    initiator = m.StitchEndpoint("initiator", "198.18.9.11")
    pip_a = PlayerClient(node.url, players.creds("pip-a", Role.PIP), expect_name="pip-b")

    with pytest.raises(RemoteError) as err:
        pip_a.post("/v1/stitch", b'<stitches xmlns="urn:vnet:rdl:1" version="1"/>')
    assert err.value.status == 422
    batch = [m.Stitch(ref, vni, "propose", (initiator,))
             for ref, vni in (("r1", 7001), ("r2", 7002))]
    answers = m.stitches_reply(pip_a.post("/v1/stitch", m.stitches_xml(batch)).body)
    assert [(x.ref, x.state, x.vni) for x in answers] == [("r1", "accept", 7001),
                                                         ("r2", "accept", 7002)]
    assert len(deployer.runs) == runs + 1  # both links in one deployment
    single = pip_a.post("/v1/stitch", m.stitch_xml(batch[0]))  # repeated, alone
    assert m.stitch_from(m.read(single.body, "stitch")).state == "accept"
    assert len(deployer.runs) == runs + 1
    assert vnp.delete("/v1/slivers/s1").status == 204
    assert deployer.objects == set()
