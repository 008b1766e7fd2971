"""Which carrier an inter-provider link gets, through stitching's real
functions: the initiator proposes its first carrier (`carriers` of its
substrate's encapsulations), the responder (`respond`) accepts it or
counters with VXLAN, the common fallback; a side without a carrier in
common fails with the reason; the VNP refuses a split whose providers share
none (`unstitchable`), naming the link; the stitch record keeps the agreed
carrier (rows written before it was a field still read)."""

from __future__ import annotations

import pytest

from vnetlib.core.records import Stitch as Record
from vnetlib.players.messages import Advertisement, Stitch, StitchEndpoint
from vnetlib.players.negotiation import Part, PartLink, unstitchable
from vnetlib.players.stitching import StitchFailed, carriers, initiate, respond
from vnetlib.spec.model import VNetSpec

HERE = StitchEndpoint("initiator", "198.18.1.11")
THERE = StitchEndpoint("responder", "198.18.2.11")


def agree(ours: tuple[str, ...], theirs: tuple[str, ...]) -> str:
    """The carrier two PIPs with these substrate encapsulations agree on."""
    def send(proposal: Stitch) -> Stitch:
        return respond(proposal, True, proposal.vni, THERE, carriers(theirs))

    return initiate("r1", HERE, send, lambda vni: True, lambda avoid: 5000,
                    lambda vni: None, carriers(ours)).encapsulation


def test_own_carrier_when_both_offer_it_else_vxlan() -> None:
    assert carriers(("vlan", "click", "vxlan")) == ("click", "vxlan")
    assert agree(("click", "vxlan"), ("click", "vxlan")) == "click"
    assert agree(("click", "vxlan"), ("vlan", "vxlan")) == "vxlan"
    assert agree(("vlan", "vxlan"), ("click", "vxlan")) == "vxlan"
    assert agree(("vxlan",), ("vxlan", "gre")) == "vxlan"


def test_no_carrier_in_common_fails_with_the_reason() -> None:
    with pytest.raises(StitchFailed, match="this provider offers click, vxlan"):
        agree(("click", "vxlan"), ("vlan",))  # the peer rejects, naming its offer
    with pytest.raises(StitchFailed, match="the peer offers vxlan, this provider offers "
                                           "click: no carrier in common"):
        agree(("click",), ("vlan", "vxlan"))
    with pytest.raises(StitchFailed, match="offers no encapsulation that can cross"):
        agree(("vlan",), ("vxlan",))


def test_the_responder_refuses_what_cannot_cross_providers() -> None:
    vlan = respond(Stitch("r", 5000, "propose", (HERE,), "vlan"), True, 5000, THERE,
                   ("click", "vxlan"))
    assert (vlan.state, vlan.reason) == (
        "reject", "encapsulation vlan cannot carry links between providers: use vxlan")
    click = respond(Stitch("r", 5000, "propose", (HERE,), "click"), True, 5000, THERE,
                    ("vxlan",))
    assert (click.state, click.encapsulation) == ("counter", "vxlan")
    alone = respond(Stitch("r", 5000, "propose", (HERE,), "vxlan"), True, 5000, THERE, ())
    assert alone.state == "reject" and "no carrier in common" in (alone.reason or "")


def _parts() -> list[Part]:
    spec = VNetSpec(name="x", nodes=(), links=())
    return [Part(0, "pip1", spec, (PartLink("r1", "l3", "initiator", 1),), 1.0),
            Part(1, "pip2", spec, (PartLink("r1", "l3", "responder", 0),), 1.0)]


def test_a_split_between_providers_without_a_common_carrier_is_named() -> None:
    ads = {"pip1": Advertisement("pip1", (), ("click", "vxlan")),
           "pip2": Advertisement("pip2", (), ("vlan", "vxlan"))}
    assert unstitchable(_parts(), ads) is None
    ads["pip2"] = Advertisement("pip2", (), ("vlan",))
    why = unstitchable(_parts(), ads)
    assert why is not None and why.startswith("link l3: no common encapsulation")


def test_the_record_keeps_the_carrier_and_reads_older_rows() -> None:
    click = Record("r1", "l3", 5000, "198.18.2.11", True, "click")
    assert Record.from_list(click.to_list()) == click
    # rows written before: five items, the carrier inside the address
    assert Record.from_list(["r1", "l3", 5000, "click@198.18.2.11", True]) == click
    old = Record.from_list(["r1", "l3", 5000, "198.18.2.11", False])
    assert (old.encapsulation, old.address) == ("vxlan", "198.18.2.11")


def test_the_plan_takes_the_recorded_carrier() -> None:
    from tests.unit.test_plan_build import SUBSTRATE, _partial
    from vnetlib.plan.build import PlanError, build_plan

    rec = Record("x1", "x1", 6000, "198.18.7.12", True, "click")
    plan = build_plan(_partial(), {"a": "h1", "b": "h1", "c": "h2"}, SUBSTRATE,
                      vnet_id="tiny-1", lab="lab", vnis={"l2": 5000},
                      boundary={"x1": (rec.address, rec.vni, rec.encapsulation)})
    segment = plan.host("h2").links[-1]
    assert segment.tunnel is not None
    assert (segment.encapsulation, segment.tunnel.remote, segment.tunnel.vni) == (
        "click", "198.18.7.12", 6000)
    with pytest.raises(PlanError, match="encapsulation 'vlan' cannot carry a link between"):
        build_plan(_partial(), {"a": "h1", "b": "h1", "c": "h2"}, SUBSTRATE,
                   vnet_id="tiny-1", lab="lab", vnis={"l2": 5000},
                   boundary={"x1": ("198.18.7.12", 6000, "vlan")})
