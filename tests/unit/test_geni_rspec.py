"""GENI RSpec v3: request export and import (Figure 6 round trip), manifest and
advertisement documents, all validated against GENI's schemas and ours."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
from lxml import etree

from vnetlib.geni import schema, urns
from vnetlib.geni.documents import advertisement_rspec, manifest_rspec
from vnetlib.geni.rspec import parse_request, request_rspec, spec_from_root
from vnetlib.geni.schema import GENI_NS, VNET_NS
from vnetlib.players.messages import Advertisement, Site
from vnetlib.spec import SpecErrors, load_vnet, parse_vnet
from vnetlib.spec.model import VNetSpec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("figure6*.xml"))

RICH = b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="rich">
  <service availability="0.99"><description>all fields</description>
    <console kind="serial"/><console kind="vnc"/></service>
  <constraints max-price="12.5" path-splitting="true" max-pips="2">
    <location>berlin</location><location>london</location></constraints>
  <node id="a" kind="vm" cpu="1.5" memory="256" disk="2.5" image="debian"
        location="berlin" forwarding="false"><console kind="vnc"/></node>
  <node id="b" kind="netns" cpu="0.25" memory="64" location="london"/>
  <link id="ab" bandwidth="12.5" latency="0.5">
    <endpoint node="a" interface="e0"><address>198.19.3.1/30</address>
      <address>2001:db8::1/64</address></endpoint>
    <endpoint node="b" interface="e0"><address>198.19.3.2/30</address></endpoint></link>
  <boundary-link id="bx" bandwidth="7">
    <endpoint node="b" interface="e1"><address>198.19.3.5/30</address></endpoint>
    <peer ref="x0123abcd"/></boundary-link>
</vnet>"""


def roots(data: bytes) -> etree._Element:
    return etree.fromstring(data)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_figure6_round_trip_is_equal_in_every_field(path: Path) -> None:
    spec = load_vnet(path)
    rspec = request_rspec(spec)
    assert schema.validate_bytes(rspec, "request") == "request"
    back = parse_request(rspec)
    assert back == spec
    for f in fields(VNetSpec):  # the fields compared, named, for a readable failure
        assert getattr(back, f.name) == getattr(spec, f.name) or not f.compare, f.name


def test_every_field_we_carry_survives_a_round_trip() -> None:
    spec = parse_vnet(RICH)
    rspec = request_rspec(spec)
    back = parse_request(rspec)
    assert back == spec
    assert back.nodes[0].kind.value == "qemu" and back.nodes[0].image == "debian"
    assert back.links[0].a.interface.addresses == ("198.19.3.1/30", "2001:db8::1/64")
    assert back.boundary[0].peer_ref == "x0123abcd"
    # GENI's own elements say what a GENI tool needs, without our extension
    doc = roots(rspec)
    link = doc.find(f"{{{GENI_NS}}}link")
    assert link is not None
    props = link.findall(f"{{{GENI_NS}}}property")
    assert [(p.get("source_id"), p.get("capacity")) for p in props] == [
        ("a:e0", "12500"), ("b:e0", "12500")]
    node = doc.find(f"{{{GENI_NS}}}node")
    assert node is not None and node.get("client_id") == "a"
    ip = node.find(f"{{{GENI_NS}}}interface/{{{GENI_NS}}}ip")
    assert ip is not None and ip.get("netmask") == "255.255.255.252"


def test_a_plain_geni_request_without_our_extension_is_read_with_defaults() -> None:
    spec = parse_vnet(RICH)
    doc = roots(request_rspec(spec))
    for el in list(doc.iter(f"{{{VNET_NS}}}*")):
        el.getparent().remove(el)
    one_ended = etree.tostring(doc)
    with pytest.raises(ValueError, match="joins 1 known"):  # no peer ref: not a boundary link
        parse_request(one_ended)
    for el in doc.findall(f"{{{GENI_NS}}}link[@client_id='bx']"):
        doc.remove(el)
    plain = etree.tostring(doc)
    schema.validate_bytes(plain, "request")
    back = parse_request(plain.replace(b'name="qemu"', b'name="netns"'), name="plain")
    assert back.name == "plain"
    assert [n.id for n in back.nodes] == ["a", "b"]
    assert back.links[0].bandwidth_mbps == 12.5 and back.links[0].latency_ms == 0.5
    assert back.links[0].a.interface.addresses == spec.links[0].a.interface.addresses
    assert back.nodes[0].cpu == 1.0 and back.nodes[0].location is None  # defaults


