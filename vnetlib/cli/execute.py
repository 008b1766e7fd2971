"""`vnet exec VNET NODE -- CMD`: run a command inside a virtual node."""

from __future__ import annotations

import argparse
import subprocess
import sys

from vnetlib import hosts, naming, paths
from vnetlib.cli import target
from vnetlib.cli.output import emit_json
from vnetlib.core.pip import spec_of
from vnetlib.instantiate import LocalVNet, find
from vnetlib.spec.model import NodeKind
from vnetlib.vm import remote

VM_EXEC_TIMEOUT = 60.0
VM_OUTPUT_MAX = 1 << 20


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("exec", help="run a command inside a virtual node")
    p.add_argument("--lab", default="lab", help="lab whose VNO holds the VNet (default: lab)")
    p.add_argument("--json", action="store_true", help="capture output as JSON")
    p.add_argument("vnet", help="VNet id or name")
    p.add_argument("node", help="virtual node id")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    p.set_defaults(func=run)


def node_command(record: LocalVNet, node: str, command: list[str]) -> list[str]:
    """The argv that runs `command` inside virtual node `node` of a local VNet:
    on the node's host through its SSH connection when the substrate's
    inventory reaches it over SSH, else here."""
    node_map = (record.embedding or {}).get("node_map", {})
    if node not in node_map:
        known = ", ".join(sorted(node_map))
        raise LookupError(f"VNet {record.id} has no node {node!r} (nodes: {known})")
    argv = ["ip", "netns", "exec", naming.vnode_netns(record.lab, record.id, node), *command]
    inventory = paths.substrate_dir(record.lab) / "inventory.yml"
    host = str(node_map[node])
    if inventory.is_file() and hosts.is_ssh(inventory, host):
        return hosts.command(inventory, host, argv)
    return argv


def node_kind(record: LocalVNet, node: str) -> NodeKind:
    """How virtual node `node` of a local VNet is realized (netns, qemu, xen)."""
    _, sliver = find(record.id)
    found = next((n for n in spec_of(sliver.spec_xml).nodes if n.id == node), None)
    if found is None:
        raise LookupError(f"VNet {record.id} has no node {node!r}")
    return found.kind


def vm_exec(record: LocalVNet, node: str, command: list[str]) -> tuple[int, str]:
    """Run `command` in VM node `node` on its serial console (stderr merged
    into stdout): on the VM's host, through its SSH connection, when the
    substrate's inventory reaches it over SSH (that host's libvirt runs it)."""
    inventory = paths.substrate_dir(record.lab) / "inventory.yml"
    reach = hosts.Hosts(inventory) if inventory.is_file() else None
    host = (record.embedding or {}).get("node_map", {}).get(node)
    return remote.run(reach, None if host is None else str(host), record.domain(node), command,
                      VM_EXEC_TIMEOUT, VM_OUTPUT_MAX)


def run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise ValueError("no command given: vnet exec VNET NODE -- CMD")
    record = target.local(args.vnet)
    if record is None:
        # Out-of-VNet access through the chain: VNO -> VNP -> PIP.
        rc, out, err = target.remote(args.vnet, args.lab).exec(args.vnet, args.node, command)
    elif node_kind(record, args.node) is not NodeKind.NETNS:
        (rc, out), err = vm_exec(record, args.node, command), ""
    elif args.json:
        done = subprocess.run(node_command(record, args.node, command), capture_output=True,
                              text=True, check=False)
        rc, out, err = done.returncode, done.stdout, done.stderr
    else:
        sys.stdout.flush()
        return subprocess.run(node_command(record, args.node, command), check=False).returncode
    if args.json:
        emit_json({"vnet": args.vnet, "node": args.node, "command": command,
                   "rc": rc, "stdout": out, "stderr": err})
    else:
        sys.stdout.write(out)
        sys.stderr.write(err)
    return rc
