"""The PIP core and its sliver state machine on a recording deployer: concurrent
Provision, Delete, Renew and expiry on one sliver, with what "is deployed"
compared to the ledger after each; crash recovery; stitching idempotence."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from vnetlib.core import machine
from vnetlib.core.deployer import RecordingDeployer, plan_objects
from vnetlib.core.ledger import VNI_MAX, VNI_MIN, Ledger, Stale
from vnetlib.core.pip import Busy, Conflict, DeployFailed, Gone, NotFound, PipCore, Pricing
from vnetlib.core.records import Lock, Peer, Sliver, State, Stitch
from vnetlib.deploy.ansible import DeployError, TaskFailure
from vnetlib.lab.layout import LabConfig, substrate_of
from vnetlib.players import timeouts
from vnetlib.spec import load_vnet, parse_vnet

ROOT = Path(__file__).resolve().parents[2]
FIG6 = load_vnet(ROOT / "examples" / "figure6.xml")
PART = parse_vnet(b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="p">
  <node id="c"/><node id="d"/>
  <link id="cd"><endpoint node="c" interface="e1"/><endpoint node="d" interface="e1"/></link>
  <boundary-link id="bc"><endpoint node="c" interface="e0"/><peer ref="xref1"/></boundary-link>
  <boundary-link id="bd"><endpoint node="d" interface="e0"/><peer ref="xref2"/></boundary-link>
</vnet>""")
SUBSTRATE = substrate_of(LabConfig(name="tc", hosts=4, cpu=64.0, memory_mb=65536))


def make_core(url: str, deployer: RecordingDeployer | None = None,
              seconds: float = 60.0) -> PipCore:
    return PipCore(SUBSTRATE, Ledger(url, SUBSTRATE.name), deployer or RecordingDeployer(),
                   Pricing(1.0, 0.0, seconds))


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def core(url: str) -> Iterator[PipCore]:
    c = make_core(url)
    try:
        yield c
    finally:
        c.ledger.close()


def deployed(core: PipCore) -> set[tuple[str, str, str]]:
    assert isinstance(core.deployer, RecordingDeployer)
    return core.deployer.objects


def assert_true_to_hosts(core: PipCore) -> None:
    """Every object on the hosts belongs to a sliver the ledger says may have
    objects there, and every sliver at rest and deployed has all of its objects."""
    expected: set[tuple[str, str, str]] = set()
    allowed: set[tuple[str, str, str]] = set()
    for s in core.ledger.slivers(states=None):
        if s.deployed:
            objs = plan_objects(core.plan(s))
            allowed |= objs
            if s.state in (State.PROVISIONED, State.READY) and s.lock is None:
                expected |= objs
    assert deployed(core) <= allowed, "objects on the hosts that no sliver accounts for"
    assert expected <= deployed(core), "a ready sliver misses objects on the hosts"


# -- the state machine ------------------------------------------------------------------


def test_transitions_table_is_closed() -> None:
    for old, targets in machine.ALLOWED.items():
        assert targets <= set(State)
        assert old in machine.ALLOWED
    with pytest.raises(machine.IllegalTransition):
        machine.check("s", State.READY, State.ALLOCATED)
    with pytest.raises(machine.IllegalTransition):
        machine.check("s", State.DELETED, State.READY)


def test_timeouts_nest() -> None:
    assert timeouts.check_nesting() == []


def test_record_round_trip(core: PipCore) -> None:
    s = core.allocate("vnp", "a", FIG6)
    full = replace(s, peers=(Peer("r1", "pip2", "https://x", "initiator"),),
                   stitches=(Stitch("r1", "l1", 5000, "198.18.1.1", True),),
                   lock=Lock("provision", "h:1:2", 3.0), timings={"deploy": 1.5},
                   error="e")
    back = Sliver.from_row(id=full.id, substrate=full.substrate, owner=full.owner,
                           name=full.name, state=full.state.value, expires=full.expires,
                           created=full.created, updated=full.updated, version=full.version,
                           data=full.data_json())
    assert back == full


def test_lifecycle_matches_hosts(core: PipCore) -> None:
    s = core.allocate("vnp", "a", FIG6)
    assert s.state is State.ALLOCATED and not deployed(core)
    s = core.provision("vnp", "a")
    assert s.state is State.READY and s.deployed and s.lock is None
    assert deployed(core) == plan_objects(core.plan(s))
    assert core.provision("vnp", "a").version == s.version  # repeated: nothing happens
    gone = core.delete("vnp", "a")
    assert gone.state is State.DELETED and not deployed(core)
    assert core.ledger.vnis_of(s.id) == {}
    assert core.delete("vnp", "a").state is State.DELETED  # idempotent
    with pytest.raises(Gone):
        core.sliver("vnp", "a")
    with pytest.raises(NotFound):
        core.delete("vnp", "never")


