"""Moves of virtual nodes in the PIP core on a recording deployer: the new
placement replaces the old in one write (ready -> ready, version bump), the
hosts hold exactly what the ledger says after a move, a failed move or a
dead mover's leftover puts everything back, drained hosts take nothing new;
and the pure per-host plan diff."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy.engine import Connection

from tests.unit.test_core import FIG6, assert_true_to_hosts, deployed, make_core
from vnetlib.core.deployer import RecordingDeployer, plan_objects
from vnetlib.core.pip import MoveFailed, PipCore, Rejected
from vnetlib.core.records import Embedding, Flow, Lock, Move, Sliver, State
from vnetlib.migrate import plan as moves
from vnetlib.migrate.place import move_node
from vnetlib.plan.build import crossing_links
from vnetlib.spec import parse_vnet

EMB = Embedding({"r1": "h1", "e1": "h2"}, {"l1": (Flow(("h2", "sw", "h1"), 100.0),)}, "x")


@pytest.fixture
def core(tmp_path: Path) -> Iterator[PipCore]:
    c = make_core(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        yield c
    finally:
        c.ledger.close()


def ready(core: PipCore, name: str = "a") -> Sliver:
    core.allocate("op", name, FIG6)
    return core.provision("op", name)


def other_host(core: PipCore, s: Sliver, node: str) -> str:
    return next(h.name for h in core.substrate.hosts if h.name != s.embedding.node_map[node])


def test_a_move_replaces_the_placement_in_one_write(core: PipCore) -> None:
    s = ready(core)
    target = other_host(core, s, "r1")
    moved = core.migrate("op", "a", "r1", target)
    after = core.ledger.get(s.id)
    assert after is not None and after == moved.sliver
    assert after.state is State.READY and after.moving is None and after.lock is None
    assert after.embedding.node_map == {**s.embedding.node_map, "r1": target}
    assert after.version > s.version
    assert moved.state_lost and moved.source == s.embedding.node_map["r1"]
    assert set(core.ledger.vnis_of(s.id)) == set(crossing_links(FIG6, after.embedding.node_map))
    for link in ("l1", "l2", "l3"):  # r1's links: routed from the target
        flow = after.embedding.link_map[link][0]
        assert target in flow.path
    assert_true_to_hosts(core)
    assert deployed(core) == plan_objects(core.plan(after))
    # moving it back leaves the hosts as before the first move
    core.migrate("op", "a", "r1", s.embedding.node_map["r1"])
    assert deployed(core) == plan_objects(core.plan(s))
    assert set(core.ledger.vnis_of(s.id)) == set(crossing_links(FIG6, s.embedding.node_map))


def test_a_failed_move_puts_everything_back(core: PipCore,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    s = ready(core)
    target = other_host(core, s, "r1")
    before, vnis = set(deployed(core)), core.ledger.vnis_of(s.id)
    monkeypatch.setenv("VNET_FAULT", "migrate-after-remove")  # after the source was cleared
    with pytest.raises(MoveFailed) as failed:
        core.migrate("op", "a", "r1", target)
    assert failed.value.rolled_back
    now = core.ledger.get(s.id)
    assert now is not None and now.embedding == s.embedding
    assert now.moving is None and now.lock is None and now.state is State.READY
    assert deployed(core) == before
    assert core.ledger.vnis_of(s.id) == vnis


def test_a_move_that_cannot_be_undone_stays_recorded_and_delete_removes_both(
        core: PipCore) -> None:
    s = ready(core)
    target = other_host(core, s, "r1")
    assert isinstance(core.deployer, RecordingDeployer)
    core.deployer.fail_hosts.add(target)  # fails the move and its undo there
    with pytest.raises(MoveFailed) as failed:
        core.migrate("op", "a", "r1", target)
    assert not failed.value.rolled_back
    now = core.ledger.get(s.id)
    assert now is not None and now.moving is not None and now.error
    core.deployer.fail_hosts.clear()
    core.delete("op", "a")
    assert deployed(core) == set()


def test_moves_that_cannot_be_are_refused_before_anything_happens(core: PipCore) -> None:
    s = ready(core)
    before = set(deployed(core))
    with pytest.raises(Rejected):
        core.migrate("op", "a", "r1", "h9")
    small = parse_vnet(b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="big">
      <node id="x" cpu="64"/></vnet>""")
    core.allocate("op", "big", small)
    core.provision("op", "big")
    full = core.ledger.find("op", "big")
    assert full is not None
    with pytest.raises(Rejected, match="CPU"):
        core.migrate("op", "a", "r1", full.embedding.node_map["x"])
    same = core.migrate("op", "a", "r1", s.embedding.node_map["r1"]).sliver  # no move
    assert same.embedding == s.embedding and same.moving is None and same.lock is None
    assert deployed(core) - plan_objects(core.plan(full)) == before


