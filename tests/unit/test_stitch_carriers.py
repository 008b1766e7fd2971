"""Carriers of links between providers: what a PIP offers, how the agreed
carrier is planned, and the lab's per-PIP encapsulation lists
(`--encap click,vlan+click`)."""

from __future__ import annotations

import pytest

from tests.unit.test_plan_build import SUBSTRATE, _partial
from vnetlib import naming
from vnetlib.lab.testbed import LabSpec
from vnetlib.plan.build import build_plan
from vnetlib.plan.model import TunnelTask
from vnetlib.players import messages as m
from vnetlib.players.stitching import carriers, respond
from vnetlib.switch.lab import encapsulations, offered


def test_a_pips_carriers_are_its_encapsulations_that_cross_providers() -> None:
    assert carriers(("vlan", "click", "vxlan")) == ("click", "vxlan")
    assert carriers(("vxlan", "click")) == ("vxlan", "click")
    assert carriers(("vlan", "gre")) == ()


def test_a_click_boundary_link_is_a_click_segment() -> None:
    plan = build_plan(_partial(), {"a": "h1", "b": "h1", "c": "h2"}, SUBSTRATE,
                      vnet_id="tiny-1", lab="lab", vnis={"l2": 5000},
                      boundary={"x1": ("198.18.7.12", 6000, "click")})
    segment = plan.host("h2").links[-1]
    assert segment.encapsulation == "click"
    assert segment.tunnel == TunnelTask("click", naming.link_tunnel("tiny-1", "x1"), 6000,
                                        "198.18.0.12", "198.18.7.12", 47900)
    host = plan.to_dict()["hosts"]["h2"]
    (click,) = host["click"]
    assert (click["link"], click["vni"], click["remote"], click["bandwidth_mbps"]) == (
        "x1", 6000, "198.18.7.12", 20.0)
    assert next(t for t in host["links"] if t["link"] == "x1")["tunnel"] is None


def test_a_responder_answers_by_its_carriers() -> None:
    initiator = m.StitchEndpoint("initiator", "198.18.1.11", 47900)
    local = m.StitchEndpoint("responder", "198.18.2.11")
    click = m.Stitch("r", 5000, "propose", (initiator,), "click")
    taken = respond(click, False, 5001, local, ("click", "vxlan"))
    assert (taken.state, taken.vni, taken.encapsulation) == ("counter", 5001, "click")
    both = respond(click, False, 5001, local, ("vxlan",))
    assert (both.state, both.vni, both.encapsulation) == ("counter", 5001, "vxlan")
    assert both.reason == ("VNI 5000 is taken here; encapsulation click is not offered here: "
                           "use vxlan")
    ok = respond(click, True, 5000, local, ("vxlan", "click"))
    here = ok.endpoint("responder")
    assert ok.state == "accept" and here is not None and here.port == 47900


def test_lab_encapsulation_lists_per_pip() -> None:
    assert encapsulations("click,vlan+click", 3) == ["click", "vlan+click", "vlan+click"]
    assert offered("vlan+click") == ("vlan", "click", "vxlan")
    assert offered("vxlan") == ("vxlan",)
    LabSpec(name="x", encap="click,vlan+click")
    with pytest.raises(ValueError, match="not vxlan, click or vlan"):
        LabSpec(name="x", encap="click,vlan+gre")
