"""A PIP asks its VNP to take a node away (issue #13): the VNP registered its
URL with each sliver (`<allocate callback>`); a drain with eviction asks it
for every node no host of the PIP can take; the VNP moves the node to
another provider at its location, or refuses (the node stays). Only the
part's provider may ask, and the PIP speaks only to the sliver's owner.
Real players over mutual TLS on real lab substrates; the hosts' side is
recorded (RecordingDeployer), the e2e test deploys for real."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from tests.integration.players_fixtures import Players, Substrates
from tests.integration.test_migrate_between import Chain, _fully_stitched
from vnetlib.core.deployer import RecordingDeployer
from vnetlib.migrate import evict
from vnetlib.players import messages as m
from vnetlib.players.client import PlayerClient, RemoteError
from vnetlib.players.pki import Role
from vnetlib.players.vno import VnoService
from vnetlib.players.vnp import VnpService
from vnetlib.spec import parse_vnet

# x has no location (the VNP may put it anywhere); a1 must be in berlin,
# which only PIP A offers, b1 in paris (PIP B). A is cheaper: x starts there.
SPEC = b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="evictee">
  <node id="x"/>
  <node id="a1" location="berlin"/>
  <node id="b1" location="paris"/>
  <link id="lxa"><endpoint node="x" interface="e0"><address>198.19.248.1/30</address>
    </endpoint><endpoint node="a1" interface="e0"><address>198.19.248.2/30</address>
    </endpoint></link>
  <link id="lxb"><endpoint node="x" interface="e1"><address>198.19.248.5/30</address>
    </endpoint><endpoint node="b1" interface="e0"><address>198.19.248.6/30</address>
    </endpoint></link>
</vnet>"""

_RUN = itertools.count()


@pytest.fixture
def chain(players: Players, substrates: Substrates) -> Iterator[Chain]:
    n = next(_RUN)
    names = {"pip-a": f"pip-ea{n}", "pip-b": f"pip-eb{n}"}
    deployers = {"pip-a": RecordingDeployer(), "pip-b": RecordingDeployer()}
    players.pip(names["pip-a"], substrates.a, price=1.0, deployer=deployers["pip-a"])
    players.pip(names["pip-b"], substrates.b, price=2.0, deployer=deployers["pip-b"])
    players.vnp("vnp", list(names.values()))
    players.vno("vno", "vnp")
    sp = players.sp("sp", "vno")
    view = sp.request_vnet(parse_vnet(SPEC))
    assert view.status == "ready"
    yield Chain(players, deployers, sp.client, view.id, names)
    sp.delete(view.id)
    for name, deployer in deployers.items():
        assert deployer.objects == set(), name


def _vnp(chain: Chain) -> VnpService:
    vnp = chain.players.nodes["vnp"].service
    assert isinstance(vnp, VnpService)
    return vnp


def test_a_drained_pip_has_its_vnp_take_nodes_away(chain: Chain) -> None:
    assert chain.where() == {"x": "pip-a", "a1": "pip-a", "b1": "pip-b"}
    a = chain.pip("pip-a")
    s = chain.sliver("pip-a")
    assert s is not None and s.callback == chain.players.nodes["vnp"].url
    # no host of A can take anything: both are drained, each asks its nodes away
    hosts = sorted(h.name for h in a.core.substrate.hosts)
    for host in hosts:
        a.core.ledger.set_drained(host, True)
    creds = chain.players.creds(chain.names["pip-a"], Role.PIP)
    outs = [evict.drain(a.core, host, creds) for host in hosts]
    evicted = [e for o in outs for e in o.evicted]
    stuck = [st for o in outs for st in o.stuck]
    assert not any(o.moved for o in outs)

    # x went to B (it asked for no location); a1 must be in berlin, which no
    # other provider has: refused, and it stays as it was
    assert [(e.node, e.name, e.owner) for e in evicted] == [("x", s.name, "vnp")]
    assert [(st.node, st.sliver) for st in stuck] == [("a1", s.name)]
    assert "no other provider can take node a1 at berlin" in stuck[0].why
    assert "it stays" in stuck[0].why
    assert chain.where() == {"x": "pip-b", "a1": "pip-a", "b1": "pip-b"}
    _fully_stitched(chain)
    assert not any(o[1] == "node" and o[2].endswith("-x")
                   for o in chain.deployers["pip-a"].objects)

    # the VNO's news: an event, no provider or host
    view = chain.players.sp("sp", "vno").status(chain.vnet)
    assert [(e.kind, e.node) for e in view.events] == [("node-moved", "x")]
    assert view.providers == ()
    vno = chain.players.nodes["vno"].service
    assert isinstance(vno, VnoService)
    text = repr([r.data for r in vno.store.all()])
    assert "node-moved" in text
    for secret in (*chain.names.values(), *hosts, "berlin", "paris"):
        assert secret not in text, secret
    for host in hosts:
        a.core.undrain(host)