def test_drain_empties_a_host_and_new_vnets_avoid_it(core: PipCore) -> None:
    s = ready(core)
    host = s.embedding.node_map["r1"]
    done = core.drain(host)
    assert {m.node for m in done} == {n for n, h in s.embedding.node_map.items() if h == host}
    now = core.ledger.get(s.id)
    assert now is not None and host not in now.embedding.node_map.values()
    assert core.ledger.drained() == {host}
    core.allocate("op", "b", FIG6)
    b = core.provision("op", "b")
    assert host not in b.embedding.node_map.values()
    with pytest.raises(Rejected, match="drained"):
        core.migrate("op", "a", "e1", host)
    assert_true_to_hosts(core)
    core.undrain(host)
    assert core.ledger.drained() == set()


def test_the_reaper_undoes_the_move_of_a_mover_that_died(core: PipCore) -> None:
    s = ready(core)
    target = other_host(core, s, "r1")
    embedding = move_node(core.substrate, core.residual(), FIG6, s.embedding, "r1", target)
    fresh = [k for k in crossing_links(FIG6, embedding.node_map)
             if k not in core.ledger.vnis_of(s.id)]
    # the row and the hosts as a mover that died after deploying the new side left them
    def take(conn: Connection) -> None:
        core.ledger.take_vnis(conn, s.id, fresh)

    half = core.ledger.update(s, replace(
        s, moving=Move("r1", s.embedding.node_map["r1"], target, embedding),
        lock=Lock("migrate", "elsewhere:1:1", 0.0)), also=take)
    new = core.plan(replace(half, embedding=embedding, moving=None))
    core.deployer.apply(new, "present")
    done = core.reap()
    assert any("undid the move" in d for d in done), done
    now = core.ledger.get(s.id)
    assert now is not None and now.moving is None and now.lock is None
    assert now.embedding == s.embedding and now.version > half.version
    assert deployed(core) == plan_objects(core.plan(now))
    assert set(core.ledger.vnis_of(s.id)) == set(crossing_links(FIG6, s.embedding.node_map))


def test_record_round_trip_with_a_move() -> None:
    s = Sliver(id="s1", substrate="x", owner="o", name="n", state=State.READY, spec_xml="",
               embedding=EMB, moved={"r1": "vn-x-s1-r1+m1"},
               moving=Move("r1", "h1", "h2", EMB, "vn-x-s1-r1+m2"))
    back = Sliver.from_row(id=s.id, substrate=s.substrate, owner=s.owner, name=s.name,
                           state=s.state.value, expires=None, created=0.0, updated=0.0,
                           version=0, data=s.data_json())
    assert back == s
    assert back.domain("r1") == "vn-x-s1-r1+m1"


