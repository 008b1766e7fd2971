"""`vnet lab up|status|down`."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from vnetlib.cli.output import Progress, emit_json
from vnetlib.lab import manage
from vnetlib.lab.layout import LabConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser("lab", help="the local lab substrate on this machine")
    verbs = lab.add_subparsers(dest="lab_verb", required=True)
    up = verbs.add_parser("up", help="create the lab (idempotent)")
    up.add_argument("--name", default="lab", help="lab name, 1-6 letters/digits (default: lab)")
    up.add_argument("--hosts", type=int, default=3, help="number of substrate hosts")
    up.add_argument("--cpu", type=float, default=4.0, help="CPU capacity of each host (cores)")
    up.add_argument("--memory", type=int, default=4096, help="memory of each host, MiB")
    up.add_argument("--data-network", default="198.18.0.0/24")
    up.add_argument("--mgmt-network", default="198.18.128.0/24")
    up.add_argument("--json", action="store_true", help="machine-readable output")
    up.set_defaults(func=run_up)
    for verb, func, text in (
        ("status", run_status, "show the lab"),
        ("down", run_down, "remove the lab and every VNet on it"),
    ):
        p = verbs.add_parser(verb, help=text)
        p.add_argument("--name", default="lab")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)


def run_up(args: argparse.Namespace) -> int:
    config = LabConfig(
        name=args.name,
        hosts=args.hosts,
        cpu=args.cpu,
        memory_mb=args.memory,
        data_network=args.data_network,
        mgmt_network=args.mgmt_network,
    )
    Progress(not args.json)(f"bringing up lab {config.name} with {config.hosts} hosts")
    changes = manage.up(config)
    if args.json:
        emit_json(
            {
                "lab": config.name,
                "changed": changes.changed,
                "created": changes.created,
                "inventory": str(manage.inventory_path(config.name)),
                "config": asdict(config),
            }
        )
    else:
        print(
            f"lab {config.name}: {len(changes.created)} objects created"
            f"{'' if changes.changed else ' (already up)'}"
        )
        print(f"inventory: {manage.inventory_path(config.name)}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    st = manage.status(args.name)
    if args.json:
        emit_json(
            {
                "lab": st.name,
                "running": st.running,
                "config": asdict(st.config) if st.config else None,
                "namespaces": list(st.namespaces),
                "root_links": list(st.root_links),
                "vnets": list(st.vnets),
            }
        )
    else:
        print(f"lab {st.name}: {'up' if st.running else 'down'}")
        for ns in st.namespaces:
            print(f"  netns {ns}")
        for link in st.root_links:
            print(f"  link  {link}")
        for vnet in st.vnets:
            print(f"  vnet  {vnet}")
    return 0 if st.running else 3


def run_down(args: argparse.Namespace) -> int:
    changes = manage.down(args.name)
    if args.json:
        emit_json({"lab": args.name, "changed": changes.changed, "removed": changes.removed})
    else:
        print(f"lab {args.name}: {len(changes.removed)} objects removed")
    return 0
