"""`vnet status [VNET]`."""

from __future__ import annotations

import argparse
from typing import Any

from vnetlib import paths
from vnetlib.cli.output import emit_json, table
from vnetlib.store import Store, VNetRecord


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show VNets, or one VNet in detail")
    p.add_argument("vnet", nargs="?", help="VNet id or name")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _summary(r: VNetRecord) -> dict[str, Any]:
    node_map = (r.embedding or {}).get("node_map", {})
    return {
        "vnet": r.id,
        "name": r.name,
        "lab": r.lab,
        "status": r.status,
        "nodes": len(node_map),
        "timings": r.timings,
    }


def run(args: argparse.Namespace) -> int:
    with Store(paths.state_db()) as store:
        if args.vnet:
            r = store.find_vnet(args.vnet)
            detail = _summary(r) | {"embedding": r.embedding, "plan": r.plan}
            if args.json:
                emit_json(detail)
            else:
                print(f"VNet {r.id} ({r.name}) on lab {r.lab}: {r.status}")
                node_map = (r.embedding or {}).get("node_map", {})
                print(table([[n, h] for n, h in sorted(node_map.items())], ["node", "host"]))
            return 0
        records = store.vnets()
    if args.json:
        emit_json([_summary(r) for r in records])
    else:
        rows = [[r.id, r.name, r.lab, r.status] for r in records]
        print(table(rows, ["vnet", "name", "lab", "status"]) if rows else "no VNets")
    return 0