def test_plan_diff_per_host() -> None:
    old = {"vnet": "v", "hosts": {
        "h1": {"host": "h1", "nodes": [{"netns": "n-r1"}, {"netns": "n-e1"}],
               "links": [{"bridge": "b1", "ports": [1, 2], "tunnel": None},
                         {"bridge": "b2", "ports": [3], "tunnel": {"device": "x2",
                                                                   "remote": "h3"}}],
               "domains": []},
        "h3": {"host": "h3", "nodes": [], "links": [
            {"bridge": "b2", "ports": [4], "tunnel": {"device": "x2", "remote": "h1"}}],
            "domains": []}}}
    new = {"vnet": "v", "hosts": {
        "h1": {"host": "h1", "nodes": [{"netns": "n-e1"}],
               "links": [{"bridge": "b1", "ports": [2], "tunnel": {"device": "x1",
                                                                  "remote": "h3"}}],
               "domains": []},
        "h3": {"host": "h3", "nodes": [{"netns": "n-r1"}], "links": [
            {"bridge": "b1", "ports": [1], "tunnel": {"device": "x1", "remote": "h1"}},
            {"bridge": "b2", "ports": [3, 4], "tunnel": None}], "domains": []}}}
    gone = moves.removal(old, new)
    assert gone["hosts"]["h1"]["nodes"] == [{"netns": "n-r1"}]
    assert [s["bridge"] for s in gone["hosts"]["h1"]["links"]] == ["b2"]
    assert gone["hosts"]["h3"]["links"] == [{"bridge": "b2", "ports": [],
                                             "tunnel": {"device": "x2", "remote": "h1"}}]
    assert moves.changed_hosts(old, new) == {"h1", "h3"}
    assert moves.repointed(old, new, {"h1"}) == []
    assert list(moves.restrict(new, {"h3"})["hosts"]) == ["h3"]


NIC = ("<interface type='ethernet'><mac address='02:00:00:00:00:0{i}'/>"
       "<target dev='vqaaaa{i}' managed='no'/></interface>")
POOL_LIVE = ("<domain type='qemu'><name>vn-s-pool-ab12</name><uuid>u</uuid>"
             "<os><type>hvm</type><cmdline>pool</cmdline></os><devices>"
             + "".join(NIC.format(i=i) for i in (1, 2, 3)) + "</devices></domain>")


def test_a_taken_pool_vms_destination_opens_the_nodes_taps_and_spares() -> None:
    """The live XML of a taken pool VM names its pool taps (renamed to the
    node's at the take); the destination opens the node's taps in NIC order,
    a spare tap for a pool NIC the node does not use, and keeps the live MACs."""
    import xml.etree.ElementTree as ET

    from vnetlib.vm import migrate as vm

    xml = vm.dest_xml(POOL_LIVE, "vn-s-v1-r1+m1", ["vtnode0", "vtnode1"])
    root = ET.fromstring(xml)
    assert root.findtext("name") == "vn-s-v1-r1+m1" and root.find("uuid") is None
    devs = [t.get("dev") for t in root.iterfind("devices/interface/target")]
    spare = vm.spare_tap("vn-s-v1-r1+m1", 2)
    assert devs == ["vtnode0", "vtnode1", spare] and len(spare) <= 15
    assert vm.spare_taps(xml) == [spare]
    assert [m.get("address") for m in root.iterfind("devices/interface/mac")] == [
        "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"]
    assert "-incoming" in xml
    # an ordinary VM's live XML already names the node's taps: nothing changes
    plain = vm.dest_xml(POOL_LIVE.replace("vqaaaa", "vtnode"), "d", ["vtnode0", "vtnode1",
                                                                     "vtnode2"])
    assert vm.spare_taps(plain) == []


def test_the_destinations_definition_takes_the_target_plans_command_line() -> None:
    """A link that became local (or crossing) changes the guest's MTU in the
    plan's command line; the definition takes it, so the plan and the domain
    agree and vnet_domain does not restart the guest after the move."""
    import xml.etree.ElementTree as ET

    from vnetlib.vm import migrate as vm

    root = ET.fromstring(vm.persistent_xml(POOL_LIVE, "d", "uuid-1", "new line"))
    assert root.findtext("os/cmdline") == "new line"
    assert root.findtext("uuid") == "uuid-1" and root.findtext("name") == "d"
    kept = ET.fromstring(vm.persistent_xml(POOL_LIVE, "d", "uuid-1"))
    assert kept.findtext("os/cmdline") == "pool"