def test_other_owner_sees_nothing(core: PipCore) -> None:
    core.allocate("vnp", "a", FIG6)
    with pytest.raises(NotFound):
        core.sliver("other", "a")
    with pytest.raises(NotFound):
        core.delete("other", "a")
    assert core.slivers("other") == []


def test_stale_write_loses(core: PipCore) -> None:
    s = core.allocate("vnp", "a", FIG6)
    core.ledger.update(s, replace(s, expires=(s.expires or 0) + 5))
    with pytest.raises(Stale):
        core.ledger.update(s, replace(s, state=State.PROVISIONING))
    assert core.ledger.get(s.id).state is State.ALLOCATED  # type: ignore[union-attr]


# -- concurrency on one sliver ------------------------------------------------------------


def race(*work: Callable[[], object]) -> list[object]:
    """Run the callables at once; their results or exceptions, in order."""
    results: list[object] = [None] * len(work)
    barrier = threading.Barrier(len(work))

    def run(i: int, fn: Callable[[], object]) -> None:
        barrier.wait()
        try:
            results[i] = fn()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(work)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_two_provisions_deploy_once(url: str) -> None:
    rec = RecordingDeployer(delay=0.3)
    core = make_core(url, rec)
    core.allocate("vnp", "a", FIG6)
    results = race(lambda: core.provision("vnp", "a"), lambda: core.provision("vnp", "a"))
    ok = [r for r in results if isinstance(r, Sliver)]
    busy = [r for r in results if isinstance(r, Busy)]
    assert len(ok) + len(busy) == 2 and ok
    assert [r for r in rec.runs if r[1] == "present"] == [(ok[0].id, "present")]
    assert_true_to_hosts(core)


def test_delete_during_provision_waits_and_removes(url: str) -> None:
    rec = RecordingDeployer(delay=0.4)
    core = make_core(url, rec)
    core.allocate("vnp", "a", FIG6)
    t = threading.Thread(target=core.provision, args=("vnp", "a"))
    t.start()
    time.sleep(0.1)
    gone = core.delete("vnp", "a")  # waits for the provision, then removes
    t.join()
    assert gone.state is State.DELETED
    assert rec.runs[0][1] == "present" and rec.runs[-1][1] == "absent"
    assert not deployed(core)
    assert_true_to_hosts(core)


def test_renew_after_provision_does_not_revert(url: str) -> None:
    rec = RecordingDeployer(delay=0.3)
    core = make_core(url, rec)
    core.allocate("vnp", "a", FIG6)
    results = race(lambda: core.provision("vnp", "a"), lambda: core.renew("vnp", "a", 30))
    assert not any(isinstance(r, Exception) for r in results), results
    s = core.sliver("vnp", "a")
    assert s.state is State.READY and s.expires is None
    core.reap()
    assert core.sliver("vnp", "a").state is State.READY
    assert_true_to_hosts(core)


def test_expiry_is_the_reapers_and_provision_after_it_is_gone(url: str) -> None:
    core = make_core(url, seconds=0.2)
    core.allocate("vnp", "a", FIG6)
    before = core.residual()
    time.sleep(0.3)
    assert core.slivers("vnp") == []  # listing expires nothing, shows no dead reservation
    assert core.ledger.find("vnp", "a").state is State.ALLOCATED  # type: ignore[union-attr]
    with pytest.raises(Gone):
        core.provision("vnp", "a")
    assert core.reap() == ["expired vnp/a"]
    assert core.ledger.find("vnp", "a").state is State.EXPIRED  # type: ignore[union-attr]
    assert not deployed(core)
    assert sum(h.cpu for h in core.residual().hosts) > sum(h.cpu for h in before.hosts)
    core.allocate("vnp", "a", FIG6)  # the name is free again


def test_expiry_racing_provision(url: str) -> None:
    """Provision and the reaper race at the expiry: either the sliver is ready and
    deployed, or expired with nothing on the hosts; never a mix."""
    for _ in range(5):
        core = make_core(url, RecordingDeployer(delay=0.05), seconds=0.15)
        name = f"a{time.monotonic_ns()}"
        core.allocate("vnp", name, FIG6)
        time.sleep(0.14)
        race(lambda c=core, n=name: c.provision("vnp", n), core.reap)
        time.sleep(0.02)
        core.reap()  # the next round, had the first come too early
        s = core.ledger.find("vnp", name)
        assert s is not None and s.state in (State.READY, State.EXPIRED)
        assert_true_to_hosts(core)
        core.delete("vnp", name)
        core.ledger.close()


