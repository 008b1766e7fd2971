"""Concurrent SPs creating, pinging and deleting small VNets on a local lab
for a fixed time, next to a serial baseline of the same cycles, then checks
that nothing leaked.

    .venv/bin/python -m bench.load [--sps 8] [--seconds 180] [--pips 2] [--hosts 3]

Brings up a lab with players in a private VNET_HOME, runs `--serial` create /
delete cycles with one client (the baseline), then `--sps` threads, each with
its own client of the lab's SP, cycling until the deadline (or `--max-cycles`
each): request a small VNet (2-3 netns nodes, 1-2 links, some spanning both
PIPs), check it is ready, on every `--exec-every`-th cycle ping across its
first link with `exec`, delete it. Every error is counted and kept, never
retried. After the run: live slivers and VNIs in each PIP's ledger, vnode
namespaces, tenant cgroups and processes must all be zero; exits 1 on a leak.
Needs root; takes the lab down in any case.
"""

from __future__ import annotations

import argparse
import functools
import os
import secrets
import shutil
import statistics
import string
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from vnetlib import paths
from vnetlib.core.ledger import Ledger
from vnetlib.lab import testbed
from vnetlib.lab.players import load_players, pip_name, service_provider
from vnetlib.lab.testbed import PIP_LOCATIONS, LabSpec
from vnetlib.naming import vnode_netns_prefix
from vnetlib.players import cgroups
from vnetlib.players.client import RemoteError
from vnetlib.players.sp import ServiceProvider
from vnetlib.spec.model import Interface, LinkEndpoint, NodeKind, VirtualLink, VirtualNode, VNetSpec

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
T = TypeVar("T")
OPS = ("create", "delete", "exec", "list")
# (node locations, links as node index pairs): PIP indexes, 0 = first PIP
SHAPES: tuple[tuple[tuple[int, ...], tuple[tuple[int, int], ...]], ...] = (
    ((0, 0), ((0, 1),)),
    ((0, 1), ((0, 1),)),
    ((0, 1, 1), ((0, 1), (1, 2))),
    ((1, 1, 0), ((0, 1), (0, 2))),
    ((1, 1), ((0, 1),)),
)


def small_vnet(name: str, shape: int, pips: int) -> VNetSpec:
    """Shape `shape` of SHAPES, locations folded onto the lab's PIPs."""
    where, pairs = SHAPES[shape % len(SHAPES)]
    ids = [f"n{i}" for i in range(len(where))]
    nodes = tuple(
        VirtualNode(id=ids[i], cpu=0.1, memory_mb=16, kind=NodeKind.NETNS,
                    location=PIP_LOCATIONS[w % pips])
        for i, w in enumerate(where)
    )
    used: Counter[int] = Counter()
    links = []
    for k, (a, b) in enumerate(pairs):
        ends = []
        for end, host in ((a, 1), (b, 2)):
            addr = f"198.19.0.{4 * k + host}/30"
            ends.append(LinkEndpoint(ids[end], Interface(f"eth{used[end]}", (addr,))))
            used[end] += 1
        links.append(VirtualLink(f"l{k + 1}", ends[0], ends[1], bandwidth_mbps=1.0))
    return VNetSpec(name=name, nodes=nodes, links=tuple(links))


def crosses(spec: VNetSpec) -> bool:
    return any(spec.node(k.a.node).location != spec.node(k.b.node).location for k in spec.links)


@dataclass(frozen=True, slots=True)
class Sample:
    op: str
    seconds: float
    error: str | None  # kind, None when it succeeded