def test_schema_violations_are_reported_with_their_line() -> None:
    rspec = request_rspec(load_vnet(EXAMPLES[0]))
    bad_ext = rspec.replace(b'<vnet:node kind="netns" cpu="1"', b'<vnet:node kind="lxc" cpu="1"',
                            1)
    with pytest.raises(SpecErrors) as err:
        parse_request(bad_ext)
    assert "lxc" in str(err.value) and err.value.errors[0].line is not None
    bad_geni = rspec.replace(b'<node client_id="e1"', b'<node', 1)
    with pytest.raises(SpecErrors, match="client_id"):
        parse_request(bad_geni)
    with pytest.raises(SpecErrors, match="not well-formed"):
        parse_request(b"<rspec")
    with pytest.raises(SpecErrors, match="not a GENI RSpec"):
        parse_request(b'<vnet xmlns="urn:vnet:rdl:1"/>')


def test_rdl_rules_apply_to_what_an_rspec_says() -> None:
    rspec = request_rspec(load_vnet(EXAMPLES[0]))
    dangling = rspec.replace(b'<interface_ref client_id="e1:eth0"/>',
                             b'<interface_ref client_id="zz:eth0"/>', 1)
    with pytest.raises(ValueError, match="joins 1 known"):
        parse_request(dangling)
    twice = rspec.replace(b'client_id="r4"', b'client_id="r3"', 1)
    with pytest.raises(SpecErrors):
        parse_request(twice)


def test_manifest_of_a_sliver_is_valid_and_names_no_host() -> None:
    spec = parse_vnet(RICH)
    data = manifest_rspec("pip1", "sabc", "exp", spec, status="ready", price=3.5,
                          node_states={"a": "stopped"}, stitches={"x0123abcd": (True, 5000)})
    assert schema.validate_bytes(data, "manifest") == "manifest"
    doc = roots(data)
    nodes = doc.findall(f"{{{GENI_NS}}}node")
    assert [n.get("sliver_id") for n in nodes] == [urns.sliver_urn("pip1", "sabc", "a"),
                                                  urns.sliver_urn("pip1", "sabc", "b")]
    assert all(n.get("component_id") is None for n in nodes)
    assert {n.get("component_manager_id") for n in nodes} == {urns.aggregate_urn("pip1")}
    states = [n.find(f"{{{VNET_NS}}}node").get("state") for n in nodes]  # type: ignore[union-attr]
    assert states == ["stopped", "running"]
    peer = doc.find(f".//{{{VNET_NS}}}peer")
    assert peer is not None and peer.get("vni") == "5000" and peer.get("stitched") == "true"
    assert spec_from_root(doc) == spec  # a manifest still carries the request


def test_advertisement_is_valid_and_per_location() -> None:
    ad = Advertisement("pip1", (Site("berlin", 4, 4096, 1.0, 0.01, ("netns", "qemu")),
                                Site("london", 0, 0, 2.0)))
    data = advertisement_rspec(ad)
    assert schema.validate_bytes(data, "advertisement") == "advertisement"
    doc = roots(data)
    nodes = doc.findall(f"{{{GENI_NS}}}node")
    assert [n.get("component_name") for n in nodes] == ["berlin", "london"]
    assert [[s.get("name") for s in n.findall(f"{{{GENI_NS}}}sliver_type")]
            for n in nodes] == [["netns", "qemu"], ["netns"]]
    avail = [n.find(f"{{{GENI_NS}}}available").get("now") for n in nodes]  # type: ignore[union-attr]
    assert avail == ["true", "false"]
    with pytest.raises(SpecErrors, match="advertisement"):
        schema.validate_bytes(data, "request")


def test_urns() -> None:
    assert urns.slice_name(urns.slice_urn("exp-1", "ch.example.net")) == "exp-1"
    u = urns.sliver_urn("pip1", "s0a", "r1")
    assert urns.sliver_parts("pip1", u) == ("s0a", "r1")
    with pytest.raises(ValueError):
        urns.sliver_parts("pip2", u)
    with pytest.raises(ValueError):
        urns.slice_name("urn:publicid:IDN+x+user+bob")


def test_attachment_points_on_nodes_and_link_segments_survive_a_round_trip() -> None:
    spec = parse_vnet(b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="att">
  <node id="a"/><node id="b"/>
  <link id="ab">
    <endpoint node="a" interface="e0"><address>198.19.4.1/24</address></endpoint>
    <endpoint node="b" interface="e0"><address>198.19.4.2/24</address></endpoint></link>
  <attach node="a" link="ab" pool="198.19.4.128/25" realm="vno"/>
  <attach node="b" pool="198.19.8.0/24" realm="vno"/>
</vnet>""")
    rspec = request_rspec(spec)
    assert schema.validate_bytes(rspec, "request") == "request"
    back = parse_request(rspec)
    assert back.attachments == spec.attachments
    assert [a.link for a in back.attachments] == ["ab", ""]