def test_many_concurrent_operations_stay_true(url: str) -> None:
    rec = RecordingDeployer(delay=0.02)
    core = make_core(url, rec)
    names = [f"v{i}" for i in range(4)]
    for n in names:
        core.allocate("vnp", n, FIG6 if n != "v3" else PART, expires_in=30)
    peers = [Peer(b.peer_ref, "pip2", "https://pip2", "initiator") for b in PART.boundary]
    work: list[Callable[[], object]] = []
    for n in names:
        p = peers if n == "v3" else []
        work += [lambda n=n, p=p: core.provision("vnp", n, p),
                 lambda n=n: core.renew("vnp", n, 20),
                 lambda n=n: core.delete("vnp", n),
                 lambda n=n, p=p: core.provision("vnp", n, p),
                 core.reap]
    results = race(*work)
    unexpected = [r for r in results if isinstance(r, Exception)
                  and not isinstance(r, Busy | Gone | Conflict)]
    assert unexpected == []
    assert_true_to_hosts(core)
    for n in names:
        core.delete("vnp", n)
    assert not deployed(core)


# -- failures and crashes -----------------------------------------------------------------


def test_failed_deploy_rolls_back(url: str) -> None:
    rec = RecordingDeployer(fail_hosts={h.name for h in SUBSTRATE.hosts})
    core = make_core(url, rec)
    core.allocate("vnp", "a", FIG6)
    with pytest.raises(DeployFailed) as err:
        core.provision("vnp", "a")
    assert not err.value.rolled_back  # the host fails the removal too
    s = core.sliver("vnp", "a")
    assert s.state is State.FAILED and s.deployed and s.lock is None
    rec.fail_hosts.clear()
    assert core.delete("vnp", "a").state is State.DELETED
    assert not deployed(core)


def test_failed_deploy_with_removal_leaves_nothing(url: str) -> None:
    class Fails(RecordingDeployer):
        def apply(self, plan, state, *, check=False, progress=None):  # type: ignore[no-untyped-def]
            super().apply(plan, state, check=check, progress=progress)
            if state == "present":
                raise DeployError("failed", [TaskFailure("h1", "t", None, "boom")], "")

    core = make_core(url, Fails())
    core.allocate("vnp", "a", FIG6)
    with pytest.raises(DeployFailed) as err:
        core.provision("vnp", "a")
    assert err.value.rolled_back
    s = core.sliver("vnp", "a")
    assert s.state is State.FAILED and not s.deployed and not deployed(core)
    assert core.delete("vnp", "a").state is State.DELETED


CRASH = """
import os, sys, time
from vnetlib.core.deployer import RecordingDeployer
from tests.unit.test_core import FIG6, make_core
class Hang(RecordingDeployer):
    def apply(self, plan, state, *, check=False, progress=None):
        super().apply(plan, state, check=check, progress=progress)
        print("deployed", flush=True)
        time.sleep(3600)
core = make_core(sys.argv[1], Hang())
core.allocate("vnp", "a", FIG6)
core.provision("vnp", "a")
"""


