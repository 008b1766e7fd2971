"""The `vnet` command.

Only the verb on the command line is imported: each verb's module pulls what
it needs (the players' HTTP stack, the ledger's SQLAlchemy, the PIP core), and
importing them all cost about a second of every command's start (issue #8).
The other verbs appear in `vnet --help` by name and help line only.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from vnetlib import __version__


@dataclass(frozen=True, slots=True)
class Verb:
    name: str
    module: str
    help: str


VERBS: tuple[Verb, ...] = (
    Verb("lab", "lab", "the local lab: PIP substrates and players on this machine"),
    Verb("up", "up", "instantiate the VNet described in SPEC"),
    Verb("plan", "plan", "write the extra-vars file that vnet.infra.deploy_vnet applies "
                         "(the PIP operator's Ansible path)"),
    Verb("adopt", "adopt", "record in the substrate's ledger a plan of `vnet plan` that "
                           "ansible-playbook applied (or removed)"),
    Verb("status", "status", "show VNets, or one VNet in detail"),
    Verb("show", "show", "draw a VNet, or a VNet description, with Graphviz"),
    Verb("exec", "execute", "run a command inside a virtual node"),
    Verb("ctl", "ctl", "start, stop, reboot, suspend or resume a virtual node"),
    Verb("console", "console", "open a console on a virtual node (out of the VNet)"),
    Verb("keys", "keys", "the SSH public keys the VNO accepts for consoles"),
    Verb("users", "users", "end users of your VNets at the VNO (802.1X attachment)"),
    Verb("down", "down", "remove a VNet"),
    Verb("serve", "serve", "run a player's management node (PIP, VNP or VNO)"),
    Verb("pki", "pki", "the lab CA: list, revoke and renew certificates"),
    Verb("pool", "pool", "fill, show or drain a substrate's pool of booted VMs"),
    Verb("geni", "geni", "GENI RSpec v3 documents: export, import, validate"),
    Verb("migrate", "migrate", "move a virtual node to another substrate host"),
    Verb("drain", "migrate", "move every virtual node off a substrate host; the host takes "
                             "no new ones (--undo: it takes them again)"),
    Verb("evict", "migrate", "ask the VNP that owns a sliver of this PIP to take one of its "
                             "nodes to another provider"),
)

# (module, class, exit code, kind), first match wins. A class is looked up only
# in a module already imported: an error of a module never loaded cannot occur.
EXIT_CODES: tuple[tuple[str, str, int, str], ...] = (
    ("vnetlib.spec.errors", "SpecErrors", 2, "invalid-spec"),
    ("vnetlib.placement", "EmbeddingRejected", 3, "rejected"),
    ("vnetlib.migrate.evict", "EvictionRefused", 3, "rejected"),
    ("vnetlib.deploy.ansible", "DeployError", 4, "deploy-failed"),
    ("builtins", "LookupError", 5, "not-found"),
    ("builtins", "ValueError", 2, "invalid-input"),
    ("builtins", "PermissionError", 6, "permission"),
    ("vnetlib.players.client", "RemoteError", 7, "remote-error"),
    ("vnetlib.players.client", "ClientError", 8, "unreachable"),
    ("vnetlib.console.wire", "HopError", 8, "unreachable"),
    ("builtins", "Exception", 9, "failed"),  # one line, not a traceback (VNET_DEBUG=1 for it)
)


def _is(err: BaseException, module: str, name: str) -> bool:
    loaded = sys.modules.get(module)
    cls = getattr(loaded, name, None) if loaded is not None else None
    return isinstance(cls, type) and isinstance(err, cls)


def exit_code(err: Exception) -> tuple[int, str]:
    """The exit code and kind of an error that ends a verb."""
    if _is(err, "vnetlib.players.client", "RemoteError") and getattr(err, "status", 0) == 404:
        return 5, "not-found"
    return next(((code, kind) for module, name, code, kind in EXIT_CODES
                 if _is(err, module, name)), (9, "failed"))


def chosen_verb(argv: Sequence[str]) -> str | None:
    """The verb on the command line: the first word that is not an option (the
    top level takes no option with a value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser with the verb of `argv` complete (all verbs when argv is None)."""
    parser = argparse.ArgumentParser(
        prog="vnet",
        description="Build and operate virtual networks across infrastructure providers.",
    )
    parser.add_argument("--version", action="version", version=f"vnet {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True)
    word = None if argv is None else chosen_verb(argv)
    wanted = next((v.module for v in VERBS if v.name == word), None)
    for verb in VERBS:
        if verb.name in sub.choices:
            continue  # its module registered it with another verb
        if argv is None or verb.module == wanted:
            importlib.import_module(f"vnetlib.cli.{verb.module}").add_parser(sub)
        else:
            sub.add_parser(verb.name, help=verb.help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(words).parse_args(words)
    try:
        return int(args.func(args))
    except Exception as err:
        if os.environ.get("VNET_DEBUG"):
            raise
        code, kind = exit_code(err)
        if (_is(err, "vnetlib.players.client", "RemoteError")
                and getattr(err, "code", None) == "upstream-timeout"):
            err.add_note("the VNO keeps the VNet as unknown until its outcome is known: "
                         "`vnet status` shows it ready, or not at all")
        message = "\n".join([str(err), *getattr(err, "__notes__", ())])
        if getattr(args, "json", False):
            from vnetlib.cli.output import emit_json

            emit_json({"error": {"kind": kind, "message": message}})
        print(f"vnet: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
