"""Encapsulations at a PIP, over real TLS: the PIP advertises its substrate's;
a stitching proposal in an encapsulation it does not offer between providers
is rejected with the reason (naming VXLAN, the fallback, when it has it);
a substrate carrying its links on VLANs declines a quote it has not enough
free VLAN ids for, with the reason."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from tests.integration.players_fixtures import Players, Substrates
from vnetlib import paths
from vnetlib.core.vlans import CAPACITY, VlanLedger
from vnetlib.deploy.ansible import Progress
from vnetlib.players import messages as m
from vnetlib.players.client import PlayerClient
from vnetlib.players.pip import PipService
from vnetlib.players.pki import Role
from vnetlib.spec import dump_substrate, load_substrate, parse_vnet

PART = parse_vnet(b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="p">
  <node id="c" location="paris"/>
  <boundary-link id="bc"><endpoint node="c" interface="e0"/><peer ref="xref1"/></boundary-link>
</vnet>""")
PAIR = parse_vnet(b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="q">
  <node id="c" location="paris"/>
  <node id="d" location="paris"/>
  <link id="l1"><endpoint node="c" interface="e0"/><endpoint node="d" interface="e0"/></link>
  <link id="l2"><endpoint node="c" interface="e1"/><endpoint node="d" interface="e1"/></link>
</vnet>""")


class Recorder:
    def __init__(self) -> None:
        self.runs: list[str] = []

    def apply(self, plan: Mapping[str, Any], state: str, *, check: bool = False,
              progress: Progress | None = None) -> None:
        self.runs.append(state)


@pytest.fixture
def encaps(substrates: Substrates) -> Iterator[Any]:
    """Set substrate B's encapsulations for one test; put them back after."""
    path = paths.substrate_dir(substrates.b) / "substrate.xml"
    saved = path.read_bytes()

    def use(*names: str) -> None:
        path.write_bytes(dump_substrate(dataclasses.replace(load_substrate(path),
                                                            encapsulations=names)))
    try:
        yield use
    finally:
        path.write_bytes(saved)


def _provisioned(players: Players, substrates: Substrates) -> tuple[Any, Recorder]:
    rec = Recorder()
    node = players.pip("pip-b", substrates.b, deployer=rec)
    vnp = PlayerClient(node.url, players.creds("vnp", Role.VNP))
    vnp.put("/v1/slivers/s1", m.allocate_xml(m.Allocate(PART)))
    peer = m.Peer("xref1", "pip-a", "https://127.0.0.1:9", "responder")
    vnp.post("/v1/slivers/s1/provision", m.provision_xml(m.Provision((peer,))))
    return node, rec


def _propose(players: Players, node: Any, encap: str) -> m.Stitch:
    client = PlayerClient(node.url, players.creds("pip-a", Role.PIP), expect_name="pip-b")
    initiator = m.StitchEndpoint("initiator", "198.18.9.11")
    reply = client.post("/v1/stitch", m.stitch_xml(m.Stitch("xref1", 70001, "propose",
                                                            (initiator,), encap)))
    return m.stitch_from(m.read(reply.body, "stitch"))


def test_advertised_and_a_proposal_in_another_encapsulation_is_rejected(
        players: Players, substrates: Substrates, encaps: Any) -> None:
    encaps("click", "vxlan")
    node, rec = _provisioned(players, substrates)
    vnp = PlayerClient(node.url, players.creds("vnp", Role.VNP))
    ad = m.advertisement_from(m.read(vnp.get("/v1/advertisement").body, "advertisement"))
    assert ad.encapsulations == ("click", "vxlan")
    runs = len(rec.runs)
    answer = _propose(players, node, "click")
    assert answer.state == "reject"
    assert answer.reason == ("encapsulation click is not offered here for links between "
                             "providers: use vxlan")
    assert len(rec.runs) == runs  # nothing deployed
    assert _propose(players, node, "vxlan").state == "accept"


def test_a_provider_without_vxlan_rejects_the_fallback_with_the_reason(
        players: Players, substrates: Substrates, encaps: Any) -> None:
    encaps("vlan")
    node, _ = _provisioned(players, substrates)
    answer = _propose(players, node, "vxlan")
    assert answer.state == "reject" and answer.reason is not None
    assert "offers vlan, none of them stitchable" in answer.reason


def test_no_free_vlan_id_is_declined_at_quote_time(
        players: Players, substrates: Substrates, encaps: Any) -> None:
    encaps("vlan", "vxlan")
    node = players.pip("pip-b", substrates.b, deployer=Recorder())
    service = node.service
    assert isinstance(service, PipService)
    vnp = PlayerClient(node.url, players.creds("vnp", Role.VNP))

    def quote() -> m.Quote:
        reply = vnp.post("/v1/quotes", m.quote_request_xml(m.QuoteRequest(PAIR)))
        return m.quote_from(m.read(reply.body, "quote"))

    assert quote().status == "offer"
    vlans = VlanLedger(service.core.ledger)
    vlans.allocate("other", [f"l{i}" for i in range(CAPACITY - 1)])
    declined = quote()
    assert declined.status == "declined"
    assert declined.reason == ("not enough VLAN ids on this substrate: the VNet may need 2, "
                               "1 are free")
    vlans.release("other")
    assert quote().status == "offer"
