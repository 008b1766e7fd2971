"""`vnet migrate VNET NODE --to HOST` and `vnet drain HOST`: a PIP operator
moves virtual nodes between the hosts of its substrate (the direct path).

`vnet drain HOST --substrate S` of a substrate a PIP management node manages
(or `--pip CONFIG`, the PIP's configuration) works on that PIP's store, beside
the running PIP (every change under the sliver's lock); with `--evict`, a
node no other host of the PIP can take is asked away through the VNP that
owns its sliver (`vnetlib.migrate.evict`), and `vnet evict SLIVER NODE` asks
that for one node.

`vnet migrate VNET NODE --location L [--lab LAB]`: the SP asks the lab's VNO
to move a node of a VNet it requested to a location; the VNO asks its VNP,
which moves it within its PIP or to another PIP. Neither the SP nor the VNO
learns a host or a provider: the answer is the VNet's view."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vnetlib.cli import target
from vnetlib.cli.output import emit_json, table
from vnetlib.cli.progress import Live
from vnetlib.core.pip import Moved, MoveFailed, NotFound, PipCore, Rejected
from vnetlib.deploy.ansible import DeployError, check_installed
from vnetlib.instantiate import OPERATOR, find, local_core, manager
from vnetlib.migrate.between_vnp import ask_vno

if TYPE_CHECKING:
    from vnetlib.migrate.evict import Drained, Evicted
    from vnetlib.players.config import PlayerConfig
    from vnetlib.players.pki import Credentials

REASONS = ("maintenance", "capacity", "decommission", "other")
EXIT_REFUSED = 3  # as vnetlib.cli.main exits on EvictionRefused ("rejected")

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
    _pip_args(d)
    d.add_argument("--undo", action="store_true", help="the host takes new nodes again")
    d.add_argument("--evict", action="store_true",
                   help="a node no other host of the PIP can take is asked away through the "
                        "VNP that owns it (default: such a node fails the drain and stays)")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=run_drain)
    e = sub.add_parser("evict", help="ask the VNP that owns a sliver of this PIP to take one "
                                     "of its nodes to another provider")
    e.add_argument("sliver", help="the sliver's id or its owner's name for it")
    e.add_argument("node", help="virtual node id")
    _pip_args(e)
    e.add_argument("--json", action="store_true", help="machine-readable output")
    e.set_defaults(func=run_evict)


def _pip_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--substrate", help="substrate of the host (e.g. labp1); one a lab's "
                                           "PIP manages is worked on through that PIP's store")
    where.add_argument("--pip", type=Path, metavar="CONFIG",
                       help="the PIP management node's configuration (its store, substrate "
                            "and credentials)")
    p.add_argument("--reason", choices=REASONS, default="maintenance",
                   help="the reason the VNP is told (default: maintenance)")
    p.add_argument("--deadline", type=float, default=600.0, metavar="SECONDS",
                   help="when the host is needed, from now: a VNP busy with the VNet waits "
                        "for it until then, at most a minute (default: 600)")


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


def _pip_config(args: argparse.Namespace) -> PlayerConfig | None:
    """The configuration of the PIP that manages the substrate: `--pip`, or
    the one a lab's PIP of `--substrate` runs with; None on the direct path."""
    from vnetlib import paths
    from vnetlib.players.config import load as load_config

    if args.pip is not None:
        return load_config(args.pip)
    owner = manager(args.substrate)
    if owner is None:
        return None
    name, _, lab = owner.partition(" of lab ")
    path = paths.lab_dir(lab) / "players" / f"{name}.toml"
    if not lab or not path.exists():
        raise ValueError(f"substrate {args.substrate} is managed by {owner}: give its "
                         "configuration with --pip CONFIG")
    return load_config(path)


def _pip_core(config: PlayerConfig) -> tuple[PipCore, Credentials]:
    """The PIP's core on its own store (beside the running PIP: every change
    is under the sliver's lock) and the PIP's credentials, to ask its VNPs."""
    from vnetlib.players.pip import build_core
    from vnetlib.players.pki import Role, player_credentials

    core = build_core(config)
    core.pool_background = False  # the PIP's own reaper tends its pool, not this command
    return core, player_credentials(config.pki, config.name, Role.PIP)


def _deadline(args: argparse.Namespace) -> float:
    if args.deadline <= 0:
        raise ValueError("--deadline must be a number of seconds above 0")
    return time.time() + args.deadline


