"""A PIP's advertisement, kept up to date by deltas instead of recomputed.

`negotiation.advertise(name, core.residual(), ...)` parses every live
sliver's description and subtracts all of them from the whole substrate on
every request: linear in hosts and slivers, a few ms for 1,000 hosts and
more with many slivers. `Advertiser` keeps, per host, what each sliver
holds there, and per location the advertised sums and the XML document. A
request lists the live slivers (id, version, state and expiry: four columns
of the ledger's rows, nothing decoded), reads and applies the ones that
appeared or changed (a new version: a move, a reshape), removes the ones
that went (deleted, expired), refreshes only the hosts and locations they
touched, and returns the cached document when nothing changed.

The result is exactly `advertise(provider, core.residual(), ...)`: each
touched host's residual is recomputed from its holdings in the ledger's
order, with the clamping of `placement.residual_substrate`, and each touched
location is summed over its hosts in the substrate's order. The memory
held by the VM pool's untaken VMs (`pool.charged`) is charged per host too.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import select

from vnetlib.core.ledger import Ledger, drained_table, slivers_table
from vnetlib.core.pip import spec_of
from vnetlib.core.pool import TAKEN, PoolVm
from vnetlib.core.records import LIVE, Sliver, State
from vnetlib.players.messages import Advertisement, Site, advertisement_xml
from vnetlib.players.negotiation import DEFAULT_LOCATION
from vnetlib.spec.model import Substrate

Key = tuple[str, int]  # (sliver id, version)
_ONE_BY_ONE = 4  # more new slivers than this (a PIP's first request): one read of all


class _Pricing(Protocol):
    @property
    def per_cpu(self) -> float: ...

    @property
    def per_mbps(self) -> float: ...


class _Pool(Protocol):
    def vms(self) -> list[PoolVm]: ...


class _Core(Protocol):
    """What of a PipCore the advertiser reads."""

    @property
    def substrate(self) -> Substrate: ...

    @property
    def ledger(self) -> Ledger: ...

    @property
    def pricing(self) -> _Pricing: ...

    @property
    def pool(self) -> _Pool: ...


@dataclass(frozen=True, slots=True)
class Holding:
    """What one sliver holds on one host: (cpu, memory) per node, spec order."""

    key: Key
    nodes: tuple[tuple[float, float], ...]


def live_keys(ledger: Ledger, now: float | None = None) -> tuple[list[Key], set[str]]:
    """The live slivers' (id, version) in the ledger's order, and the drained
    hosts, in one read of a few columns."""
    now = time.time() if now is None else now
    t = slivers_table
    query = (select(t.c.id, t.c.version, t.c.state, t.c.expires)
             .where(t.c.substrate == ledger.substrate, t.c.state.in_([s.value for s in LIVE]))
             .order_by(t.c.created))
    with ledger.db.transaction(write=False) as conn:
        rows = conn.execute(query).all()
        drained = {r[0] for r in conn.execute(select(drained_table.c.host).where(
            drained_table.c.substrate == ledger.substrate))}
    allocated = State.ALLOCATED.value
    keys = [(r[0], r[1]) for r in rows if not (r[2] == allocated and (r[3] or 0) <= now)]
    return keys, drained


def pool_held(vms: Iterable[PoolVm]) -> dict[str, int]:
    """Host -> memory of its pool VMs not taken (as `pool.charged` counts)."""
    held: Counter[str] = Counter()
    for vm in vms:
        if vm.state != TAKEN:
            held[vm.host] += vm.memory_mb
    return dict(held)


def holdings(s: Sliver) -> dict[str, Holding]:
    """Host -> what `s` holds there."""
    spec = spec_of(s.spec_xml)
    node_map = s.embedding.node_map
    per_host: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for node in spec.nodes:
        per_host[node_map[node.id]].append((node.cpu, float(node.memory_mb)))
    key = (s.id, s.version)
    return {host: Holding(key, tuple(nodes)) for host, nodes in per_host.items()}


class Advertiser:
    """The advertisement of one PIP, updated incrementally; thread-safe."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._lock = threading.Lock()
        self._substrate: Substrate | None = None
        self._location: dict[str, str] = {}
        self._hosts_at: dict[str, list[str]] = {}
        self._kinds: dict[str, tuple[str, ...]] = {}
        self._capacity: dict[str, tuple[float, float]] = {}
        self._held: dict[str, dict[Key, Holding]] = {}  # host -> sliver -> holding
        self._where: dict[Key, tuple[str, ...]] = {}  # sliver -> its hosts
        self._left: dict[str, tuple[float, int]] = {}  # host -> residual (cpu, memory)
        self._sums: dict[str, tuple[float, float]] = {}  # location -> (cpu, memory)
        self._drained: frozenset[str] = frozenset()
        self._pool: dict[str, int] = {}
        self._document: tuple[tuple[float, float], bytes] | None = None
        self.applied = 0  # slivers applied or removed since the start (tests, bench)

    def _reset(self, substrate: Substrate) -> None:
        self._substrate = substrate
        self._location = {h.name: h.location or DEFAULT_LOCATION for h in substrate.hosts}
        self._hosts_at = defaultdict(list)
        kinds: dict[str, set[str]] = defaultdict(set)
        for h in substrate.hosts:
            where = self._location[h.name]
            self._hosts_at[where].append(h.name)
            kinds[where].update(k.value for k in h.node_kinds)
        self._kinds = {loc: tuple(sorted(v)) for loc, v in kinds.items()}
        self._capacity = {h.name: (h.cpu, float(h.memory_mb)) for h in substrate.hosts}
        self._held = {h.name: {} for h in substrate.hosts}
        self._where = {}
        self._drained = frozenset()
        self._pool = {}
        self._left = {}
        for name in self._capacity:
            self._refresh_host(name, {})
        self._sums = {}
        for where in self._hosts_at:
            self._refresh_location(where)
        self._document = None

    def _refresh_host(self, host: str, order: dict[str, int]) -> None:
        """The host's residual as residual_substrate computes it: subtractions
        in the ledger's sliver order, clamped at zero, zero when drained."""
        if host in self._drained:
            self._left[host] = (0.0, 0)
            return
        cpu, memory = self._capacity[host]
        held = sorted(self._held[host].values(), key=lambda h: order.get(h.key[0], 0))
        for holding in held:
            for node_cpu, node_memory in holding.nodes:
                cpu -= node_cpu
                memory -= node_memory
        left = max(int(memory), 0)
        if held_by_pool := self._pool.get(host, 0):
            left = max(left - held_by_pool, 0)
        self._left[host] = (max(cpu, 0.0), left)

    def _refresh_location(self, where: str) -> None:
        cpu = 0.0
        memory = 0.0
        for host in self._hosts_at[where]:
            left = self._left[host]
            cpu += left[0]
            memory += left[1]
        self._sums[where] = (cpu, memory)

    def update(self, substrate: Substrate, slivers: Sequence[Sliver],
               drained: Collection[str] = (), pool: Mapping[str, int] | None = None) -> int:
        """Bring the state to `slivers` (the live ones, in the ledger's order),
        `drained` and `pool` (`pool_held`); returns how many slivers were
        applied or removed."""
        by_key = {(s.id, s.version): s for s in slivers}
        with self._lock:
            return self._update(substrate, list(by_key), by_key.get, drained, pool or {})

    def _update(self, substrate: Substrate, keys: list[Key],
                fetch: Callable[[Key], Sliver | None], drained: Collection[str],
                pool: Mapping[str, int]) -> int:
        """`keys`: the live slivers in the ledger's order; `fetch` reads one
        that is not applied yet (None: it went meanwhile, the next update
        takes it)."""
        if substrate is not self._substrate and substrate != self._substrate:
            self._reset(substrate)
        current = set(keys)
        gone = [k for k in self._where if k not in current]
        new = [s for k in keys if k not in self._where and (s := fetch(k)) is not None]
        drained_now = frozenset(drained) & self._capacity.keys()
        dirty_hosts: set[str] = set(drained_now ^ self._drained)
        self._drained = drained_now
        pool_now = {h: m for h, m in pool.items() if h in self._capacity}
        dirty_hosts.update(h for h in pool_now.keys() | self._pool.keys()
                           if pool_now.get(h) != self._pool.get(h))
        self._pool = pool_now
        for key in gone:
            for host in self._where.pop(key):
                self._held[host].pop(key, None)
                dirty_hosts.add(host)
        for s in new:
            held = {h: v for h, v in holdings(s).items() if h in self._held}
            for host, holding in held.items():
                self._held[host][holding.key] = holding
                dirty_hosts.add(host)
            self._where[(s.id, s.version)] = tuple(held)
        if not dirty_hosts:
            return 0
        order = {k[0]: i for i, k in enumerate(keys)}
        for host in dirty_hosts:
            self._refresh_host(host, order)
        for where in {self._location[h] for h in dirty_hosts}:
            self._refresh_location(where)
        self._document = None
        self.applied += len(gone) + len(new)
        return len(gone) + len(new)

    def advertisement(self, per_cpu: float, per_mbps: float) -> Advertisement:
        """The advertisement as of the last update."""
        with self._lock:
            return self._advertisement(per_cpu, per_mbps)

    def _advertisement(self, per_cpu: float, per_mbps: float) -> Advertisement:
        assert self._substrate is not None, "update() first"
        sites = tuple(Site(loc, self._sums[loc][0], self._sums[loc][1], per_cpu, per_mbps,
                           self._kinds[loc]) for loc in sorted(self._sums))
        return Advertisement(self.provider, sites, self._substrate.encapsulations)

    def document(self, core: _Core) -> bytes:
        """The advertisement XML of `core` now: the ledger's live slivers
        applied as deltas, the cached document when nothing changed."""
        ledger = core.ledger
        keys, drained = live_keys(ledger)
        bulk: dict[Key, Sliver] = {}

        def fetch(key: Key) -> Sliver | None:
            if bulk:
                return bulk.get(key)
            s = ledger.get(key[0])
            return s if s is not None and s.version == key[1] else None

        pool = pool_held(core.pool.vms())
        prices = (core.pricing.per_cpu, core.pricing.per_mbps)
        with self._lock:
            if sum(k not in self._where for k in keys) > _ONE_BY_ONE:
                bulk.update(((s.id, s.version), s) for s in ledger.slivers())
            self._update(core.substrate, keys, fetch, drained, pool)
            if self._document is None or self._document[0] != prices:
                self._document = (prices, advertisement_xml(self._advertisement(*prices)))
            return self._document[1]
