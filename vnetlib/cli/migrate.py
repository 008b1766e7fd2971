"""`vnet migrate VNET NODE --to HOST` and `vnet drain HOST`: a PIP operator
moves virtual nodes between the hosts of its substrate (the direct path).

`vnet migrate VNET NODE --location L [--lab LAB]`: the SP asks the lab's VNO
to move a node of a VNet it requested to a location; the VNO asks its VNP,
which moves it within its PIP or to another PIP. Neither the SP nor the VNO
learns a host or a provider: the answer is the VNet's view."""

from __future__ import annotations

import argparse
import time
from typing import Any

from vnetlib.cli import target
from vnetlib.cli.output import emit_json, table
from vnetlib.cli.progress import Live
from vnetlib.core.pip import Moved, MoveFailed, NotFound, PipCore, Rejected
from vnetlib.deploy.ansible import DeployError, check_installed
from vnetlib.instantiate import OPERATOR, find, local_core, manager
from vnetlib.migrate.between_vnp import ask_vno

LOST = ("{node} is a namespace node: it was made again on {target}, with the same "
        "interfaces and addresses; processes and state inside it are lost")


class MoveRefused(LookupError):
    """The move cannot be done as asked (no such host, no room there)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("migrate", help="move a virtual node to another substrate host")
    p.add_argument("vnet", help="VNet id or name")
    p.add_argument("node", help="virtual node id")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", dest="target", help="substrate host to move it to (a VNet "
                                                   "instantiated directly on a substrate)")
    where.add_argument("--location", help="location to move it to (a VNet requested from "
                                          "the lab's VNO: its VNP picks the PIP and host)")
    p.add_argument("--lab", default="lab", help="lab whose VNO holds the VNet, with "
                                                "--location (default: lab)")
    p.add_argument("--substrate", help="the VNet's substrate (default: found by the VNet)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)
    d = sub.add_parser("drain", help="move every virtual node off a substrate host; the "
                                     "host takes no new ones (--undo: it takes them again)")
    d.add_argument("host", help="substrate host")
    d.add_argument("--substrate", required=True, help="substrate of the host (e.g. labp1)")
    d.add_argument("--undo", action="store_true", help="the host takes new nodes again")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=run_drain)


def _core(substrate: str) -> PipCore:
    if (owner := manager(substrate)) is not None:
        raise ValueError(f"substrate {substrate} is managed by {owner}: its PIP moves nodes")
    check_installed()
    return local_core(substrate)


def moved_dict(m: Moved) -> dict[str, Any]:
    return {"vnet": m.sliver.id, "node": m.node, "from": m.source, "to": m.target,
            "domain": m.domain or None, "state_lost": m.state_lost, "timings": m.timings}


def _failed(exc: MoveFailed) -> BaseException:
    cause = exc.cause
    note = ("the node is where it was; nothing of the move is left" if exc.rolled_back else
            "the move is recorded as unfinished: `vnet down` removes both sides")
    if isinstance(cause, DeployError):
        cause.add_note(note)
        return cause
    err = RuntimeError(f"{exc}")
    err.add_note(note)
    return err


def run_remote(args: argparse.Namespace) -> int:
    """Through the chain: SP -> VNO -> VNP (-> one or two PIPs)."""
    sp = target.remote(args.vnet, args.lab)
    vnet_id = next((v.id for v in sp.list() if args.vnet in (v.id, v.name)), args.vnet)
    start = time.perf_counter()
    with Live(args.json) as progress:
        progress(f"asking the VNO of lab {args.lab} to move {args.node} to {args.location}")
        view = ask_vno(sp.client, vnet_id, args.node, args.location)
    took = round(time.perf_counter() - start, 4)
    out = {"vnet": view.id, "node": args.node, "location": args.location,
           "status": view.status, "seconds": took}
    if args.json:
        emit_json(out)
        return 0
    print(f"{args.node} of {view.id} moved to {args.location} ({took:.2f} s); the VNet is "
          f"{view.status}")
    print(f"if {args.node} is a namespace node, what ran inside it is lost (it was made "
          "again there)")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.location is not None:
        return run_remote(args)
    substrate, s = find(args.vnet)
    if args.substrate and args.substrate != substrate:
        raise LookupError(f"VNet {args.vnet} is on substrate {substrate}, not {args.substrate}")
    core = _core(substrate)
    try:
        core.reap()
        with Live(args.json) as progress:
            progress(f"moving {args.node} of {s.id} to {args.target}")
            try:
                m = core.migrate(OPERATOR, s.name, args.node, args.target, progress=progress)
            except Rejected as exc:
                raise MoveRefused(str(exc)) from None
            except NotFound as exc:
                raise LookupError(str(exc)) from None
            except MoveFailed as exc:
                raise _failed(exc) from None
    finally:
        core.ledger.close()
    if args.json:
        emit_json(moved_dict(m))
        return 0
    _show([m])
    return 0


def _show(done: list[Moved]) -> None:
    rows = [[m.sliver.id, m.node, m.source, m.target, f"{m.timings.get('total', 0):.3f}"]
            for m in done]
    print(table(rows, ["vnet", "node", "from", "to", "seconds"]))
    for m in done:
        if m.state_lost:
            print(LOST.format(node=m.node, target=m.target))
        elif m.domain:
            qemu = m.timings.get("qemu", {})
            print(f"{m.node} migrated live (domain {m.domain}); QEMU's downtime "
                  f"{qemu.get('downtime_ms', 0):.0f} ms")


def run_drain(args: argparse.Namespace) -> int:
    core = _core(args.substrate)
    try:
        if args.undo:
            core.undrain(args.host)
            done: list[Moved] = []
        else:
            core.reap()
            with Live(args.json) as progress:
                progress(f"draining {args.host}")
                try:
                    done = core.drain(args.host, progress=progress)
                except Rejected as exc:
                    raise MoveRefused(str(exc)) from None
                except NotFound as exc:
                    raise LookupError(str(exc)) from None
                except MoveFailed as exc:
                    raise _failed(exc) from None
        drained = sorted(core.ledger.drained())
    finally:
        core.ledger.close()
    if args.json:
        emit_json({"host": args.host, "drained": args.host in drained,
                   "moved": [moved_dict(m) for m in done]})
        return 0
    if done:
        _show(done)
    state = "drained, takes no new nodes" if args.host in drained else "takes new nodes"
    print(f"{args.host}: {state}")
    return 0


__all__ = ["add_parser"]
