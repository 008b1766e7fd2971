"""Where a 100-node VNet's up and down spend their time (issue #11).

    .venv/bin/python -m bench.speed.profile [--nodes 100] [--hosts 3]

Instantiates a ring of --nodes nodes directly on a fresh --hosts-host lab
substrate (the PIP core and the playbook, as a PIP runs them), times the
core's phases, then replays each host's module run in-process (the same
``run_host`` of vnet_link, on the same plan, inside the host's namespace)
with every command it runs timed, for present and for absent, and prints
where the time goes: reads, each kind of batch, Python. Needs root; removes
what it made.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import secrets
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.players.workload import ring_vnet
from vnetlib.instantiate import describe, destroy, instantiate
from vnetlib.lab import manage
from vnetlib.lab.layout import LabConfig
from vnetlib.spec.serialize import dump_vnet

ROOT = Path(__file__).resolve().parents[2]


def _collection_on_path() -> None:
    base = Path(tempfile.mkdtemp(prefix="vnet-prof-"))
    (base / "ansible_collections" / "vnet").mkdir(parents=True)
    (base / "ansible_collections" / "vnet" / "infra").symlink_to(ROOT)
    sys.path.insert(0, str(base))


class TimedModule:
    """What run_host needs of an AnsibleModule, with each command timed."""

    def __init__(self, check: bool, params: dict[str, Any]) -> None:
        self.check_mode = check
        self.params = params
        self.times: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def get_bin_path(self, name: str, required: bool = False) -> str:
        return "/usr/sbin/" + name if os.path.exists("/usr/sbin/" + name) else "/sbin/" + name

    def run_command(self, argv: list[str], data: str | None = None,
                    binary_data: bool = False) -> tuple[int, str, str]:
        import subprocess
        start = time.perf_counter()
        done = subprocess.run(argv, input=data, capture_output=True, text=True)
        kind = " ".join(a for a in argv[1:4] if not a.startswith("/"))
        if "-batch" in argv:
            kind = "batch " + " ".join(argv[1:-2])[:20] if argv[1] == "-n" else "batch " + argv[0]
            kind = kind if "-n" not in argv else "batch ip -n NS"
        elif argv[1:2] == ["-n"]:
            kind = "ip -n NS " + " ".join(argv[3:5])
        self.times[kind] += time.perf_counter() - start
        self.counts[kind] += 1
        return done.returncode, done.stdout, done.stderr


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        yield
    finally:
        libc.setns(home, 0x40000000)
        os.close(fd)
        os.close(home)


def replay(plan: dict[str, Any], lab: str, state: str) -> None:
    from ansible_collections.vnet.infra.plugins.module_utils._runner import Runner
    from ansible_collections.vnet.infra.plugins.modules import vnet_link

    from vnetlib import naming
    total = 0.0
    for host, part in sorted(plan["hosts"].items()):
        params = {"nodes": part.get("nodes", []), "links": part.get("links", []),
                  "state": state, "bridge": None, "ports": [], "tunnel": None,
                  "bandwidth_mbps": None}
        module = TimedModule(False, params)
        start = time.perf_counter()
        with in_netns(naming.host_netns(lab, host)):
            vnet_link.run_module(module, Runner(module))  # type: ignore[arg-type]
        wall = time.perf_counter() - start
        total += wall
        spent = sum(module.times.values())
        print(f"  {state} {host}: {len(params['nodes'])} nodes, {len(params['links'])} segments,"
              f" {wall:.3f} s (commands {spent:.3f}, Python {wall - spent:.3f})")
        for kind, seconds in sorted(module.times.items(), key=lambda kv: -kv[1]):
            print(f"      {kind:32s} {module.counts[kind]:4d} x  {seconds:.3f} s")
    print(f"  {state} all hosts in sequence: {total:.3f} s")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.speed.profile")
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--hosts", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("VNET_HOME", tempfile.mkdtemp(prefix="vnet-prof-"))
    _collection_on_path()
    lab = "bp" + secrets.token_hex(2)
    manage.up(LabConfig(name=lab, hosts=args.hosts, cpu=64.0, memory_mb=1 << 16,
                        locations=("berlin",), data_network="198.18.246.0/24",
                        mgmt_network="198.18.247.0/24"))
    spec_file = Path(tempfile.mkstemp(suffix=".xml")[1])
    try:
        spec_file.write_bytes(dump_vnet(ring_vnet("ring", args.nodes, ["berlin"])))
        for attempt in range(2):
            start = time.perf_counter()
            made = instantiate(spec_file, lab)
            up = time.perf_counter() - start
            plan = describe(made.vnet_id).plan
            start = time.perf_counter()
            destroy(made.vnet_id)
            down = time.perf_counter() - start
            print(f"run {attempt}: direct up {up:.3f} s {made.timings}, down {down:.3f} s")
        assert plan is not None
        replay(plan, lab, "present")
        replay(plan, lab, "present")
        replay(plan, lab, "absent")
    finally:
        spec_file.unlink()
        manage.down(lab)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
