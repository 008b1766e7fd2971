"""`vnet serve --role pip|vnp|vno --config FILE`: run a player's management node."""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path

from vnetlib.players import config as player_config
from vnetlib.players.node import ManagementNode, write_ready_file
from vnetlib.players.server import ServiceServer


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run a player's management node (PIP, VNP or VNO)")
    p.add_argument("--role", required=True, choices=["pip", "vnp", "vno"],
                   help="the player's role; must match the configuration")
    p.add_argument("--config", required=True, type=Path, help="the player's TOML configuration")
    p.add_argument("--ready-file", type=Path, default=None,
                   help="write the service URL here once listening")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = player_config.load(args.config)
    if config.role.value != args.role:
        raise ValueError(f"{args.config} is the configuration of a {config.role.value}, "
                         f"not of a {args.role}")
    node = ManagementNode(config)

    def ready(server: ServiceServer) -> None:
        print(f"{config.name} ({config.role.value}) listening on {server.url}", flush=True)
        if args.ready_file is not None:
            write_ready_file(args.ready_file, server.url)

    try:
        node.server.run_until_signal((signal.SIGINT, signal.SIGTERM), ready=ready,
                                     stopping=node.interrupt)
    finally:
        node.service.close()
        if args.ready_file is not None:
            args.ready_file.unlink(missing_ok=True)
    return 0
