"""Which encapsulation an inter-provider link gets: the first of ours the peer
also offers and that can cross providers, VXLAN as the common fallback; a
split whose providers share none is refused with the reason."""

from __future__ import annotations

import pytest

from vnetlib.players.messages import Advertisement
from vnetlib.players.negotiation import (
    NoCommonEncapsulation,
    Part,
    PartLink,
    stitch_encapsulation,
    stitch_offer,
    stitch_refusal,
    unstitchable,
)
from vnetlib.spec.model import VNetSpec


def test_own_encapsulations_fall_back_to_vxlan_between_providers() -> None:
    assert stitch_encapsulation(("click", "vxlan"), ("vlan", "vxlan")) == "vxlan"
    assert stitch_encapsulation(("click", "vxlan"), ("click", "vxlan")) == "vxlan"
    assert stitch_encapsulation(("vxlan",), ("vxlan", "gre")) == "vxlan"


def test_no_vxlan_on_one_side_is_refused_with_the_reason() -> None:
    with pytest.raises(NoCommonEncapsulation, match="missing from the peer's"):
        stitch_encapsulation(("click", "vxlan"), ("vlan",))
    with pytest.raises(NoCommonEncapsulation, match="missing from ours and the peer's"):
        stitch_encapsulation(("click",), ("click",))


def _parts() -> list[Part]:
    spec = VNetSpec(name="x", nodes=(), links=())
    return [Part(0, "pip1", spec, (PartLink("r1", "l3", "initiator", 1),), 1.0),
            Part(1, "pip2", spec, (PartLink("r1", "l3", "responder", 0),), 1.0)]


def test_a_split_between_providers_without_a_common_encapsulation_is_named() -> None:
    ads = {"pip1": Advertisement("pip1", (), ("click", "vxlan")),
           "pip2": Advertisement("pip2", (), ("vlan", "vxlan"))}
    assert unstitchable(_parts(), ads) is None
    ads["pip2"] = Advertisement("pip2", (), ("vlan",))
    why = unstitchable(_parts(), ads)
    assert why is not None and why.startswith("link l3: no common encapsulation")


def test_stitch_offer_and_refusal() -> None:
    assert stitch_offer(("click", "vxlan")) == "vxlan"
    with pytest.raises(NoCommonEncapsulation):
        stitch_offer(("vlan",))
    assert stitch_refusal("vxlan", ("vlan", "vxlan")) is None
    assert stitch_refusal("click", ("click", "vxlan")) == (
        "encapsulation click is not offered here for links between providers: use vxlan")
    why = stitch_refusal("vxlan", ("vlan",))
    assert why is not None and "offers vlan, none of them stitchable" in why
