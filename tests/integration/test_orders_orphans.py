"""Nothing is orphaned between VNO, VNP and PIPs: a VNet is created under the
VNO's idempotency key (a retry gets the same VNet), a VNO that times out keeps
the VNet as unknown and resolves it, failed releases and deletions are kept
and retried until everything is gone, and a VNP that starts releases the
orders it never finished and deletes the slivers no order owns.

In-process players on real lab substrates; outages are real (a player is
stopped, then started again on the same port)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import pytest

from tests.integration.players_fixtures import Players, Substrates, namespaces
from vnetlib.core.deployer import AnsibleDeployer
from vnetlib.deploy.ansible import Progress
from vnetlib.lab import manage
from vnetlib.players import messages as m
from vnetlib.players.client import PlayerClient, RemoteError
from vnetlib.players.config import Upstream, VnoSection, VnpSection
from vnetlib.players.node import ManagementNode
from vnetlib.players.pip import PipService
from vnetlib.players.pki import Role
from vnetlib.players.stores import PlayerStore, Record
from vnetlib.players.vno import VnoService
from vnetlib.players.vnp import VnpService
from vnetlib.spec import dump_vnet, parse_vnet
from vnetlib.spec.model import VNetSpec

_T = TypeVar("_T")
FAST = {"retry_seconds": 0.2, "retry_max_seconds": 1.0}  # the reconcilers' pace here


def _solo(name: str = "solo", location: str = "berlin") -> VNetSpec:
    return parse_vnet(f"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="{name}">
      <node id="x" location="{location}"/></vnet>""".encode())


def _poll(what: str, probe: Callable[[], _T | None], timeout: float = 30.0) -> _T:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(0.1)


def _vnp(players: Players, upstreams: list[str],
         urls: dict[str, str] | None = None) -> ManagementNode:
    """A VNP whose reconciler runs fast; `urls` for upstreams that are down now."""
    urls = urls or {}
    ups = tuple(Upstream(u, urls.get(u) or players.nodes[u].url) for u in upstreams)
    return players.start(players.config("vnp", Role.VNP,
                                        vnp=VnpSection(ups, 10.0, False, **FAST)))


def _vno(players: Players, timeout: float = 120.0) -> ManagementNode:
    up = Upstream("vnp", players.nodes["vnp"].url)
    return players.start(players.config("vno", Role.VNO,
                                        vno=VnoSection(up, None, timeout, **FAST)))


def _stopped(players: Players, name: str) -> Callable[[], ManagementNode]:
    """Stop a player now; the returned function starts it again on its port."""
    node = players.nodes[name]
    config = replace(node.config, listen=f"127.0.0.1:{node.server.port}")
    players.stop(name)
    return lambda: players.start(config)


def _service(players: Players, name: str, kind: type[_T]) -> _T:
    service = players.nodes[name].service
    assert isinstance(service, kind)
    return service


def _slivers(players: Players, pip: str) -> list[str]:
    """The slivers `pip` holds for the VNP, as the VNP lists them."""
    client = PlayerClient(players.nodes[pip].url, players.creds("vnp", Role.VNP))
    return sorted(s.id for s in m.slivers_from(m.read(client.get("/v1/slivers").body,
                                                      "slivers")))


def _as_vno(players: Players) -> PlayerClient:
    return PlayerClient(players.nodes["vnp"].url, players.creds("vno", Role.VNO), 60.0)


def _left(players: Players, substrates: Substrates) -> list[str]:
    """What is left anywhere: records, slivers at the PIPs, namespaces."""
    left = []
    for name, node in players.nodes.items():
        service = node.service
        if isinstance(service, VnpService | VnoService):
            left += [f"{name}: record {r.id} ({r.data['status']})" for r in service.store.all()]
        if isinstance(service, PipService):
            left += [f"{name}: sliver {s}" for s in _slivers(players, name)]
            left += [f"{name}: ledger {s}" for s in service.core.ledger.slivers()]
            left += [f"{name}: VNI {v}" for v in service.core.ledger.used_vnis()]
    return left + namespaces(f"vn-{substrates.a}-") + namespaces(f"vn-{substrates.b}-")


