"""The PIP path on a local substrate: parse -> embed -> plan -> deploy.

Each phase is timed. Deployment runs the collection's playbook through
ansible-runner; if it fails, the same plan is applied with state=absent, which
removes whatever the failed run created, and the VNet's records are dropped.
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
from vnetlib.deploy.ansible import DEPLOY_PLAYBOOK, DeployError, run_playbook
from vnetlib.lab import manage
from vnetlib.placement import EmbeddingRejected, embed_on_substrate
from vnetlib.plan.build import build_plan, crossing_links
from vnetlib.plan.model import DeploymentPlan
from vnetlib.spec import dump_vnet, load_vnet, parse_vnet
from vnetlib.spec.model import VNetSpec
from vnetlib.store import Store, VNetRecord

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


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

    @property
    def total(self) -> float:
        return round(sum(self.phases.values()), 4)


@dataclass(frozen=True, slots=True)
class Instantiation:
    vnet_id: str
    name: str
    lab: str
    node_map: dict[str, str]
    plan: DeploymentPlan
    timings: dict[str, float]
    check: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "vnet": self.vnet_id,
            "name": self.name,
            "lab": self.lab,
            "check": self.check,
            "node_map": self.node_map,
            "timings": self.timings,
            "total": round(sum(self.timings.values()), 4),
        }


def _existing(store: Store, lab: str) -> list[tuple[VNetSpec, dict[str, Any]]]:
    return [
        (parse_vnet(r.spec_xml.encode(), source=f"vnet {r.id}"), r.embedding)
        for r in store.vnets(lab)
        if r.embedding is not None
    ]


def instantiate(
    spec_path: Path,
    substrate_name: str,
    *,
    check: bool = False,
    progress: Progress = _quiet,
) -> Instantiation:
    """Instantiate the VNet described in `spec_path` on a substrate of the local lab."""
    lab = substrate_name
    if (owner := manage.manager(lab)) is not None:
        raise ValueError(
            f"substrate {lab} is managed by {owner}: request VNets through its players "
            "(`vnet up SPEC --lab LAB`), or use a lab without players for direct work"
        )
    timings = Timings()
    with timings.phase("parse"):
        progress(f"parsing {spec_path}")
        spec = load_vnet(spec_path)
        substrate = manage.load_substrate(lab)
    vnet_id = f"{spec.name}-{secrets.token_hex(3)}"

    with Store(paths.state_db()) as store, manage.substrate_lock(lab):
        with timings.phase("embed"):
            progress(f"embedding {len(spec.nodes)} nodes and {len(spec.links)} links")
            embedding = embed_on_substrate(substrate, spec, vnet_id, _existing(store, lab))
        node_map = embedding["node_map"]
        with timings.phase("plan"):
            tunnels = crossing_links(spec, node_map)
            if check:
                vnis = store.allocate_vnis(lab, vnet_id, tunnels, dry_run=True)
            else:
                store.add_vnet(vnet_id, spec.name, lab, dump_vnet(spec).decode())
                store.update_vnet(vnet_id, embedding=embedding)
                vnis = store.allocate_vnis(lab, vnet_id, tunnels)
            plan = build_plan(spec, node_map, substrate, vnet_id=vnet_id, lab=lab, vnis=vnis)
            if not check:  # recorded before deploying, so `vnet down` can clean up a crash
                store.update_vnet(vnet_id, status="deploying", plan=plan.to_dict())
        with timings.phase("deploy"):
            progress(f"deploying on {len(plan.hosts)} hosts through {DEPLOY_PLAYBOOK}")
            try:
                run_playbook(
                    DEPLOY_PLAYBOOK,
                    manage.inventory_path(lab),
                    {"vnet_plan": plan.to_dict(), "vnet_state": "present"},
                    check=check,
                    limit=[h.host for h in plan.hosts],
                    progress=progress,
                )
            except DeployError as err:
                if not check:
                    progress("deployment failed: rolling back")
                    if _rollback(plan, lab, err, progress):
                        store.remove_vnet(vnet_id)
                    else:  # kept, with its plan and tunnel ids, for `vnet down` to retry
                        store.update_vnet(vnet_id, status="failed")
                raise
        if not check:
            store.update_vnet(vnet_id, status="active", timings=timings.phases)
    return Instantiation(vnet_id, spec.name, lab, node_map, plan, timings.phases, check)


def _remove(
    plan: DeploymentPlan | dict[str, Any], lab: str, progress: Progress, check: bool = False
) -> None:
    data = plan.to_dict() if isinstance(plan, DeploymentPlan) else plan
    run_playbook(
        DEPLOY_PLAYBOOK,
        manage.inventory_path(lab),
        {"vnet_plan": data, "vnet_state": "absent"},
        check=check,
        limit=sorted(data["hosts"]),
        progress=progress,
    )


def _rollback(plan: DeploymentPlan, lab: str, cause: DeployError, progress: Progress) -> bool:
    """Remove what a failed deployment created; True when that worked
    everywhere. Hosts that failed the deployment may fail the removal too,
    which must not hide the cause."""
    try:
        _remove(plan, lab, progress)
    except DeployError as err:
        unreached = sorted({f.host for f in err.failures})
        progress(f"rollback could not reach {', '.join(unreached) or 'some hosts'}")
        cause.add_note(
            f"rollback incomplete on: {', '.join(unreached)}; "
            "the VNet is kept as failed: `vnet down` retries the removal"
        )
        return False
    return True


def destroy(ref: str, *, check: bool = False, progress: Progress = _quiet) -> VNetRecord:
    """Remove a VNet's nodes and links from its hosts and forget it."""
    with Store(paths.state_db()) as store:
        record = store.find_vnet(ref)
        if record.plan is not None:
            progress(f"removing {record.id} from {len(record.plan['hosts'])} hosts")
            _remove(record.plan, record.lab, progress, check=check)
        if not check:
            store.remove_vnet(record.id)
    return record


__all__ = ["EmbeddingRejected", "Instantiation", "destroy", "instantiate"]
