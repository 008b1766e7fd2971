"""Negotiation failures leave nothing behind; reservations expire; declines
and counter-offers."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import pytest

from tests.integration.players_fixtures import Players, Substrates, namespaces
from tests.integration.test_players_negotiation import spanning
from vnetlib.core.deployer import AnsibleDeployer
from vnetlib.deploy.ansible import DeployError, Progress, TaskFailure
from vnetlib.lab import manage
from vnetlib.players import messages as m
from vnetlib.players.client import PlayerClient, RemoteError
from vnetlib.players.config import Faults
from vnetlib.players.pip import PipService
from vnetlib.players.pki import Role
from vnetlib.players.vnp import VnpService
from vnetlib.spec import parse_vnet


def _nothing_left(players: Players, substrates: Substrates) -> None:
    for name, node in players.nodes.items():
        service = node.service
        if isinstance(service, VnpService):
            assert service.store.all() == [], f"{name} keeps a record"
        if isinstance(service, PipService):
            assert service.core.ledger.slivers() == [], f"{name} keeps a sliver"
            assert service.core.ledger.used_vnis() == set(), f"{name} keeps VNIs"
    assert namespaces(f"vn-{substrates.a}-") == [] and namespaces(f"vn-{substrates.b}-") == []


@pytest.mark.parametrize("faults", [Faults(fail_at="allocate"),
                                    Faults(stall_at="allocate", stall_seconds=20)],
                         ids=["fails", "stalls"])
def test_pip_failing_at_allocate_leaves_no_reservation(
        players: Players, substrates: Substrates, faults: Faults) -> None:
    players.pip("pip-a", substrates.a)
    players.pip("pip-b", substrates.b, faults=faults)
    players.vnp("vnp", ["pip-a", "pip-b"], timeout=2.0)
    players.vno("vno", "vnp")
    with pytest.raises(RemoteError) as err:
        players.sp("sp", "vno").request_vnet(spanning())
    assert err.value.status == 409 and "allocation failed" in err.value.message
    for secret in ("pip-b", "127.0.0.1", substrates.b):  # who failed stays hidden
        assert secret not in err.value.message
    _nothing_left(players, substrates)


def test_pip_failing_at_provision_rolls_back_the_other_pip(
        players: Players, substrates: Substrates) -> None:
    players.pip("pip-a", substrates.a)
    players.pip("pip-b", substrates.b, faults=Faults(fail_at="provision"))
    players.vnp("vnp", ["pip-a", "pip-b"])
    players.vno("vno", "vnp")
    with pytest.raises(RemoteError) as err:
        players.sp("sp", "vno").request_vnet(spanning())
    assert err.value.status == 409 and "instantiation failed" in err.value.message
    _nothing_left(players, substrates)


def test_declined_part_refuses_the_vnet_and_reserves_nothing(
        players: Players, substrates: Substrates) -> None:
    # berlin and london are two hosts of A joined by 1000 Mbit/s links: A declines
    spec = parse_vnet(b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="fat">
      <node id="x" location="berlin"/><node id="y" location="london"/>
      <link id="xy" bandwidth="5000"><endpoint node="x" interface="e0"/>
        <endpoint node="y" interface="e0"/></link></vnet>""")
    players.pip("pip-a", substrates.a)
    players.pip("pip-b", substrates.b)
    players.vnp("vnp", ["pip-a", "pip-b"])
    players.vno("vno", "vnp")
    with pytest.raises(RemoteError) as err:
        players.sp("sp", "vno").request_vnet(spec)
    assert err.value.status == 409 and "declined" in err.value.message
    assert "h1" not in err.value.message and "h2" not in err.value.message
    _nothing_left(players, substrates)


