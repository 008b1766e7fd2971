"""The substrate's pool of booted VMs: taken at provisioning, refilled after.

Each substrate host that offers QEMU nodes keeps `size` VMs booted from the
current guest image, with no NICs and ACPI on (for NIC hot-plug), named
`vn-SUBSTRATE-pool-HEX` (the lab's prefix: `vnet lab down` removes them with
the rest). A row per VM in the substrate's ledger (`ledger_pool`) says where
it is in its life:

    booting ──► ready ──take──► taken ──(its sliver ends)──► gone
       │          │                                     ▲
       └──────────┴──(died, stale, surplus)──► destroying

Every change is a compare-and-swap on the row's version, so a ready VM is
taken once, also by PIP processes sharing one ledger. A VM node takes a ready
VM of its host, image and size; the sliver records node -> domain
(`Sliver.domains`), and the plan takes it over (vnet_domain `pool`: NICs
hot-plugged, guest reconfigured on its serial console). A taken VM is dirty:
it is removed with its sliver, never returned. `tend` reconciles the rows
with libvirt and with the slivers, destroys what must go and boots what is
missing; the PIP runs it from its reaper (in a thread of its own), the direct
path from `vnet pool fill` and after `vnet down`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from sqlalchemy import delete, select, update

from vnetlib import naming
from vnetlib.core.deployer import Deployer
from vnetlib.core.ledger import Ledger, pool_settings_table, pool_table
from vnetlib.core.records import ENDED, State
from vnetlib.deploy.ansible import DeployError
from vnetlib.placement import EmbeddingRejected
from vnetlib.plan.model import DomainNic, DomainTask
from vnetlib.players import timeouts
from vnetlib.spec.model import ConsoleKind, NodeKind, Substrate, VNetSpec
from vnetlib.vm.image import GuestImage, kernel_cmdline, mac_for
from vnetlib.vm.observe import domain_states

log = logging.getLogger(__name__)

BOOTING, READY, TAKEN, DESTROYING = "booting", "ready", "taken", "destroying"
BOOT_BUDGET = 180.0  # a row booting longer than this was abandoned
POOL_HOSTNAME = "pool"
ENV_SIZE = "VNET_POOL_SIZE"  # "2" (every QEMU host) or "h1=2,h2=1"
ENV_MEMORY = "VNET_POOL_MEMORY_MB"
ENV_VCPUS = "VNET_POOL_VCPUS"
ENV_NICS = "VNET_POOL_NICS"
NICS = 4  # NICs a pool VM boots with (pre-wired: a take renames their taps, no hot-plug)


@dataclass(frozen=True, slots=True)
class PoolVm:
    """One row of the pool."""

    domain: str
    host: str
    image: str
    vcpus: int
    memory_mb: int
    state: str
    sliver: str | None = None
    vnode: str | None = None
    holder: str = ""
    updated: float = 0.0
    version: int = 0


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """How many VMs each host keeps ready (`*`: every QEMU host), of which size."""

    sizes: Mapping[str, int] = field(default_factory=dict)
    vcpus: int = 1
    memory_mb: int = 128
    nics: int = NICS

    def size(self, host: str) -> int:
        return int(self.sizes.get(host, self.sizes.get("*", 0)))

    @property
    def on(self) -> bool:
        return any(n > 0 for n in self.sizes.values())

    @classmethod
    def parse(cls, text: str, vcpus: int = 1, memory_mb: int = 128,
              nics: int = NICS) -> PoolSettings:
        """`2` (every host) or `h1=2,h2=1`; ValueError naming the bad part."""
        sizes: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            host, _, count = part.rpartition("=") if "=" in part else ("*", "=", part)
            if not count.isdigit() or not host:
                raise ValueError(f"pool size {part!r}: want N or HOST=N")
            sizes[host] = int(count)
        if vcpus < 1 or memory_mb < 16:
            raise ValueError(f"pool VMs need 1 vCPU and 16 MiB at least ({vcpus}, {memory_mb})")
        if not 0 <= nics <= 9:
            raise ValueError(f"pool VMs have 0 to 9 pre-wired NICs, not {nics}")
        return cls(sizes, vcpus, memory_mb, nics)

    @classmethod
    def from_env(cls) -> PoolSettings | None:
        """The PIP's pool from $VNET_POOL_SIZE (and _MEMORY_MB, _VCPUS), if set."""
        text = os.environ.get(ENV_SIZE)
        if text is None:
            return None
        return cls.parse(text, int(os.environ.get(ENV_VCPUS, "1")),
                         int(os.environ.get(ENV_MEMORY, "128")),
                         int(os.environ.get(ENV_NICS, str(NICS))))

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"sizes": dict(self.sizes)})


