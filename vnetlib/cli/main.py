"""The `vnet` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from vnetlib import __version__
from vnetlib.cli import (
    adopt,
    console,
    ctl,
    down,
    execute,
    geni,
    keys,
    lab,
    migrate,
    pki,
    plan,
    pool,
    serve,
    show,
    status,
    up,
    users,
)
from vnetlib.cli.output import emit_json
from vnetlib.console.wire import HopError
from vnetlib.deploy.ansible import DeployError
from vnetlib.placement import EmbeddingRejected
from vnetlib.players.client import ClientError, RemoteError
from vnetlib.spec import SpecErrors

EXIT_CODES: tuple[tuple[type[BaseException], int, str], ...] = (
    (SpecErrors, 2, "invalid-spec"),
    (EmbeddingRejected, 3, "rejected"),
    (DeployError, 4, "deploy-failed"),
    (LookupError, 5, "not-found"),
    (ValueError, 2, "invalid-input"),
    (PermissionError, 6, "permission"),
    (RemoteError, 7, "remote-error"),
    (ClientError, 8, "unreachable"),
    (HopError, 8, "unreachable"),
    (Exception, 9, "failed"),  # anything else: one line, not a traceback (VNET_DEBUG=1 for it)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vnet",
        description="Build and operate virtual networks across infrastructure providers.",
    )
    parser.add_argument("--version", action="version", version=f"vnet {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb in (lab, up, plan, adopt, status, show, execute, ctl, console, keys, users,
                 down, serve, pki, pool, geni, migrate):
        verb.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except tuple(e for e, _, _ in EXIT_CODES) as err:
        if os.environ.get("VNET_DEBUG"):
            raise
        code, kind = next((c, k) for e, c, k in EXIT_CODES if isinstance(err, e))
        if isinstance(err, RemoteError) and err.status == 404:
            code, kind = 5, "not-found"
        if isinstance(err, RemoteError) and err.code == "upstream-timeout":
            err.add_note("the VNO keeps the VNet as unknown until its outcome is known: "
                         "`vnet status` shows it ready, or not at all")
        message = "\n".join([str(err), *getattr(err, "__notes__", ())])
        if getattr(args, "json", False):
            emit_json({"error": {"kind": kind, "message": message}})
        print(f"vnet: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
