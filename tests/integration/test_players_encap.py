"""Encapsulations at PIPs, over real TLS: the PIP advertises its substrate's;
the carrier of an inter-PIP link is agreed in the stitching message (Click
when both offer it, else VXLAN, the common fallback: a responder without
the proposed carrier counters with VXLAN; one with no carrier in common
refuses with the reason, and so does an initiator left without one); both
ends record and deploy their half with the agreed carrier; a substrate
carrying its links on VLANs declines a quote it has not enough free VLAN
ids for, with the reason."""

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
from vnetlib.players.client import PlayerClient, RemoteError
from vnetlib.players.pip import PipService
from vnetlib.players.pki import Role
from vnetlib.players.stitching import StitchFailed, initiate
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
ACROSS = b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="across">
  <node id="a1" location="berlin"/>
  <node id="b1" location="paris"/>
  <link id="x1"><endpoint node="a1" interface="e0"><address>198.19.251.1/30</address></endpoint>
    <endpoint node="b1" interface="e0"><address>198.19.251.2/30</address></endpoint></link>
</vnet>"""


class Recorder:
    """Deploys nothing; keeps each run's state and plan."""

    def __init__(self) -> None:
        self.runs: list[str] = []
        self.plans: list[Mapping[str, Any]] = []

    def apply(self, plan: Mapping[str, Any], state: str, *, check: bool = False,
              progress: Progress | None = None) -> None:
        self.runs.append(state)
        self.plans.append(plan)

    def carriers(self) -> dict[str, tuple[str, int]]:
        """Per link of the last plan that crosses to another host: carrier and port."""
        out = {}
        for part in self.plans[-1]["hosts"].values():
            for item in part.get("click", []):
                out[item["link"]] = ("click", 0)
            for item in part["links"]:
                if item.get("tunnel"):
                    out[item["link"]] = ("vxlan", item["tunnel"]["dstport"])
        return out


@pytest.fixture
def encaps(substrates: Substrates) -> Iterator[Any]:
    """Set a substrate's encapsulations (B's unless named) for one test; put
    them back after."""
    saved: dict[Any, bytes] = {}

    def use(*names: str, substrate: str | None = None) -> None:
        path = paths.substrate_dir(substrate or substrates.b) / "substrate.xml"
        saved.setdefault(path, path.read_bytes())
        path.write_bytes(dump_substrate(dataclasses.replace(load_substrate(path),
                                                            encapsulations=names)))
    try:
        yield use
    finally:
        for path, data in saved.items():
            path.write_bytes(data)


def _provisioned(players: Players, substrates: Substrates) -> tuple[Any, Recorder]:
    rec = Recorder()
    node = players.pip("pip-b", substrates.b, deployer=rec)
    vnp = PlayerClient(node.url, players.creds("vnp", Role.VNP))
    vnp.put("/v1/slivers/s1", m.allocate_xml(m.Allocate(PART)))
    peer = m.Peer("xref1", "pip-a", "https://127.0.0.1:9", "responder")
    vnp.post("/v1/slivers/s1/provision", m.provision_xml(m.Provision((peer,))))
    return node, rec


def _send(players: Players, node: Any) -> Any:
    client = PlayerClient(node.url, players.creds("pip-a", Role.PIP), expect_name="pip-b")

    def send(proposal: m.Stitch) -> m.Stitch:
        return m.stitch_from(m.read(client.post("/v1/stitch", m.stitch_xml(proposal)).body,
                                    "stitch"))
    return send


def _propose(players: Players, node: Any, encap: str, vni: int = 70001) -> m.Stitch:
    port = 47900 if encap == "click" else 4789
    initiator = m.StitchEndpoint("initiator", "198.18.9.11", port)
    return _send(players, node)(m.Stitch("xref1", vni, "propose", (initiator,), encap))


def _recorded(node: Any) -> tuple[str, str]:
    """(carrier, peer address) of the one stitched link in the ledger."""
    service = node.service
    assert isinstance(service, PipService)
    (s,) = service.core.ledger.slivers()
    (st,) = s.stitches
    return st.encapsulation, st.address


def test_both_offer_click_the_link_is_click_at_the_responder(
        players: Players, substrates: Substrates, encaps: Any) -> None:
    encaps("click", "vxlan")
    node, rec = _provisioned(players, substrates)
    vnp = PlayerClient(node.url, players.creds("vnp", Role.VNP))
    ad = m.advertisement_from(m.read(vnp.get("/v1/advertisement").body, "advertisement"))
    assert ad.encapsulations == ("click", "vxlan")
    runs = len(rec.runs)
    refused = _propose(players, node, "vlan")  # a PIP's own carrier, not between PIPs
    assert refused.state == "reject"
    assert refused.reason == "encapsulation vlan cannot carry links between providers: use vxlan"
    assert len(rec.runs) == runs  # nothing deployed
    answer = _propose(players, node, "click")
    assert (answer.state, answer.encapsulation, answer.vni) == ("accept", "click", 70001)
    responder = answer.endpoint("responder")
    assert responder is not None and responder.port == 47900
    assert _recorded(node) == ("click", "198.18.9.11")
    assert rec.runs[runs:] == ["present"]
    assert rec.carriers() == {"bc": ("click", 0)}
    (click,) = [c for part in rec.plans[-1]["hosts"].values() for c in part["click"]]
    assert (click["vni"], click["remote"]) == (70001, "198.18.9.11")


