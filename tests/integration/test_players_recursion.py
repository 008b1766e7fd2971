"""A VNP acting as a PIP for another VNP (depth 2), through the same interfaces."""

from __future__ import annotations

from tests.integration.players_fixtures import Players, Substrates, namespaces
from tests.integration.test_players_negotiation import spanning
from vnetlib.players.pip import PipService
from vnetlib.players.vnp import VnpService
from vnetlib.spec import parse_vnet


def test_vnp_as_pip_at_depth_two(players: Players, substrates: Substrates) -> None:
    players.pip("pip-a", substrates.a, price=1.0)
    players.pip("pip-b", substrates.b, price=2.0)
    players.vnp("vnp-mid", ["pip-a"])  # sells pip-a's capacity as its own
    players.vnp("vnp", ["vnp-mid", "pip-b"], disclose=True)
    players.vno("vno", "vnp")
    sp = players.sp("sp", "vno")

    view = sp.request_vnet(spanning())
    assert view.status == "ready"
    # disclosed by contract: the top VNP names its direct upstreams, never pip-a
    assert dict(view.providers) == {"a": "vnp-mid", "b": "vnp-mid", "c": "pip-b"}

    a, b = players.nodes["pip-a"].service, players.nodes["pip-b"].service
    assert isinstance(a, PipService) and isinstance(b, PipService)
    (sa,), (sb,) = a.core.ledger.slivers(), b.core.ledger.slivers()
    assert sa.owner == "vnp-mid" and sb.owner == "vnp"
    assert sorted(n.id for n in parse_vnet(sa.spec_xml.encode()).nodes) == ["a", "b"]
    # the boundary link was stitched through vnp-mid: same VNI, each end at the other
    (stitch_a,) = sa.stitches
    (stitch_b,) = sb.stitches
    assert stitch_a.vni == stitch_b.vni
    assert stitch_a.address == b.core.substrate.host(sb.embedding.node_map["c"]).data_address
    assert stitch_b.address == a.core.substrate.host(sa.embedding.node_map["b"]).data_address
    rc, out, err = sp.exec(view.id, "b", ["ping", "-c", "1", "-W", "2", "198.19.250.1"])
    assert rc == 0, out + err
    rc, out, err = sp.exec(view.id, "b", ["ping", "-c", "1", "-W", "3", "198.19.250.6"])
    assert rc == 0, out + err  # b (pip-a, sold by vnp-mid) -> c (pip-b), stitched via vnp-mid

    sp.delete(view.id)
    for name in ("pip-a", "pip-b", "vnp-mid", "vnp"):
        service = players.nodes[name].service
        if isinstance(service, PipService):
            assert service.core.ledger.slivers() == [], name
        else:
            assert isinstance(service, VnpService) and service.store.all() == [], name
    assert namespaces(f"vn-{substrates.a}-") == [] and namespaces(f"vn-{substrates.b}-") == []