@dataclass(slots=True)
class Recorder:
    """Samples and error messages of all threads of one phase."""

    samples: list[Sample] = field(default_factory=list)
    messages: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def timed(self, op: str, call: Callable[[], T]) -> T | None:
        start = time.perf_counter()
        try:
            result = call()
        except Exception as exc:
            self.add(op, time.perf_counter() - start, exc)
            return None
        self.add(op, time.perf_counter() - start, None)
        return result

    def add(self, op: str, seconds: float, exc: Exception | str | None) -> None:
        kind = None if exc is None else error_kind(exc)
        with self.lock:
            self.samples.append(Sample(op, seconds, kind))
            if exc is not None:
                self.messages[f"{op}: {exc}"[:300]] += 1


def error_kind(exc: Exception | str) -> str:
    if isinstance(exc, str):
        return exc
    if isinstance(exc, RemoteError):
        return f"{exc.status} {exc.code}"
    return type(exc).__name__


def cycle(sp: ServiceProvider, rec: Recorder, name: str, shape: int, pips: int,
          ping: bool) -> None:
    """Create, check, maybe ping, delete one VNet; errors go to `rec`."""
    spec = small_vnet(name, shape, pips)
    view = rec.timed("create", lambda: sp.request_vnet(spec))
    if view is None:
        # the VNO may keep a failed request (e.g. "unknown" after a timeout):
        # delete what it lists under that name, so the leak checks judge the players
        left = rec.timed("list", lambda: [v.id for v in sp.list() if v.name == name])
        for vnet_id in left or []:
            rec.timed("delete", functools.partial(delete, sp, vnet_id))
        return
    if view.status != "ready":
        rec.add("create", 0.0, f"not ready: {view.status}")
    if ping:
        def ping_first_link() -> None:
            rc, out, err = sp.exec(view.id, "n0", ["ping", "-c", "1", "-W", "2", "198.19.0.2"],
                                   timeout=10)
            if rc != 0:
                raise RuntimeError(f"ping rc {rc}: {(out + err).strip()[-200:]}")
        rec.timed("exec", ping_first_link)
    rec.timed("delete", lambda: delete(sp, view.id))


def delete(sp: ServiceProvider, vnet_id: str) -> None:
    """Until the VNet is gone, also when the VNO finishes it in the background."""
    if not sp.delete(vnet_id):
        wait_gone(sp, vnet_id, 120.0)


def wait_gone(sp: ServiceProvider, vnet_id: str, limit: float) -> None:
    deadline = time.monotonic() + limit
    while any(v.id == vnet_id for v in sp.list()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"VNet {vnet_id} still listed {limit:.0f} s after delete")
        time.sleep(0.5)


def serial_phase(lab: str, cycles: int, pips: int, exec_every: int) -> tuple[Recorder, float]:
    rec = Recorder()
    sp = service_provider(lab, timeout=120.0)
    start = time.perf_counter()
    for i in range(cycles):
        cycle(sp, rec, f"s{i}", i, pips, exec_every > 0 and i % exec_every == 0)
    return rec, time.perf_counter() - start


def concurrent_phase(lab: str, sps: int, seconds: float, max_cycles: int, pips: int,
                     exec_every: int) -> tuple[Recorder, float]:
    rec = Recorder()
    clients = [service_provider(lab, timeout=120.0) for _ in range(sps)]
    start = time.perf_counter()
    deadline = time.monotonic() + seconds

    def worker(t: int) -> None:
        i = 0
        while time.monotonic() < deadline and i < max_cycles:
            ping = exec_every > 0 and i % exec_every == t % exec_every
            cycle(clients[t], rec, f"t{t}c{i}", t + i, pips, ping)
            i += 1

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(sps)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(seconds + 600)
        if th.is_alive():
            rec.add("create", 0.0, "thread still running 600 s after the deadline")
    return rec, time.perf_counter() - start


# -- processes ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system time of `pid` and of its waited-for children (Ansible)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / TICK


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20


def player_pids(lab: str) -> dict[str, int]:
    directory = paths.lab_dir(lab)
    return {name: int(p.pidfile(directory).read_text())
            for name, p in load_players(directory).items()}


# -- leaks -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    found: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.found