def run_drain(args: argparse.Namespace) -> int:
    config = _pip_config(args)
    creds: Credentials | None = None
    if config is None:
        if args.evict:
            raise ValueError(f"substrate {args.substrate} has no PIP management node: "
                             "there is no VNP to ask (--evict)")
        core = _core(args.substrate)
    else:
        check_installed()
        core, creds = _pip_core(config)
    deadline = _deadline(args)
    try:
        if args.undo:
            core.undrain(args.host)
            out = None
        else:
            if config is None:
                core.reap()  # a PIP's own reaper does it for a managed substrate
            with Live(args.json) as progress:
                progress(f"draining {args.host}")
                out = _drain(core, args, creds if args.evict else None, deadline, progress)
        drained = sorted(core.ledger.drained())
    finally:
        core.ledger.close()
    done = [] if out is None else list(out.moved)
    evicted = [] if out is None else list(out.evicted)
    stuck = [] if out is None else list(out.stuck)
    error = (f"{len(stuck)} node(s) stay on {args.host}: " + "; ".join(s.why for s in stuck)
             if stuck else None)
    if args.json:
        emit_json({"host": args.host, "drained": args.host in drained,
                   "moved": [moved_dict(m) for m in done],
                   "evicted": [_evicted_dict(e) for e in evicted],
                   "stuck": [{"sliver": s.sliver, "node": s.node, "why": s.why}
                             for s in stuck],
                   **({"error": {"kind": "rejected", "message": error}} if error else {})})
        if error:  # the result and the refusal in one document; exit as EvictionRefused
            print(f"vnet: error: {error}", file=sys.stderr)
            return EXIT_REFUSED
        return 0
    if done:
        _show(done)
    for e in evicted:
        print(f"{e.node} of sliver {e.name}: taken away by its owner {e.owner} "
              f"({e.seconds:.2f} s)")
    state = "drained, takes no new nodes" if args.host in drained else "takes new nodes"
    print(f"{args.host}: {state}")
    if error:
        from vnetlib.migrate.evict import EvictionRefused

        raise EvictionRefused(error)
    return 0


def _drain(core: PipCore, args: argparse.Namespace, creds: Credentials | None,
           deadline: float, progress: Live) -> Drained:
    from vnetlib.migrate.evict import drain

    try:
        return drain(core, args.host, creds, progress=progress, reason=args.reason,
                     deadline=deadline)
    except Rejected as exc:
        hint = "" if creds is not None else (
            " (--evict asks the VNP that owns it to take it away)"
            if _managed(args) else "")
        raise MoveRefused(f"{exc}{hint}") from None
    except NotFound as exc:
        raise LookupError(str(exc)) from None
    except MoveFailed as exc:
        raise _failed(exc) from None


def _managed(args: argparse.Namespace) -> bool:
    return args.pip is not None or manager(args.substrate) is not None


def _evicted_dict(e: Evicted) -> dict[str, Any]:
    return {"sliver": e.name, "node": e.node, "owner": e.owner, "seconds": e.seconds}


def run_evict(args: argparse.Namespace) -> int:
    """Ask the owner of one sliver to take one node away (no move within
    the PIP is tried: the operator knows it wants the node gone)."""
    from vnetlib.core.records import State
    from vnetlib.migrate.evict import ask_owner

    config = _pip_config(args)
    if config is None:
        raise ValueError(f"substrate {args.substrate} has no PIP management node: no VNP "
                         "owns its VNets")
    deadline = _deadline(args)
    core, creds = _pip_core(config)
    try:
        found = [s for s in core.ledger.slivers() if args.sliver in (s.id, s.name)
                 and s.state in (State.PROVISIONED, State.READY)]
    finally:
        core.ledger.close()
    if not found:
        raise LookupError(f"PIP {config.name} has no deployed sliver {args.sliver!r}")
    if len(found) > 1:
        raise LookupError(f"several slivers of PIP {config.name} are named {args.sliver!r} "
                          f"({', '.join(s.id for s in found)}): give the id")
    with Live(args.json) as progress:
        progress(f"asking {found[0].owner} to take {args.node} of {found[0].name} away")
        done = ask_owner(found[0], args.node, creds, reason=args.reason, deadline=deadline)
    if args.json:
        emit_json(_evicted_dict(done))
        return 0
    print(f"{done.node} of sliver {done.name}: taken away by its owner {done.owner} "
          f"({done.seconds:.2f} s)")
    return 0


__all__ = ["add_parser"]
