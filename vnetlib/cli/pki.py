"""`vnet pki list|revoke|renew`: the lab CA's certificates, for the lab's operator."""

from __future__ import annotations

import argparse
from pathlib import Path

from cryptography import x509

from vnetlib import paths
from vnetlib.cli.output import emit_json, table
from vnetlib.lab import players as lab_players
from vnetlib.players.pki import LabCA

REASONS = ("unspecified", "key_compromise", "affiliation_changed", "superseded",
           "cessation_of_operation", "privilege_withdrawn")


def add_parser(sub: argparse._SubParsersAction) -> None:
    pki = sub.add_parser("pki", help="the lab CA: list, revoke and renew certificates")
    verbs = pki.add_subparsers(dest="pki_verb", required=True)
    ls = verbs.add_parser("list", help="every certificate the lab CA issued")
    revoke = verbs.add_parser(
        "revoke", help="revoke a player's certificates (or one serial) and hand every "
                       "player the new CRL; running players refuse it from then on")
    revoke.add_argument("who", help="player name, or a serial in hex with --serial")
    revoke.add_argument("--serial", action="store_true", help="WHO is a serial (hex)")
    revoke.add_argument("--reason", choices=REASONS, default="unspecified")
    renew = verbs.add_parser(
        "renew", help="a new key and certificate for a player, same name and role; its "
                      "server presents it from its next connection on")
    renew.add_argument("name", help="player name")
    for p, func in ((ls, run_list), (revoke, run_revoke), (renew, run_renew)):
        p.add_argument("--lab", default="lab", help="lab name (default: lab)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)


def _lab(name: str) -> tuple[LabCA, Path]:
    directory = paths.lab_dir(name)
    pki = lab_players.pki_dir(directory)
    if not (pki / "ca.pem").exists():
        raise LookupError(f"lab {name!r} has no CA; bring it up with `vnet lab up --name {name}`")
    return LabCA.load(pki), directory


def run_list(args: argparse.Namespace) -> int:
    ca, _ = _lab(args.lab)
    certs = ca.certificates()
    if args.json:
        emit_json([c.to_json() for c in certs])
        return 0
    rows = [[f"{c.serial:x}", c.name, c.role.value, f"{c.not_after:%Y-%m-%d}",
             f"{c.revoked_at:%Y-%m-%d %H:%M} ({c.reason})" if c.revoked_at else "-"]
            for c in certs]
    print(table(rows, ["serial", "name", "role", "valid until", "revoked"]))
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    _lab(args.lab)
    try:
        who: str | int = int(args.who, 16) if args.serial else args.who
    except ValueError:
        raise ValueError(f"--serial: {args.who!r} is not a hexadecimal serial") from None
    serials = lab_players.revoke(paths.lab_dir(args.lab), who, args.reason)
    if args.json:
        emit_json({"revoked": [f"{s:x}" for s in serials]})
    else:
        print("revoked " + ", ".join(f"{s:x}" for s in serials))
    return 0


def run_renew(args: argparse.Namespace) -> int:
    _, directory = _lab(args.lab)
    creds = lab_players.renew(directory, args.name)
    serial = f"{_serial(creds.cert_path):x}"
    if args.json:
        emit_json({"name": args.name, "serial": serial, "cert": str(creds.cert_path)})
    else:
        print(f"renewed {args.name}: serial {serial}")
    return 0


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number