def test_counter_offer_over_the_vno_budget_is_refused(
        players: Players, substrates: Substrates) -> None:
    players.pip("pip-a", substrates.a, price=1.0, mbps=1.0)
    players.pip("pip-b", substrates.b, price=1.0, mbps=1.0)
    players.vnp("vnp", ["pip-a", "pip-b"])
    players.vno("vno", "vnp", max_price=5.0)  # 3 CPUs at 1, plus 20 Mbit/s at 1
    client = PlayerClient(players.nodes["pip-a"].url, players.creds("vnp", Role.VNP))
    part = parse_vnet(b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="q">
      <node id="x" location="berlin"/><node id="y" location="berlin"/>
      <link id="xy"><endpoint node="x" interface="e0"/><endpoint node="y" interface="e0"/></link>
      </vnet>""")
    reply = client.post("/v1/quotes", m.quote_request_xml(m.QuoteRequest(part, bid=2.0)))
    assert m.quote_from(m.read(reply.body, "quote")) == m.Quote(
        "counter", 12.0, "the price is 12, above the bid of 2")
    with pytest.raises(RemoteError) as err:
        players.sp("sp", "vno").request_vnet(spanning())
    assert err.value.status == 409 and "above the maximum price 5" in err.value.message
    _nothing_left(players, substrates)


def test_reservation_expires_and_frees_capacity(
        players: Players, substrates: Substrates) -> None:
    players.pip("pip-a", substrates.a, seconds=1.0)
    client = PlayerClient(players.nodes["pip-a"].url, players.creds("vnp", Role.VNP))

    def berlin_cpu() -> float:
        ad = m.advertisement_from(m.read(client.get("/v1/advertisement").body, "advertisement"))
        return next(s.cpu for s in ad.sites if s.location == "berlin")

    before = berlin_cpu()
    part = parse_vnet(b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="r">
      <node id="x" cpu="3" location="berlin"/></vnet>""")
    status, body = client.put("/v1/slivers/r1", m.allocate_xml(m.Allocate(part, None, 30)))
    manifest = m.manifest_from(m.read(body, "sliver"))
    assert status == 201 and manifest.status == "allocated"
    assert manifest.expires is not None and manifest.expires <= time.time() + 1.5
    assert berlin_cpu() == before - 3
    listed = m.slivers_from(m.read(client.get("/v1/slivers").body, "slivers"))
    assert [(x.id, x.status, x.nodes) for x in listed] == [("r1", "allocated", ("x",))]
    with pytest.raises(RemoteError) as err:  # another customer's sliver does not exist
        PlayerClient(players.nodes["pip-a"].url, players.creds("vnp2", Role.VNP)).get(
            "/v1/slivers/r1")
    assert err.value.status == 404
    time.sleep(1.2)
    assert berlin_cpu() == before
    with pytest.raises(RemoteError) as err:  # the reaper's tombstone: gone, not unknown
        client.get("/v1/slivers/r1")
    assert err.value.status == 410


def test_pip_restart_recovers_its_reservations(players: Players, substrates: Substrates) -> None:
    node = players.pip("pip-a", substrates.a)
    client = PlayerClient(node.url, players.creds("vnp", Role.VNP))
    part = parse_vnet(b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="r">
      <node id="x" location="london"/></vnet>""")
    client.put("/v1/slivers/keep", m.allocate_xml(m.Allocate(part, None, 30)))
    config = node.config
    players.stop("pip-a")
    client = PlayerClient(players.start(config).url, players.creds("vnp", Role.VNP))
    manifest = m.manifest_from(m.read(client.get("/v1/slivers/keep").body, "sliver"))
    assert manifest.status == "allocated" and manifest.nodes == ("x",)
    assert client.delete("/v1/slivers/keep").status == 204
    _nothing_left(players, substrates)


def test_pip_failing_at_quote_is_left_out_and_another_takes_the_vnet(
        players: Players, substrates: Substrates) -> None:
    players.pip("pip-a", substrates.a, price=1.0, faults=Faults(fail_at="quote"))
    players.pip("pip-b", substrates.b, price=5.0)
    players.vnp("vnp", ["pip-a", "pip-b"])
    players.vno("vno", "vnp")
    sp = players.sp("sp", "vno")
    view = sp.request_vnet(parse_vnet(b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="solo">
      <node id="x"/></vnet>"""))
    assert view.status == "ready" and view.price == 5.0
    b = players.nodes["pip-b"].service
    assert isinstance(b, PipService)
    assert [s.state.value for s in b.core.ledger.slivers()] == ["ready"]
    rc, out, _ = sp.exec(view.id, "x", ["ip", "-o", "link", "show", "lo"])
    assert rc == 0 and "lo" in out
    sp.delete(view.id)
    _nothing_left(players, substrates)


def test_failed_deployment_is_rolled_back_and_hidden(players: Players,
                                                     substrates: Substrates) -> None:
    real = AnsibleDeployer(manage.inventory_path(substrates.b))
    calls: list[str] = []

    class BreaksAfterPresent:
        def apply(self, plan: Mapping[str, Any], state: str, *, check: bool = False,
                  progress: Progress | None = None) -> None:
            real.apply(plan, state)  # the nodes really exist when the "failure" strikes
            calls.append(state)
            if state == "present":
                raise DeployError("failed", [TaskFailure("h1", "link", "bridge x", "boom")], "")

    players.pip("pip-a", substrates.a)
    players.pip("pip-b", substrates.b, deployer=BreaksAfterPresent())
    players.vnp("vnp", ["pip-a", "pip-b"])
    players.vno("vno", "vnp")
    with pytest.raises(RemoteError) as err:
        players.sp("sp", "vno").request_vnet(spanning())
    assert err.value.status == 409 and "502 upstream-failed" in err.value.message
    assert calls[:2] == ["present", "absent"]  # rolled back at once, then deleted
    _nothing_left(players, substrates)
