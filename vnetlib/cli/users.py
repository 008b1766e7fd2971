"""`vnet users add|remove|list|passwd|accounting [--lab L]`: the end users of the
SP's VNets at its VNO (Interface 6). A user is bound to the attachment point
(`<attach node=...>`) of one VNet and authenticates as user@realm, the realm
being the VNO's name."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vnetlib.aaa.api import accounting_from, password_xml, user_xml, users_from
from vnetlib.cli.output import emit_json
from vnetlib.lab.players import service_provider
from vnetlib.players.sp import ServiceProvider


def add_user(sp: ServiceProvider, identity: str, password: str, vnet: str, node: str,
             session_timeout: int | None = None) -> dict[str, str]:
    reply = sp.client.post("/v1/users", user_xml(identity, password, vnet, node,
                                                 session_timeout))
    return users_from(reply.body)[0]


def list_users(sp: ServiceProvider) -> list[dict[str, str]]:
    return users_from(sp.client.get("/v1/users").body)


def remove_user(sp: ServiceProvider, identity: str) -> None:
    sp.client.delete(f"/v1/users/{identity.split('@', 1)[0]}")


def set_password(sp: ServiceProvider, identity: str, password: str) -> None:
    sp.client.post(f"/v1/users/{identity.split('@', 1)[0]}/password", password_xml(password))


def accounting(sp: ServiceProvider) -> list[dict[str, str]]:
    return accounting_from(sp.client.get("/v1/accounting").body)


def attached(sp: ServiceProvider, vnet_id: str) -> list[dict[str, str]]:
    """The VNet's end users attached now (identity, port, device, since), for
    `vnet status VNET`."""
    return accounting_from(sp.client.get(f"/v1/vnets/{vnet_id}/end-users").body)


def add_password_options(p: argparse.ArgumentParser) -> None:
    """`--password-file PATH` (its first line), or `--password -` (a line from
    stdin), or `--password PW`: convenient in a lab, but the password is then
    in the shell's history and, while the command runs, in `ps` for every
    local user."""
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--password-file", type=Path, metavar="PATH",
                       help="read the password from the first line of PATH")
    group.add_argument("--password", metavar="PW",
                       help="'-' to read it from stdin; a literal PW is visible to local "
                            "users (ps) and kept in shell history")


def password_of(args: argparse.Namespace) -> str:
    if args.password_file is not None:
        lines = args.password_file.read_text().splitlines()
    elif args.password == "-":
        lines = sys.stdin.read().splitlines()
    else:
        return str(args.password)
    if not lines or not lines[0]:
        raise ValueError("no password given (an empty first line)")
    return lines[0]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("users", help="end users of your VNets at the VNO (802.1X attachment)")
    verbs = p.add_subparsers(dest="users_verb", required=True)
    add = verbs.add_parser("add", help="a user of a VNet's attachment point")
    add.add_argument("identity", help="user@realm, the realm being the VNO's name")
    add_password_options(add)
    add.add_argument("--vnet", required=True, help="the VNet's id at the VNO")
    add.add_argument("--node", required=True, help="the node of the attachment point")
    add.add_argument("--session-timeout", type=int, help="seconds before re-authentication")
    rm = verbs.add_parser("remove", help="forget a user (attached ones leave at session end)")
    rm.add_argument("identity")
    pw = verbs.add_parser("passwd", help="change a user's password")
    pw.add_argument("identity")
    add_password_options(pw)
    ls = verbs.add_parser("list", help="the users of your VNets")
    acct = verbs.add_parser("accounting", help="the VNO's accounting records of your users")
    for v in (add, rm, pw, ls, acct):
        v.add_argument("--lab", default="lab", help="lab whose VNO to talk to (default: lab)")
        v.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sp = service_provider(args.lab)
    verb = args.users_verb
    rows: list[dict[str, str]] = []
    if verb == "add":
        rows = [add_user(sp, args.identity, password_of(args), args.vnet, args.node,
                         args.session_timeout)]
    elif verb == "remove":
        remove_user(sp, args.identity)
    elif verb == "passwd":
        set_password(sp, args.identity, password_of(args))
    elif verb == "list":
        rows = list_users(sp)
    else:
        rows = accounting(sp)
    if args.json:
        emit_json(rows)
    else:
        for row in rows:
            print("\t".join(f"{k}={v}" for k, v in row.items()))
    return 0