def _nothing_left(players: Players, substrates: Substrates, timeout: float = 30.0) -> None:
    """Everything is gone once the reconcilers finished (each wait is bounded)."""
    deadline = time.monotonic() + timeout
    while (left := _left(players, substrates)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == []


def test_put_with_the_same_key_never_makes_a_second_vnet(
        players: Players, substrates: Substrates) -> None:
    players.pip("pip-a", substrates.a)
    players.pip("pip-b", substrates.b)
    _vnp(players, ["pip-a", "pip-b"])
    vnp = _service(players, "vnp", VnpService)
    client = _as_vno(players)
    body = dump_vnet(_solo())
    first: list[Any] = []
    worker = threading.Thread(target=lambda: first.append(client.put("/v1/vnets/k1", body)))
    worker.start()
    try:
        order = _poll("the VNP records the order", lambda: vnp.store.find("vno", "k1"))
        # asked again while the first request still works: the same order, not done yet
        status, reply = client.put("/v1/vnets/k1", body)
        again = m.vnet_view_from(m.read(reply, "vnet-status"))
        assert status == 202 and again.id == order.id and again.status != "ready"
    finally:
        worker.join(60)
    (done,) = first
    view = m.vnet_view_from(m.read(done.body, "vnet-status"))
    assert done.status == 201 and view.id == order.id and view.status == "ready"
    status, reply = client.put("/v1/vnets/k1", body)  # a retry after the answer was lost
    assert status == 200 and m.vnet_view_from(m.read(reply, "vnet-status")).id == order.id
    got = m.vnet_view_from(m.read(client.get("/v1/vnets/k1").body, "vnet-status"))
    assert got.id == order.id and got.status == "ready"
    listed = m.vnet_list_from(m.read(client.get("/v1/vnets").body, "vnet-list"))
    assert [v.id for v in listed] == [order.id]
    assert len(_slivers(players, "pip-a")) == 1
    with pytest.raises(RemoteError) as err:  # the key names this VNet, not another
        client.put("/v1/vnets/k1", dump_vnet(_solo("other")))
    assert err.value.status == 409
    with pytest.raises(RemoteError) as err:
        client.put("/v1/vnets/Bad", body)
    assert err.value.status == 400
    assert client.delete(f"/v1/vnets/{order.id}").status == 204
    _nothing_left(players, substrates)


@dataclass(slots=True)
class SlowDeployer:
    """The real Ansible deployer, each run started `seconds` late: a deployment
    that outlasts the VNO's timeout whatever the machine's speed."""

    inner: AnsibleDeployer
    seconds: float

    def apply(self, plan: Mapping[str, Any], state: str, *, check: bool = False,
              progress: Progress | None = None) -> None:
        time.sleep(self.seconds)
        self.inner.apply(plan, state, check=check, progress=progress)


def test_vno_that_times_out_keeps_the_vnet_unknown_and_resolves_it(
        players: Players, substrates: Substrates) -> None:
    for name, sub in (("pip-a", substrates.a), ("pip-b", substrates.b)):
        players.pip(name, sub, deployer=SlowDeployer(
            AnsibleDeployer(manage.inventory_path(sub)), 2.0))
    _vnp(players, ["pip-a", "pip-b"])
    _vno(players, timeout=1.0)  # each deployment takes over 2 s
    sp = players.sp("sp", "vno")
    with pytest.raises(RemoteError) as err:
        sp.request_vnet(_solo())
    assert err.value.status == 504 and err.value.code == "upstream-timeout"
    (kept,) = sp.list()
    assert kept.status in ("unknown", "ready")
    ready = _poll("the VNO resolves the VNet as ready",
                  lambda: next((v for v in sp.list() if v.status == "ready"), None))
    assert ready.id == kept.id and ready.nodes == ("x",)
    # exactly one VNet at the VNP, and it is the one the VNO knows
    record = _service(players, "vno", VnoService).store.get(kept.id)
    assert record is not None
    listed = m.vnet_list_from(m.read(_as_vno(players).get("/v1/vnets").body, "vnet-list"))
    assert [(v.id, v.name) for v in listed] == [(record.data["vnp_id"], record.data["key"])]
    rc, out, _ = sp.exec(kept.id, "x", ["ip", "-o", "link", "show", "lo"])
    assert rc == 0 and "lo" in out
    # A removal (Ansible) outlasts the VNO's timeout too: kept as deleting, retried.
    sp.delete(kept.id)
    _poll("the VNO deletes the VNet", lambda: sp.list() == [] or None)
    _nothing_left(players, substrates)


def test_deletions_that_fail_are_kept_and_retried_until_everything_is_gone(
        players: Players, substrates: Substrates) -> None:
    players.pip("pip-a", substrates.a)
    players.pip("pip-b", substrates.b)
    _vnp(players, ["pip-a", "pip-b"])
    _vno(players)
    sp = players.sp("sp", "vno")
    view = sp.request_vnet(_solo())
    assert _slivers(players, "pip-a") != []

    # The VNP is down: the VNO accepts the deletion and keeps the VNet as deleting.
    start_vnp = _stopped(players, "vnp")
    assert sp.delete(view.id) is False
    assert [(v.id, v.status) for v in sp.list()] == [(view.id, "deleting")]
    # The VNP comes back but the PIP holding the part is down: the VNP takes the
    # deletion (202), keeps the order releasing, and the VNO forgets the VNet.
    start_pip = _stopped(players, "pip-a")
    start_vnp()
    vnp = _service(players, "vnp", VnpService)
    _poll("the VNO forgets the VNet", lambda: sp.list() == [] or None)
    (order,) = vnp.store.all()
    assert order.data["status"] == "releasing" and len(order.data["parts"]) == 1
    time.sleep(1.0)  # several retries fail meanwhile; the order stays
    assert [r.id for r in vnp.store.all()] == [order.id]
    # The PIP is back: the next retry deletes the sliver and the order goes.
    start_pip()
    _poll("the VNP releases the order", lambda: vnp.store.all() == [] or None)
    _nothing_left(players, substrates)


def test_vnp_start_releases_unfinished_orders_and_deletes_orphan_slivers(
        players: Players, substrates: Substrates) -> None:
    pip = players.pip("pip-a", substrates.a)
    as_vnp = PlayerClient(pip.url, players.creds("vnp", Role.VNP))
    part = _solo("part")
    allocate = m.allocate_xml(m.Allocate(part, None, 60))
    # What a VNP killed mid-way leaves: an order it recorded as provisioning, with
    # its sliver allocated; a sliver allocated for an order it never recorded; and
    # a sliver of someone using the VNP's name by hand (not an order's part: kept).
    for name in ("n0000000001.0", "n00000000ff.0", "by-hand"):
        assert as_vnp.put(f"/v1/slivers/{name}", allocate).status == 201
    store = PlayerStore(players.config("vnp", Role.VNP).store, "vnp")
    try:
        store.insert(Record("n0000000001", "vno", "crashed", time.time(), {
            "kind": "vnet", "key": "crashed", "status": "provisioning",
            "spec": dump_vnet(part).decode(), "price": 1.0, "parts": [{
                "index": 0, "provider": "pip-a", "sliver": "n0000000001.0",
                "spec": dump_vnet(part).decode(), "price": 1.0, "nodes": ["x"],
                "links": []}]}))
    finally:
        store.close()

    start_pip = _stopped(players, "pip-a")  # down when the VNP starts: releases must wait
    _vnp(players, ["pip-a"], {"pip-a": pip.url})
    vnp = _service(players, "vnp", VnpService)
    client = _as_vno(players)
    got = m.vnet_view_from(m.read(client.get("/v1/vnets/crashed").body, "vnet-status"))
    assert got.status == "releasing"
    with pytest.raises(RemoteError) as err:  # its VNO asks again with the same key
        client.put("/v1/vnets/crashed", dump_vnet(part))
    assert err.value.status == 409 and "new key" in err.value.message
    time.sleep(1.0)
    assert [r.data["status"] for r in vnp.store.all()] == ["releasing"]

    start_pip()
    _poll("the VNP releases and sweeps",
          lambda: (vnp.store.all() == [] and _slivers(players, "pip-a") == ["by-hand"]) or None)
    with pytest.raises(RemoteError) as err:
        client.get("/v1/vnets/crashed")
    assert err.value.status == 404
    assert as_vnp.delete("/v1/slivers/by-hand").status == 204
    _nothing_left(players, substrates)


def test_reservations_expire_in_the_reconciler(players: Players,
                                               substrates: Substrates) -> None:
    players.pip("pip-a", substrates.a)
    vnp_node = _vnp(players, ["pip-a"])
    vnp = _service(players, "vnp", VnpService)
    upper = PlayerClient(vnp_node.url, players.creds("vnp-up", Role.VNP))
    allocate = m.allocate_xml(m.Allocate(_solo("part"), None, 0.5))
    assert upper.put("/v1/slivers/r1", allocate).status == 201
    assert len(_slivers(players, "pip-a")) == 1
    # nobody calls the VNP: the reconciler alone releases the expired reservation
    _poll("the reservation expires", lambda: vnp.store.all() == [] or None, timeout=10)
    assert _slivers(players, "pip-a") == []
    with pytest.raises(RemoteError) as err:
        upper.get("/v1/slivers/r1")
    assert err.value.status == 404
    _nothing_left(players, substrates)
