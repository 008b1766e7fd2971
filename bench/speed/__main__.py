"""Instantiation and teardown speed (issue #11): every target of the issue
with our figure, Mininet's and the floor (the same kernel objects through
one `ip -batch`) side by side, and whether it is met.

    .venv/bin/python -m bench.speed [--runs 3] [--quick] [--big] [--discovery]
                                    [--no-mininet] [--only NAME ...]

Run as root from anywhere in a checkout (paths are the checkout's); nothing
to install by hand (Debian's mininet and bridge-utils are installed with
apt-get when `mn` is missing). Rows: Figure 6 directly on a 3-host
substrate; through the players on one PIP; across two PIPs (three inter-PIP
links); a 100-node ring through the players on one PIP (up, down, and up +
down over Mininet's `mn --switch lxbr --controller none --topo linear,100
--test none`); with --big a 1000-node ring over 4 PIPs; a PIP's
advertisement of a 1000-host substrate (recomputed, and kept by deltas:
`vnetlib.players.advertised`); with --discovery a VNP asking 16 PIPs in
parallel (bench.players.discovery); the floor: 100 namespaces and 99 veth
pairs in one `ip -batch`, removed in another; and what the VNets left
behind (their nodes' namespaces, link bridges and tunnels on the lab's
hosts, looked for after the last delete of each lab). VNet rows:
median of --runs warm runs; "first" is a process's first run, which starts
its warm Ansible controller. --quick: one warm run, no Mininet, a smoke run
of every part in about a minute. Timings at a load average above 3 are not
worth comparing; the load is printed.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.players import discovery
from bench.players.workload import ring_vnet
from vnetlib.core.deployer import RecordingDeployer
from vnetlib.core.ledger import Ledger
from vnetlib.core.pip import PipCore, Pricing
from vnetlib.instantiate import destroy, instantiate
from vnetlib.lab import manage, testbed
from vnetlib.lab.layout import LabConfig
from vnetlib.lab.players import service_provider
from vnetlib.lab.testbed import PIP_LOCATIONS, LabSpec
from vnetlib.players.advertised import Advertiser
from vnetlib.players.messages import advertisement_xml
from vnetlib.players.negotiation import advertise
from vnetlib.spec import load_vnet
from vnetlib.spec.model import VNetSpec

from .substrate import big_substrate

ROOT = Path(__file__).resolve().parents[2]
FIGURE6 = ROOT / "examples" / "figure6.xml"
FIGURE6_2PIP = ROOT / "examples" / "figure6-2pip.xml"
MININET = ["mn", "--switch", "lxbr", "--controller", "none", "--topo", "linear,100",
           "--test", "none"]


@dataclass(frozen=True, slots=True)
class Row:
    what: str
    up: float | None
    down: float | None
    first_up: float | None = None
    target: str = ""
    up_max: float | None = None
    down_max: float | None = None

    @property
    def met(self) -> str:
        if self.up is None or (self.up_max is None and self.down_max is None):
            return ""
        ok = self.up_max is None or self.up < self.up_max
        ok = ok and (self.down_max is None or (self.down or 0.0) < self.down_max)
        return "yes" if ok else "no"


LEFT: list[str] = []  # what the VNets left behind, found before each lab went down


def left_behind(lab: str) -> list[str]:
    """What the VNets deployed on lab `lab` (or its PIPs' substrates) left
    after their deletes: virtual nodes' namespaces (vn-<lab>...) and link
    bridges and tunnels (vb*, vx*) in the lab's host namespaces."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=False).stdout.splitlines()
    names = [line.split()[0] for line in listed if line.strip()]
    found = [f"netns {n}" for n in names if n.startswith("vn-") and lab in n]
    for host in (n for n in names if n.startswith("vl-") and lab in n):
        links = subprocess.run(["ip", "-n", host, "-br", "link"], capture_output=True,
                               text=True, check=False).stdout.splitlines()
        found += [f"{host}: {line.split()[0].split('@')[0]}" for line in links
                  if line.startswith(("vb", "vx"))]
    return found


def _median(values: list[float]) -> float:
    return statistics.median(values)


def direct(runs: int) -> Row:
    lab = "bs" + secrets.token_hex(2)
    manage.up(LabConfig(name=lab, hosts=3, data_network="198.18.250.0/24",
                        mgmt_network="198.18.251.0/24"))
    ups: list[float] = []
    downs: list[float] = []
    try:
        for _ in range(runs + 1):
            start = time.perf_counter()
            result = instantiate(FIGURE6, lab)
            ups.append(time.perf_counter() - start)
            start = time.perf_counter()
            destroy(result.vnet_id)
            downs.append(time.perf_counter() - start)
        LEFT.extend(left_behind(lab))
    finally:
        manage.down(lab)
    return Row("Figure 6 directly (3 hosts)", _median(ups[1:]), _median(downs[1:]), ups[0],
               "up < 1.5 s", 1.5)


Case = tuple[str, VNetSpec, str, float | None, float | None]


def through_players(pips: int, offset: int, cases: list[Case], runs: int) -> list[Row]:
    """`cases`: (row title, VNet, target, up limit, down limit); one lab of
    `pips` PIPs for all."""
    name = "s" + secrets.token_hex(1) + "x"
    rows = []
    try:
        testbed.up(LabSpec(name=name, pips=pips, hosts=3, cpu=64.0, memory_mb=1 << 16,
                           mgmt_offset=offset))
        sp = service_provider(name)
        for title, spec, target, up_max, down_max in cases:
            ups: list[float] = []
            downs: list[float] = []
            phases: dict[str, list[float]] = {}
            for _ in range(runs + 1):
                start = time.perf_counter()
                view = sp.request_vnet(spec)
                ups.append(time.perf_counter() - start)
                for phase, seconds in view.timings:
                    phases.setdefault(phase, []).append(seconds)
                start = time.perf_counter()
                sp.delete(view.id)
                downs.append(time.perf_counter() - start)
            warm = slice(1, None) if runs else slice(None)  # runs=0: the one run is all
            rows.append(Row(title, _median(ups[warm]), _median(downs[warm]), ups[0], target,
                            up_max, down_max))
            at_vnp = ", ".join(f"{p} {_median(v[warm]):.2f}" for p, v in phases.items() if v[warm])
            print(f"  {title}: up {rows[-1].up:.2f} s, down {rows[-1].down:.2f} s "
                  f"(the VNP's phases: {at_vnp})", flush=True)
        LEFT.extend(left_behind(name))
    finally:
        testbed.down(name)
    return rows


def _timed(command: list[str], stdin: str | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, input=stdin, text=True, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - start


def floor(nodes: int = 100) -> tuple[float, float]:
    """(up, down) of `nodes` namespaces in a line of veth pairs, one ip -batch each."""
    prefix = "bf" + secrets.token_hex(2)
    names = [f"{prefix}-{i}" for i in range(nodes)]
    up = [f"netns add {n}" for n in names]
    up += [f"link add {prefix}a{i} netns {names[i]} type veth "
           f"peer {prefix}b{i} netns {names[i + 1]}" for i in range(nodes - 1)]
    down = [f"netns delete {n}" for n in names]
    try:
        made = _timed(["ip", "-batch", "-"], "\n".join(up) + "\n")
    finally:
        removed = _timed(["ip", "-force", "-batch", "-"], "\n".join(down) + "\n")
    return made, removed


def mininet() -> tuple[float | None, str]:
    """Wall time of Mininet's linear,100 up and down, or why it did not run."""
    if shutil.which("mn") is None or shutil.which("brctl") is None:
        # lxbr switches need brctl (bridge-utils), which mininet only recommends.
        done = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "mininet",
                               "bridge-utils"], capture_output=True, text=True,
                              env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        if done.returncode != 0 or shutil.which("mn") is None:
            return None, f"apt-get install mininet failed: {done.stderr.strip()[-200:]}"
    start = time.perf_counter()
    done = subprocess.run(MININET, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        subprocess.run(["mn", "-c"], capture_output=True, timeout=300)
        return None, f"mn failed: {(done.stderr or done.stdout).strip()[-300:]}"
    found = re.search(r"completed in ([0-9.]+) seconds", done.stdout + done.stderr)
    return wall, f"mn reports {found.group(1)} s" if found else ""


def advertisement(hosts: int = 1000, slivers: int = 40, repeat: int = 20) -> dict[str, float]:
    """Seconds per advertisement of a PIP core on `hosts` hosts holding
    `slivers` Figure 6 slivers: recomputed from the ledger (what a PIP did),
    served by the incremental advertiser unchanged, and after one sliver
    came and one went."""
    with tempfile.TemporaryDirectory(prefix="vnet-bench-ad-") as tmp:
        substrate = big_substrate(hosts)
        core = PipCore(substrate, Ledger(f"sqlite:///{tmp}/ledger.db", substrate.name),
                       RecordingDeployer(), Pricing(1.0, 0.1, 3600.0), pool_settings=None)
        try:
            spec = load_vnet(FIGURE6)
            for i in range(slivers):
                core.allocate("vnp", f"v{i}", spec)
            out: dict[str, float] = {}
            start = time.perf_counter()
            for _ in range(repeat):
                advertisement_xml(advertise(core.name, core.residual(), 1.0, 0.1))
            out["recomputed"] = (time.perf_counter() - start) / repeat
            advertiser = Advertiser(core.name)
            start = time.perf_counter()
            first = advertiser.document(core)
            out["first"] = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(repeat):
                advertiser.document(core)
            out["unchanged"] = (time.perf_counter() - start) / repeat
            delta = 0.0
            for i in range(repeat):
                core.allocate("vnp", f"n{i}", spec)
                core.delete("vnp", f"v{i}")
                start = time.perf_counter()
                advertiser.document(core)
                delta += time.perf_counter() - start
            out["delta"] = delta / repeat
            recomputed = advertisement_xml(advertise(core.name, core.residual(), 1.0, 0.1))
            if advertiser.document(core) != recomputed or first == recomputed:
                raise AssertionError("the incremental advertisement differs from the recomputed")
            return out
        finally:
            core.ledger.close()


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.speed")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: one warm run of each row, no Mininet")
    parser.add_argument("--big", action="store_true", help="also a 1000-node VNet over 4 PIPs")
    parser.add_argument("--no-mininet", action="store_true")
    parser.add_argument("--only", nargs="+", default=None,
                        choices=["direct", "one", "two", "big", "mininet", "floor", "advert",
                                 "discovery"])
    parser.add_argument("--discovery", action="store_true",
                        help="also a VNP asking 16 PIPs in parallel (starts 17 processes)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root: labs are made of network namespaces")
    if args.quick:
        args.runs, args.no_mininet = 1, True
    os.environ.setdefault("VNET_HOME", tempfile.mkdtemp(prefix="vnet-bench-"))
    want: Callable[[str], bool] = lambda part: args.only is None or part in args.only  # noqa: E731
    load_before = Path("/proc/loadavg").read_text().split()[:3]

    rows: list[Row] = []
    if want("direct"):
        rows.append(direct(args.runs))
        print(f"  {rows[-1].what}: up {rows[-1].up:.2f} s", flush=True)
    if want("one"):
        rows += through_players(1, 88, [
            ("Figure 6 through the players, 1 PIP", load_vnet(FIGURE6), "up < 2.5 s", 2.5, None),
            ("100-node ring through the players, 1 PIP", ring_vnet("ring100", 100, ["berlin"]),
             "up < 2 s, down < 1 s", 2.0, 1.0),
        ], args.runs)
    if want("two"):
        rows += through_players(2, 80, [
            ("Figure 6 across 2 PIPs (3 inter-PIP links)", load_vnet(FIGURE6_2PIP), "up < 4 s",
             4.0, None),
        ], args.runs)
    if args.big and want("big"):
        rows += through_players(4, 72, [
            ("1000-node ring over 4 PIPs", ring_vnet("ring1000", 1000, list(PIP_LOCATIONS[:4])),
             "works, timed", None, None),
        ], 0)
    mn: tuple[float | None, str] = (None, "not run")
    if want("mininet") and not args.no_mininet:
        mn = mininet()
    bottom = floor() if want("floor") else None
    advert = advertisement() if want("advert") else None
    asked = discovery.measure(16, 64, 10) if args.discovery and want("discovery") else []

    print()
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    print(f"load average before: {' '.join(load_before)}, after: {' '.join(load_after)}"
          + ("  (above 3: do not compare these timings)"
             if max(float(x) for x in load_before[:1] + load_after[:1]) > 3 else ""))
    print(f"{'':46s} {'up s':>7s} {'down s':>7s} {'first':>7s}  {'target':22s} met")
    for r in rows:
        print(f"{r.what:46s} {_fmt(r.up):>7s} {_fmt(r.down):>7s} {_fmt(r.first_up):>7s}  "
              f"{r.target:22s} {r.met}")
    ring = next((r for r in rows if r.what.startswith("100-node")), None)
    if mn[0] is not None:
        print(f"{'Mininet linear,100 (up and down)':46s} {mn[0]:7.2f} {'':>7s} {'':>7s}  "
              f"{mn[1]}")
        if ring is not None and ring.up is not None and ring.down is not None:
            share = (ring.up + ring.down) / mn[0]
            print(f"{'  ours 100 nodes up+down / Mininet':46s} {share:7.2f} {'':>7s} {'':>7s}  "
                  f"{'<= 0.25':22s} {'yes' if share <= 0.25 else 'no'}")
    else:
        print(f"Mininet: {mn[1]}")
    if bottom is not None:
        print(f"{'floor: 100 netns + 99 veth, one ip -batch':46s} {bottom[0]:7.2f} "
              f"{bottom[1]:7.2f}")
    for r in rows:
        if r.up is not None and r.down is not None and r.down > r.up:
            print(f"  teardown slower than setup: {r.what}")
    if rows:
        print(f"{'left behind by the VNets (netns, links)':46s} {len(LEFT):7d} {'':>7s} {'':>7s}  "
              f"{'nothing':22s} {'yes' if not LEFT else 'no: ' + ', '.join(LEFT[:4])}")
    if advert is not None:
        for what, key in (("recomputed from the ledger", "recomputed"),
                          ("incremental, first", "first"), ("incremental, unchanged", "unchanged"),
                          ("incremental, a sliver came, one went", "delta")):
            ms = advert[key] * 1000
            print(f"{'advertisement, 1000 hosts: ' + what:46s} {ms:7.2f} ms {'':>5s}  "
                  f"{'< 100 ms':22s} {'yes' if ms < 100 else 'no'}")
    for what, seconds in asked:
        print(f"{what[:46]:46s} {seconds * 1000:7.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
