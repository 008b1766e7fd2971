"""`vnet pool fill|status|drain --substrate NAME`: the pool of booted VMs of a
substrate worked on directly (a PIP's pool follows $VNET_POOL_SIZE instead)."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, replace

from vnetlib.cli.output import emit_json, table
from vnetlib.cli.progress import Live
from vnetlib.core.pool import PoolSettings
from vnetlib.instantiate import local_core, manager


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pool", help="fill, show or drain a substrate's pool of booted VMs")
    p.add_argument("action", choices=("fill", "status", "drain"))
    p.add_argument("--substrate", required=True, help="substrate name (a lab's NAMEp1, ...)")
    p.add_argument("--size", help="fill: VMs per QEMU host, N or HOST=N,... (default: as set)")
    p.add_argument("--memory", type=int, default=None, help="fill: MiB per pool VM (128)")
    p.add_argument("--nics", type=int, default=None,
                   help="fill: pre-wired NICs per pool VM (4; a take hot-plugs the rest)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if (owner := manager(args.substrate)) is not None:
        raise ValueError(f"substrate {args.substrate} is managed by {owner}, whose pool "
                         "follows its configuration ($VNET_POOL_SIZE)")
    core = local_core(args.substrate)
    progress = Live(args.json)
    started = time.perf_counter()
    try:
        pool = core.pool
        done: list[str] = []
        if args.action == "fill":
            now = pool.settings()
            memory = args.memory or now.memory_mb
            nics = now.nics if args.nics is None else args.nics
            settings = PoolSettings.parse(args.size or "", now.vcpus, memory, nics)
            if args.size is None:
                settings = replace(settings, sizes=now.sizes)
            pool.configure(settings)
            progress(f"filling the pool of {args.substrate}: {dict(settings.sizes)} "
                     f"VMs of {settings.memory_mb} MiB")
            done = pool.tend(boot=True)
        elif args.action == "drain":
            progress(f"draining the pool of {args.substrate}")
            done = pool.drain()
        settings = pool.settings()
        vms = pool.vms()
    finally:
        progress.close()
        core.ledger.close()
    took = round(time.perf_counter() - started, 4)
    if args.json:
        emit_json({"substrate": args.substrate, "action": args.action, "done": done,
                   "settings": {"sizes": dict(settings.sizes), "vcpus": settings.vcpus,
                                "memory_mb": settings.memory_mb, "nics": settings.nics},
                   "vms": [asdict(vm) for vm in vms], "seconds": took})
        return 0
    for line in done:
        print(line)
    print(table([[vm.domain, vm.host, vm.state, vm.sliver or "", vm.vnode or ""]
                 for vm in vms], ["domain", "host", "state", "sliver", "node"]))
    print(f"sizes {dict(settings.sizes) or 'off'}, {settings.memory_mb} MiB and "
          f"{settings.nics} pre-wired NICs each "
          f"({took:.2f} s)")
    return 0
