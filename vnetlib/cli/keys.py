"""`vnet keys add NAME FILE | list | remove NAME [--lab L]`: the SP's SSH
public keys at its VNO, which let `ssh -p PORT VNET.NODE@VNO-HOST` open a
console on a node of one of the SP's VNets (the VNO's SSH front door)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vnetlib.lab.players import service_provider
from vnetlib.players.sp import ServiceProvider
from vnetlib.players.sshkeys import key_xml, keys_from


def add_key(sp: ServiceProvider, name: str, text: str) -> tuple[str, str, str]:
    """Register (or replace) the key `name`; its (name, fingerprint, key line)."""
    reply = sp.client.put(f"/v1/keys/{name}", key_xml(text))
    return keys_from(reply.body)[0]


def list_keys(sp: ServiceProvider) -> list[tuple[str, str, str]]:
    return keys_from(sp.client.get("/v1/keys").body)


def remove_key(sp: ServiceProvider, name: str) -> None:
    sp.client.delete(f"/v1/keys/{name}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="the SSH public keys the VNO accepts for consoles")
    verbs = p.add_subparsers(dest="keys_verb", required=True)
    add = verbs.add_parser("add", help="register a public key (replaces one of that name)")
    add.add_argument("name", help="a name for the key (A-Z a-z 0-9 . _ -)")
    add.add_argument("file", type=Path, help="an OpenSSH public key file (id_ed25519.pub)")
    verbs.add_parser("list", help="the registered keys")
    rm = verbs.add_parser("remove", help="forget a key: it opens no console any more")
    rm.add_argument("name")
    for v in (add, rm, verbs.choices["list"]):
        v.add_argument("--lab", default="lab", help="lab whose VNO to talk to (default: lab)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sp = service_provider(args.lab)
    if args.keys_verb == "add":
        text = args.file.read_text()
        if "PRIVATE KEY" in text:
            raise ValueError(f"{args.file} is a private key; give the .pub file")
        name, fingerprint, _ = add_key(sp, args.name, text)
        print(f"{name}\t{fingerprint}")
    elif args.keys_verb == "list":
        for name, fingerprint, line in list_keys(sp):
            print(f"{name}\t{fingerprint}\t{line}")
    else:
        remove_key(sp, args.name)
    return 0
