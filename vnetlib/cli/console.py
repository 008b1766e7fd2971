"""`vnet console VNET NODE [--kind shell|serial|vnc] [--web] [--lab L]`: a console on a
virtual node, through the chain of players (works when the VNet's own
network does not). On a terminal: raw mode, leave with Ctrl-] q (or ~. at
the start of a line). From a pipe: the input is sent, then the output is
shown until the node side closes or stays silent for --linger seconds."""

from __future__ import annotations

import argparse
import asyncio
import sys

from vnetlib.cli import target
from vnetlib.console.client import LINGER, run_console
from vnetlib.console.webconsole import web_link


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("console", help="open a console on a virtual node (out of the VNet)")
    p.add_argument("vnet", help="VNet id")
    p.add_argument("node", help="virtual node id")
    p.add_argument("--kind", choices=["shell", "serial", "vnc"], default="shell",
                   help="shell: a login shell in a netns node; serial: a VM's serial line; "
                        "vnc: a VM's display (raw RFB bytes, or a browser link with --web)")
    p.add_argument("--web", action="store_true",
                   help="with --kind vnc: print a one-time link (60 s) to the VNO's web "
                        "console (noVNC) instead of relaying")
    p.add_argument("--lab", default="lab", help="lab whose VNO holds the VNet (default: lab)")
    p.add_argument("--linger", type=float, default=LINGER,
                   help="with piped input: seconds of silence to wait after its end")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sp = target.remote(args.vnet, args.lab)
    if args.web:
        if args.kind != "vnc":
            print("vnet: error: --web shows vnc consoles: add --kind vnc", file=sys.stderr)
            return 2
        url, _ = web_link(sp, args.vnet, args.node)
        print(url)
        return 0
    if sys.stdin.isatty():
        print("[vnet console: connected; Ctrl-] q or ~. to leave]", file=sys.stderr,
              flush=True)
    why = asyncio.run(run_console(sp, args.vnet, args.node, args.kind,
                                  sys.stdin.fileno(), sys.stdout.fileno(),
                                  linger=args.linger))
    if sys.stdin.isatty():
        print(f"\r\n[vnet console: {why}]", file=sys.stderr, flush=True)
    return 0
