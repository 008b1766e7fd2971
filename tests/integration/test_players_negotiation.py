"""Interfaces 1 to 4 over real TLS, real stores and real lab substrates."""

from __future__ import annotations

from tests.integration.players_fixtures import Players, Substrates, namespaces
from vnetlib.players.pip import PipService
from vnetlib.players.pki import Role
from vnetlib.players.vnp import VnpService
from vnetlib.spec import parse_vnet
from vnetlib.spec.model import VNetSpec

SPANNING = b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="span">
  <node id="a" location="berlin"/>
  <node id="b" location="berlin"/>
  <node id="c" location="paris"/>
  <link id="ab"><endpoint node="a" interface="e0"><address>198.19.250.1/30</address></endpoint>
    <endpoint node="b" interface="e0"><address>198.19.250.2/30</address></endpoint></link>
  <link id="bc"><endpoint node="b" interface="e1"><address>198.19.250.5/30</address></endpoint>
    <endpoint node="c" interface="e0"><address>198.19.250.6/30</address></endpoint></link>
</vnet>"""


def spanning() -> VNetSpec:
    return parse_vnet(SPANNING)


def _pip(players: Players, name: str) -> PipService:
    service = players.nodes[name].service
    assert isinstance(service, PipService)
    return service


def test_vnet_across_two_pips_is_negotiated_stitched_and_removed(
        players: Players, substrates: Substrates) -> None:
    players.pip("pip-a", substrates.a, price=1.0)
    players.pip("pip-b", substrates.b, price=2.0)
    players.vnp("vnp", ["pip-a", "pip-b"])
    players.vno("vno", "vnp")
    sp = players.sp("sp", "vno")

    view = sp.request_vnet(spanning())
    assert view.status == "ready"
    assert view.nodes == ("a", "b", "c")
    assert view.providers == ()  # the VNO learns no provider names

    # location constraints: a and b at A (berlin), c at B (paris)
    a, b = _pip(players, "pip-a"), _pip(players, "pip-b")
    (sa,), (sb,) = a.core.ledger.slivers(), b.core.ledger.slivers()
    assert sorted(n.id for n in parse_vnet(sa.spec_xml.encode()).nodes) == ["a", "b"]
    assert [n.id for n in parse_vnet(sb.spec_xml.encode()).nodes] == ["c"]
    # Interface 4: one VNI agreed, each side's tunnel points at the other's data address
    (stitch_a,) = sa.stitches
    stitch_b = sb.stitch(stitch_a.ref)
    assert stitch_b is not None and stitch_a.vni == stitch_b.vni
    assert stitch_a.joined and stitch_b.joined
    sub_a, sub_b = a.core.substrate, b.core.substrate
    host_a = sub_a.host(sa.embedding.node_map["b"]).data_address
    host_b = sub_b.host(sb.embedding.node_map["c"]).data_address
    assert stitch_a.address == host_b and stitch_b.address == host_a
    assert namespaces(f"vn-{substrates.a}-{sa.id}-") == [
        f"vn-{substrates.a}-{sa.id}-a", f"vn-{substrates.a}-{sa.id}-b"]

    # data plane inside PIP A's part, through the VNO -> VNP -> PIP relay
    rc, out, err = sp.exec(view.id, "a", ["ping", "-c", "1", "-W", "2", "198.19.250.2"])
    assert rc == 0, out + err
    rc, out, _ = sp.exec(view.id, "c", ["ip", "-o", "addr", "show", "e0"])
    assert rc == 0 and "198.19.250.6/30" in out
    # across the inter-PIP link (VXLAN between the two substrates, through the exchange)
    rc, out, err = sp.exec(view.id, "b", ["ping", "-c", "1", "-W", "3", "198.19.250.6"])
    assert rc == 0, out + err

    assert [v.id for v in sp.list()] == [view.id]
    sp.delete(view.id)
    assert sp.list() == []
    assert a.core.ledger.slivers() == [] and b.core.ledger.slivers() == []
    assert a.core.ledger.used_vnis() == set() and b.core.ledger.used_vnis() == set()
    vnp = players.nodes["vnp"].service
    assert isinstance(vnp, VnpService) and vnp.store.all() == []
    assert namespaces(f"vn-{substrates.a}-") == [] and namespaces(f"vn-{substrates.b}-") == []
    assert Role.SP  # the SP's certificate role
