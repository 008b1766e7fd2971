"""`vnet adopt plan.yml`: record what the operator applied with Ansible.

After `ansible-playbook ... vnet.infra.deploy_vnet -e @plan.yml`, the VNet is on
the hosts but not in the substrate's ledger. Adopting a plan with vnet_state
present records it there as a ready VNet of the operator, with the plan's
tunnel ids, after checking that its hosts still have room (another VNet may
have been made since `vnet plan`) and that the ledger gives back exactly the
plan that was applied (so `vnet down` removes exactly what is there).
Adopting it with vnet_state absent forgets the VNet the playbook removed.
Adopting twice is harmless. Only the operator's own VNets (the direct path's,
owner `OPERATOR`) are recorded or forgotten, and only on a substrate no PIP
management node owns: a PIP's ledger entries are its tenants'.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vnetlib.cli import plan as planfile
from vnetlib.cli.output import emit_json
from vnetlib.core.pip import PipCore, spec_of
from vnetlib.core.records import Embedding, Sliver, State
from vnetlib.instantiate import OPERATOR, local_core, manager


class AdoptRefused(ValueError):
    """The plan cannot be recorded as it stands."""


@dataclass(frozen=True, slots=True)
class Adopted:
    vnet: str
    substrate: str
    state: str  # ready | forgotten | unchanged | unknown
    hosts: tuple[str, ...]


def _room(core: PipCore, holding: Sequence[Sliver], sliver: Sliver) -> list[str]:
    """What the sliver needs beyond what `holding` leaves free."""
    free = core.residual(holding)
    spec, node_map = spec_of(sliver.spec_xml), sliver.embedding.node_map
    cpu: dict[str, float] = defaultdict(float)
    memory: dict[str, float] = defaultdict(float)
    for node in spec.nodes:
        cpu[node_map[node.id]] += node.cpu
        memory[node_map[node.id]] += node.memory_mb
    short = []
    hosts = {h.name: h for h in free.hosts}
    for host in sorted(cpu):
        if host not in hosts:
            short.append(f"host {host} is not in substrate {core.name}")
        elif cpu[host] > hosts[host].cpu + 1e-9 or memory[host] > hosts[host].memory_mb:
            short.append(f"host {host} has {hosts[host].cpu:g} cpu and "
                         f"{hosts[host].memory_mb} MB free, the VNet needs {cpu[host]:g} "
                         f"and {memory[host]:g}")
    bandwidth: dict[frozenset[str], float] = defaultdict(float)
    for flows in sliver.embedding.link_map.values():
        for flow in flows:
            for a, b in itertools.pairwise(flow.path):
                bandwidth[frozenset((a, b))] += flow.bandwidth
    links = {frozenset((k.a, k.b)): k.bandwidth_mbps for k in free.links}
    for pair, need in sorted(bandwidth.items(), key=lambda kv: sorted(kv[0])):
        if need > links.get(pair, 0.0) + 1e-9:
            short.append(f"substrate link {'-'.join(sorted(pair))} has "
                         f"{links.get(pair, 0.0):g} Mb/s free, the VNet needs {need:g}")
    return short


def _plain(data: Mapping[str, Any]) -> Any:
    """As the file holds it: lists, not tuples."""
    return json.loads(json.dumps(data))


def adopt(path: Path) -> Adopted:
    made = planfile.load(path)
    if (owner := manager(made.substrate)) is not None:
        raise AdoptRefused(f"substrate {made.substrate} is managed by {owner}: its PIP "
                           "records its VNets itself; a plan cannot be adopted there")
    core = local_core(made.substrate)
    hosts = tuple(sorted(made.plan["hosts"]))
    try:
        known = core.ledger.get(made.vnet)
        if known is not None and known.owner != OPERATOR:
            raise AdoptRefused(f"{made.vnet} in the ledger of {made.substrate} is not the "
                               f"operator's (its owner is {known.owner}): not touched")
        if made.state == "absent":
            if known is None:
                return Adopted(made.vnet, made.substrate, "unknown", hosts)
            core.ledger.purge(made.vnet)
            return Adopted(made.vnet, made.substrate, "forgotten", hosts)
        if known is not None:
            if known.embedding.to_dict()["node_map"] != made.embedding["node_map"]:
                raise AdoptRefused(f"VNet {made.vnet} is in the ledger of {made.substrate} "
                                   "with another embedding")
            return Adopted(made.vnet, made.substrate, "unchanged", hosts)
        vnis = made.vnis()
        taken = core.ledger.used_vnis() & set(vnis.values())
        if taken:
            raise AdoptRefused(f"tunnel ids {sorted(taken)} of the plan are taken by other "
                               f"VNets of {made.substrate} since it was made: plan again")
        spec = spec_of(made.spec_xml)
        sliver = Sliver(id=made.vnet, substrate=made.substrate, owner=OPERATOR,
                        name=made.vnet, state=State.READY, spec_xml=made.spec_xml,
                        embedding=Embedding.from_dict(made.embedding),
                        price=core.price(spec), deployed=True)

        def build(holding: list[Sliver]) -> Sliver:
            if short := _room(core, holding, sliver):
                raise AdoptRefused(f"VNet {made.vnet} no longer fits {made.substrate}: "
                                   + "; ".join(short))
            return sliver

        recorded = core.ledger.allocate(build)
        try:
            for link, vni in vnis.items():
                if not core.ledger.claim_vni(recorded.id, link, vni):
                    raise AdoptRefused(f"tunnel id {vni} of link {link} was taken meanwhile")
            if _plain(core.plan(recorded)) != _plain(made.plan):
                raise AdoptRefused(f"{path}: vnet_plan is not the plan of its vnet_record "
                                   "(edited?); the ledger would not remove what it placed")
        except BaseException:
            core.ledger.purge(recorded.id)
            raise
        return Adopted(made.vnet, made.substrate, recorded.state.value, hosts)
    finally:
        core.ledger.close()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adopt", help="record in the substrate's ledger a plan of `vnet plan` "
                                     "that ansible-playbook applied (or removed)")
    p.add_argument("plan", type=Path, help="the plan file (plan.yml)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    done = adopt(args.plan)
    if args.json:
        emit_json({"vnet": done.vnet, "substrate": done.substrate, "state": done.state,
                   "hosts": list(done.hosts)})
    else:
        print(f"VNet {done.vnet} on substrate {done.substrate}: {done.state}")
    return 0
