"""API v1 documents: round trips, schema refusals, and the pure negotiation logic."""

from __future__ import annotations

from pathlib import Path

import pytest

from vnetlib.embedding.multipip import PipSplit
from vnetlib.lab.layout import LabConfig, substrate_of
from vnetlib.players import messages as m
from vnetlib.players.config import ConfigError, PlayerConfig, Upstream, VnpSection, dump, load
from vnetlib.players.negotiation import (
    advertise,
    aggregate_adverts,
    decide_quote,
    partition,
    price_of,
    stitch_ref,
)
from vnetlib.players.pki import Role
from vnetlib.players.server import BadRequest, Unprocessable
from vnetlib.players.stitching import Agreement, StitchFailed, initiate, respond
from vnetlib.spec import dump_vnet, parse_vnet

SPEC = parse_vnet(b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="t">
  <node id="a" cpu="2"/><node id="b"/><node id="c"/>
  <link id="ab" bandwidth="10"><endpoint node="a" interface="e0"/>
    <endpoint node="b" interface="e0"/></link>
  <link id="bc" bandwidth="20"><endpoint node="b" interface="e1"/>
    <endpoint node="c" interface="e0"/></link>
</vnet>""")


@pytest.mark.parametrize("doc, tag, reader", [
    (m.advertisement_xml(m.Advertisement("p", (m.Site("berlin", 8, 4096, 1.5, 0.1),))),
     "advertisement", m.advertisement_from),
    (m.quote_xml(m.Quote("counter", 3.5, "too low")), "quote", m.quote_from),
    (m.provision_xml(m.Provision((m.Peer("x1", "pip-b", "https://127.0.0.1:1", "responder"),))),
     "provision", m.provision_from),
    (m.action_xml(m.Action("exec", "a", ("ping", "-c", "1"), 5.0)), "action", m.action_from),
    (m.action_result_xml(m.ActionResult("exec", 1, "out", "err")), "action-result",
     m.action_result_from),
    (m.stitch_xml(m.Stitch("x1", 20000, "accept", (m.StitchEndpoint("initiator", "198.18.1.11"),
                                                  m.StitchEndpoint("responder", "198.18.2.12")),
                           key="")), "stitch", m.stitch_from),
    (m.vnet_view_xml(m.VNetView("v1", "t", "ready", ("a", "b"), 2.0, (("a", "p"),))),
     "vnet-status", m.vnet_view_from),
    (m.slivers_xml([m.Manifest("s1", "ready", 2.5, ("a",),
                               (m.BoundaryState("x", "l", True, 20007),)),
                    m.Manifest("s2", "allocated", 1.0, ("b",), (), 1_800_000_000.0)]),
     "slivers", m.slivers_from),
])
def test_documents_are_schema_valid_and_read_back(doc: bytes, tag: str, reader: object) -> None:
    el = m.read(doc, tag)
    assert callable(reader)
    again = reader(el)
    writer = {"advertisement": m.advertisement_xml, "quote": m.quote_xml,
              "provision": m.provision_xml, "action": m.action_xml,
              "action-result": m.action_result_xml, "stitch": m.stitch_xml,
              "vnet-status": m.vnet_view_xml, "slivers": m.slivers_xml}[tag]
    assert writer(again) == doc  # type: ignore[operator]


def test_vnet_travels_inside_allocate_with_its_boundary_links() -> None:
    parts = partition(SPEC, PipSplit({"a": ("p1", "x"), "b": ("p1", "x"), "c": ("p2", "y")},
                                     [], 0.0), "o1", {("p1", "x"): 1.0, ("p2", "y"): 2.0})
    doc = m.allocate_xml(m.Allocate(parts[0].spec, 3.0, 60))
    got = m.allocate_from(m.read(doc, "allocate"))
    assert got.spec == parts[0].spec and got.price == 3.0 and got.expires_in == 60
    assert parse_vnet(dump_vnet(got.spec)) == got.spec


def test_malformed_is_400_and_schema_invalid_is_422_naming_line_and_element() -> None:
    with pytest.raises(BadRequest, match="line 1"):
        m.read(b"<stitch", "stitch")
    with pytest.raises(Unprocessable, match=r"line 2, element .*stitch.*vni"):
        m.read(b'<stitch xmlns="urn:vnet:rdl:1" version="1" ref="x" encapsulation="vxlan"\n'
               b' vni="0" state="propose"><endpoint role="initiator" address="1.2.3.4"/>'
               b"</stitch>", "stitch")
    with pytest.raises(Unprocessable, match="expected <quote>"):
        m.read(b'<stitch xmlns="urn:vnet:rdl:1"/>', "quote")
    with pytest.raises(Unprocessable, match="unknown node"):
        m.vnet_of(m.read(b"""<service-request xmlns="urn:vnet:rdl:1"><vnet version="1" name="x">
          <node id="a"/><link id="l"><endpoint node="a" interface="e0"/>
          <endpoint node="zz" interface="e0"/></link></vnet></service-request>""",
                         "service-request"))


def test_partition_cuts_links_across_providers_into_boundary_links() -> None:
    split = PipSplit({"a": ("p1", "x"), "b": ("p1", "x"), "c": ("p2", "y")}, [], 0.0)
    one, two = partition(SPEC, split, "o1", {("p1", "x"): 1.0, ("p2", "y"): 2.0})
    ref = stitch_ref("o1", "bc")
    assert [n.id for n in one.spec.nodes] == ["a", "b"] and [k.id for k in one.spec.links] == ["ab"]
    assert [n.location for n in one.spec.nodes] == ["x", "x"]
    assert [(b.id, b.endpoint.node, b.peer_ref) for b in one.spec.boundary] == [("bc", "b", ref)]
    assert [(b.id, b.endpoint.node, b.peer_ref) for b in two.spec.boundary] == [("bc", "c", ref)]
    assert [(k.role, k.peer_part) for k in one.links] == [("initiator", 1)]
    assert [(k.role, k.peer_part) for k in two.links] == [("responder", 0)]
    assert (one.expected_price, two.expected_price) == (3.0, 2.0)


def test_prices_quotes_and_advertisements() -> None:
    assert price_of(SPEC, 1.0, 0.1) == 4 + 3.0
    assert decide_quote(5.0, 6.0) == m.Quote("offer", 5.0)
    assert decide_quote(5.0, None) == m.Quote("offer", 5.0)
    assert decide_quote(7.0, 6.0).status == "counter"
    ad = advertise("pip", substrate_of(LabConfig(name="x", hosts=3, locations=("b", "l"))),
                   1.0, 0.0)
    assert [(s.location, s.cpu) for s in ad.sites] == [("b", 8.0), ("l", 4.0)]
    assert b"h1" not in m.advertisement_xml(ad)
    merged = aggregate_adverts("vnp", [ad, m.Advertisement("q", (m.Site("b", 2, 10, 3.0),))], 0.5)
    assert [(s.location, s.cpu, s.price_per_cpu) for s in merged.sites] == [
        ("b", 10.0, 3.5), ("l", 4.0, 1.5)]


def test_stitching_agrees_on_a_vni_free_on_both_sides() -> None:
    mine: set[int] = {100}
    theirs = {101, 102}
    local = m.StitchEndpoint("initiator", "198.18.1.11")
    remote = m.StitchEndpoint("responder", "198.18.2.12")

    def send(p: m.Stitch) -> m.Stitch:
        free = p.vni not in theirs
        alt = min(v for v in range(p.vni + 1, 200) if v not in theirs)
        return respond(p, free, alt, remote)

    def fresh(avoid: set[int]) -> int:
        v = min(v for v in range(100, 200) if v not in mine and v not in avoid)
        mine.add(v)
        return v

    def claim(v: int) -> bool:
        if v in mine:
            return False
        mine.add(v)
        return True

    got = initiate("x1", local, send, claim, fresh, mine.discard)
    assert got == Agreement("x1", 103, local, remote) and mine == {100, 103}
    refused = respond(m.Stitch("x1", 5, "propose", (local,), encapsulation="gre"), True, 5, remote)
    assert refused.state == "reject"
    with pytest.raises(StitchFailed, match="reject"):
        initiate("x1", local, lambda p: refused, claim, fresh, mine.discard)
    assert mine == {100, 103}


def test_config_round_trip_and_refusals(tmp_path: Path) -> None:
    config = PlayerConfig(name="vnp", role=Role.VNP, store="sqlite:////tmp/x.db",
                          pki=Path("/tmp/pki"), listen="127.0.0.1:4000",
                          vnp=VnpSection((Upstream("pip-a", "https://127.0.0.1:4001"),), 5.0))
    path = tmp_path / "vnp.toml"
    path.write_text(dump(config))
    assert load(path) == config
    path.write_text(dump(config).replace('role = "vnp"', 'role = "sp"'))
    with pytest.raises(ConfigError, match="client"):
        load(path)
    path.write_text(dump(config) + "\n[pip]\nbogus = 1\n")
    with pytest.raises(ConfigError):
        load(path)


def stitch_doc(vni: str = "20000", address: str = "198.18.1.11", port: str = "4789") -> bytes:
    return (b'<stitch xmlns="urn:vnet:rdl:1" version="1" ref="x" encapsulation="vxlan"\n'
            + f' vni="{vni}" state="propose"><endpoint role="initiator" address="{address}"'
              f' port="{port}"/></stitch>'.encode())


@pytest.mark.parametrize("vni", ["0", "-1", str(2**24), str(2**24 + 5), str(2**70), "1e3", " "])
def test_a_vni_outside_24_bits_is_refused_by_the_schema(vni: str) -> None:
    with pytest.raises(Unprocessable, match=r"line 2, element .*stitch.*vni"):
        m.stitch_from(m.read(stitch_doc(vni=vni), "stitch"))


@pytest.mark.parametrize("vni", ["1", "7", "4095"])
def test_a_vni_of_the_direct_path_range_is_refused_as_422_and_as_a_bad_reply(vni: str) -> None:
    with pytest.raises(Unprocessable, match=f"VNI {vni} is outside the stitching range "
                                            "4096..16777215") as caught:
        m.stitch_from(m.read(stitch_doc(vni=vni), "stitch"))
    assert caught.value.status == 422
    assert isinstance(caught.value, ValueError)  # from a peer's reply: a bad answer
    for good in (m.STITCH_VNI_MIN, m.STITCH_VNI_MAX):
        assert m.stitch_from(m.read(stitch_doc(vni=str(good)), "stitch")).vni == good


@pytest.mark.parametrize("address", ["0.0.0.0", "255.255.255.255", "127.0.0.1", "224.0.0.5",
                                     "169.254.1.1", "::", "::1", "ff02::1", "fe80::1",
                                     "::ffff:198.18.1.1", "240.1.2.3", "1.2.3", "1.2.3.4.5",
                                     "01.2.3.4", "1:2:3"])
def test_a_tunnel_endpoint_must_be_a_unicast_address(address: str) -> None:
    with pytest.raises(Unprocessable, match="attribute 'address'"):
        m.stitch_from(m.read(stitch_doc(address=address), "stitch"))


@pytest.mark.parametrize("address", [" 198.18.1.11", "198.18.1.11&#10;", "198.18.1.11 "])
def test_a_tunnel_endpoint_with_whitespace_is_refused_by_the_schema(address: str) -> None:
    with pytest.raises(Unprocessable, match="schema-invalid"):
        m.read(stitch_doc(address=address), "stitch")


@pytest.mark.parametrize("address", ["198.18.1.11", "10.1.2.3", "8.8.8.8", "2001:db8::1",
                                     "fd00::7"])
def test_unicast_tunnel_endpoints_are_read(address: str) -> None:
    stitch = m.stitch_from(m.read(stitch_doc(address=address), "stitch"))
    assert stitch.endpoints[0].address == address


@pytest.mark.parametrize("port", ["0", "65536", "-1", "99999999999999999999"])
def test_ports_outside_1_to_65535_are_refused(port: str) -> None:
    with pytest.raises(Unprocessable, match="port"):
        m.read(stitch_doc(port=port), "stitch")


HUGE = "9" * 400  # a valid xs:decimal that reads as float infinity


@pytest.mark.parametrize("doc, reader", [
    (f'<quote xmlns="urn:vnet:rdl:1" status="offer" price="{HUGE}"/>', m.quote_from),
    (f'<renew xmlns="urn:vnet:rdl:1" expires-in="{HUGE}"/>', m.renew_from),
    (f'<advertisement xmlns="urn:vnet:rdl:1" provider="p"><site location="x" cpu="{HUGE}"'
     ' memory="1" price-per-cpu="1"/></advertisement>', m.advertisement_from),
    (f'<sliver xmlns="urn:vnet:rdl:1" id="s" status="ready" price="{HUGE}"/>', m.manifest_from),
    (f'<action xmlns="urn:vnet:rdl:1" name="exec" timeout="{HUGE}"/>', m.action_from),
])
def test_numbers_that_read_as_infinity_are_refused(doc: str, reader: object) -> None:
    tag = doc.split()[0][1:]
    with pytest.raises(Unprocessable):
        reader(m.read(doc.encode(), tag))  # type: ignore[operator]


def test_a_vnet_with_amounts_that_read_as_infinity_is_refused() -> None:
    doc = (f'<allocate xmlns="urn:vnet:rdl:1"><vnet version="1" name="x"><node id="a" '
           f'cpu="{HUGE}"/></vnet></allocate>').encode()
    with pytest.raises(Unprocessable, match=r"attribute 'cpu'.* is larger than 1e"):
        m.allocate_from(m.read(doc, "allocate"))


def test_a_request_with_too_many_children_is_refused_before_the_schema() -> None:
    doc = ('<provision xmlns="urn:vnet:rdl:1">'
           + '<peer ref="r" name="p" url="https://x" role="initiator"/>' * 10_001
           + "</provision>").encode()
    with pytest.raises(Unprocessable, match="has 10,001 child elements"):
        m.read(doc, "provision")
