"""`vnet down VNET`."""

from __future__ import annotations

import argparse

from vnetlib.cli import target
from vnetlib.cli.output import emit_json
from vnetlib.cli.progress import Live
from vnetlib.instantiate import destroy


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("down", help="remove a VNet")
    p.add_argument("vnet", help="VNet id or name")
    p.add_argument("--lab", default="lab", help="lab whose VNO holds the VNet (default: lab)")
    p.add_argument("--check", action="store_true",
                   help="dry run (direct VNets): show what would be removed")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with Live(args.json) as progress:
        if target.local(args.vnet) is not None:
            vnet_id = destroy(args.vnet, check=args.check, progress=progress).id
        else:
            if args.check:
                raise ValueError("--check works on VNets instantiated with --substrate only")
            progress(f"asking the VNO of lab {args.lab} to remove {args.vnet}")
            if not target.remote(args.vnet, args.lab).delete(args.vnet):
                progress(f"deletion of {args.vnet} accepted: `vnet status` shows it "
                         "deleting until it is gone")
            vnet_id = args.vnet
    if args.json:
        emit_json({"vnet": vnet_id, "removed": not args.check, "check": args.check})
    else:
        print(f"VNet {vnet_id} {'would be removed' if args.check else 'removed'}")
    return 0
