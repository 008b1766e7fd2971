"""`vnet status [VNET]`."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from vnetlib.cli import target
from vnetlib.cli.output import emit_json, table
from vnetlib.cli.users import attached
from vnetlib.instantiate import LocalVNet, local_vnets
from vnetlib.lab.players import service_provider
from vnetlib.players.client import ClientError
from vnetlib.players.messages import VNetView
from vnetlib.players.sp import ServiceProvider


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show VNets, or one VNet in detail")
    p.add_argument("vnet", nargs="?", help="VNet id or name")
    p.add_argument("--lab", default="lab", help="lab whose VNO to ask as well (default: lab)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _local(r: LocalVNet) -> dict[str, Any]:
    node_map = (r.embedding or {}).get("node_map", {})
    return {"vnet": r.id, "name": r.name, "via": f"substrate {r.lab}", "lab": r.lab,
            "status": r.status, "nodes": sorted(node_map), "timings": r.timings}


def _remote(v: VNetView, lab: str) -> dict[str, Any]:
    return {"vnet": v.id, "name": v.name, "via": f"lab {lab} VNO", "lab": lab,
            "status": v.status, "nodes": list(v.nodes), "price": v.price}


def end_users(sp: ServiceProvider, vnet_id: str) -> list[dict[str, str]]:
    """The VNet's end users attached now, from the VNO's accounting: who, at
    which PIP and port, which device, since when (UTC). A VNO without
    end-user attachment answers with none."""
    try:
        records = attached(sp, vnet_id)
    except ClientError as err:
        print(f"vnet: warning: the VNO did not list attached end users: {err}",
              file=sys.stderr)
        return []
    return [{"identity": r.get("identity", ""), "pip": r.get("pip", "-"),
             "port": r.get("port", ""), "device": r.get("device", ""),
             "since": _utc(r.get("time", "0")), "session": r.get("session", "")}
            for r in sorted(records, key=lambda r: r.get("time", ""))]


def _utc(stamp: str) -> str:
    seconds = int(stamp) if stamp.isdigit() else 0
    if not seconds:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def run(args: argparse.Namespace) -> int:
    if args.vnet:
        record = target.local(args.vnet)
        if record is not None:
            detail = _local(record) | {"embedding": record.embedding, "plan": record.plan,
                                       "node_states": record.node_states,
                                       "observed": record.observed,
                                       "domains": record.domains}
            rows = [(n, h, record.node_states.get(n, "running"), record.observed.get(n, ""))
                    for n, h in sorted(record.embedding.get("node_map", {}).items())]
            header = ["node", "host", "state", "libvirt"]
        else:
            sp = target.remote(args.vnet, args.lab)
            view = sp.status(args.vnet)
            detail = _remote(view, args.lab)
            states = dict(view.node_states)
            detail["node_states"] = {n: states.get(n, "running") for n in view.nodes}
            detail["end_users"] = end_users(sp, view.id)
            detail["events"] = [{"at": _utc(str(int(e.at))), "kind": e.kind, "node": e.node or ""}
                                for e in view.events]
            rows = [(n, "", states.get(n, "running"), "") for n in view.nodes]
            header = ["node", "", "state", ""]
        if args.json:
            emit_json(detail)
        else:
            print(f"VNet {detail['vnet']} ({detail['name']}) via {detail['via']}: "
                  f"{detail['status']}")
            print(table([list(r) for r in rows], header))
            users = detail.get("end_users") or []
            if users:
                print(f"\n{len(users)} end user(s) attached:")
                print(table([[u["identity"], u["pip"], u["port"], u["device"], u["since"]]
                             for u in users], ["user", "at", "port", "device", "since"]))
            events = detail.get("events") or []
            if events:
                print("\nevents:")
                print(table([[e["at"], e["kind"], e["node"]] for e in events],
                            ["at (UTC)", "event", "node"]))
        return 0
    found = [_local(r) for r in local_vnets()]
    try:
        found += [_remote(v, args.lab) for v in service_provider(args.lab).list()]
    except LookupError:
        pass  # a lab without players: local VNets only
    except ClientError as err:
        print(f"vnet: warning: the VNO of lab {args.lab} did not answer: {err}", file=sys.stderr)
    if args.json:
        emit_json(found)
    else:
        listing = [[v["vnet"], v["name"], v["via"], v["status"]] for v in found]
        print(table(listing, ["vnet", "name", "via", "status"]) if listing else "no VNets")
    return 0