def test_sigkill_during_provision_is_rolled_back(url: str) -> None:
    """A PIP killed in the middle of a deployment: its lock dies with it, and
    the next reaper round (a restart) removes what was deployed."""
    proc = subprocess.Popen([sys.executable, "-c", CRASH, url], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "deployed"
    finally:
        proc.kill()
        proc.wait()
    core = make_core(url)
    s = core.ledger.find("vnp", "a")
    assert s is not None and s.state is State.PROVISIONING and s.lock is not None
    # the other process's recording is gone with it: replay what it had deployed
    deployed(core).update(plan_objects(core.plan(s)))
    assert core.reap() == ["rolled back vnp/a"]
    s = core.sliver("vnp", "a")
    assert s.state is State.FAILED and not s.deployed and s.lock is None
    assert not deployed(core)


def test_live_lock_of_another_process_is_respected(url: str) -> None:
    core = make_core(url)
    s = core.allocate("vnp", "a", FIG6)
    other = Lock("provision", "elsewhere:1:1", time.time() + 60)
    core.ledger.update(s, replace(s, state=State.PROVISIONING, lock=other))
    with pytest.raises(Busy):
        core.provision("vnp", "a")
    assert core.reap() == []  # a holder on another host keeps its lease
    s = core.ledger.find("vnp", "a")
    assert s is not None
    core.ledger.update(s, replace(s, lock=replace(other, until=time.time() - 1)))
    assert core.reap() == ["rolled back vnp/a"]


# -- stitching ----------------------------------------------------------------------------


def test_join_is_idempotent_and_peer_refs_unique(core: PipCore) -> None:
    peers = [Peer(b.peer_ref, "pip2", "https://pip2", "responder") for b in PART.boundary]
    core.allocate("vnp", "a", PART)
    s = core.provision("vnp", "a", peers)
    assert s.state is State.PROVISIONED
    core.allocate("vnp2", "b", PART)
    with pytest.raises(Conflict, match="ref is already in use"):
        core.provision("vnp2", "b", peers)
    link = PART.boundary[0]
    st = Stitch(link.peer_ref, link.id, 20000, "198.18.9.9")
    runs = len(core.deployer.runs)  # type: ignore[attr-defined]
    core.join(s, [st])
    core.join(core.sliver("vnp", "a"), [st])
    assert len(core.deployer.runs) == runs + 1  # type: ignore[attr-defined]
    assert core.stitched_sliver("pip2", link.peer_ref).name == "a"
    with pytest.raises(NotFound):
        core.stitched_sliver("pip3", link.peer_ref)  # only the named peer finds it
    for b in PART.boundary[1:]:
        core.join(core.sliver("vnp", "a"), [Stitch(b.peer_ref, b.id, 20001 + len(b.id),
                                                   "198.18.9.9")])
    assert core.sliver("vnp", "a").state is State.READY


def test_vni_range(core: PipCore) -> None:
    s = core.allocate("vnp", "a", FIG6)
    for bad in (7, VNI_MIN - 1, VNI_MAX + 1, 2**24 + 5, 2**70):
        assert not core.ledger.claim_vni(s.id, "l", bad)
    assert core.ledger.claim_vni(s.id, "l", VNI_MIN)
    assert not core.ledger.claim_vni(s.id, "l2", VNI_MIN)


# -- control actions ----------------------------------------------------------------------


def test_control_stops_a_nodes_links_and_is_serialized(url: str) -> None:
    rec = RecordingDeployer()
    core = make_core(url, rec)
    core.allocate("vnp", "a", FIG6)
    s = core.provision("vnp", "a")
    host = s.embedding.node_map["r1"]
    netns = f"vn-{SUBSTRATE.name}-{s.id}-r1"

    def r1_ports(sl: Sliver) -> list[bool]:
        return [p["up"] for links in (h["links"] for h in core.plan(sl)["hosts"].values())
                for k in links for p in k["ports"] if p["netns"] == netns]

    s = core.control("vnp", "a", "r1", "stop")
    assert s.node_state("r1") == "stopped" and s.lock is None
    assert r1_ports(s) and not any(r1_ports(s))
    assert rec.runs[-1] == (s.id, "present")
    runs = len(rec.runs)
    s = core.control("vnp", "a", "r1", "restart")
    assert s.node_state("r1") == "running" and all(r1_ports(s))
    assert len(rec.runs) == runs + 2  # stopped, then started
    with pytest.raises(Conflict, match="not offered for netns"):
        core.control("vnp", "a", "r1", "suspend")
    with pytest.raises(NotFound):
        core.control("vnp", "a", "nope", "stop")
    with pytest.raises(NotFound):
        core.control("other", "a", "r1", "stop")
    assert {h for h, _, _ in rec.of(s.id)} >= {host}


def test_control_waits_for_a_running_operation(url: str) -> None:
    rec = RecordingDeployer(delay=0.3)
    core = make_core(url, rec)
    core.allocate("vnp", "a", FIG6)
    core.provision("vnp", "a")
    results = race(lambda: core.control("vnp", "a", "r1", "stop"),
                   lambda: core.control("vnp", "a", "r2", "stop"))
    assert all(isinstance(r, Sliver) for r in results), results
    s = core.sliver("vnp", "a")
    assert s.stopped == ("r1", "r2")  # neither write lost the other's


def test_a_kind_the_substrate_does_not_offer_is_refused_at_quote_time(core: PipCore) -> None:
    xen = parse_vnet(b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="x">
      <node id="a" kind="vm" hypervisor="xen"/></vnet>""")
    with pytest.raises(Conflict, match="a is a xen node, which this substrate does not offer"):
        core.check_fits(xen)
    vm = parse_vnet(b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="q">
      <node id="a" kind="vm"/></vnet>""")
    assert vm.nodes[0].kind.value == "qemu"
    core.check_fits(vm)  # the lab's hosts offer QEMU