def tenant_parents(pip_pid: int) -> list[Path]:
    """Where `confine` puts the tenants' cgroups of PIP `pip_pid`: cgroups.PARENT
    below the PIP's own cgroup in each hierarchy (as `cgroups.detect` does)."""
    own = cgroups.own_paths(Path(f"/proc/{pip_pid}/cgroup").read_text())
    found = []
    for mount in cgroups.mounts(Path("/proc/self/mountinfo").read_text()):
        key = "" if mount.version == 2 else next(iter(sorted(mount.controllers)), "")
        found.append(mount.path / own.get(key, "/").strip("/") / cgroups.PARENT)
    return found


def tenant_leftovers(pip_pid: int, ours: set[str]) -> tuple[list[str], list[str]]:
    """Processes in tenants' cgroups, and tenants' cgroups still there, of the
    tenants in `ours` (sliver ids: other labs on the machine share the parents)."""
    procs, dirs = [], []
    for base in tenant_parents(pip_pid):
        if not base.is_dir():
            continue
        for tenant in (d for d in base.iterdir() if d.is_dir() and d.name in ours):
            dirs.append(str(tenant))
            procs += [f"{tenant}: pid {pid}" for pid in cgroups.pids(tenant)]
    return procs, dirs


def leak_checks(lab: str, pips: int, pids: dict[str, int]) -> list[Check]:
    directory = paths.lab_dir(lab)
    slivers: list[str] = []
    vnis: list[str] = []
    ever: set[str] = set()
    for i in range(1, pips + 1):
        ledger = Ledger(f"sqlite:///{directory / 'stores' / f'{pip_name(i)}.db'}", f"{lab}p{i}")
        try:
            slivers += [f"{pip_name(i)}: {s.id} {s.name} {s.state}" for s in ledger.slivers()]
            ever |= {s.id for s in ledger.slivers(states=None)}
            vnis += [f"{pip_name(i)}: {v}" for v in sorted(ledger.used_vnis())]
        finally:
            ledger.close()
    prefix = vnode_netns_prefix(lab)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=True).stdout.split("\n")
    namespaces = [n.split()[0] for n in listed if n.startswith(prefix)]
    cgroup_pids: list[str] = []
    cgroup_dirs: list[str] = []
    for i in range(1, pips + 1):
        procs_i, dirs_i = tenant_leftovers(pids[pip_name(i)], ever)
        cgroup_pids += procs_i
        cgroup_dirs += dirs_i
    procs = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if prefix in cmdline:
            procs.append(f"pid {proc.name}: {cmdline[:120]}")
    return [
        Check("live slivers in the PIPs' ledgers", tuple(slivers)),
        Check("VNIs in use in the PIPs' ledgers", tuple(vnis)),
        Check(f"namespaces {prefix}*", tuple(namespaces)),
        Check("processes in tenants' cgroups", tuple(cgroup_pids)),
        Check(f"tenants' cgroups (of {len(ever)} slivers)", tuple(cgroup_dirs)),
        Check(f"processes naming {prefix}*", tuple(procs)),
    ]


