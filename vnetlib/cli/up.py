"""`vnet up SPEC`: instantiate a VNet, through the lab's players or directly
on one PIP substrate."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from vnetlib.cli.output import emit_json, table
from vnetlib.cli.progress import Live


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="instantiate the VNet described in SPEC")
    p.add_argument("spec", type=Path, help="VNet description (RDL XML)")
    p.add_argument("--lab", default="lab",
                   help="lab whose VNO receives the request (default: lab)")
    p.add_argument("--substrate",
                   help="instantiate directly on this PIP substrate (e.g. labp1), "
                        "as its operator, without the players")
    p.add_argument("--check", action="store_true",
                   help="dry run (direct only): plan and check, change nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.substrate:
        return _direct(args)
    if args.check:
        raise ValueError("--check needs --substrate: the players have no dry run yet")
    return _through_players(args)


def _through_players(args: argparse.Namespace) -> int:
    """SP -> VNO -> VNP -> PIPs (Interfaces 1 to 4). Imports only the client's
    side: the user waits for this command's start too."""
    from vnetlib.lab.players import service_provider
    from vnetlib.spec import load_vnet

    start = time.perf_counter()
    spec = load_vnet(args.spec)
    parsed = time.perf_counter()
    with Live(args.json) as progress:
        progress(f"requesting {spec.name} from the VNO of lab {args.lab}")
        view = service_provider(args.lab).request_vnet(spec)
    done = time.perf_counter()
    # The VNP's phases (negotiate, allocate, provision, stitch), and what the
    # chain cost on top of them (TLS, the VNO, the SP's own call).
    timings = {"parse": round(parsed - start, 4), **dict(view.timings)}
    timings["chain"] = round(max(done - parsed - sum(dict(view.timings).values()), 0.0), 4)
    if args.json:
        emit_json({"vnet": view.id, "name": view.name, "status": view.status,
                   "nodes": list(view.nodes), "price": view.price, "lab": args.lab,
                   "timings": timings, "total": round(done - start, 4)})
        return 0
    print(f"VNet {view.id} ({view.name}): {view.status}, price {view.price}")
    print(table([[phase, f"{secs:.3f}"] for phase, secs in timings.items()],
                ["phase", "seconds"]))
    return 0


def _direct(args: argparse.Namespace) -> int:
    from vnetlib.instantiate import instantiate

    with Live(args.json) as progress:
        result = instantiate(args.spec, args.substrate, check=args.check, progress=progress)
    if args.json:
        data = result.to_dict()
        data["plan"] = result.plan
        emit_json(data)
        return 0
    print(f"VNet {result.vnet_id}{' (check mode: nothing changed)' if result.check else ''}")
    print(table([[n, h] for n, h in sorted(result.node_map.items())], ["node", "host"]))
    rows = [[phase, f"{secs:.3f}"] for phase, secs in result.timings.items()]
    rows.append(["total", f"{sum(result.timings.values()):.3f}"])
    print(table(rows, ["phase", "seconds"]))
    return 0
