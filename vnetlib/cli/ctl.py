"""`vnet ctl VNET NODE start|stop|reboot|suspend|resume`: control one virtual node."""

from __future__ import annotations

import argparse
import time

from vnetlib.cli import target
from vnetlib.cli.output import emit_json
from vnetlib.cli.progress import Live
from vnetlib.instantiate import control

ACTIONS = {"start": "start", "stop": "stop", "reboot": "restart", "restart": "restart",
           "suspend": "suspend", "resume": "resume"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ctl", help="start, stop, reboot, suspend or resume a virtual node")
    p.add_argument("vnet", help="VNet id or name")
    p.add_argument("node", help="virtual node id")
    p.add_argument("action", choices=sorted(ACTIONS), help="what to do with the node")
    p.add_argument("--lab", default="lab", help="lab whose VNO holds the VNet (default: lab)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    action = ACTIONS[args.action]
    start = time.perf_counter()
    with Live(args.json) as progress:
        if target.local(args.vnet) is not None:
            state = control(args.vnet, args.node, action, progress=progress)
        else:
            progress(f"asking the VNO of lab {args.lab} to {action} {args.node}")
            state = target.remote(args.vnet, args.lab).control(args.vnet, args.node, action)
    took = round(time.perf_counter() - start, 4)
    if args.json:
        run_state = state.partition(": ")[2]
        emit_json({"vnet": args.vnet, "node": args.node, "action": action,
                   "state": run_state or state, "seconds": took})
    else:
        print(f"{state} ({took:.2f} s)")
    return 0