def vm_size(cpu: float, memory_mb: int) -> tuple[int, int]:
    """(vCPUs, MiB) of a VM node, as its plan gives them."""
    return max(1, math.ceil(cpu)), memory_mb


def takers(spec: VNetSpec, node_map: Mapping[str, str]) -> list[tuple[str, str, int, int]]:
    """(node, host, vcpus, memory) of the nodes that may take a pool VM: QEMU
    nodes without a VNC console (pool VMs have none)."""
    return [(n.id, node_map[n.id], *vm_size(n.cpu, n.memory_mb)) for n in spec.nodes
            if n.kind is NodeKind.QEMU and ConsoleKind.VNC not in n.consoles]


# Memory accounting. An untaken pool VM holds memory no sliver counts: the
# residual the embedding sees is charged for it (`charged`). A node that takes a
# pool VM holds that memory as its own (its sliver counts it): it must not be
# charged a second time, as the pool's and as the node's. So an embedding first
# sees the ready VMs its nodes could take credited back (`credited`, at most one
# per node, on every host: the hosts are not chosen yet), then its placement is
# checked against what it would really take there (`overdrawn`).

def charged(residual: Substrate, vms: Iterable[PoolVm]) -> Substrate:
    """`residual` less the memory of the pool VMs not taken (booting, ready,
    being destroyed: each still holds its memory)."""
    held: Counter[str] = Counter()
    for vm in vms:
        if vm.state != TAKEN:
            held[vm.host] += vm.memory_mb
    if not held:
        return residual
    return replace(residual, hosts=tuple(
        replace(h, memory_mb=max(h.memory_mb - held[h.name], 0)) for h in residual.hosts))


def credited(residual: Substrate, vms: Iterable[PoolVm], spec: VNetSpec,
             skip: Collection[str] = ()) -> Substrate:
    """A `charged` residual plus, on each host but `skip`, the memory of the
    ready VMs there that `spec`'s nodes could take (at most one per node)."""
    wanted = Counter(vm_size(n.cpu, n.memory_mb) for n in spec.nodes
                     if n.kind is NodeKind.QEMU and ConsoleKind.VNC not in n.consoles)
    if not wanted:
        return residual
    ready: dict[str, Counter[tuple[int, int]]] = {}
    for vm in vms:
        if vm.state == READY:
            ready.setdefault(vm.host, Counter())[(vm.vcpus, vm.memory_mb)] += 1
    back = {host: sum(min(k, wanted[size]) * size[1] for size, k in sizes.items())
            for host, sizes in ready.items() if host not in skip}
    return replace(residual, hosts=tuple(
        replace(h, memory_mb=h.memory_mb + back.get(h.name, 0)) for h in residual.hosts))


def would_take(vms: Iterable[PoolVm],
               wanted: Sequence[tuple[str, str, int, int]]) -> dict[str, PoolVm]:
    """node -> the ready VM a take would give it now (as `VmPool.take` picks)."""
    free = [vm for vm in vms if vm.state == READY]
    got: dict[str, PoolVm] = {}
    for node, host, vcpus, memory in wanted:
        vm = next((v for v in free if (v.host, v.vcpus, v.memory_mb) == (host, vcpus, memory)),
                  None)
        if vm is not None:
            free.remove(vm)
            got[node] = vm
    return got


def overdrawn(residual: Substrate, vms: Sequence[PoolVm], spec: VNetSpec,
              node_map: Mapping[str, str]) -> list[str]:
    """Hosts of a `charged` residual whose memory `spec`'s nodes, placed by
    `node_map`, exceed, counting the pool VMs they would take there as theirs."""
    placed: Counter[str] = Counter()
    for n in spec.nodes:
        placed[node_map[n.id]] += n.memory_mb
    back: Counter[str] = Counter()
    for vm in would_take(vms, takers(spec, node_map)).values():
        back[vm.host] += vm.memory_mb
    return [h.name for h in residual.hosts if placed[h.name] > h.memory_mb + back[h.name]]


def embed_counting_pool(residual: Substrate, vms: Sequence[PoolVm], spec: VNetSpec,
                        skip: Collection[str],
                        embed: Callable[[Substrate], dict[str, Any]]) -> dict[str, Any]:
    """`embed` (a dict with its node_map) of `spec` on a `charged` residual, each
    node that would take a pool VM counted once: first on the residual with the
    VMs its nodes could take credited back (not on the hosts in `skip`), kept if
    what it places takes that memory indeed; else on the residual as it is.
    Raises what `embed` raises (EmbeddingRejected) for the latter."""
    if any(vm.state == READY for vm in vms) and takers(spec, {n.id: "" for n in spec.nodes}):
        try:
            got = embed(credited(residual, vms, spec, skip))
        except EmbeddingRejected:
            got = None
        if got is not None and not overdrawn(residual, vms, spec, got["node_map"]):
            return got
    return embed(residual)