# -- report ------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def table(phases: Sequence[tuple[str, Recorder, float]]) -> list[str]:
    lines = [
        "| phase | op | count | errors | ok ops/s | p50 s | p95 s | max s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, rec, wall in phases:
        for op in OPS:
            done = [s for s in rec.samples if s.op == op and s.seconds > 0]
            ok = [s.seconds for s in done if s.error is None]
            errors = sum(1 for s in rec.samples if s.op == op and s.error is not None)
            if not done and not errors:
                continue
            lat = ok or [0.0]
            lines.append(
                f"| {label} | {op} | {len(done)} | {errors} | {len(ok) / wall:.3f} | "
                f"{statistics.median(lat):.2f} | {percentile(lat, 0.95):.2f} | {max(lat):.2f} |"
            )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load")
    parser.add_argument("--sps", type=int, default=8, help="concurrent SP clients")
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--pips", type=int, default=2)
    parser.add_argument("--hosts", type=int, default=3, help="hosts per PIP")
    parser.add_argument("--serial", type=int, default=5, help="baseline cycles, one client")
    parser.add_argument("--exec-every", type=int, default=3, help="ping in 1 of N cycles; 0: never")
    parser.add_argument("--max-cycles", type=int, default=500, help="cap per SP thread")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root: the lab is made of network namespaces")
    os.environ["VNET_HOME"] = tempfile.mkdtemp(prefix="vnet-load-")
    name = "l" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(2)) + "x"
    spec = LabSpec(name=name, pips=args.pips, hosts=args.hosts, cpu=16.0,
                   mgmt_offset=secrets.choice(range(4, 97, 4)))
    print(f"lab {name} in {os.environ['VNET_HOME']}, {args.pips} PIPs x {args.hosts} hosts",
          flush=True)
    try:
        start = time.perf_counter()
        testbed.up(spec)
        print(f"lab up in {time.perf_counter() - start:.1f} s", flush=True)
        pids = player_pids(name)
        serial, serial_wall = serial_phase(name, args.serial, args.pips, args.exec_every)
        print(f"serial: {args.serial} cycles in {serial_wall:.1f} s", flush=True)
        cpu0 = {p: cpu_seconds(pid) for p, pid in pids.items()}
        load, load_wall = concurrent_phase(name, args.sps, args.seconds, args.max_cycles,
                                           args.pips, args.exec_every)
        cpu = {p: cpu_seconds(pid) - cpu0[p] for p, pid in pids.items()}
        rss = {p: rss_mb(pid) for p, pid in pids.items()}
        print(f"concurrent: {args.sps} SPs for {load_wall:.1f} s", flush=True)
        try:
            wait_gone_all(service_provider(name), 120.0)
        except Exception as exc:
            print(f"VNets still listed after the run: {exc}")
        checks = leak_checks(name, args.pips, pids)
    finally:
        testbed.down(name)
        shutil.rmtree(os.environ["VNET_HOME"])  # kept when down fails, to look into

    shapes = ", ".join(f"{len(w)} nodes/{len(p)} links{' (2 PIPs)' if len(set(w)) > 1 else ''}"
                       for w, p in SHAPES)
    print(f"\nworkload: shapes in turn: {shapes}; ping over link 1 in 1 of "
          f"{args.exec_every} cycles")
    print("\n".join(table([("serial, 1 SP", serial, serial_wall),
                           (f"concurrent, {args.sps} SPs", load, load_wall)])))
    print(f"\nplayer CPU during the concurrent phase ({load_wall:.0f} s), RSS at the end:")
    print("| player | CPU s | CPU % of wall | RSS MB |\n|---|---:|---:|---:|")
    for p in pids:
        print(f"| {p} | {cpu[p]:.1f} | {100 * cpu[p] / load_wall:.1f} | {rss[p]:.0f} |")
    for label, rec in (("serial", serial), ("concurrent", load)):
        kinds = Counter(f"{s.op} {s.error}" for s in rec.samples if s.error is not None)
        for kind, n in kinds.most_common():
            print(f"{label} errors: {n} x {kind}")
        for msg, n in rec.messages.most_common(10):
            print(f"  {n} x {msg}")
    print()
    for check in checks:
        print(f"{'PASS' if check.ok else 'FAIL'} {check.name}: {len(check.found)}")
        for item in check.found[:10]:
            print(f"    {item}")
    return 0 if all(c.ok for c in checks) else 1


def wait_gone_all(sp: ServiceProvider, limit: float) -> None:
    deadline = time.monotonic() + limit
    while left := sp.list():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(left)} VNets: " + ", ".join(
                f"{v.name} {v.status}" for v in left[:5]))
        time.sleep(1.0)


if __name__ == "__main__":
    raise SystemExit(main())
