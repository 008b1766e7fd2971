"""`vnet plan SPEC --substrate S -o plan.yml`: the PIP operator's extra-vars file.

The file is what `playbooks/deploy_vnet.yml` takes as extra vars:
`vnet_plan` (the deployment plan, `DeploymentPlan.to_dict()`) and `vnet_state`
(present), so

    ansible-playbook -i INVENTORY vnet.infra.deploy_vnet -e @plan.yml [--check --diff]

applies it. Beside them it carries `vnet_record`, which the playbook ignores:
the substrate, the description and the embedding the plan was made from, so
`vnet adopt plan.yml` can record the applied VNet in the substrate's ledger
(then `vnet status`, `vnet show` and `vnet down` know it).

Planning reserves nothing and touches no host: the embedding is made against
the ledger as it is now, and `vnet adopt` checks again that it still fits.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vnetlib.cli.output import emit_json
from vnetlib.instantiate import local_core, manager
from vnetlib.spec import dump_vnet, load_vnet

STATES = ("present", "absent")


@dataclass(frozen=True, slots=True)
class PlanFile:
    """An operator's plan file: the playbook's extra vars and the record."""

    plan: dict[str, Any]
    state: str
    substrate: str
    vnet: str
    spec_xml: str
    embedding: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"vnet_plan": self.plan, "vnet_state": self.state,
                "vnet_record": {"substrate": self.substrate, "vnet": self.vnet,
                                "embedding": self.embedding, "spec": self.spec_xml}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> PlanFile:
        try:
            record = data["vnet_record"]
            plan = dict(data["vnet_plan"])
            state = str(data.get("vnet_state", "present"))
            made = cls(plan, state, str(record["substrate"]), str(record["vnet"]),
                       str(record["spec"]), dict(record["embedding"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: not a plan file of `vnet plan` "
                             f"(vnet_plan, vnet_state, vnet_record): {exc}") from None
        if state not in STATES:
            raise ValueError(f"{source}: vnet_state is {state!r}, not present or absent")
        if plan.get("vnet") != made.vnet or not isinstance(plan.get("hosts"), dict):
            raise ValueError(f"{source}: vnet_plan is not the plan of VNet {made.vnet}")
        return made

    def vnis(self) -> dict[str, int]:
        """The tunnel id of each virtual link, as the plan uses them."""
        found: dict[str, int] = {}
        for part in self.plan["hosts"].values():
            for link in part.get("links", []):
                if link.get("tunnel"):
                    found[str(link["link"])] = int(link["tunnel"]["vni"])
        return found


def load(path: Path) -> PlanFile:
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a plan file of `vnet plan`")
    return PlanFile.from_dict(data, str(path))


def dump(plan: PlanFile, path: Path | None) -> str:
    """The file's text (JSON for a .json path, else YAML)."""
    data = plan.to_dict()
    if path is not None and path.suffix == ".json":
        return json.dumps(data, indent=2) + "\n"
    header = ("# vnet plan: extra vars of vnet.infra.deploy_vnet (vnet_plan, vnet_state);\n"
              "# vnet_record is for `vnet adopt` once the playbook applied the plan.\n")
    return header + yaml.safe_dump(data, sort_keys=False, width=100)


class NoHosts:
    """A deployer that touches no host: planning and drawing only read the ledger
    (the operator's own --check run checks the hosts)."""

    def apply(self, plan: Mapping[str, Any], state: str, *, check: bool = False,
              progress: object = None) -> None:
        return None


def make(spec_path: Path, substrate: str, vnet_id: str | None = None) -> PlanFile:
    if (owner := manager(substrate)) is not None:
        raise ValueError(f"substrate {substrate} is managed by {owner}: its PIP plans and "
                         "applies its VNets itself")
    spec = load_vnet(spec_path)
    vnet = vnet_id or f"{spec.name}-{secrets.token_hex(3)}"
    core = local_core(substrate, deployer=NoHosts())
    try:
        embedding, plan = core.dry_run(spec, vnet)
    finally:
        core.ledger.close()
    return PlanFile(plan, "present", substrate, vnet, dump_vnet(spec).decode(),
                    embedding.to_dict())


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="write the extra-vars file that vnet.infra.deploy_vnet "
                                    "applies (the PIP operator's Ansible path)")
    p.add_argument("spec", type=Path, help="VNet description (RDL XML)")
    p.add_argument("--substrate", required=True, help="the PIP substrate to plan on")
    p.add_argument("-o", "--output", type=Path, help="write here (.yml or .json), "
                                                     "not to stdout")
    p.add_argument("--json", action="store_true", help="print a summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    made = make(args.spec, args.substrate)
    text = dump(made, args.output)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    args.output.write_text(text)
    node_map = made.embedding["node_map"]
    if args.json:
        emit_json({"vnet": made.vnet, "substrate": made.substrate, "file": str(args.output),
                   "node_map": node_map, "hosts": sorted(made.plan["hosts"])})
    else:
        print(f"{args.output}: VNet {made.vnet} on substrate {made.substrate}, "
              f"{len(node_map)} nodes on {len(made.plan['hosts'])} hosts")
    return 0
