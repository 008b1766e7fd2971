"""`vnet up SPEC`: instantiate a VNet on the lab."""

from __future__ import annotations

import argparse
from pathlib import Path

from vnetlib.cli.output import Progress, emit_json, table
from vnetlib.instantiate import instantiate


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="instantiate the VNet described in SPEC")
    p.add_argument("spec", type=Path, help="VNet description (RDL XML)")
    p.add_argument("--substrate", required=True,
                   help="PIP substrate to instantiate on directly, e.g. labp1")
    p.add_argument("--check", action="store_true", help="dry run: plan and check, change nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = instantiate(args.spec, args.substrate, check=args.check, progress=Progress(True))
    if args.json:
        data = result.to_dict()
        data["plan"] = result.plan.to_dict()
        emit_json(data)
        return 0
    print(f"VNet {result.vnet_id}{' (check mode: nothing changed)' if result.check else ''}")
    print(table([[n, h] for n, h in sorted(result.node_map.items())], ["node", "host"]))
    rows = [[phase, f"{secs:.3f}"] for phase, secs in result.timings.items()]
    rows.append(["total", f"{sum(result.timings.values()):.3f}"])
    print(table(rows, ["phase", "seconds"]))
    return 0