@dataclass
class VmPool:
    """The pool of one substrate, kept in its ledger, booted by its deployer."""

    substrate: Substrate
    ledger: Ledger
    deployer: Deployer
    images: Callable[[], GuestImage]
    holder: str
    alive: Callable[[str], bool]  # whether a holder still runs
    override: PoolSettings | None = None  # the PIP's configuration, over the ledger's
    observe: Callable[[list[str]], dict[str, str]] = domain_states  # what libvirt reports
    # The substrate's residual with the pool's untaken VMs charged (PipCore.residual):
    # a refill boots only into memory that neither a sliver nor the pool holds.
    room: Callable[[], Substrate] | None = None
    _tending: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    @property
    def hosts(self) -> list[str]:
        return [h.name for h in self.substrate.hosts if NodeKind.QEMU in h.node_kinds]

    # -- settings ------------------------------------------------------------------

    def settings(self) -> PoolSettings:
        if self.override is not None:
            return self.override
        with self.ledger.db.transaction(write=False) as conn:
            row = conn.execute(select(pool_settings_table.c.data).where(
                pool_settings_table.c.substrate == self.ledger.substrate)).first()
        if row is None:
            return PoolSettings()
        d = json.loads(row[0])
        return PoolSettings(d["sizes"], int(d["vcpus"]), int(d["memory_mb"]),
                            int(d.get("nics", NICS)))

    def configure(self, settings: PoolSettings) -> None:
        """Keep `settings` in the ledger (the direct path's configuration)."""
        with self.ledger.db.transaction() as conn:
            conn.execute(delete(pool_settings_table).where(
                pool_settings_table.c.substrate == self.ledger.substrate))
            conn.execute(pool_settings_table.insert().values(
                substrate=self.ledger.substrate, data=settings.to_json()))

    # -- rows ----------------------------------------------------------------------

    def vms(self) -> list[PoolVm]:
        with self.ledger.db.transaction(write=False) as conn:
            rows = conn.execute(select(pool_table).where(
                pool_table.c.substrate == self.ledger.substrate).order_by(pool_table.c.domain))
            return [PoolVm(**{k: v for k, v in r._mapping.items() if k != "substrate"})
                    for r in rows]

    def _insert(self, vm: PoolVm) -> PoolVm:
        vm = replace(vm, updated=time.time(), version=1)
        with self.ledger.db.transaction() as conn:
            conn.execute(pool_table.insert().values(substrate=self.ledger.substrate,
                                                    **asdict(vm)))
        return vm

    def _cas(self, old: PoolVm, new: PoolVm) -> PoolVm | None:
        """`new` in place of `old` if nobody changed the row since; else None."""
        new = replace(new, version=old.version + 1, updated=time.time())
        values = {k: v for k, v in asdict(new).items() if k != "domain"}
        with self.ledger.db.transaction() as conn:
            done = conn.execute(update(pool_table).where(
                pool_table.c.substrate == self.ledger.substrate,
                pool_table.c.domain == old.domain,
                pool_table.c.version == old.version).values(**values))
        return new if done.rowcount == 1 else None

    def _forget(self, vms: Iterable[PoolVm]) -> None:
        names = [vm.domain for vm in vms]
        if names:
            with self.ledger.db.transaction() as conn:
                conn.execute(delete(pool_table).where(
                    pool_table.c.substrate == self.ledger.substrate,
                    pool_table.c.domain.in_(names)))

    def held(self) -> dict[str, int]:
        """MiB each host's pool VMs hold that no sliver counts yet (every row
        but the taken ones: a taken VM's memory is its node's, in its sliver)."""
        held: dict[str, int] = {}
        for vm in self.vms():
            if vm.state != TAKEN:
                held[vm.host] = held.get(vm.host, 0) + vm.memory_mb
        return held

    def charge(self, residual: Substrate) -> Substrate:
        """`residual` (what slivers leave of the substrate) less the memory the
        pool's untaken VMs hold (`charged`)."""
        return charged(residual, self.vms())

    # -- taking --------------------------------------------------------------------

    def take(self, sliver_id: str, wanted: Sequence[tuple[str, str, int, int]],
             image: str) -> dict[str, str]:
        """Take a ready VM of its host, `image` and size for each (node, host,
        vcpus, memory); node -> domain of those that got one. Each take is a
        compare-and-swap: a VM is never taken twice."""
        taken: dict[str, str] = {}
        for node, host, vcpus, memory in wanted:
            for vm in self.vms():
                if (vm.state, vm.host, vm.image, vm.vcpus, vm.memory_mb) != (
                        READY, host, image, vcpus, memory):
                    continue
                if self._cas(vm, replace(vm, state=TAKEN, sliver=sliver_id, vnode=node,
                                         holder=self.holder)) is not None:
                    taken[node] = vm.domain
                    break
        return taken

    def release(self, sliver_id: str) -> None:
        """Forget the VMs a sliver took, once its removal destroyed them."""
        self._forget(vm for vm in self.vms() if vm.state == TAKEN and vm.sliver == sliver_id)

    # -- tending -------------------------------------------------------------------

    def tend_in_background(self) -> bool:
        """Start `tend(boot=True)` in a thread unless one runs; whether one started."""
        if self._thread is not None and self._thread.is_alive():
            return False
        self._thread = threading.Thread(target=self._tend_logged, daemon=True,
                                        name=f"pool-{self.substrate.name}")
        self._thread.start()
        return True

    def _tend_logged(self) -> None:
        try:
            for line in self.tend(boot=True):
                log.info("%s: pool: %s", self.substrate.name, line)
        except Exception:
            log.exception("%s: pool round failed", self.substrate.name)

    def wait(self, timeout: float | None = None) -> None:
        """Wait for a background round (tests, shutdown)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def tend(self, *, boot: bool = True) -> list[str]:
        """Destroy the VMs that must go (died, stale image or size, surplus,
        abandoned boots, taken by slivers that ended) and, with `boot`, boot
        what each host lacks. Returns what it did."""
        with self._tending:
            done = self._sweep()
            if boot:
                done += self._fill()
            return done

    def _doomed(self, vm: PoolVm, settings: PoolSettings, image: str | None,
                seen: Mapping[str, str], keep: dict[str, int]) -> str | None:
        """Why `vm` must go, or None."""
        if vm.state == DESTROYING:
            return "left destroying" if not self.alive(vm.holder) or vm.holder == self.holder \
                else None
        if vm.state == BOOTING:
            if not self.alive(vm.holder) or time.time() - vm.updated > BOOT_BUDGET:
                return "abandoned while booting"
            return None
        if vm.state == TAKEN:
            s = self.ledger.get(vm.sliver or "")
            if s is None or s.state in ENDED:
                return f"taken by {vm.sliver}, which ended"
            if (s.state is not State.PROVISIONING and vm.vnode
                    and s.domains.get(vm.vnode) != vm.domain):
                return f"taken by {vm.sliver}, which does not use it"
            return None
        if seen.get(vm.domain) != "running":
            return f"{seen.get(vm.domain, 'unknown')} instead of running"
        if image is not None and vm.image != image:
            return "of an older image"
        if (vm.vcpus, vm.memory_mb) != (settings.vcpus, settings.memory_mb):
            return "of another size"
        keep[vm.host] = keep.get(vm.host, 0) + 1
        if keep[vm.host] > settings.size(vm.host) or vm.host not in self.hosts:
            return "surplus"
        return None

    def _sweep(self) -> list[str]:
        vms = self.vms()
        if not vms:
            return []
        settings = self.settings()
        try:
            image: str | None = self.images().key
        except Exception as exc:  # no image now: judge the rows without it
            log.warning("%s: pool: no guest image: %s", self.substrate.name, exc)
            image = None
        ready = [vm.domain for vm in vms if vm.state == READY]
        seen = self.observe(ready) if ready else {}
        if "unknown" in seen.values():
            seen = {}  # libvirt cannot be asked now: judge nothing by it
            ready = []
        keep: dict[str, int] = {}
        doomed: list[tuple[PoolVm, str]] = []
        for vm in vms:
            if vm.state == READY and vm.domain not in ready:
                continue
            why = self._doomed(vm, settings, image, seen, keep)
            if why is not None:
                doomed.append((vm, why))
        marked = []
        for vm, why in doomed:
            new = vm if vm.state == DESTROYING and vm.holder == self.holder else self._cas(
                vm, replace(vm, state=DESTROYING, holder=self.holder))
            if new is not None:
                marked.append((new, why))
        if not marked:
            return []
        try:
            self.deployer.apply(removal_plan([vm for vm, _ in marked]), "absent")
        except DeployError as exc:
            log.error("%s: pool: destroying %s failed: %s", self.substrate.name,
                      ", ".join(vm.domain for vm, _ in marked), exc)
            return []
        self._forget(vm for vm, _ in marked)
        return [f"destroyed {vm.domain} ({why})" for vm, why in marked]

    def _fill(self) -> list[str]:
        settings = self.settings()
        if not settings.on:
            return []
        image = self.images()
        vms = self.vms()
        free = None if self.room is None else {h.name: h.memory_mb for h in self.room().hosts}
        new: list[PoolVm] = []
        short: list[str] = []
        for host in self.hosts:
            have = sum(1 for vm in vms if vm.host == host and vm.state in (READY, BOOTING))
            want = max(settings.size(host) - have, 0)
            fits = want if free is None else min(want, free.get(host, 0) // settings.memory_mb)
            if free is not None and fits < want:
                short.append(f"not booted on {host}: {want - fits} of {want} VMs of "
                             f"{settings.memory_mb} MiB ({free.get(host, 0)} MiB free)")
            for _ in range(fits):
                name = naming.vnode_netns(self.substrate.name, "pool", secrets.token_hex(4))
                new.append(self._insert(PoolVm(name, host, image.key, settings.vcpus,
                                               settings.memory_mb, BOOTING,
                                               holder=self.holder)))
        for line in short:
            log.warning("%s: pool: %s", self.substrate.name, line)
        if not new:
            return short
        try:
            self.deployer.apply(boot_plan(new, image, settings.nics), "present")
        except DeployError as exc:
            log.error("%s: pool: booting %s failed: %s", self.substrate.name,
                      ", ".join(vm.domain for vm in new), exc)
            try:
                self.deployer.apply(removal_plan(new), "absent")
                self._forget(new)
            except DeployError:
                pass  # left booting: the next round destroys them (holder or budget)
            return [*short, f"boot failed: {exc}"]
        done = short
        for vm in new:
            if self._cas(vm, replace(vm, state=READY)) is not None:
                done.append(f"booted {vm.domain} on {vm.host}")
        return done

    def drain(self) -> list[str]:
        """Size 0 in the ledger, and every VM not taken destroyed."""
        now = self.settings()
        self.configure(PoolSettings({}, now.vcpus, now.memory_mb, now.nics))
        with self._tending:
            return self._sweep()


def pool_tap(domain: str, index: int) -> str:
    """The tap of a pool VM's `index`-th pre-wired NIC (vnet_domain's
    module_utils/_domain.py names them the same: it renames them at a take
    and deletes those left with the domain)."""
    return f"vq{hashlib.sha256(domain.encode()).hexdigest()[:10]}{index}"


def _task(vm: PoolVm, image: GuestImage, nics: int) -> dict[str, Any]:
    # A pool boot is no customer's wait: on a loaded host it may take longer
    # than a node's boot budget, up to the pool's own.
    budget = int(min(BOOT_BUDGET, timeouts.PLAYBOOK)) - 10
    return {"boot_timeout": budget} | asdict(DomainTask(
        vnode=POOL_HOSTNAME, name=vm.domain, hypervisor="qemu", vcpus=vm.vcpus,
        memory_mb=vm.memory_mb, kernel=str(image.kernel), initrd=str(image.initrd),
        cmdline=kernel_cmdline(image, POOL_HOSTNAME, [], False), pool=True,
        interfaces=tuple(DomainNic(pool_tap(vm.domain, i), mac_for(vm.domain, "pool", f"eth{i}"),
                                   "") for i in range(nics))))


def _plan(by_host: Mapping[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {"vnet": "pool", "hosts": {h: {"host": h, "nodes": [], "links": [],
                                          "domains": tasks} for h, tasks in by_host.items()}}


def boot_plan(vms: Sequence[PoolVm], image: GuestImage, nics: int = NICS) -> dict[str, Any]:
    """The deployment plan that boots `vms` (vnet_domain, `pool`), each with
    `nics` NICs whose taps sit in its host, on no bridge, until a take."""
    by_host: dict[str, list[dict[str, Any]]] = {}
    for vm in vms:
        by_host.setdefault(vm.host, []).append(_task(vm, image, nics))
    return _plan(by_host)


def removal_plan(vms: Sequence[PoolVm]) -> dict[str, Any]:
    """The plan whose removal destroys `vms` (with the taps of taken ones: their
    definitions name them)."""
    by_host: dict[str, list[dict[str, Any]]] = {}
    for vm in vms:
        by_host.setdefault(vm.host, []).append({"name": vm.domain, "vnode": POOL_HOSTNAME})
    return _plan(by_host)
