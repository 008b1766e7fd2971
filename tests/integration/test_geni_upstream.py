"""A VNP that uses a GENI aggregate (a PIP's AM API v3) as one of its providers:
an SP's Figure 6 request goes VNO -> VNP -> AM API -> PIP core, real namespaces
appear on the lab substrate, a node is stopped and started, and deletion
leaves nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.integration.players_fixtures import Players, Substrates, namespaces
from vnetlib.geni import am
from vnetlib.geni.upstream import SCHEME, GeniUpstream
from vnetlib.players import messages as m
from vnetlib.players.client import RemoteError
from vnetlib.players.config import Upstream, VnpSection
from vnetlib.players.pip import PipService
from vnetlib.players.pki import Role
from vnetlib.players.vnp import VnpService
from vnetlib.spec import load_vnet

FIGURE6 = Path(__file__).resolve().parents[2] / "examples" / "figure6.xml"


def geni_vnp(players: Players, name: str, upstream: Upstream) -> VnpService:
    """A VNP whose one upstream is a GENI aggregate (its geni+https URL)."""
    node = players.start(players.config(name, Role.VNP, vnp=VnpSection((upstream,), 10.0)))
    service = node.service
    assert isinstance(service, VnpService)
    return service


def test_vnp_uses_a_geni_aggregate_as_a_provider(players: Players,
                                                 substrates: Substrates) -> None:
    pip_node = players.pip("pip-geni", substrates.a)
    pip = pip_node.service
    assert isinstance(pip, PipService)
    upstream = Upstream("pip-geni", SCHEME + pip_node.url + am.ROUTE)
    vnp = geni_vnp(players, "vnp-g", upstream)
    players.vno("vno-g", "vnp-g")
    sp = players.sp("sp-g", "vno-g")

    adapter = GeniUpstream(upstream.url, vnp.credentials, expect_name="pip-geni")
    ad = adapter.advertisement()
    assert ad.provider == "pip-geni"
    assert {s.location for s in ad.sites} == {"berlin", "london"}

    view = sp.request_vnet(load_vnet(FIGURE6))
    assert view.status == "ready"
    (sliver,) = pip.core.ledger.slivers()
    assert sliver.owner == "vnp-g"  # the VNP's certificate, through the AM API
    spec = load_vnet(FIGURE6)
    assert namespaces(f"vn-{substrates.a}-{sliver.id}-") == sorted(
        f"vn-{substrates.a}-{sliver.id}-{n.id}" for n in spec.nodes)
    e1 = f"vn-{substrates.a}-{sliver.id}-e1"
    ping = subprocess.run(["ip", "netns", "exec", e1, "ping", "-c", "1", "-W", "2",
                           "198.19.0.2"], capture_output=True, text=True, timeout=20)
    assert ping.returncode == 0, ping.stdout + ping.stderr

    # node control relayed SP -> VNO -> VNP -> GENI PerformOperationalAction
    assert "r1: stopped" in sp.control(view.id, "r1", "stop")
    assert pip.core.ledger.slivers()[0].node_state("r1") == "stopped"
    assert "r1: running" in sp.control(view.id, "r1", "start")
    # what GENI does not offer is refused with a status, not a crash, and the
    # refusal relayed to the SP does not name the provider
    try:
        sp.exec(view.id, "e1", ["true"])
        raise AssertionError("exec through a GENI aggregate should be refused")
    except RemoteError as exc:
        assert exc.status == 409 and "pip-geni" not in exc.message
    try:
        adapter.post(f"/v1/slivers/{sliver.name}/action",
                     m.action_xml(m.Action("exec", "e1", ("true",))))
        raise AssertionError("exec through a GENI aggregate should be refused")
    except RemoteError as exc:
        assert exc.status == 409

    sp.delete(view.id)
    assert namespaces(f"vn-{substrates.a}-") == []
    assert [s.state.value for s in pip.core.ledger.slivers()] in ([], ["deleted"])
    try:
        adapter.get(f"/v1/slivers/{sliver.name}")
        raise AssertionError("a deleted slice should not be found")
    except RemoteError as exc:
        assert exc.status in (404, 410)
