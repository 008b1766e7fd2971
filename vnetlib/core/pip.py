"""The PIP core: slivers on one substrate, from allocation to deletion.

Every operation reads the sliver, decides on what it finds, and writes the
result as a compare-and-swap (`Ledger.update`); losing a race means reading
again and deciding again. Operations that touch the hosts (provision,
stitching, delete) hold the sliver's lock, a lease in the ledger: a
concurrent Provision is refused (409), a concurrent Delete or stitching waits
for the lock (bounded by `timeouts.SLIVER_WAIT`), so what the ledger says is
always what the hosts hold once an operation answers. A lock whose holder died
(SIGKILL) or whose lease ran out is taken over by `reap`, which finishes the
dead operation's work: a half-done Provision is rolled back, a half-done
Delete completed.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy.engine import Connection

from vnetlib import naming
from vnetlib.console import repoint
from vnetlib.core.deployer import Deployer
from vnetlib.core.ledger import Exists, Ledger, NoVni, Stale, pick_vnis
from vnetlib.core.pool import PoolSettings, VmPool, embed_counting_pool, takers
from vnetlib.core.records import (
    ENDED,
    PAUSED,
    RUNNING,
    STOPPED,
    Embedding,
    Lock,
    Move,
    Peer,
    Previous,
    Sliver,
    State,
    Stitch,
)
from vnetlib.core.vlans import NoVlan, VlanLedger, uses_vlans
from vnetlib.deploy.ansible import DeployError, Progress
from vnetlib.migrate import between
from vnetlib.migrate import plan as moves
from vnetlib.migrate.place import CannotMove, move_node
from vnetlib.placement import EmbeddingRejected, embed_on_substrate, residual_substrate
from vnetlib.plan.build import PlanError, build_plan, crossing_links
from vnetlib.players import timeouts
from vnetlib.spec import dump_vnet, parse_vnet
from vnetlib.spec.model import Substrate, VNetSpec
from vnetlib.vm import migrate as vm_migrate
from vnetlib.vm.image import GuestImage, build_image

log = logging.getLogger(__name__)

TOMBSTONE_SECONDS = 3600.0
CONTROL_ACTIONS = {"start": RUNNING, "stop": STOPPED, "restart": RUNNING,
                   "suspend": PAUSED, "resume": RUNNING}
PAUSING = frozenset({"suspend", "resume"})
PAUSABLE_KINDS = frozenset({"qemu", "xen"})
POLL = 0.05


class CoreError(Exception):
    """An operation that cannot be done; `kind` says how a service answers it."""

    kind = "conflict"


class NotFound(CoreError):
    kind = "not-found"


class Conflict(CoreError):
    kind = "conflict"


class Busy(Conflict):
    """Another operation holds the sliver; retry later."""


class Gone(CoreError):
    kind = "gone"


class Rejected(Conflict):
    """The substrate cannot hold the request; `public` says what ran out without
    naming hosts (information hiding)."""

    def __init__(self, message: str, public: str) -> None:
        super().__init__(message)
        self.public = public


class DeployFailed(CoreError):
    """The hosts refused a plan; what was deployed has been rolled back
    (`rolled_back`), or the sliver is kept as failed for Delete to retry."""

    kind = "failed"

    def __init__(self, message: str, cause: DeployError | PlanError | NoVni | NoVlan,
                 rolled_back: bool) -> None:
        super().__init__(message)
        self.cause = cause
        self.rolled_back = rolled_back


class MoveFailed(CoreError):
    """A move that did not happen: the node is where it was (`rolled_back`),
    or the sliver keeps the move recorded for Delete to clean both sides."""

    kind = "failed"

    def __init__(self, message: str, cause: BaseException, rolled_back: bool) -> None:
        super().__init__(message)
        self.cause = cause
        self.rolled_back = rolled_back


class _Forward(Exception):
    """The guest already runs on the target; what failed is cleanup there."""


@dataclass(frozen=True, slots=True)
class Moved:
    """A finished move: the sliver after it, where the node was and is, the
    VM's new domain ('' for a namespace), and how long each step took."""

    sliver: Sliver
    node: str
    source: str
    target: str
    domain: str
    timings: dict[str, Any]

    @property
    def state_lost(self) -> bool:
        """A namespace node is made again: processes and state inside are gone."""
        return self.source != self.target and not self.domain


def _fault(point: str) -> None:
    """Fail here when `$VNET_FAULT` names this point (the move tests' faults)."""
    if os.environ.get("VNET_FAULT") == point:
        raise DeployError("failed", [], f"fault injected at {point}")


