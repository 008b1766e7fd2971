"""Click data plane: setup time per link, throughput and round-trip time between
two nodes on different hosts, and enforced bandwidth against the spec, beside
a bare veth pair between two namespaces in the same run.

    .venv/bin/python -m bench.dataplane.module [--links 8] [--seconds 4] [--rate 50]

(The module-level Click bench; ``python -m bench.dataplane`` compares the
encapsulations through the planner and the deployment.)

Two substrate hosts are namespaces joined by a veth pair (198.18.200.0/24);
nodes are namespaces on link bridges (MTU 1450, as planned for crossing
links). Setup = one ``vnet_click`` apply (``vnetlib.click.process.apply``) of
one VNet's one segment on one host: the first starts Click, the others are hot
swaps of a configuration that grows by one link each. Throughput = one TCP
stream's goodput for --seconds (a timed transfer: iperf3 is not installed);
RTT = median of 20 pings (0.05 s apart). The shaped link's spec is --rate
Mbit/s on Ethernet frames; the goodput expected from it is rate * 1398/1464
(TCP payload per frame at MTU 1450 with timestamps). Needs root and Click
(scripts/install-click.sh); cleans up after itself.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "integration"))
from click_lab import NODE_MTU, Lab, nsx, sh, throughput, two_hosts

from vnetlib.click.config import CLICK_PORT
from vnetlib.click.process import apply


def rtt_ms(ns: str, dst: str) -> float:
    out = nsx(ns, "ping", "-n", "-c", "20", "-i", "0.05", dst).stdout
    return statistics.median(float(x) for x in re.findall(r"time=([\d.]+) ms", out))


def bare_veth(lab: Lab) -> tuple[str, str]:
    a, b = f"{lab.prefix}-va", f"{lab.prefix}-vb"
    for ns in (a, b):
        sh("ip", "netns", "add", ns)
        lab.namespaces.append(ns)
    sh("ip", "-n", a, "link", "add", "eth0", "mtu", str(NODE_MTU), "type", "veth",
       "peer", "name", "eth0", "netns", b, "mtu", str(NODE_MTU))
    for ns, addr in ((a, "198.19.9.1/24"), (b, "198.19.9.2/24")):
        sh("ip", "-n", ns, "addr", "add", addr, "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
    return a, b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--links", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rate", type=float, default=50.0)
    args = ap.parse_args()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory() as tmp, two_hosts(Path(tmp)) as lab:
        setup: list[float] = []
        for i in range(args.links):
            vni = 8000 + i
            segs = [lab.segment("l1", vni, f"vb{vni}", h) for h in (0, 1)]
            for h in (0, 1):
                t0 = time.perf_counter()
                apply(lab.instance(h), f"v{i}", [segs[h]], present=True, click=None,
                      port=CLICK_PORT, check_mode=False)
                setup.append(time.perf_counter() - t0)
        a, b = (lab.node("ua", 0, "vb8000", "198.19.0.1/24"),
                lab.node("ub", 1, "vb8000", "198.19.0.2/24"))
        shaped = [lab.segment("l1", 9000, "vb9000", h, args.rate) for h in (0, 1)]
        sa, sb = (lab.node("sa", 0, "vb9000", "198.19.1.1/24"),
                  lab.node("sb", 1, "vb9000", "198.19.1.2/24"))
        lab.deploy("shaped", [[shaped[0]], [shaped[1]]])
        va, vb = bare_veth(lab)
        rows = [
            ("bare veth pair", throughput(va, vb, "198.19.9.2", args.seconds),
             rtt_ms(va, "198.19.9.2")),
            ("Click UDP link, unshaped", throughput(a, b, "198.19.0.2", args.seconds),
             rtt_ms(a, "198.19.0.2")),
        ]
        got = throughput(sa, sb, "198.19.1.2", args.seconds)
        expect = args.rate * 1398 / 1464
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    first, swaps = setup[:2], setup[2:]
    print(f"load average before {'/'.join(load_before)}, after {'/'.join(load_after)}")
    print()
    print("| path | TCP goodput Mbit/s | RTT median ms |")
    print("| --- | ---: | ---: |")
    for name, mbps, rtt in rows:
        print(f"| {name} | {mbps:.0f} | {rtt:.3f} |")
    print()
    print(f"setup per link and host: first (starts Click) {statistics.mean(first) * 1000:.0f} ms; "
          f"hot swap median {statistics.median(swaps) * 1000:.0f} ms, "
          f"max {max(swaps) * 1000:.0f} ms over {len(swaps)} swaps "
          f"(up to {args.links} links per host)")
    print(f"enforced bandwidth: spec {args.rate:g} Mbit/s, goodput {got:.2f} Mbit/s, "
          f"expected {expect:.2f} ({(got / expect - 1) * 100:+.1f} %)")


if __name__ == "__main__":
    main()
