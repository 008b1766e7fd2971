"""The seam between the PIP core and the substrate's hosts.

A deployer applies a deployment plan (`DeploymentPlan.to_dict()`) with state
`present` or `absent`. `AnsibleDeployer` runs the collection's playbook
through ansible-runner (what PIPs and the direct path use); `RecordingDeployer`
keeps, in memory, the set of kernel objects the plans name, so negotiation,
stitching and state-machine tests compare the ledger with what "is deployed"
without root, and can make a host fail or a run take long.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from vnetlib.deploy.ansible import DEPLOY_PLAYBOOK, DeployError, Progress, TaskFailure, run_playbook
from vnetlib.players import timeouts

MOVE_PLAYBOOK = "vnet.infra.migrate_node"


class Deployer(Protocol):
    def apply(self, plan: Mapping[str, Any], state: str, *, check: bool = False,
              progress: Progress | None = None) -> None:
        """Make the plan's objects present (or absent) on its hosts; DeployError
        names the host and the resource when that fails."""


@dataclass(slots=True)
class AnsibleDeployer:
    inventory: Path
    timeout: float = timeouts.PLAYBOOK

    def apply(self, plan: Mapping[str, Any], state: str, *, check: bool = False,
              progress: Progress | None = None) -> None:
        run_playbook(DEPLOY_PLAYBOOK, self.inventory,
                     {"vnet_plan": dict(plan), "vnet_state": state}, check=check,
                     limit=sorted(plan["hosts"]), progress=progress, timeout=int(self.timeout))

    def move(self, removal: Mapping[str, Any], plan: Mapping[str, Any],
             announce: list[dict[str, Any]], *, progress: Progress | None = None) -> None:
        """One run of `vnet.infra.migrate_node`: `removal` absent on every host
        first, then `plan` present, then the moved node greets its neighbours."""
        hosts = sorted(set(removal["hosts"]) | set(plan["hosts"]))
        run_playbook(MOVE_PLAYBOOK, self.inventory,
                     {"vnet_removal": dict(removal), "vnet_plan": dict(plan),
                      "vnet_announce": announce},
                     limit=hosts, progress=progress, timeout=int(self.timeout))


def plan_objects(plan: Mapping[str, Any]) -> set[tuple[str, str, str]]:
    """(host, kind, name) of every node and link segment a plan places."""
    found: set[tuple[str, str, str]] = set()
    for host, part in plan["hosts"].items():
        for node in part.get("nodes", []):
            found.add((host, "node", str(node.get("netns") or node.get("name"))))
        for link in part.get("links", []):
            found.add((host, "link", str(link.get("bridge") or link.get("name"))))
    return found


@dataclass
class RecordingDeployer:
    """Deploys nothing: records which objects would be on which host.

    `fail_hosts` makes those hosts fail (present and absent alike);
    `delay` makes every run take that long (to race operations against it)."""

    fail_hosts: set[str] = field(default_factory=set)
    delay: float = 0.0
    objects: set[tuple[str, str, str]] = field(default_factory=set)
    runs: list[tuple[str, str]] = field(default_factory=list)  # (vnet, state)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def apply(self, plan: Mapping[str, Any], state: str, *, check: bool = False,
              progress: Progress | None = None) -> None:
        if self.delay:
            time.sleep(self.delay)
        wanted = plan_objects(plan)
        with self._lock:
            self.runs.append((str(plan.get("vnet")), state))
            failed = sorted({h for h, _, _ in wanted} & self.fail_hosts)
            if check:
                return
            for obj in wanted:
                if obj[0] in failed:
                    continue
                if state == "present":
                    self.objects.add(obj)
                else:
                    self.objects.discard(obj)
        if failed:
            raise DeployError("failed", [TaskFailure(h, "vnet objects", None, "host down")
                                         for h in failed], "")

    def move(self, removal: Mapping[str, Any], plan: Mapping[str, Any],
             announce: list[dict[str, Any]], *, progress: Progress | None = None) -> None:
        self.apply(removal, "absent", progress=progress)
        self.apply(plan, "present", progress=progress)

    def of(self, vnet: str) -> set[tuple[str, str, str]]:
        with self._lock:
            return {o for o in self.objects if vnet in o[2]}
