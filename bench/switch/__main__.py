"""Switch VLANs on Open vSwitch (userspace datapath): daemon start time, setup
time per link segment through the switch daemon, and one TCP stream's goodput
and the median round-trip time between two nodes in one VLAN, beside a bare
veth pair between two namespaces in the same run.

    .venv/bin/python -m bench.switch [--segments 20] [--seconds 3]

Setup = ``SwitchDaemon.attach`` of one segment with two access ports (VLAN
allocation in SQLite + OVSDB transactions, ports already on the bridge) on a
switch that carries the earlier segments. Throughput: a timed transfer
(``click_lab.throughput``; iperf3 is not installed). RTT: median of 20 pings
0.05 s apart. Needs root and scripts/install-ovs.sh; cleans up after itself.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "integration"))
from click_lab import throughput
from ovs_lab import Lab, nsx, ovs_lab, sh

from vnetlib.switch.daemon import PortRef, SwitchDaemon, VlanPool
from vnetlib.switch.driver import OvsDriver


def rtt_ms(ns: str, dst: str) -> float:
    out = nsx(ns, "ping", "-n", "-c", "20", "-i", "0.05", dst).stdout
    return statistics.median(float(x) for x in re.findall(r"time=([\d.]+) ms", out))


def bare_veth(lab: Lab) -> tuple[str, str]:
    a, b = f"{lab.prefix}va", f"{lab.prefix}vb"
    for ns in (a, b):
        sh("ip", "netns", "add", ns)
        lab.nodes.append(ns)
    sh("ip", "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
       "netns", b)
    for ns, addr in ((a, "198.19.9.1/24"), (b, "198.19.9.2/24")):
        sh("ip", "-n", ns, "addr", "add", addr, "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
    return a, b


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--segments", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    t0 = time.monotonic()
    with ovs_lab() as lab:
        start_ms = (time.monotonic() - t0) * 1000
        with OvsDriver(lab.ovs.remote, f"{lab.prefix}br") as drv:
            d = SwitchDaemon(VlanPool(lab.ovs.rundir / "vlans.sqlite", "bench"), {"s": drv})
            a, pa = lab.node("198.18.40.1/24")
            b, pb = lab.node("198.18.40.2/24")
            for ns in (a, b):  # checksums in software: the userspace datapath does none
                nsx(ns, "ethtool", "-K", "eth0", "tx", "off")
            setup = []
            for i in range(args.segments):
                pair = [lab.node(f"198.18.41.{2 * i + 1}/24")[1],
                        lab.node(f"198.18.41.{2 * i + 2}/24")[1]]
                t = time.monotonic()
                d.attach("bench", f"s{i}", [PortRef("s", p) for p in pair])
                setup.append((time.monotonic() - t) * 1000)
            d.attach("bench", "main", [PortRef("s", pa), PortRef("s", pb)])
            ovs_rtt = rtt_ms(a, "198.18.40.2")
            ovs_tput = throughput(a, b, "198.18.40.2", args.seconds)
        va, vb = bare_veth(lab)
        veth_rtt = rtt_ms(va, "198.19.9.2")
        veth_tput = throughput(va, vb, "198.19.9.2", args.seconds)
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    print(f"load average before {'/'.join(load_before)}, after {'/'.join(load_after)}")
    print(f"OVS daemons up (ovsdb-server + ovs-vswitchd + init): {start_ms:.0f} ms")
    print(f"setup per segment (2 access ports): median {statistics.median(setup):.1f} ms, "
          f"max {max(setup):.1f} ms over {len(setup)}")
    print("| path | TCP goodput Mbit/s | RTT median ms |\n| --- | ---: | ---: |")
    print(f"| bare veth pair | {veth_tput:.0f} | {veth_rtt:.3f} |")
    print(f"| OVS userspace bridge, one VLAN | {ovs_tput:.0f} | {ovs_rtt:.3f} |")


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as exc:
        sys.exit(f"{exc.cmd}: {exc.stderr}")