def test_a_responder_without_the_carrier_counters_with_vxlan(
        players: Players, substrates: Substrates, encaps: Any) -> None:
    encaps("vlan", "vxlan")
    node, rec = _provisioned(players, substrates)
    runs = len(rec.runs)
    counter = _propose(players, node, "click")
    assert (counter.state, counter.encapsulation, counter.vni) == ("counter", "vxlan", 70001)
    assert counter.reason == "encapsulation click is not offered here: use vxlan"
    responder = counter.endpoint("responder")
    assert responder is not None and responder.port == 4789
    assert len(rec.runs) == runs
    # the initiator's side of the exchange, against this responder: it takes VXLAN
    mine: set[int] = set()

    def claim(vni: int) -> bool:
        ok = vni not in mine
        mine.add(vni)
        return ok

    local = m.StitchEndpoint("initiator", "198.18.9.11")
    agreed = initiate("xref1", local, _send(players, node), claim,
                      lambda avoid: 70002 if claim(70002) else 70003, mine.discard,
                      ("click", "vxlan"))
    assert (agreed.encapsulation, agreed.vni, agreed.remote.port) == ("vxlan", 70002, 4789)
    assert _recorded(node) == ("vxlan", "198.18.9.11")
    assert rec.carriers() == {"bc": ("vxlan", 4789)}


def test_no_carrier_in_common_fails_with_the_reason_on_both_sides(
        players: Players, substrates: Substrates, encaps: Any) -> None:
    encaps("vlan", "vxlan")
    node, _ = _provisioned(players, substrates)
    local = m.StitchEndpoint("initiator", "198.18.9.11")
    released: list[int] = []
    with pytest.raises(StitchFailed) as err:  # an initiator offering Click only
        initiate("xref1", local, _send(players, node), lambda v: True, lambda a: 70005,
                 released.append, ("click",))
    assert str(err.value) == ("link xref1: the peer offers vxlan, this provider offers click: "
                              "no carrier in common")
    assert released == [70005]
    encaps("vlan")
    node2, rec2 = _provisioned_again(players, substrates, node)
    answer = _propose(players, node2, "vxlan")
    assert answer.state == "reject"
    assert answer.reason == ("encapsulation vxlan is not offered here for links between "
                             "providers (this provider offers none; no carrier in common)")
    assert len(rec2.runs) == 1  # the provisioning only


def _provisioned_again(players: Players, substrates: Substrates, node: Any
                       ) -> tuple[Any, Recorder]:
    """PIP B restarted (it reads its substrate's encapsulations at start)."""
    vnp = PlayerClient(node.url, players.creds("vnp", Role.VNP))
    assert vnp.delete("/v1/slivers/s1").status == 204
    players.stop("pip-b")
    return _provisioned(players, substrates)


@pytest.mark.parametrize(("offers_a", "offers_b", "carrier"), [
    (("click", "vxlan"), ("click", "vxlan"), "click"),
    (("click", "vxlan"), ("vlan", "vxlan"), "vxlan"),
])
def test_both_ends_deploy_the_agreed_carrier_through_the_players(
        players: Players, substrates: Substrates, encaps: Any,
        offers_a: tuple[str, ...], offers_b: tuple[str, ...], carrier: str) -> None:
    encaps(*offers_a, substrate=substrates.a)
    encaps(*offers_b)
    deployers = {"pip-a": Recorder(), "pip-b": Recorder()}
    players.pip("pip-a", substrates.a, deployer=deployers["pip-a"])
    players.pip("pip-b", substrates.b, deployer=deployers["pip-b"])
    players.vnp("vnp", ["pip-a", "pip-b"])
    players.vno("vno", "vnp")
    sp = players.sp("sp", "vno")
    view = sp.request_vnet(parse_vnet(ACROSS))
    assert view.status == "ready"
    port = 0 if carrier == "click" else 4789
    for name in ("pip-a", "pip-b"):
        (link,) = deployers[name].carriers()
        assert deployers[name].carriers()[link] == (carrier, port), name
        assert _recorded(players.nodes[name])[0] == carrier
    sp.delete(view.id)


def test_a_split_between_providers_without_a_common_carrier_is_refused(
        players: Players, substrates: Substrates, encaps: Any) -> None:
    encaps("click", substrate=substrates.a)
    encaps("vlan", "vxlan")
    players.pip("pip-a", substrates.a, deployer=Recorder())
    players.pip("pip-b", substrates.b, deployer=Recorder())
    players.vnp("vnp", ["pip-a", "pip-b"])
    players.vno("vno", "vnp")
    with pytest.raises(RemoteError) as err:
        players.sp("sp", "vno").request_vnet(parse_vnet(ACROSS))
    assert "no common encapsulation between providers: ours click, the peer's vlan, vxlan" in (
        str(err.value))


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
