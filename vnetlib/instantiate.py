"""The operator's direct path on a local substrate: the PIP core, run by the command.

`vnet up SPEC --substrate NAME` is a PIP operator instantiating a VNet on its
own substrate without the players: the same core as the PIP service
(`vnetlib.core.pip`), with the operator as the sliver's owner, allocation and
provisioning in one go, and the substrate's ledger in `$VNET_HOME/state.db`.
Each phase is timed. A failed deployment is rolled back by the core; a VNet
whose rollback could not reach a host is kept as failed for `vnet down`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vnetlib import paths
from vnetlib.core.deployer import AnsibleDeployer, Deployer
from vnetlib.core.ledger import Ledger
from vnetlib.core.pip import DeployFailed, NotFound, PipCore, Rejected, spec_of
from vnetlib.core.records import Sliver
from vnetlib.deploy.ansible import DEPLOY_PLAYBOOK, DeployError, check_installed
from vnetlib.placement import EmbeddingRejected
from vnetlib.players.db import sqlite_url
from vnetlib.spec import load_substrate, load_vnet
from vnetlib.vm.observe import domain_states

Progress = Callable[[str], None]
OPERATOR = "operator"  # the owner of every sliver made on the direct path
SUBSTRATE_FILE = "substrate.xml"
INVENTORY_FILE = "inventory.yml"
MANAGER_FILE = "managed-by"


def _quiet(_: str) -> None:
    return None


class VNetNotFound(LookupError):
    """No VNet of the direct path has that id or name."""


@dataclass(slots=True)
class Timings:
    phases: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = round(time.perf_counter() - start, 4)


@dataclass(frozen=True, slots=True)
class LocalVNet:
    """A VNet of the direct path as the CLI shows it (a sliver of the operator)."""

    id: str
    name: str
    lab: str
    status: str
    embedding: dict[str, Any]
    plan: dict[str, Any] | None
    timings: dict[str, float]
    node_states: dict[str, str]

    observed: dict[str, str]  # what libvirt reports of VM nodes
    domains: dict[str, str]  # VM node -> its libvirt domain

    def domain(self, node: str) -> str:
        """The libvirt domain of VM node `node` (a pool VM it took keeps its name)."""
        return self.domains[node]

    @classmethod
    def of(cls, core: PipCore, s: Sliver) -> LocalVNet:
        spec = spec_of(s.spec_xml)
        vms = {n.id: s.domain(n.id) for n in spec.nodes if n.kind.is_vm}
        seen = domain_states(list(vms.values())) if vms and s.deployed else {}
        return cls(s.id, spec.name, core.name, s.state.value,
                   s.embedding.to_dict(), core.plan(s) if s.deployed else None,
                   dict(s.timings),
                   {n: s.node_state(n) for n in s.embedding.node_map},
                   {n: seen[d] for n, d in vms.items() if d in seen}, vms)


@dataclass(frozen=True, slots=True)
class Instantiation:
    vnet_id: str
    name: str
    lab: str
    node_map: dict[str, str]
    plan: dict[str, Any]
    timings: dict[str, float]
    check: bool

    def to_dict(self) -> dict[str, Any]:
        return {"vnet": self.vnet_id, "name": self.name, "lab": self.lab, "check": self.check,
                "node_map": self.node_map, "timings": self.timings,
                "total": round(sum(self.timings.values()), 4)}


def manager(substrate: str) -> str | None:
    """The PIP management node that owns `substrate`, if one does."""
    path = paths.substrate_dir(substrate) / MANAGER_FILE
    return path.read_text().strip() if path.exists() else None


def local_core(substrate: str, deployer: Deployer | None = None) -> PipCore:
    """The core of a substrate worked on directly: its files under
    `$VNET_HOME/substrates/NAME/` and its ledger in `$VNET_HOME/state.db`."""
    files = paths.substrate_dir(substrate)
    if not (files / SUBSTRATE_FILE).exists():
        raise LookupError(f"no substrate {substrate!r} (no {files / SUBSTRATE_FILE}); "
                          f"bring it up with `vnet lab up`")
    return PipCore(load_substrate(files / SUBSTRATE_FILE),
                   Ledger(sqlite_url(paths.state_db()), substrate),
                   deployer or AnsibleDeployer(files / INVENTORY_FILE),
                   pool_settings=None, pool_background=False)


def substrates() -> list[str]:
    """The substrates that have a ledger in the direct path's state file."""
    if not paths.state_db().exists():
        return []
    return Ledger.substrates(sqlite_url(paths.state_db()))


