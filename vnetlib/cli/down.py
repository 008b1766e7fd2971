"""`vnet down VNET`."""

from __future__ import annotations

import argparse

from vnetlib.cli.output import Progress, emit_json
from vnetlib.instantiate import destroy


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("down", help="remove a VNet from its hosts")
    p.add_argument("vnet", help="VNet id or name")
    p.add_argument("--check", action="store_true", help="dry run: show what would be removed")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    record = destroy(args.vnet, check=args.check, progress=Progress(True))
    if args.json:
        emit_json({"vnet": record.id, "removed": not args.check, "check": args.check})
    else:
        print(f"VNet {record.id} {'would be removed' if args.check else 'removed'}")
    return 0
