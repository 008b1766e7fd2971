"""`vnet exec VNET NODE -- CMD`: run a command inside a virtual node."""

from __future__ import annotations

import argparse
import subprocess
import sys

from vnetlib import naming, paths
from vnetlib.cli.output import emit_json
from vnetlib.store import Store


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("exec", help="run a command inside a virtual node")
    p.add_argument("vnet", help="VNet id or name")
    p.add_argument("node", help="virtual node id")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    p.add_argument("--json", action="store_true", help="capture output as JSON")
    p.set_defaults(func=run)


def node_command(vnet: str, node: str, command: list[str]) -> list[str]:
    """The argv that runs `command` inside virtual node `node` of `vnet`."""
    with Store(paths.state_db()) as store:
        record = store.find_vnet(vnet)
    node_map = (record.embedding or {}).get("node_map", {})
    if node not in node_map:
        known = ", ".join(sorted(node_map))
        raise LookupError(f"VNet {record.id} has no node {node!r} (nodes: {known})")
    return ["ip", "netns", "exec", naming.vnode_netns(record.lab, record.id, node), *command]


def run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise ValueError("no command given: vnet exec VNET NODE -- CMD")
    argv = node_command(args.vnet, args.node, command)
    if args.json:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        emit_json(
            {
                "vnet": args.vnet,
                "node": args.node,
                "command": command,
                "rc": done.returncode,
                "stdout": done.stdout,
                "stderr": done.stderr,
            }
        )
        return done.returncode
    sys.stdout.flush()
    return subprocess.run(argv, check=False).returncode