def instantiate(spec_path: Path, substrate_name: str, *, check: bool = False,
                progress: Progress = _quiet) -> Instantiation:
    """Instantiate the VNet described in `spec_path` on a substrate of the local lab."""
    if (owner := manager(substrate_name)) is not None:
        raise ValueError(
            f"substrate {substrate_name} is managed by {owner}: request VNets through its "
            "players (`vnet up SPEC --lab LAB`), or use a lab without players for direct work")
    timings = Timings()
    with timings.phase("parse"):
        progress(f"parsing {spec_path}")
        spec = load_vnet(spec_path)
        check_installed()  # before anything is recorded: say what to install
        core = local_core(substrate_name)
    vnet_id = f"{spec.name}-{secrets.token_hex(3)}"
    try:
        core.reap()  # finish what a crashed command left on this substrate
        if check:
            with timings.phase("embed"):
                embedding, plan = core.dry_run(spec, vnet_id, progress=progress)
            return Instantiation(vnet_id, spec.name, core.name, dict(embedding.node_map),
                                 plan, timings.phases, True)
        with timings.phase("embed"):
            progress(f"embedding {len(spec.nodes)} nodes and {len(spec.links)} links")
            try:
                s = core.allocate(OPERATOR, vnet_id, spec, sliver_id=vnet_id)
            except Rejected as exc:
                assert isinstance(exc.__cause__, EmbeddingRejected)
                raise exc.__cause__ from None
        progress(f"deploying through {DEPLOY_PLAYBOOK}")
        try:
            s = core.provision(OPERATOR, vnet_id, progress=progress)
        except DeployFailed as exc:
            if exc.rolled_back:
                core.ledger.purge(vnet_id)
            elif isinstance(exc.cause, DeployError):
                exc.cause.add_note("the VNet is kept as failed: `vnet down` retries the removal")
            raise exc.cause from None
        timings.phases.update(s.timings)
        core.record_timings(s, timings.phases)
        return Instantiation(vnet_id, spec.name, core.name, dict(s.embedding.node_map),
                             core.plan(s), timings.phases, False)
    finally:
        core.ledger.close()


def find(ref: str) -> tuple[str, Sliver]:
    """The substrate and sliver of a direct VNet by id, or by name when only one
    VNet has that name."""
    found: list[tuple[str, Sliver]] = []
    for name in substrates():
        ledger = Ledger(sqlite_url(paths.state_db()), name)
        try:
            for s in ledger.slivers(OPERATOR):
                if ref in (s.id, spec_of(s.spec_xml).name):
                    found.append((name, s))
        finally:
            ledger.close()
    exact = [f for f in found if f[1].id == ref]
    if exact:
        return exact[0]
    if not found:
        raise VNetNotFound(f"no VNet with id or name {ref!r}")
    if len(found) > 1:
        ids = ", ".join(s.id for _, s in found)
        raise LookupError(f"several VNets are named {ref!r} ({ids}): give the id")
    return found[0]


def local_vnets() -> list[LocalVNet]:
    out = []
    for name in substrates():
        if not (paths.substrate_dir(name) / SUBSTRATE_FILE).exists():
            continue
        core = local_core(name)
        try:
            out += [LocalVNet.of(core, s) for s in core.ledger.slivers(OPERATOR)]
        finally:
            core.ledger.close()
    return out


def describe(ref: str) -> LocalVNet:
    substrate, s = find(ref)
    core = local_core(substrate)
    try:
        return LocalVNet.of(core, s)
    finally:
        core.ledger.close()


def destroy(ref: str, *, check: bool = False, progress: Progress = _quiet) -> LocalVNet:
    """Remove a VNet's nodes and links from its hosts and forget it."""
    substrate, s = find(ref)
    core = local_core(substrate)
    try:
        view = LocalVNet.of(core, s)
        if check:
            if view.plan is not None:
                core.deployer.apply(view.plan, "absent", check=True, progress=progress)
            return view
        progress(f"removing {s.id}")
        try:
            core.delete(OPERATOR, s.name, progress=progress)
        except DeployFailed as exc:
            raise exc.cause from None
        except NotFound:
            pass
        core.ledger.purge(s.id)
        if core.pool.settings().on:
            progress("refilling the pool of booted VMs")
            core.pool.tend(boot=True)  # what the VNet took is gone: boot replacements
        return view
    finally:
        core.ledger.close()


def control(ref: str, node: str, action: str, *, progress: Progress = _quiet) -> str:
    """Start, stop, restart, suspend or resume one node of a direct VNet."""
    substrate, s = find(ref)
    core = local_core(substrate)
    try:
        try:
            done = core.control(OPERATOR, s.name, node, action, progress=progress)
        except DeployFailed as exc:
            raise exc.cause from None
        return f"{node}: {done.node_state(node)}"
    finally:
        core.ledger.close()


def forget_substrate(substrate: str) -> None:
    """Drop a substrate's ledger (its lab is gone, and every VNet with it)."""
    if paths.state_db().exists():
        ledger = Ledger(sqlite_url(paths.state_db()), substrate)
        try:
            ledger.forget()
        finally:
            ledger.close()


__all__ = ["EmbeddingRejected", "Instantiation", "LocalVNet", "VNetNotFound", "describe",
           "destroy", "find", "instantiate", "local_vnets"]
