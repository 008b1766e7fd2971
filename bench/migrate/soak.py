"""Many live migrations of one TCG guest, counting the moves after which the
guest crashed (issue #13: QEMU 7.2's TCG dirty tracking, see
`vnetlib.vm.migrate.DOWNTIME_LIMIT_MS`).

    .venv/bin/python -m bench.migrate.soak [--moves 20] [--hogs 2] [--pin 0]
        [--downtime-ms 0] [--flood 0.002]

No lab and no players: `vnet.infra`'s steps for a VM done directly (the
guest image, a libvirt domain with two taps, `vnetlib.vm.migrate` between
two host namespaces). e1 and e2 are namespaces each with a bridge joined to
both hosts' bridges of their link (what the move's flood entries give the
peers), so a ping from e1 to e2 crosses the guest (a router) wherever it
runs; `--flood`: a 1000-byte ping at that interval keeps the guest busy.
Per move: QEMU's downtime and dirty-bitmap syncs, the longest gap of a
10 ms ping, and whether the guest crashed: a kernel error or a boot on its
serial console, or no ping through it within 15 s (a broken virtqueue does
not panic); then a new guest is booted. `--downtime-ms 10` makes QEMU copy
pages while the guest runs after a sync in every move (the bug's window;
vnet's default is 0). `--hogs`: busy processes (at most 2, killed by pid
at the end); `--pin CPU`: QEMU's threads and the hogs share that one CPU
(a loaded host for QEMU while the other CPU stays usable for others).
Needs root; removes everything it made.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.migrate.ping import Pinger, longest_gap, reachable
from vnetlib.lab import vms
from vnetlib.vm import migrate as vm_migrate
from vnetlib.vm.domain import DomainSpec, Nic, domain_xml, serial_log
from vnetlib.vm.image import READY_MARKER, build_image, kernel_cmdline

CRASH = re.compile(r"Kernel panic|BUG: |general protection|double fault|list_add corruption"
                   r"|list_del corruption|not a head|Oops|RIP: |Call Trace|invalid opcode"
                   r"|stack segment|segfault")
LOG_DIR = "/var/log/libvirt/qemu"
MACS = ("02:5e:00:00:00:01", "02:5e:00:00:00:02")


@dataclass(frozen=True, slots=True)
class Result:
    """One move: QEMU's downtime, the longest ping gap, and what the
    guest's console said after it (crash lines, or '' when none)."""

    downtime_ms: float
    gap: float
    crash: str
    syncs: int


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class Soak:
    """Two host namespaces, two edge namespaces, and the guest between them."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.hosts = (f"vsk{tag}a", f"vsk{tag}b")
        self.edges = (f"vsk{tag}e1", f"vsk{tag}e2")
        self.taps = (f"vsk{tag}t0", f"vsk{tag}t1")
        self.generation = 0
        self.domain = f"vsk{tag}r0"
        self.made_ns: list[str] = []

    def network(self) -> None:
        for ns in (*self.hosts, *self.edges):
            _ip("netns", "add", ns)
            self.made_ns.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        for host in self.hosts:
            for k in (0, 1):
                _ip("-n", host, "link", "add", f"br{k}", "type", "bridge")
                _ip("-n", host, "link", "set", f"br{k}", "up")
        for k, edge in enumerate(self.edges):
            _ip("-n", edge, "link", "add", "b0", "type", "bridge")
            for h, host in enumerate(self.hosts):
                _ip("-n", edge, "link", "add", f"v{h}", "type", "veth", "peer", "name",
                    f"e{k}", "netns", host)
                _ip("-n", edge, "link", "set", f"v{h}", "master", "b0", "up")
                _ip("-n", host, "link", "set", f"e{k}", "master", f"br{k}", "up")
            _ip("-n", edge, "link", "set", "b0", "up")
        for edge, addr, net, via in ((self.edges[0], "198.19.0.1/30", "198.19.0.4/30",
                                      "198.19.0.2"),
                                     (self.edges[1], "198.19.0.6/30", "198.19.0.0/30",
                                      "198.19.0.5")):
            _ip("-n", edge, "addr", "add", addr, "dev", "b0")
            _ip("-n", edge, "route", "add", net, "via", via)

    def boot(self) -> str:
        """A new guest on the first host (the previous one and its taps removed)."""
        import libvirt  # type: ignore[import-untyped]

        self.remove_guest()
        self.generation += 1
        self.domain = f"vsk{self.tag}r{self.generation}"
        conn = libvirt.open(vm_migrate.URI)
        try:
            self._boot(conn)
        finally:
            conn.close()
        return self.domain

    def _boot(self, conn: object) -> None:
        image = build_image()
        line = kernel_cmdline(image, "r1", [(MACS[0], ["198.19.0.2/30"]),
                                            (MACS[1], ["198.19.0.5/30"])], True)
        spec = DomainSpec(self.domain, vcpus=1, memory_mb=128, kernel=str(image.kernel),
                          initrd=str(image.initrd), cmdline=line,
                          interfaces=tuple(Nic(t, m) for t, m in zip(self.taps, MACS,
                                                                      strict=True)))
        for tap in self.taps:
            _ip("tuntap", "add", "dev", tap, "mode", "tap")
        conn.defineXML(domain_xml(spec)).create()  # type: ignore[attr-defined]
        for k, tap in enumerate(self.taps):
            _ip("link", "set", "dev", tap, "netns", self.hosts[0])
            _ip("-n", self.hosts[0], "link", "set", "dev", tap, "master", f"br{k}", "up")
        deadline = time.monotonic() + 180
        while READY_MARKER not in _log(self.domain):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the guest did not boot: {_log(self.domain)[-500:]}")
            time.sleep(0.5)

    def move(self, current: str, to: int) -> vm_migrate.VmMove:
        return vm_migrate.VmMove(
            current, vm_migrate.next_name(self.domain, current), self.hosts[1 - to],
            self.hosts[to], tuple(vm_migrate.Nic(t, f"br{k}") for k, t in enumerate(self.taps)))

    def remove_guest(self) -> None:
        """Every domain of this soak, its serial logs and its taps."""
        import libvirt

        conn = libvirt.open(vm_migrate.URI)
        try:
            for dom in conn.listAllDomains():
                if dom.name().startswith(f"vsk{self.tag}r"):
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.destroy()
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.undefine()
        finally:
            conn.close()
        for log in Path(LOG_DIR).glob(f"vsk{self.tag}r*"):  # the moved-away domains' too
            with contextlib.suppress(OSError):
                log.unlink()
        for where in (*(["-n", h] for h in self.made_ns if h in self.hosts), []):
            for tap in self.taps:
                subprocess.run(["ip", *where, "link", "delete", tap], capture_output=True)

    def clean(self) -> None:
        self.remove_guest()
        for ns in self.made_ns:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def _log(domain: str) -> str:
    try:
        return Path(serial_log(domain)).read_text(errors="replace")
    except OSError:
        return ""


def qemu_pid(domain: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(Path(f"/run/libvirt/qemu/{domain}.pid").read_text().strip())
    return None


def pin(pid: int | None, cpu: int | None) -> None:
    if pid is not None and cpu is not None:
        subprocess.run(["taskset", "-a", "-c", "-p", str(cpu), str(pid)], capture_output=True)


@contextlib.contextmanager
def hogs(count: int, cpu: int | None) -> Iterator[None]:
    """`count` busy processes (at most 2), killed by pid at the end."""
    procs = []
    try:
        for _ in range(min(count, 2)):
            argv = [sys.executable, "-c", "while 1: pass"]
            if cpu is not None:
                argv = ["taskset", "-c", str(cpu), *argv]
            procs.append(subprocess.Popen(argv))
        yield
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
            p.wait()


@contextlib.contextmanager
def traffic(netns: str, interval: float) -> Iterator[None]:
    """A quiet ping every `interval` seconds through the guest (0: none)."""
    if interval <= 0:
        yield
        return
    proc = subprocess.Popen(["ip", "netns", "exec", netns, "ping", "-q", "-i", str(interval),
                             "-s", "1000", "198.19.0.6"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def crash_lines(text: str) -> str:
    """The crash lines of the console output since the last move ('' when none)."""
    found = [line for line in text.splitlines() if CRASH.search(line)]
    if READY_MARKER in text:
        found.append("booted again")
    return " | ".join(found[:4])


def run(moves: int, n_hogs: int, cpu: int | None, downtime_ms: int, settle: float,
        flood: float) -> int:
    tag = secrets.token_hex(2)
    soak = Soak(tag)
    home = Path(tempfile.mkdtemp(prefix="vnet-soak-"))
    started = vms.start(home)
    results: list[Result] = []
    try:
        soak.network()
        current, at = soak.boot(), 0
        if not reachable(soak.edges[0], "198.19.0.6", 60):
            raise RuntimeError("e1 does not reach e2 through the guest")
        seen = len(_log(current))
        pin(qemu_pid(current), cpu)
        with hogs(n_hogs, cpu), traffic(soak.edges[0], flood):
            time.sleep(2)
            for i in range(moves):
                m = soak.move(current, 1 - at)
                pinger = Pinger(soak.edges[0], "198.19.0.6")
                try:
                    time.sleep(0.5)
                    start = time.time()
                    stats = vm_migrate.migrate(m, downtime_limit_ms=downtime_ms)
                    pin(qemu_pid(m.dest), cpu)
                    vm_migrate.finish(m)
                    end = time.time()
                    time.sleep(settle)
                finally:
                    stamps = pinger.stop()
                current, at = m.dest, 1 - at
                text = _log(current)
                crash = crash_lines(text[seen:])
                if not reachable(soak.edges[0], "198.19.0.6", 15):
                    crash = " | ".join(x for x in (crash, "no ping through it for 15 s") if x)
                r = Result(stats.downtime_ms, longest_gap(stamps, start, end + settle), crash,
                           stats.syncs)
                results.append(r)
                load = Path("/proc/loadavg").read_text().split()[0]
                print(f"move {i + 1}: QEMU {stats.seconds:.2f} s, downtime "
                      f"{r.downtime_ms:.0f} ms, syncs {stats.syncs}, gap {r.gap:.3f} s, "
                      f"load {load}" + (f", CRASH: {crash}" if crash else ""), flush=True)
                if crash:  # a new guest (a broken virtqueue does not panic)
                    print(text[seen:][-2500:], flush=True)
                    current, at = soak.boot(), 0
                    pin(qemu_pid(current), cpu)
                    if not reachable(soak.edges[0], "198.19.0.6", 60):
                        raise RuntimeError("e1 does not reach e2 through the new guest")
                seen = len(_log(current))
    finally:
        soak.clean()
        vms.stop(home, [])
        with contextlib.suppress(OSError):
            home.rmdir()
    crashed = sum(1 for r in results if r.crash)
    gaps = [r.gap for r in results]
    by_syncs: dict[int, list[int]] = {}
    for r in results:
        by_syncs.setdefault(r.syncs, []).append(int(bool(r.crash)))
    print("\nQEMU's dirty-bitmap syncs per move: "
          + ", ".join(f"{k}: {len(v)} moves, {sum(v)} crashed"
                      for k, v in sorted(by_syncs.items())))
    print(f"{len(results)} moves, {crashed} crashed; gap median "
          f"{statistics.median(gaps) if gaps else 0:.3f} s, max {max(gaps, default=0):.3f} s; "
          f"QEMU downtime median "
          f"{statistics.median(r.downtime_ms for r in results) if results else 0:.0f} ms; "
          f"hogs {n_hogs}, pinned to {cpu}, flood {flood}; started {started}")
    return 1 if crashed else 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.migrate.soak")
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--hogs", type=int, default=0, choices=(0, 1, 2))
    parser.add_argument("--pin", type=int, default=None, help="CPU for QEMU and the hogs")
    parser.add_argument("--downtime-ms", type=int, default=vm_migrate.DOWNTIME_LIMIT_MS)
    parser.add_argument("--flood", type=float, default=0.002,
                        help="interval of a background ping through the guest (0: none)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds after each move")
    args = parser.parse_args()
    return run(args.moves, args.hogs, args.pin, args.downtime_ms, args.settle,
               args.flood)


if __name__ == "__main__":
    raise SystemExit(main())
