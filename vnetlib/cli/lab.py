"""`vnet lab up|status|down`."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from vnetlib.cli.output import Progress, emit_json
from vnetlib.lab import testbed


def add_parser(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser("lab", help="the local lab: PIP substrates and players on this machine")
    verbs = lab.add_subparsers(dest="lab_verb", required=True)
    up = verbs.add_parser("up", help="create the lab (idempotent)")
    up.add_argument("--name", default="lab", help="lab name, 1-4 letters/digits (default: lab)")
    up.add_argument("--pips", type=int, default=2, help="number of PIPs (default: 2)")
    up.add_argument("--hosts", type=int, default=3, help="substrate hosts per PIP (default: 3)")
    up.add_argument("--cpu", type=float, default=4.0, help="CPU capacity of each host (cores)")
    up.add_argument("--memory", type=int, default=4096, help="memory of each host, MiB")
    up.add_argument(
        "--mgmt-offset",
        type=int,
        default=0,
        help="PIP i's management network is 198.18.(128+offset+i).0/24",
    )
    up.add_argument(
        "--no-players",
        action="store_true",
        help="substrates only: no management nodes (PIP, VNP, VNO)",
    )
    up.add_argument("--json", action="store_true", help="machine-readable output")
    up.set_defaults(func=run_up)
    for verb, func, text in (
        ("status", run_status, "show the lab"),
        ("down", run_down, "remove the lab, its players and every VNet on it"),
    ):
        p = verbs.add_parser(verb, help=text)
        p.add_argument("--name", default="lab")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)


def run_up(args: argparse.Namespace) -> int:
    spec = testbed.LabSpec(
        name=args.name,
        pips=args.pips,
        hosts=args.hosts,
        cpu=args.cpu,
        memory_mb=args.memory,
        mgmt_offset=args.mgmt_offset,
        players=not args.no_players,
    )
    Progress(not args.json)(
        f"bringing up lab {spec.name}: {spec.pips} PIPs of {spec.hosts} hosts"
        + ("" if spec.players else ", no players")
    )
    changes = testbed.up(spec)
    state = testbed.status(spec.name)
    if args.json:
        emit_json(
            {
                "lab": spec.name,
                "changed": changes.changed,
                "created": changes.created,
                "substrates": state.substrates,
                "players": state.players,
                "config": asdict(spec),
            }
        )
    else:
        print(
            f"lab {spec.name}: {len(changes.created)} objects created"
            f"{'' if changes.changed else ' (already up)'}"
        )
        for name, player in state.players.items():
            print(f"  {player['role']:4s} {name:6s} {player['url']}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    st = testbed.status(args.name)
    if args.json:
        emit_json(
            {
                "lab": args.name,
                "running": st.running,
                "config": asdict(st.spec) if st.spec else None,
                "substrates": st.substrates,
                "namespaces": st.namespaces,
                "players": st.players,
            }
        )
    else:
        print(f"lab {args.name}: {'up' if st.running else 'down'}")
        for sub in st.substrates:
            print(f"  substrate {sub}")
        for name, player in st.players.items():
            state = "running" if player["running"] else "STOPPED"
            print(f"  {player['role']:4s} {name:6s} {player['url']} {state}")
    return 0 if st.running else 1


def run_down(args: argparse.Namespace) -> int:
    changes = testbed.down(args.name)
    if args.json:
        emit_json({"lab": args.name, "changed": changes.changed, "removed": changes.removed})
    else:
        print(f"lab {args.name}: {len(changes.removed)} objects removed")
    return 0