def test_a_node_with_links_to_another_pip_is_re_placed_within_by_its_vnp(chain: Chain) -> None:
    # x ends lxb to B: its PIP cannot move it alone, but has room on its other
    # host; it asks the VNP to take it off the host (scope "host"), which
    # reshapes A's part with x elsewhere in A and stitches lxb again
    a = chain.pip("pip-a")
    s = chain.sliver("pip-a")
    assert s is not None
    host = s.embedding.node_map["x"]
    creds = chain.players.creds(chain.names["pip-a"], Role.PIP)
    asked: list[m.EvictScope] = []

    def ask(*args: object, scope: m.EvictScope, **kw: object) -> evict.Evicted:
        asked.append(scope)
        return evict.ask_owner(*args, scope=scope, **kw)  # type: ignore[arg-type]

    # a1, if it was there too, is asked off the host as well (A has room, in
    # london), but must be in berlin, which no other host or PIP offers: stays
    a1_here = s.embedding.node_map["a1"] == host
    out = evict.drain(a.core, host, creds, ask=ask)
    try:
        assert asked == (["host", "host"] if a1_here else ["host"])
        assert [e.node for e in out.evicted] == ["x"]
        assert [st.node for st in out.stuck] == (["a1"] if a1_here else [])
        after = chain.sliver("pip-a")
        assert after is not None and after.id == s.id
        assert after.embedding.node_map["x"] != host
        assert chain.where() == {"x": "pip-a", "a1": "pip-a", "b1": "pip-b"}
        assert not any(o[0] == host and o[1] == "node" and o[2].endswith("-x")
                       for o in chain.deployers["pip-a"].objects)
        _fully_stitched(chain)
    finally:
        a.core.undrain(host)


def test_only_the_parts_provider_asks_and_only_its_owner_is_asked(chain: Chain) -> None:
    vnp_url = chain.players.nodes["vnp"].url
    s = chain.sliver("pip-a")
    assert s is not None
    body = m.evict_xml(m.Evict(s.name, "x", "maintenance"))
    before = chain.snapshot()

    # a VNO or an SP cannot call the PIPs' entry; another PIP is told the
    # sliver does not exist
    for name, role in (("vno", Role.VNO), ("sp", Role.SP)):
        with pytest.raises(RemoteError) as err:
            PlayerClient(vnp_url, chain.players.creds(name, role)).post("/v1/evictions", body)
        assert err.value.status == 403, name
    with pytest.raises(RemoteError) as err:
        PlayerClient(vnp_url, chain.players.creds(chain.names["pip-b"], Role.PIP)).post(
            "/v1/evictions", body)
    assert err.value.status == 404
    assert chain.names["pip-a"] not in err.value.message

    # the PIP never sends its request to a callback that is not the sliver's
    # owner: a sliver of another VNP that named this VNP's URL, or no URL
    a = chain.pip("pip-a")
    other = a.core.allocate("vnp-x", "theirs", parse_vnet(SPEC.replace(
        b' location="paris"', b"").replace(b' location="berlin"', b"")), callback=vnp_url)
    creds = chain.players.creds(chain.names["pip-a"], Role.PIP)
    try:
        with pytest.raises(evict.EvictionRefused, match="not its owner vnp-x"):
            evict.ask_owner(other, "x", creds)
        with pytest.raises(evict.EvictionRefused, match="registered no URL"):
            evict.ask_owner(replace(other, callback=""), "x", creds)
    finally:
        a.core.delete("vnp-x", "theirs")
    assert chain.snapshot() == before
    assert _vnp(chain).store.all()[0].data.get("events") is None


def test_a_vnp_busy_with_the_vnet_waits_until_the_deadline_then_refuses(chain: Chain) -> None:
    vnp = _vnp(chain)
    (order,) = vnp.store.all()
    s = chain.sliver("pip-a")
    assert s is not None
    creds = chain.players.creds(chain.names["pip-a"], Role.PIP)
    assert vnp._claim(order.id)  # another request works on the VNet
    try:
        started = time.monotonic()
        with pytest.raises(evict.EvictionRefused, match="ask again later"):
            evict.ask_owner(s, "x", creds, deadline=time.time() + 1.0)
        assert 0.9 <= time.monotonic() - started < 10
    finally:
        vnp._unclaim(order.id)
    assert chain.where()["x"] == "pip-a"
