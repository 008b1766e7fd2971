"""Authorization, XML errors and restart recovery, on SQLite and PostgreSQL."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.integration.players_fixtures import Players, Substrates, namespaces
from vnetlib.players import messages as m
from vnetlib.players.client import PlayerClient, RemoteError
from vnetlib.players.pki import Role
from vnetlib.spec import parse_vnet

SMALL = b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="small">
  <node id="n1" location="berlin"/><node id="n2" location="berlin"/>
  <link id="l1"><endpoint node="n1" interface="e0"><address>198.19.251.1/30</address></endpoint>
    <endpoint node="n2" interface="e0"><address>198.19.251.2/30</address></endpoint></link>
</vnet>"""


@pytest.fixture(params=["sqlite", "postgresql"])
def store_players(request: pytest.FixtureRequest, players: Players) -> Iterator[Players]:
    if request.param == "postgresql":
        players.store_url = request.getfixturevalue("postgres_url")
    yield players


def test_owners_only_xml_errors_and_restart(store_players: Players,
                                            substrates: Substrates) -> None:
    p = store_players
    tag = secrets.token_hex(2)  # fresh player names: PostgreSQL is shared by the session
    pip, vnp, vno = f"pip-{tag}", f"vnp-{tag}", f"vno-{tag}"
    p.pip(pip, substrates.a)
    p.vnp(vnp, [pip])
    p.vno(vno, vnp)
    vno_cfg = p.nodes[vno].config
    sp, other_sp = p.sp(f"sp-{tag}", vno), p.sp(f"sp2-{tag}", vno)

    view = sp.request_vnet(parse_vnet(SMALL))
    assert view.status == "ready" and view.nodes == ("n1", "n2")
    rc, out, err = sp.exec(view.id, "n1", ["ping", "-c", "1", "-W", "2", "198.19.251.2"])
    assert rc == 0, out + err

    # another SP at the same VNO: the VNet does not exist for it
    assert other_sp.list() == []
    for call in (lambda: other_sp.status(view.id), lambda: other_sp.delete(view.id),
                 lambda: other_sp.exec(view.id, "n1", ["true"])):
        with pytest.raises(RemoteError) as e:
            call()
        assert e.value.status == 404
    # another VNO at the VNP: 404 too; an SP calling the VNP: 403
    vnp_url = p.nodes[vnp].url
    vnp_id = p.nodes[vnp].service.store.all()[0].id  # type: ignore[union-attr]
    other_vno = PlayerClient(vnp_url, p.creds(f"vno2-{tag}", Role.VNO))
    for method in ("GET", "DELETE"):
        with pytest.raises(RemoteError) as e:
            other_vno.request(method, f"/v1/vnets/{vnp_id}")
        assert e.value.status == 404
    assert m.vnet_list_from(m.read(other_vno.get("/v1/vnets").body, "vnet-list")) == []
    with pytest.raises(RemoteError) as e:
        PlayerClient(vnp_url, p.creds(f"sp-{tag}", Role.SP)).get("/v1/vnets")
    assert e.value.status == 403
    # the VNO's answers name no provider and no substrate host
    raw = PlayerClient(p.nodes[vno].url, p.creds(f"sp-{tag}", Role.SP)).get(
        f"/v1/vnets/{view.id}").body
    assert pip.encode() not in raw and b"h1" not in raw and substrates.a.encode() not in raw

    # malformed and schema-invalid documents
    raw_sp = PlayerClient(p.nodes[vno].url, p.creds(f"sp-{tag}", Role.SP))
    with pytest.raises(RemoteError) as e:
        raw_sp.post("/v1/vnets", b"<service-request><vnet></service-request>")
    assert e.value.status == 400 and "line 1" in e.value.message
    bad = b"""<service-request xmlns="urn:vnet:rdl:1">
      <vnet version="1" name="x"><node id="n1" cpu="lots"/></vnet></service-request>"""
    with pytest.raises(RemoteError) as e:
        raw_sp.post("/v1/vnets", bad)
    assert e.value.status == 422 and "line 2" in e.value.message and "node" in e.value.message
    dup = b"""<service-request xmlns="urn:vnet:rdl:1">
      <vnet version="1" name="x"><node id="n1"/><node id="n1"/></vnet></service-request>"""
    with pytest.raises(RemoteError) as e:
        raw_sp.post("/v1/vnets", dup)
    assert e.value.status == 422 and "line 2" in e.value.message

    # restart: a new VNO on the same store knows the VNet and can delete it
    p.stop(vno)
    p.start(vno_cfg)
    sp = p.sp(f"sp-{tag}", vno)
    assert [v.id for v in sp.list()] == [view.id]
    assert sp.status(view.id).status == "ready"
    sp.delete(view.id)
    assert sp.list() == []
    assert namespaces(f"vn-{substrates.a}-") == []
