"""The eviction documents (issue #13): `<evict>` (PIP -> the VNP that owns
the sliver), `<eviction>` (its answer), the callback a VNP registers with
`<allocate>`/`<provision>`, the VNet's `<event>`; and the sliver record
keeping the callback."""

from __future__ import annotations

import pytest

from vnetlib.core.records import Embedding, Sliver, State
from vnetlib.players import messages as m
from vnetlib.players.server import Unprocessable
from vnetlib.spec import parse_vnet

SPEC = parse_vnet(b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="v"><node id="x"/></vnet>""")


def test_evict_and_eviction_read_back() -> None:
    req = m.Evict("n1a2b3c4d5e.0", "x", "capacity", 1795838594.0)
    assert m.evict_from(m.read(m.evict_xml(req), "evict")) == req
    bare = m.Evict("n1a2b3c4d5e.0", "x")
    assert m.evict_from(m.read(m.evict_xml(bare), "evict")) == bare
    done = m.Eviction("n1a2b3c4d5e.0", "x", 4.25)
    assert m.eviction_from(m.parse_reply(m.eviction_xml(done), "eviction")) == done


def test_a_reason_is_a_word_from_the_list_not_free_text() -> None:
    body = m.evict_xml(m.Evict("s.0", "x")).replace(b'"maintenance"', b'"host h1 is dying"')
    with pytest.raises(Unprocessable):
        m.read(body, "evict")


def test_the_callback_travels_in_allocate_and_provision_and_must_be_https() -> None:
    req = m.Allocate(SPEC, 2.0, 30.0, "https://127.0.0.1:4431")
    assert m.allocate_from(m.read(m.allocate_xml(req), "allocate")).callback == req.callback
    assert m.allocate_from(m.read(m.allocate_xml(m.Allocate(SPEC)), "allocate")).callback is None
    prov = m.Provision((), "https://vnp.example:443")
    assert m.provision_from(m.read(m.provision_xml(prov), "provision")) == prov
    with pytest.raises(Unprocessable):
        m.read(m.allocate_xml(m.Allocate(SPEC, callback="http://plain:80")), "allocate")


def test_a_vnet_view_carries_events_without_who_or_where() -> None:
    view = m.VNetView("v1", "v", "ready", ("x",), events=(
        m.Event(1795838594.0, "node-moved", "x"),))
    back = m.vnet_view_from(m.parse_reply(m.vnet_view_xml(view), "vnet-status"))
    assert back == view
    listed = m.vnet_list_from(m.parse_reply(m.vnet_list_xml([view]), "vnet-list"))
    assert listed == [view]


def test_the_sliver_record_keeps_the_callback() -> None:
    s = Sliver("s1", "sub", "vnp", "n1.0", State.READY, "<vnet/>", Embedding({}, {}),
               callback="https://127.0.0.1:4431")
    back = Sliver.from_row(id=s.id, substrate=s.substrate, owner=s.owner, name=s.name,
                           state=s.state.value, expires=None, created=0.0, updated=0.0,
                           version=0, data=s.data_json())
    assert back.callback == s.callback
    old = s.data_json().replace(', "callback": "https://127.0.0.1:4431"', "")
    assert Sliver.from_row(id="s1", substrate="sub", owner="vnp", name="n1.0", state="ready",
                           expires=None, created=0.0, updated=0.0, version=0,
                           data=old).callback == ""