@functools.lru_cache(maxsize=512)
def spec_of(xml: str) -> VNetSpec:
    """A sliver's description, parsed once however often it is read."""
    return parse_vnet(xml.encode())


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def this_holder() -> str:
    """Who holds a lock: host, pid and the pid's start time (pids are reused)."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def holder_alive(holder: str) -> bool:
    """False only when the holder surely died: same host, and its pid is gone
    or is another process now. Holders on other hosts run out their lease."""
    host, _, rest = holder.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    return _start_time(int(pid)) == started


@dataclass(frozen=True, slots=True)
class Pricing:
    per_cpu: float = 1.0
    per_mbps: float = 0.0
    reservation_seconds: float = 60.0


@dataclass
class PipCore:
    """Slivers on `substrate`, kept in `ledger`, deployed by `deployer`."""

    substrate: Substrate
    ledger: Ledger
    deployer: Deployer
    pricing: Pricing = field(default_factory=Pricing)
    on_removed: Callable[[Sliver], None] | None = None  # e.g. kill the tenant's processes
    images: Callable[[], GuestImage] = build_image  # the VM guest image, built on first use
    holder: str = field(default_factory=this_holder)
    # The pool of booted VMs: its settings ($VNET_POOL_SIZE for a PIP, else the
    # ledger's: `vnet pool fill`); `pool_background` refills it from `reap` in a
    # thread (the PIP), else only `vnet pool fill` and `vnet down` boot (direct path).
    pool_settings: PoolSettings | None = field(default_factory=PoolSettings.from_env)
    pool_background: bool = True
    _pool: VmPool | None = field(default=None, repr=False)
    vlans: VlanLedger | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        # Made here, not on first use: its table is created in a transaction of
        # its own, which must not start inside a provision's (SQLite locks).
        if uses_vlans(self.substrate):
            self.vlans = VlanLedger(self.ledger)

    @property
    def name(self) -> str:
        return self.substrate.name

    @property
    def pool(self) -> VmPool:
        if self._pool is None:
            self._pool = VmPool(self.substrate, self.ledger, self.deployer, self.images,
                                self.holder, holder_alive, self.pool_settings,
                                room=self.residual)
        return self._pool

    def _take_links(self, conn: Connection, sliver_id: str, links: Sequence[str]) -> None:
        """Tunnel ids (and VLAN ids on a VLAN substrate) for crossing links,
        in the caller's transaction: a link that has them keeps them."""
        self.ledger.take_vnis(conn, sliver_id, links)
        if self.vlans is not None:
            self.vlans.take(conn, sliver_id, links)

    # -- reading -------------------------------------------------------------------

    def residual(self, slivers: Sequence[Sliver] | None = None) -> Substrate:
        """The substrate minus what live slivers hold (expired reservations free)."""
        now = time.time()
        if slivers is None:
            slivers = [s for s in self.ledger.slivers()
                       if not (s.state is State.ALLOCATED and (s.expires or 0) <= now)]
        left = residual_substrate(self.substrate, [(spec_of(s.spec_xml), s.embedding.to_dict())
                                                   for s in slivers])
        left = self.pool.charge(left)  # untaken pool VMs hold memory no sliver counts
        drained = self.ledger.drained()
        if not drained:
            return left
        # A drained host has nothing left to give: the embedding never picks it.
        return replace(left, hosts=tuple(replace(h, cpu=0.0, memory_mb=0)
                                         if h.name in drained else h for h in left.hosts))

    def sliver(self, owner: str, name: str) -> Sliver:
        """The caller's sliver; NotFound for another owner's or an unknown one."""
        s = self.ledger.find(owner, name)
        if s is None:
            raise NotFound(f"no sliver {name}")
        if s.state is State.EXPIRED or (s.state is State.ALLOCATED
                                        and (s.expires or 0) <= time.time()):
            raise Gone(f"the reservation of sliver {name} expired")
        if s.state is State.DELETED:
            raise Gone(f"sliver {name} was deleted")
        return s

    def slivers(self, owner: str) -> list[Sliver]:
        now = time.time()
        return [s for s in self.ledger.slivers(owner)
                if not (s.state is State.ALLOCATED and (s.expires or 0) <= now)]

    def price(self, spec: VNetSpec) -> float:
        cpu = sum(n.cpu for n in spec.nodes)
        mbps = sum(k.bandwidth_mbps for k in spec.links) + sum(
            b.bandwidth_mbps for b in spec.boundary)
        return round(cpu * self.pricing.per_cpu + mbps * self.pricing.per_mbps, 6)

    def _image(self, s: Sliver | VNetSpec) -> GuestImage | None:
        spec = spec_of(s.spec_xml) if isinstance(s, Sliver) else s
        return self.images() if any(n.kind.is_vm for n in spec.nodes) else None

    def plan(self, s: Sliver) -> dict[str, Any]:
        """The deployment plan of a sliver as it stands (plain data)."""
        boundary = {st.link: (st.address, st.vni, st.encapsulation) for st in s.stitches}
        plan = build_plan(spec_of(s.spec_xml), s.embedding.node_map, self.substrate,
                          vnet_id=s.id, lab=self.name, vnis=self.ledger.vnis_of(s.id),
                          vlans=self.vlans.of(s.id) if self.vlans is not None else None,
                          boundary=boundary, node_states=s.node_states,
                          image=self._image(s), pool_domains=s.domains).to_dict()
        if s.moved:  # live-migrated VMs run in domains of other names
            for part in plan["hosts"].values():
                for task in part.get("domains", []):
                    task["name"] = s.moved.get(task["vnode"], task["name"])
        return plan

    # -- negotiation ---------------------------------------------------------------

    def check_fits(self, spec: VNetSpec) -> None:
        """Rejected if the substrate cannot hold `spec` now; reserves nothing."""
        short = self.vlans.shortage(self.substrate, spec) if self.vlans is not None else None
        if short is not None:
            raise Rejected(short, short)
        self._embed(spec, "quote", self.residual())

    def _embed(self, spec: VNetSpec, sliver_id: str, residual: Substrate) -> Embedding:
        offered = {k for h in self.substrate.hosts for k in h.node_kinds}
        for node in spec.nodes:
            if node.kind not in offered:
                why = (f"virtual node {node.id} is a {node.kind.value} node, which this "
                       "substrate does not offer")
                raise Rejected(why, why)
        try:
            # A node that takes a pool VM is charged its memory once (core/pool.py).
            return Embedding.from_dict(embed_counting_pool(
                residual, self.pool.vms(), spec, self.ledger.drained(),
                lambda left: embed_on_substrate(left, spec, sliver_id)))
        except EmbeddingRejected as exc:
            r = exc.rejection
            raise Rejected(str(exc), f"{r.request_id}: not enough {r.resource} "
                                     "on this substrate") from exc

    def allocate(self, owner: str, name: str, spec: VNetSpec, *,
                 expires_in: float | None = None, sliver_id: str | None = None,
                 price_limit: float | None = None, callback: str = "") -> Sliver:
        """Reserve capacity for `spec` until an expiry (capped by the pricing's);
        `callback` is the owner's URL for asking it to take a node away."""
        price = self.price(spec)
        if price_limit is not None and price > price_limit + 1e-9:
            raise Conflict(f"the price is {price:g}, not {price_limit:g}: ask for a new quote")
        cap = self.pricing.reservation_seconds
        seconds = min(expires_in or cap, cap)
        sid = sliver_id or f"s{naming.short_hash(owner, name)}"
        xml = dump_vnet(spec).decode()

        def build(holding: list[Sliver]) -> Sliver:
            embedding = self._embed(spec, sid, self.residual(holding))
            return Sliver(id=sid, substrate=self.name, owner=owner, name=name,
                          state=State.ALLOCATED, spec_xml=xml, embedding=embedding,
                          price=price, expires=time.time() + seconds, callback=callback)

        try:
            return self.ledger.allocate(build)
        except Exists as exc:
            raise Conflict(str(exc)) from exc

    def renew(self, owner: str, name: str, seconds: float) -> Sliver:
        seconds = min(seconds, self.pricing.reservation_seconds)
        while True:
            s = self.sliver(owner, name)
            if s.state is not State.ALLOCATED:
                return s  # provisioned slivers do not expire
            try:
                return self.ledger.update(s, replace(s, expires=time.time() + seconds))
            except Stale:
                continue

    # -- the sliver's lock ---------------------------------------------------------

    @contextmanager
    def _operation(self, owner: str, name: str, op: str, *,
                   wait: float = timeouts.SLIVER_WAIT,
                   accept: Callable[[Sliver], State | None]) -> Iterator[_Op]:
        """Take the sliver's lock for `op`, moving it to the state `accept`
        chooses (None: nothing to do, the block gets `op.idle` set).

        Waits up to `wait` for another operation's lock; Busy after that."""
        deadline = time.monotonic() + wait
        while True:
            s = self.sliver(owner, name) if op != "delete" else self._for_delete(owner, name)
            if s.lock is not None and not self._dead(s.lock):
                if time.monotonic() >= deadline:
                    raise Busy(f"sliver {name} is busy ({s.lock.op}); retry later")
                time.sleep(POLL)
                continue
            target = accept(s)
            if target is None:
                yield _Op(self, s, idle=True)
                return
            lock = Lock(op, self.holder, time.time() + timeouts.SLIVER_WAIT)
            try:
                s = self.ledger.update(s, replace(s, state=target, lock=lock))
            except Stale:
                continue
            break
        handle = _Op(self, s)
        try:
            yield handle
        finally:
            handle.unlock()

    def _for_delete(self, owner: str, name: str) -> Sliver:
        s = self.ledger.find(owner, name)
        if s is None:
            raise NotFound(f"no sliver {name}")
        return s

    def _dead(self, lock: Lock) -> bool:
        return lock.until <= time.time() or not holder_alive(lock.holder)

    # -- provisioning --------------------------------------------------------------

    def provision(self, owner: str, name: str, peers: Sequence[Peer] = (), *,
                  progress: Progress | None = None, callback: str | None = None) -> Sliver:
        """Deploy an allocated sliver; a repeated Provision returns it as it is
        (with `callback`, the owner's URL of now, recorded)."""
        s = self.sliver(owner, name)
        refs = {b.peer_ref for b in spec_of(s.spec_xml).boundary}
        if s.state is State.ALLOCATED and (missing := sorted(refs - {p.ref for p in peers})):
            raise Conflict(f"boundary links without a peer: {', '.join(missing)}")
        self._check_peer_refs(s, peers)

        def accept(s: Sliver) -> State | None:
            if s.state in (State.PROVISIONED, State.READY):
                return None
            if s.state is State.PROVISIONING:
                raise Busy(f"sliver {name} is being provisioned")
            if s.state is not State.ALLOCATED:
                raise Conflict(f"sliver {name} is {s.state.value}")
            return State.PROVISIONING

        with self._operation(owner, name, "provision", wait=0.0, accept=accept) as op:
            if op.idle:
                if callback is not None and callback != op.sliver.callback:
                    return self._set_callback(op.sliver, callback)
                return op.sliver
            spec = spec_of(op.sliver.spec_xml)
            links = crossing_links(spec, op.sliver.embedding.node_map)
            try:
                # Peers, "deployed" and tunnel ids in one write, before any host is
                # touched: whatever happens next, Delete removes what may be there.
                op.save(replace(op.sliver, peers=tuple(peers), expires=None, deployed=True,
                                callback=op.sliver.callback if callback is None else callback),
                        also=lambda conn: self._take_links(conn, op.sliver.id, links))
                started = time.perf_counter()
                self._take_pool_vms(op, spec)
                took = time.perf_counter()
                plan = self.plan(op.sliver)
                planned = time.perf_counter()
                self.deployer.apply(plan, "present", progress=progress)
                timings = {"pool": round(took - started, 4),
                           "plan": round(planned - took, 4),
                           "deploy": round(time.perf_counter() - planned, 4)}
            except (DeployError, PlanError, NoVni, NoVlan) as exc:
                rolled_back = self._rollback(op, exc, progress)
                raise DeployFailed(f"deployment of sliver {name} failed: {exc}", exc,
                                   rolled_back) from exc
            except BaseException as exc:
                self._rollback(op, exc, progress)
                raise
            done = State.READY if not refs else State.PROVISIONED
            op.save(replace(op.sliver, state=done, timings=timings, lock=None))
            return op.sliver

    def _take_pool_vms(self, op: _Op, spec: VNetSpec) -> None:
        """Take ready pool VMs for the sliver's QEMU nodes (the others boot on
        demand) and record node -> domain before anything is deployed."""
        wanted = takers(spec, op.sliver.embedding.node_map)
        if not wanted or not any(vm.state == "ready" for vm in self.pool.vms()):
            return
        image = self._image(spec)
        assert image is not None
        domains = self.pool.take(op.sliver.id, wanted, image.key)
        if domains:
            op.save(replace(op.sliver, domains={**op.sliver.domains, **domains}))

    def _set_callback(self, s: Sliver, callback: str) -> Sliver:
        while True:
            try:
                return self.ledger.update(s, replace(s, callback=callback))
            except Stale:
                s = self.sliver(s.owner, s.name)

    def record_timings(self, s: Sliver, timings: dict[str, float]) -> Sliver:
        """Keep how long each phase of a sliver's instantiation took."""
        while True:
            try:
                return self.ledger.update(s, replace(s, timings=dict(timings)))
            except Stale:
                cur = self.ledger.get(s.id)
                if cur is None:
                    return s
                s = cur

    def _rollback(self, op: _Op, cause: BaseException, progress: Progress | None) -> bool:
        """Remove what a failed Provision may have created; the sliver ends failed
        (with nothing on the hosts when the removal worked)."""
        s = op.sliver
        removed = not s.deployed
        if s.deployed:
            try:
                self.deployer.apply(self.plan(s), "absent", progress=progress)
                removed = True
                self.pool.release(s.id)
            except (DeployError, PlanError) as exc:
                log.error("%s: rollback of %s incomplete: %s", self.name, s.name, exc)
                if isinstance(cause, DeployError):
                    hosts = sorted({f.host for f in getattr(exc, "failures", [])})
                    cause.add_note(f"rollback incomplete on: {', '.join(hosts) or '?'}")
        op.save(replace(s, state=State.FAILED, deployed=not removed, error=str(cause)[:500],
                        lock=None))
        return removed

    def _check_peer_refs(self, s: Sliver, peers: Sequence[Peer]) -> None:
        """A (ref, peer) pair names one boundary link on this substrate: two live
        slivers naming the same pair would let one customer answer for another."""
        pairs = {(p.ref, p.name) for p in peers}
        if not pairs:
            return
        for other in self.ledger.slivers():
            if other.id != s.id and pairs & {(p.ref, p.name) for p in other.peers}:
                raise Conflict(f"sliver {s.name}: a boundary link ref is already in use")

    # -- stitching (Interface 4) ---------------------------------------------------

    def stitched_sliver(self, peer: str, ref: str) -> Sliver:
        """The live sliver whose boundary link `ref` names `peer` as its peer."""
        for s in self.ledger.slivers():
            p = s.peer(ref)
            if p is not None and p.name == peer and s.state not in ENDED:
                return s
        raise NotFound(f"no link {ref}")

    def join(self, s: Sliver, stitches: Sequence[Stitch], *,
             progress: Progress | None = None) -> Sliver:
        """Record agreed boundary links, deploy their local segments, mark them joined.

        Recorded before deploying (so Delete removes a half-deployed segment),
        joined only after (so a repeated proposal deploys again)."""

        def accept(cur: Sliver) -> State | None:
            if cur.state not in (State.PROVISIONED, State.READY):
                raise Conflict(f"sliver {cur.name} is {cur.state.value}: provision it first")
            return cur.state

        with self._operation(s.owner, s.name, "join", accept=accept) as op:
            pending = [replace(st, joined=False) for st in stitches
                       if op.sliver.stitch(st.ref) != replace(st, joined=True)]
            if not pending:
                return op.sliver
            op.save(op.sliver.with_stitches(pending))
            nodes = {b.id: b.endpoint.node for b in spec_of(op.sliver.spec_xml).boundary}
            hosts = {op.sliver.embedding.node_map[nodes[st.link]] for st in pending}
            plan = self.plan(op.sliver)
            plan["hosts"] = {h: p for h, p in plan["hosts"].items() if h in hosts}
            self.deployer.apply(plan, "present", progress=progress)
            joined = op.sliver.with_stitches([replace(st, joined=True) for st in pending])
            op.save(replace(joined, state=State.READY if joined.all_joined else joined.state,
                            lock=None))
            return op.sliver

    # -- control actions (Interface 5) ---------------------------------------------

    def control(self, owner: str, name: str, node: str, action: str, *,
                progress: Progress | None = None) -> Sliver:
        """Start, stop, restart, suspend or resume one virtual node, as the hosts
        apply it: the node's wanted run state goes into the plan, and its host
        converges to it. Serialized with every other operation on the sliver."""
        s = self.sliver(owner, name)
        vnode = next((n for n in spec_of(s.spec_xml).nodes if n.id == node), None)
        if vnode is None:
            raise NotFound(f"sliver {name} has no node {node}")
        if action not in CONTROL_ACTIONS:
            raise Conflict(f"unknown action {action}: one of {', '.join(CONTROL_ACTIONS)}")
        kind = vnode.kind.value
        if action in PAUSING and kind not in PAUSABLE_KINDS:
            raise Conflict(f"{action} is not offered for {kind} nodes ({node}): "
                           "use stop and start")

        def accept(cur: Sliver) -> State | None:
            if cur.state not in (State.PROVISIONED, State.READY):
                raise Conflict(f"sliver {name} is {cur.state.value}: provision it first")
            return cur.state

        with self._operation(owner, name, "control", accept=accept) as op:
            host = op.sliver.embedding.node_map[node]
            steps = (STOPPED, RUNNING) if action == "restart" else (CONTROL_ACTIONS[action],)
            for target in steps:
                states = {**op.sliver.node_states, node: target}
                if target == RUNNING:
                    del states[node]
                new = replace(op.sliver, node_states=states)
                plan = self.plan(new)
                plan["hosts"] = {h: p for h, p in plan["hosts"].items() if h == host}
                self.deployer.apply(plan, "present", progress=progress)
                op.save(new)
            op.save(replace(op.sliver, lock=None))
            return op.sliver

    # -- moving a node (issue #13) -------------------------------------------------

    def migrate(self, owner: str, name: str, node: str, target: str, *,
                progress: Progress | None = None) -> Moved:
        """Move virtual node `node` of a sliver to host `target`.

        A namespace node is made again on the target (what runs inside it is
        lost); a running VM migrates live (`vnetlib.vm.migrate`). The move is
        recorded in the row (`Sliver.moving`, with the tunnel ids the new
        embedding needs) before a host is touched; the new embedding replaces
        the old in one write when the hosts hold it (ready -> ready, version
        bump: the state machine gains no state, so nobody reading states
        sees one it does not know). On any failure the node stays (or is made
        again) where it was and what the move added is removed (MoveFailed)."""
        s = self.sliver(owner, name)
        spec = spec_of(s.spec_xml)
        if node not in {n.id for n in spec.nodes}:
            raise NotFound(f"sliver {name} has no node {node}")
        if node not in s.embedding.node_map:
            raise NotFound(f"node {node} of sliver {name} is not placed")

        def accept(cur: Sliver) -> State | None:
            if cur.state not in (State.PROVISIONED, State.READY):
                raise Conflict(f"sliver {name} is {cur.state.value}: only a deployed sliver "
                               "moves")
            if cur.moving is not None:
                raise Conflict(f"sliver {name} has an unfinished move of {cur.moving.node}")
            return None if cur.embedding.node_map[node] == target else cur.state

        with self._operation(owner, name, "migrate", accept=accept) as op:
            if op.idle:
                return Moved(op.sliver, node, target, target, "", {})
            # Open console sessions of the node wait for it instead of ending,
            # then follow it (vnetlib.console.repoint; no-ops without sessions).
            repoint.hold(op.sliver, node)
            try:
                done = self._migrate(op, node, target, progress)
            except BaseException:
                repoint.moved(self.ledger.get(op.sliver.id) or op.sliver, node)
                raise
            done = replace(done, timings={**done.timings,
                                          "consoles": repoint.moved(done.sliver, node)})
            return done

    def _migrate(self, op: _Op, node: str, target: str, progress: Progress | None) -> Moved:
        started = time.perf_counter()
        cur = op.sliver
        spec = spec_of(cur.spec_xml)
        vnode = spec.node(node)
        source = cur.embedding.node_map[node]
        if vnode.kind.is_vm and cur.node_state(node) != RUNNING:
            raise Conflict(f"VM node {node} is {cur.node_state(node)}: start it first "
                           "(only a running VM migrates live)")
        try:
            embedding = move_node(self.substrate, self.residual(), spec, cur.embedding, node,
                                  target, drained=self.ledger.drained())
        except CannotMove as exc:
            raise Rejected(str(exc), f"{node}: the requested move is not possible") from exc
        had = set(self.ledger.vnis_of(cur.id))
        needed = crossing_links(spec, embedding.node_map)
        fresh = [k for k in needed if k not in had]
        dest = ""
        if vnode.kind.is_vm:
            dest = vm_migrate.next_name(naming.vnode_netns(self.name, cur.id, node),
                                        cur.domain(node))
        old_plan = self.plan(cur)
        op.save(replace(cur, moving=Move(node, source, target, embedding, dest)),
                also=lambda conn: self._take_links(conn, cur.id, fresh))
        after = self._after(op.sliver)
        new_plan = self.plan(after)
        timings: dict[str, float] = {}
        try:
            mark = time.perf_counter()
            self.deployer.apply(moves.restrict(new_plan, {target}), "present", check=True,
                                progress=progress)
            timings["check"] = round(time.perf_counter() - mark, 4)
        except (DeployError, PlanError) as exc:  # nothing was touched: forget the move
            op.save(replace(op.sliver, moving=None, lock=None),
                    also=lambda conn: self.ledger.drop_link_vnis(conn, cur.id, fresh))
            raise MoveFailed(f"move of {node} to {target} refused by the target: {exc}", exc,
                             True) from exc
        try:
            if vnode.kind.is_vm:
                stats = self._move_vm(op.sliver, old_plan, new_plan, progress, timings)
            else:
                stats = {}
                self._move_netns(op.sliver, old_plan, new_plan, progress, timings)
        except _Forward as exc:
            op.save(replace(after, lock=None, error=f"moved, then: {exc.__cause__}"[:500]))
            raise MoveFailed(f"{node} runs on {target} now, but re-pointing its links failed "
                             f"(run the move again to converge): {exc.__cause__}",
                             exc.__cause__ or exc, False) from exc
        except (DeployError, PlanError, vm_migrate.MigrationError) as exc:
            rolled_back = self._undo_move(op, old_plan, new_plan, progress)
            raise MoveFailed(f"move of {node} to {target} failed: {exc}", exc,
                             rolled_back) from exc
        except BaseException:
            self._undo_move(op, old_plan, new_plan, progress)
            raise
        stale = [k for k in had if k not in needed]
        timings["total"] = round(time.perf_counter() - started, 4)
        op.save(replace(after, lock=None),
                also=lambda conn: self.ledger.drop_link_vnis(conn, cur.id, stale))
        return Moved(op.sliver, node, source, target, dest, {**timings, **stats})

    def _after(self, s: Sliver) -> Sliver:
        """The sliver as its recorded move leaves it."""
        m = s.moving
        assert m is not None
        moved = {**s.moved, m.node: m.domain} if m.domain else dict(s.moved)
        return replace(s, embedding=m.embedding, moved=moved, moving=None)

    def _move_netns(self, s: Sliver, old: dict[str, Any], new: dict[str, Any],
                    progress: Progress | None, timings: dict[str, float]) -> None:
        """Break before make (the namespace's name is the node's on every
        host), in one run of `vnet.infra.migrate_node` when the deployer has it."""
        m = s.moving
        assert m is not None
        mark = time.perf_counter()
        gone = moves.removal(old, new)
        made = moves.restrict(new, moves.changed_hosts(old, new))
        mover = getattr(self.deployer, "move", None)
        if os.environ.get("VNET_FAULT") == "migrate-after-remove" or mover is None:
            if not moves.empty(gone):
                self.deployer.apply(gone, "absent", progress=progress)
            _fault("migrate-after-remove")
            self.deployer.apply(made, "present", progress=progress)
        else:
            mover(gone, made, self._greetings(s, m.node, m.target), progress=progress)
        timings["deploy"] = round(time.perf_counter() - mark, 4)

    def _greetings(self, s: Sliver, node: str, host: str) -> list[dict[str, Any]]:
        """The moved node's neighbours (IPv4, one per link end): it pings each
        once, so their ARP caches learn its new interfaces' MACs."""
        spec = spec_of(s.spec_xml)
        ends = [k.b if k.a.node == node else k.a for k in spec.links
                if node in (k.a.node, k.b.node)]
        addresses = sorted({a.split("/")[0] for e in ends for a in e.interface.addresses
                            if ":" not in a})
        return [{"host": host, "netns": naming.vnode_netns(self.name, s.id, node),
                 "neighbours": addresses}] if addresses else []

    def _move_vm(self, s: Sliver, old: dict[str, Any], new: dict[str, Any],
                 progress: Progress | None, timings: dict[str, float]) -> dict[str, Any]:
        """Make before break: the target's segments (and the source's new
        tunnels) first, then the live migration, then the peers re-pointed and
        what the source no longer needs removed."""
        m = s.moving
        assert m is not None
        source_domain = s.domain(m.node)
        task = moves.domain_of(new, m.target, m.node)
        assert task is not None
        inventory = getattr(self.deployer, "inventory", None)
        if inventory is None:
            raise vm_migrate.MigrationError("live migration needs the substrate's inventory")
        move = vm_migrate.VmMove(
            source_domain, m.domain, vm_migrate.host_netns(inventory, m.source),
            vm_migrate.host_netns(inventory, m.target),
            tuple(vm_migrate.Nic(n["tap"], n["bridge"]) for n in task["interfaces"]),
            task.get("cmdline"), vm_migrate.remote_of(inventory, m.source, m.target))
        mark = time.perf_counter()
        skip = {source_domain, m.domain}
        floods = [vm_migrate.Flood(vm_migrate.host_netns(inventory, h), dev, remote)
                  for h, dev, remote in moves.repointed(old, new, {m.source, m.target})]
        self.deployer.apply(moves.restrict(new, {m.source, m.target}, skip_domains=skip),
                            "present", progress=progress)
        timings["prepare"] = round(time.perf_counter() - mark, 4)
        try:
            vm_migrate.flood(floods, True, inventory=inventory)
            _fault("migrate-before-switch")
            stats = vm_migrate.migrate(move)
        except BaseException:
            vm_migrate.flood(floods, False, inventory=inventory)
            raise
        timings["migrate"] = round(stats.seconds, 4)
        mark = time.perf_counter()
        # From here the guest runs on the target: no way back but forward.
        try:
            vm_migrate.finish(move)
            # A segment whose other end came to its host keeps its bridge (the
            # guest's tap is on it): only its tunnel goes.
            for host, device in moves.dropped_tunnels(old, new):
                vm_migrate.drop_tunnel(vm_migrate.host_netns(inventory, host), device,
                                       inventory=inventory)
            gone = moves.removal(old, new, skip_domains=skip, keep_segments=True)
            if not moves.empty(gone):
                self.deployer.apply(gone, "absent", progress=progress)
            self.deployer.apply(moves.restrict(new, moves.changed_hosts(old, new)), "present",
                                progress=progress)
        except (DeployError, PlanError, vm_migrate.MigrationError) as exc:
            log.error("%s: re-pointing after moving %s failed: %s", self.name, m.node, exc)
            raise _Forward(exc) from exc
        timings["switch"] = round(time.perf_counter() - mark, 4)
        return {"qemu": stats.to_dict()}

    def _undo_move(self, op: _Op, old: dict[str, Any], new: dict[str, Any],
                   progress: Progress | None) -> bool:
        """Put the node back where it was: what the move added removed, the
        old plan applied again where it changed, the move forgotten."""
        s = op.sliver
        m = s.moving
        assert m is not None
        spec = spec_of(s.spec_xml)
        fresh = [k for k in crossing_links(spec, m.embedding.node_map)
                 if k not in crossing_links(spec, s.embedding.node_map)]
        done = True
        try:
            extra = moves.removal(new, old, skip_domains={s.domain(m.node)})
            if not moves.empty(extra):
                self.deployer.apply(extra, "absent", progress=progress)
        except (DeployError, PlanError) as exc:  # e.g. the target does not answer
            log.error("%s: removing the half-made move of %s: %s", self.name, m.node, exc)
            done = False
        try:
            back = moves.restrict(old, moves.changed_hosts(old, new) | {m.source})
            mover = getattr(self.deployer, "move", None)
            if mover is None or spec.node(m.node).kind.is_vm:
                self.deployer.apply(back, "present", progress=progress)
            else:  # a namespace made again: its neighbours must learn its new MACs
                mover({**back, "hosts": {}}, back, self._greetings(s, m.node, m.source),
                      progress=progress)
        except (DeployError, PlanError) as exc:
            log.error("%s: restoring %s on %s failed: %s", self.name, m.node, m.source, exc)
            op.save(replace(s, error=f"move of {m.node} undone in part: {exc}"[:500]))
            return False
        if not done:  # the target still may hold some of it: Delete removes both plans
            op.save(replace(s, error=f"move of {m.node} to {m.target} left objects there"))
            return False
        op.save(replace(s, moving=None, lock=None),
                also=lambda conn: self.ledger.drop_link_vnis(conn, s.id, fresh))
        return True

    def move_to(self, owner: str, name: str, node: str, location: str | None = None, *,
                progress: Progress | None = None) -> Moved:
        """Move `node` to another host of this substrate, at `location` if given
        (the customer's way: it knows locations, not hosts). Rejected when no
        other host here can take it."""
        s = self.sliver(owner, name)
        spec = spec_of(s.spec_xml)
        if node not in {n.id for n in spec.nodes}:
            raise NotFound(f"sliver {name} has no node {node}")
        here = s.embedding.node_map.get(node, "")
        if location is not None and self.substrate.host(here).location == location:
            return Moved(s, node, here, here, "", {})
        try:
            target = between.pick_host(self.substrate, self.residual(), spec.node(node),
                                       drained=self.ledger.drained(), location=location,
                                       avoid={here})
        except CannotMove as exc:
            where = f" at {location}" if location else ""
            raise Rejected(str(exc), f"{node}: no host{where} can take it") from exc
        return self.migrate(owner, name, node, target, progress=progress)

    # -- reshaping a sliver (a node moved between providers) -------------------------

    def reshape(self, owner: str, name: str, spec: VNetSpec, peers: Sequence[Peer], *,
                progress: Progress | None = None) -> Sliver:
        """Give a deployed sliver a new partial description: nodes added or
        taken away, links that became boundary links (or inner ones), boundary
        links with other peers. Nodes it keeps stay where they are; what is
        new is placed; the hosts get the difference (what only the old has
        removed first, then the changed hosts' new parts). Boundary links
        whose peer is unchanged keep their stitching; the others wait for
        it (the sliver is `provisioned` until its customer starts it again).

        The old description is kept in the row (`Sliver.previous`, with the
        tunnel ids both need) before any host is touched, so Delete removes
        both and the reaper undoes a reshape whose holder died; a failure
        puts the old one back on the hosts (DeployFailed)."""
        self.sliver(owner, name)
        refs = {b.peer_ref for b in spec.boundary}
        if missing := sorted(refs - {p.ref for p in peers}):
            raise Conflict(f"boundary links without a peer: {', '.join(missing)}")

        def accept(cur: Sliver) -> State | None:
            if cur.state not in (State.PROVISIONED, State.READY):
                raise Conflict(f"sliver {name} is {cur.state.value}: only a deployed sliver "
                               "is reshaped")
            if cur.moving is not None or cur.previous is not None:
                raise Conflict(f"sliver {name} has an unfinished move")
            return cur.state

        with self._operation(owner, name, "reshape", accept=accept) as op:
            cur = op.sliver
            self._check_peer_refs(cur, peers)
            old_spec = spec_of(cur.spec_xml)
            try:
                embedding = between.extend_embedding(self.substrate, self.residual(), spec,
                                                     cur.embedding,
                                                     drained=self.ledger.drained())
            except CannotMove as exc:
                raise Rejected(str(exc), "not enough room on this substrate for the "
                                         "new part") from exc
            new_links = {b.id: b for b in spec.boundary}
            old_links = {b.peer_ref: b for b in old_spec.boundary}
            by_ref = {p.ref: p for p in peers}
            kept = tuple(st for st in cur.stitches
                         if (p := by_ref.get(st.ref)) is not None and cur.peer(st.ref) == p
                         and st.link in new_links and st.ref in old_links
                         and new_links[st.link].peer_ref == st.ref
                         and new_links[st.link].endpoint == old_links[st.ref].endpoint)
            had = set(self.ledger.vnis_of(cur.id))
            needed = crossing_links(spec, embedding.node_map)
            fresh = [k for k in needed if k not in had]
            gone = [n.id for n in old_spec.nodes if n.id not in {m.id for m in spec.nodes}]
            new = replace(cur, spec_xml=dump_vnet(spec).decode(), embedding=embedding,
                          peers=tuple(peers), stitches=kept,
                          previous=Previous(cur.spec_xml, cur.embedding, cur.peers,
                                            cur.stitches),
                          node_states={k: v for k, v in cur.node_states.items()
                                       if k not in gone})
            op.save(new, also=lambda conn: self._take_links(conn, cur.id, fresh))
            # Sessions on a node re-placed here follow it; those on a node that
            # leaves are re-pointed by the VNP to its new provider (it closes
            # their end here), so they are left alone.
            replaced = [n for n, h in embedding.node_map.items()
                        if cur.embedding.node_map.get(n, h) != h]
            for node in replaced:
                repoint.hold(cur, node)
            try:
                old_plan, new_plan = self.plan(self._before(op.sliver)), self.plan(op.sliver)
                self._change(old_plan, new_plan, progress)
            except (DeployError, PlanError, NoVni, NoVlan) as exc:
                rolled_back = self._unshape(op, progress)
                raise DeployFailed(f"reshape of sliver {name} failed: {exc}", exc,
                                   rolled_back) from exc
            except BaseException:
                self._unshape(op, progress)
                raise
            finally:
                for node in replaced:
                    self._follow_consoles(op.sliver, node)
            links = {b.id for b in spec.boundary} | set(needed)
            stale = [k for k in had if k not in links]
            done = replace(op.sliver, previous=None, lock=None)
            done = replace(done, state=State.READY if done.all_joined else State.PROVISIONED)
            op.save(done, also=lambda conn: self.ledger.drop_link_vnis(conn, cur.id, stale))
            return op.sliver

    def _change(self, old: dict[str, Any], new: dict[str, Any],
                progress: Progress | None) -> None:
        """The hosts from plan `old` to plan `new`: what only the old has
        removed, then the changed hosts' new parts; one playbook run when the
        deployer has it (`vnet.infra.migrate_node`) and no VM is involved."""
        removal = moves.removal(old, new)
        made = moves.restrict(new, moves.changed_hosts(old, new))
        if moves.empty(removal) and not made["hosts"]:
            return  # nothing changes on any host (e.g. a part reshaped as it was)
        mover = getattr(self.deployer, "move", None)
        vms = any(part.get("domains") for plan in (old, new)
                  for part in plan["hosts"].values())
        if mover is not None and not vms:
            mover(removal, made, [], progress=progress)
            return
        if not moves.empty(removal):
            self.deployer.apply(removal, "absent", progress=progress)
        self.deployer.apply(made, "present", progress=progress)

    def _before(self, s: Sliver) -> Sliver:
        """The sliver as it was before its recorded reshape."""
        p = s.previous
        assert p is not None
        return replace(s, spec_xml=p.spec_xml, embedding=p.embedding, peers=p.peers,
                       stitches=p.stitches, previous=None)

    def _unshape(self, op: _Op, progress: Progress | None) -> bool:
        """Put the old description back on the hosts and in the row; the tunnel
        ids only the new one took are freed. False if the hosts did not take it."""
        s = op.sliver
        old = self._before(s)
        try:
            self._change(self.plan(s), self.plan(old), progress)
        except (DeployError, PlanError, NoVni, NoVlan) as exc:
            log.error("%s: undoing the reshape of %s failed: %s", self.name, s.name, exc)
            op.save(replace(s, error=f"reshape undone in part: {exc}"[:500]))
            return False
        spec = spec_of(old.spec_xml)
        keep = set(crossing_links(spec, old.embedding.node_map)) | {
            st.link for st in old.stitches}
        extra_vnis = [k for k in self.ledger.vnis_of(s.id) if k not in keep]
        op.save(replace(old, lock=None),
                also=lambda conn: self.ledger.drop_link_vnis(conn, s.id, extra_vnis))
        return True

    def _follow_consoles(self, s: Sliver, node: str) -> None:
        """The console sessions of a node re-placed by a reshape open again
        where the sliver has it now (or end with a notice)."""
        try:
            repoint.moved(s, node)
        except Exception:
            log.exception("%s: consoles of %s after a reshape", self.name, node)

    def drain(self, host: str, *, progress: Progress | None = None,
              pick: Callable[[Sliver, str], str] | None = None,
              stuck: Callable[[Sliver, str, Rejected, bool], None] | None = None
              ) -> list[Moved]:
        """Mark `host` as taking no new nodes and move every node off it (each
        to the host the embedding's residual view likes best, or `pick`).

        A node no other host here can take, or that cannot move alone (it ends
        links to other providers), raises Rejected, or, with `stuck`, is
        handed to it with whether another host has room for it (e.g. asking
        the sliver's owner to take it away: `vnetlib.migrate.evict`),
        outside the sliver's lock, and the drain goes on."""
        if host not in {h.name for h in self.substrate.hosts}:
            raise NotFound(f"substrate {self.name} has no host {host}")
        self.ledger.set_drained(host, True)
        done: list[Moved] = []
        for s in self.ledger.slivers():
            if s.state not in (State.PROVISIONED, State.READY):
                continue
            for node, where in sorted(s.embedding.node_map.items()):
                if where != host:
                    continue
                cur = self.ledger.get(s.id)
                if (cur is None or cur.state not in (State.PROVISIONED, State.READY)
                        or cur.embedding.node_map.get(node) != host):
                    continue  # gone meanwhile (e.g. its owner took it away)
                try:
                    target = (pick or self._pick_host)(cur, node)
                    done.append(self.migrate(s.owner, s.name, node, target, progress=progress))
                except Rejected as exc:
                    if stuck is None:
                        raise
                    stuck(cur, node, exc, self._has_room(cur, node))
        return done

    def undrain(self, host: str) -> None:
        self.ledger.set_drained(host, False)

    def _has_room(self, s: Sliver, node: str) -> bool:
        """Whether a host other than the node's (at any location) can take it."""
        try:
            return self._pick_host(s, node, anywhere=True) != s.embedding.node_map.get(node)
        except Rejected:
            return False

    def _pick_host(self, s: Sliver, node: str, *, anywhere: bool = False) -> str:
        """The host with the most CPU left that can take `node` (not drained,
        offering its kind, at the location its customer gave it unless
        `anywhere`: a drain must not move a node to another city); ties by
        name."""
        vnode = spec_of(s.spec_xml).node(node)
        drained = self.ledger.drained()
        left = {h.name: h for h in self.residual().hosts}
        fits = [h for h in self.substrate.hosts
                if h.name not in drained and vnode.kind in h.node_kinds
                and (anywhere or not vnode.location or h.location == vnode.location)
                and left[h.name].cpu + 1e-9 >= vnode.cpu
                and left[h.name].memory_mb >= vnode.memory_mb]
        if not fits:
            why = f"no host can take node {node} of {s.name}"
            raise Rejected(why, f"{node}: no host can take it")
        return max(fits, key=lambda h: (left[h.name].cpu, h.name)).name

    # -- deletion ------------------------------------------------------------------

    def delete(self, owner: str, name: str, *, progress: Progress | None = None) -> Sliver:
        """Remove what the sliver has on the hosts and end it; idempotent.

        Waits for an operation in progress on it (bounded); a removal that fails
        leaves it failed, still deployed, for a later Delete."""

        def accept(s: Sliver) -> State | None:
            return None if s.state in ENDED else State.DELETING

        with self._operation(owner, name, "delete", accept=accept) as op:
            if op.idle:
                return op.sliver
            return self._remove(op, progress)

    def _remove(self, op: _Op, progress: Progress | None) -> Sliver:
        s = op.sliver
        vlans = self.vlans
        if self.on_removed is not None:
            self.on_removed(s)
        if s.deployed:
            try:
                self.deployer.apply(self.plan(s), "absent", progress=progress)
                if s.moving is not None:  # a move that stopped half-way: its side too
                    self.deployer.apply(self.plan(self._after(s)), "absent", progress=progress)
                if s.previous is not None:  # a reshape that stopped half-way: the old too
                    self.deployer.apply(self.plan(self._before(s)), "absent",
                                        progress=progress)
            except (DeployError, PlanError) as exc:
                op.save(replace(s, state=State.FAILED, error=str(exc)[:500], lock=None))
                raise DeployFailed(f"removal of sliver {s.name} failed: {exc}", exc,
                                   False) from exc
            self.pool.release(s.id)
        def drop(conn: Connection) -> None:
            self.ledger.drop_vnis(conn, s.id)
            if vlans is not None:
                vlans.drop(conn, s.id)

        op.save(replace(s, state=State.DELETED, deployed=False, lock=None), also=drop)
        return op.sliver

    # -- the reaper ----------------------------------------------------------------

    def reap(self) -> list[str]:
        """Expire reservations whose time is up, finish operations whose holder
        died, drop old tombstones. Runs in the background, never inside a
        customer's request; returns what it did, for logs and tests."""
        done: list[str] = []
        now = time.time()
        for s in self.ledger.slivers():
            try:
                if s.state is State.ALLOCATED and (s.expires or 0) <= now and s.lock is None:
                    self.ledger.update(s, replace(s, state=State.EXPIRED))
                    done.append(f"expired {s.owner}/{s.name}")
                elif s.lock is not None and self._dead(s.lock):
                    done.append(self._take_over(s))
            except Stale:
                continue  # someone else moved it: the next round sees the new state
            except (DeployFailed, DeployError, PlanError) as exc:
                log.error("%s: recovery of %s failed: %s", self.name, s.name, exc)
        self.ledger.purge_ended(now - TOMBSTONE_SECONDS)
        busy = any(s.state is State.PROVISIONING for s in self.ledger.slivers())
        done += self.tend_pool(busy=busy)
        return done

    def tend_pool(self, *, busy: bool = False) -> list[str]:
        """The pool's round: in a background thread (the PIP), or, on the direct
        path, only the quick part (what died or is no longer used is destroyed).
        `busy`: a Provision runs; boots would slow it down, so they wait."""
        if self.pool_background:
            if busy:
                return []
            if self.pool.settings().on or self.pool.vms():
                self.pool.tend_in_background()
            return []
        if not self.pool.vms():
            return []
        try:
            return self.pool.tend(boot=False)
        except Exception:
            log.exception("%s: pool round failed", self.name)
            return []

    def _take_over(self, s: Sliver) -> str:
        """Finish the operation of a holder that died, with its lock taken over."""
        lock = Lock(f"recover-{s.lock.op if s.lock else ''}", self.holder,
                    time.time() + timeouts.SLIVER_WAIT)
        s = self.ledger.update(s, replace(s, lock=lock))
        op = _Op(self, s)
        try:
            if s.state is State.PROVISIONING:
                self._rollback(op, RuntimeError("the PIP stopped during provisioning"), None)
                return f"rolled back {s.owner}/{s.name}"
            if s.state is State.DELETING:
                self._remove(op, None)
                return f"deleted {s.owner}/{s.name}"
            if s.previous is not None:
                self._unshape(op, None)
                return f"undid the reshape of {s.owner}/{s.name}"
            if s.moving is not None:
                old, new = self.plan(replace(s, moving=None)), self.plan(self._after(s))
                if self._undo_move(op, old, new, None):
                    return f"undid the move of {s.moving.node} in {s.owner}/{s.name}"
                return f"could not undo the move in {s.owner}/{s.name}"
            return f"unlocked {s.owner}/{s.name}"
        finally:
            op.unlock()

    # -- check mode ----------------------------------------------------------------

    def dry_run(self, spec: VNetSpec, sliver_id: str, *,
                progress: Progress | None = None) -> tuple[Embedding, dict[str, Any]]:
        """What an instantiation would do: embedding and plan, checked against the
        hosts in check mode; nothing recorded, nothing changed."""
        embedding = self._embed(spec, sliver_id, self.residual())
        vnis = pick_vnis(self.ledger.used_vnis(), crossing_links(spec, embedding.node_map),
                         self.name)
        plan = build_plan(spec, embedding.node_map, self.substrate, vnet_id=sliver_id,
                          lab=self.name, vnis=vnis, image=self._image(spec)).to_dict()
        self.deployer.apply(plan, "present", check=True, progress=progress)
        return embedding, plan


@dataclass
class _Op:
    """An operation holding a sliver's lock: saves go through the ledger's CAS;
    the last save of an operation clears the lock (`lock=None`) with its result."""

    core: PipCore
    sliver: Sliver
    idle: bool = False

    def save(self, new: Sliver, also: Callable[[Any], Any] | None = None) -> Sliver:
        self.sliver = self.core.ledger.update(self.sliver, new, also=also)
        return self.sliver

    def unlock(self) -> None:
        if self.idle or self.sliver.lock is None:
            return
        for _ in range(20):
            try:
                self.save(replace(self.sliver, lock=None))
                return
            except Stale:  # only a takeover can move a locked row: ours no more
                cur = self.core.ledger.get(self.sliver.id)
                if cur is None or cur.lock is None or cur.lock.holder != self.core.holder:
                    return
                self.sliver = cur


__all__ = [
    "Busy",
    "Conflict",
    "CoreError",
    "DeployFailed",
    "Gone",
    "MoveFailed",
    "Moved",
    "NotFound",
    "PipCore",
    "Pricing",
    "Rejected",
]
