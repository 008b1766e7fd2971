"""The data plane per encapsulation (vxlan, click, vlan) through the planner and
the deployment: setup time per link, throughput and round-trip time between
two nodes on different hosts, and enforced bandwidth against the spec, beside
a bare veth pair between two namespaces in the same run.

    .venv/bin/python -m bench.dataplane [--links 8] [--seconds 4] [--rate 50]
                                        [--repeat 3] [--encaps vxlan,click,vlan]
                                        [--switch ovsdb|ssh]

One lab for every encapsulation (`vnet lab up --pips N --encap vxlan,click,
vlan`: PIP i's substrate of two hosts carries its links with the i-th; no
players, hosts of 2 CPUs) in a private $VNET_HOME; VNets of two nodes of
1.5 CPUs (so one per host) are instantiated directly (`vnet up --substrate`):

* setup per link: the median deploy phase of a VNet with --links crossing
  links minus the median of a VNet with one, divided by --links - 1 (the
  marginal cost of a link, both hosts' segments, one Ansible run), over
  --repeat deployments of each, alternated, after a first one-link VNet
  that is not counted (it warms up the controller); the spread of the
  samples is printed beside it;
* throughput: iperf3, one TCP stream for --seconds, receiver's goodput, over
  a link whose spec is 800 Mbit/s (the lab's host links are 1000);
* RTT: median of 20 pings 0.05 s apart over that link (no latency in spec);
* enforced bandwidth: iperf3 over a link whose spec is --rate Mbit/s;
  expected goodput rate * (MTU - 52) / (MTU + 14) (TCP payload with
  timestamps per Ethernet frame; the shapers count frames): VXLAN and Click
  links have MTU 1450, VLAN links 1500. VXLAN and VLAN links are shaped by
  the kernel path (vnet_link's tbf), Click links by Click.

`--switch ssh`: the VLAN PIP's switch is programmed over SSH (`vnet lab up
--switch ssh`, the deployment's vnet_vlan with driver ssh) instead of
through OVSDB; compare its setup per link with a run without.

Needs root, iperf3 and Click (scripts/install-click.sh), Open vSwitch
(scripts/install-ovs.sh); removes everything it made.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

FAST_MBPS = 800.0
PORT = 5201


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=120)


def spec_xml(name: str, links: int, rate: float) -> str:
    """Nodes a and b; link f0 (FAST_MBPS), s1 (`rate`), then x2.. of 10 Mbit/s."""
    out = [f'<vnet xmlns="urn:vnet:rdl:1" version="1" name="{name}">',
           '  <node id="a" kind="netns" cpu="1.5" memory="64"/>',
           '  <node id="b" kind="netns" cpu="1.5" memory="64"/>']
    for i in range(links):
        lid = "f0" if i == 0 else "s1" if i == 1 else f"x{i}"
        bw = FAST_MBPS if i == 0 else rate if i == 1 else 10.0
        out += [f'  <link id="{lid}" bandwidth="{bw:g}">',
                f'    <endpoint node="a" interface="eth{i}">'
                f"<address>198.19.{i}.1/30</address></endpoint>",
                f'    <endpoint node="b" interface="eth{i}">'
                f"<address>198.19.{i}.2/30</address></endpoint>",
                "  </link>"]
    return "\n".join([*out, "</vnet>", ""])


def iperf(client: str, server: str, dst: str, seconds: float) -> float:
    """Receiver's goodput of one TCP stream in Mbit/s."""
    srv = subprocess.Popen(["ip", "netns", "exec", server, "iperf3", "-s", "-1", "-p", str(PORT)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if f":{PORT}" in sh("ip", "netns", "exec", server, "ss", "-ltn").stdout:
                break
            time.sleep(0.1)
        out = sh("ip", "netns", "exec", client, "iperf3", "-c", dst, "-p", str(PORT),
                 "-t", str(seconds), "-J").stdout
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e6
    finally:
        if srv.poll() is None:
            srv.kill()
        srv.wait()


def rtt_ms(ns: str, dst: str) -> float:
    out = sh("ip", "netns", "exec", ns, "ping", "-n", "-c", "20", "-i", "0.05", dst).stdout
    return statistics.median(float(x) for x in re.findall(r"time=([\d.]+) ms", out))


def free_offset(pips: int) -> int:
    root = sh("ip", "-o", "-4", "addr", "show").stdout
    free = [k for k in range(4, 97, 4) if not any(f" 198.18.{129 + k + i}." in root
                                                  for i in range(2 * pips))]
    return secrets.choice(free)


def bench_encap(encap: str, substrate: str, links: int, seconds: float, rate: float,
                repeat: int, work: Path) -> dict[str, float]:
    from vnetlib import instantiate

    deploy: dict[int, list[float]] = {1: [], links: []}
    order = [0, *[n for _ in range(repeat) for n in (1, links)]]  # 0: warms up, not counted
    for i, n in enumerate(order):
        path = work / f"{encap}{i}.xml"
        path.write_text(spec_xml(f"bd{i}", max(n, 1), rate))
        made = instantiate.instantiate(path, substrate)
        if n:
            deploy[n].append(made.timings["deploy"])
        a, b = (f"vn-{substrate}-{made.vnet_id}-{x}" for x in "ab")
        assert made.node_map["a"] != made.node_map["b"], made.node_map
        if i == len(order) - 1:
            fast = iperf(a, b, "198.19.0.2", seconds)
            rtt = rtt_ms(a, "198.19.0.2")
            shaped = iperf(a, b, "198.19.1.2", seconds)
        instantiate.destroy(made.vnet_id)
    mtu = 1500 if encap == "vlan" else 1450
    expect = rate * (mtu - 52) / (mtu + 14)
    one, many = statistics.median(deploy[1]), statistics.median(deploy[links])
    per_link = [(m - o) / (links - 1) * 1000 for o in deploy[1] for m in deploy[links]]
    return {"setup_ms": (many - one) / (links - 1) * 1000, "setup_min": min(per_link),
            "setup_max": max(per_link), "deploy1_s": one, "deployN_s": many, "mbps": fast,
            "rtt_ms": rtt, "shaped": shaped, "expect": expect}


def bench_encaps(encaps: list[str], links: int, seconds: float, rate: float, repeat: int,
                 work: Path, switch: str = "ovsdb") -> dict[str, dict[str, float]]:
    """Every encapsulation on its own substrate of one lab."""
    from vnetlib.lab import testbed

    lab = testbed.LabSpec(name="b" + secrets.token_hex(1) + secrets.choice("abcdefghij"),
                          pips=len(encaps), hosts=2, cpu=2.0, players=False,
                          encap=",".join(encaps), mgmt_offset=free_offset(len(encaps)),
                          switch=switch)
    try:
        testbed.up(lab)
        return {e: bench_encap(e, f"{lab.name}p{i + 1}", links, seconds, rate, repeat, work)
                for i, e in enumerate(encaps)}
    finally:
        testbed.down(lab.name)


def bench_veth(seconds: float, rate: float) -> dict[str, float]:
    tag = secrets.token_hex(2)
    a, b = f"bdv{tag}a", f"bdv{tag}b"
    try:
        for ns in (a, b):
            sh("ip", "netns", "add", ns)
        sh("ip", "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
           "netns", b)
        for ns, addr in ((a, "198.19.99.1/30"), (b, "198.19.99.2/30")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        return {"mbps": iperf(a, b, "198.19.99.2", seconds), "rtt_ms": rtt_ms(a, "198.19.99.2")}
    finally:
        for ns in (a, b):
            sh("ip", "netns", "del", ns, check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--links", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--encaps", default="vxlan,click,vlan")
    ap.add_argument("--switch", choices=("ovsdb", "ssh"), default="ovsdb",
                    help="how the VLAN PIP's switch is programmed")
    args = ap.parse_args()
    encaps = args.encaps.split(",")
    if not set(encaps) <= {"vxlan", "click", "vlan"} or len(set(encaps)) != len(encaps):
        ap.error("--encaps lists vxlan, click, vlan, each at most once")
    if args.switch == "ssh" and "vlan" not in encaps:
        ap.error("--switch ssh needs vlan in --encaps")
    if not 1 <= args.repeat <= 10:
        ap.error("--repeat is 1 to 10")
    if not 2 <= args.links <= 16:
        ap.error("--links is 2 to 16 (the lab's host links hold 800 + rate + 10 per link)")
    if shutil.which("iperf3") is None:
        ap.error("iperf3 is missing: run scripts/install-click.sh")
    work = Path(tempfile.mkdtemp(prefix="vnet-bench-dp-"))
    os.environ["VNET_HOME"] = str(work / "home")
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    try:
        veth = bench_veth(args.seconds, args.rate)
        rows = bench_encaps(encaps, args.links, args.seconds, args.rate, args.repeat, work,
                            args.switch)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    print(f"load average before {'/'.join(load_before)}, after {'/'.join(load_after)}")
    print()
    print(f"| path | setup per link ms (range) | TCP goodput Mbit/s (spec {FAST_MBPS:g}) | "
          f"RTT median ms | goodput at spec {args.rate:g} Mbit/s (expected) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| bare veth pair | | {veth['mbps']:.0f} | {veth['rtt_ms']:.3f} | |")
    for encap, r in rows.items():
        dev = (r["shaped"] / r["expect"] - 1) * 100
        label = f"{encap} (switch over SSH)" if encap == "vlan" and args.switch == "ssh" else encap
        print(f"| {label} | {r['setup_ms']:.0f} ({r['setup_min']:.0f} to {r['setup_max']:.0f})"
              f" | {r['mbps']:.0f} | {r['rtt_ms']:.3f} | "
              f"{r['shaped']:.2f} ({r['expect']:.2f}, {dev:+.1f} %) |")
    print()
    for encap, r in rows.items():
        print(f"{encap}: median deploy of 1 link {r['deploy1_s']:.2f} s, of {args.links} "
              f"links {r['deployN_s']:.2f} s ({args.repeat} of each)")


if __name__ == "__main__":
    main()
