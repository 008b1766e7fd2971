"""Measuring a move between PIPs (issue #13, for `bench.migrate`'s "between
PIPs" row): total time and downtime through the moved node.

A private lab of two PIPs (PIP 1 in Berlin, PIP 2 in London, two hosts
each) with its players holds e1 (Berlin) - r1 - e2 (London), routed from e1
to e2 through r1. r1 is moved by the SP's request through the chain
(`vnet migrate VNET r1 --location L`: VNO -> VNP -> both PIPs) to London and
back, while e1 pings e2 every 10 ms; per move: the wall time of the request
(what the command waits for, without its start) and the longest gap
between two answers from the move's start to 2 s after its end (e1's and
e2's routes through r1 are put back as soon as the request returns: a link
whose ends come to one host again is a veth pair made again, and routes added
by hand go with its interfaces). r1 is a
namespace node: made again at the other PIP (break before make), its links
stitched again. Needs root; removes everything it made.

    from bench.migrate.between import bench_between
    samples = bench_between(runs=2, mgmt_offset=64)
"""

from __future__ import annotations

import itertools
import secrets
import subprocess
import tempfile
import time
from dataclasses import dataclass

from vnetlib.lab import testbed
from vnetlib.lab.players import service_provider
from vnetlib.lab.testbed import LabSpec
from vnetlib.migrate.between_vnp import ask_vno

SPEC = b"""<?xml version="1.0" encoding="UTF-8"?>
<vnet xmlns="urn:vnet:rdl:1" version="1" name="bmbetween">
  <node id="e1" kind="netns" location="berlin" cpu="1" memory="128"/>
  <node id="r1" kind="netns" location="berlin" cpu="1" memory="128"/>
  <node id="e2" kind="netns" location="london" cpu="1" memory="128"/>
  <link id="l1" bandwidth="100">
    <endpoint node="e1" interface="eth0"><address>198.19.0.1/30</address></endpoint>
    <endpoint node="r1" interface="eth0"><address>198.19.0.2/30</address></endpoint>
  </link>
  <link id="l2" bandwidth="100">
    <endpoint node="r1" interface="eth1"><address>198.19.0.5/30</address></endpoint>
    <endpoint node="e2" interface="eth0"><address>198.19.0.6/30</address></endpoint>
  </link>
</vnet>
"""
AFTER = 2.0  # seconds of ping kept after a move ends


@dataclass(frozen=True, slots=True)
class BetweenSample:
    """One move: from where to where, its wall time and the longest ping gap."""

    location: str
    total: float
    gap: float
    phases: tuple[tuple[str, float], ...] = ()  # the VNP's: target, reshape, stitch, ...


def _netns(lab: str, node: str) -> str:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         check=True).stdout
    found = [line.split()[0] for line in out.splitlines()
             if line.startswith(f"vn-{lab}p") and line.split()[0].endswith(f"-{node}")]
    if len(found) != 1:
        raise RuntimeError(f"node {node}: namespaces {found}")
    return found[0]


def _routes(e1: str, e2: str) -> None:
    """e1 and e2 reach each other through r1 (added again after each move)."""
    for ns, net, via in ((e1, "198.19.0.4/30", "198.19.0.2"), (e2, "198.19.0.0/30",
                                                               "198.19.0.5")):
        subprocess.run(["ip", "-n", ns, "route", "replace", net, "via", via], check=True)


def _ping_until(netns: str, address: str, wait: float) -> None:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if subprocess.run(["ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "1", address],
                          capture_output=True).returncode == 0:
            return
    raise RuntimeError(f"{netns} does not reach {address}")


def _gap(stamps: list[float], start: float, end: float) -> float:
    points = [start, *[t for t in stamps if start <= t <= end], end]
    return max(b - a for a, b in itertools.pairwise(points))


def bench_between(runs: int = 2, mgmt_offset: int = 64) -> list[BetweenSample]:
    """`runs` moves of r1 between the PIPs (London, Berlin, London, ...)."""
    name = "bb" + secrets.token_hex(1)[:1] + secrets.choice("abcdefghij")
    testbed.up(LabSpec(name=name, pips=2, hosts=2, players=True, mgmt_offset=mgmt_offset))
    try:
        sp = service_provider(name)
        view = sp.request_vnet(SPEC)
        e1, e2 = _netns(name, "e1"), _netns(name, "e2")
        _routes(e1, e2)
        _ping_until(e1, "198.19.0.6", 30)
        samples = []
        for location in itertools.islice(itertools.cycle(("london", "berlin")), runs):
            with tempfile.TemporaryFile(mode="w+") as out:
                ping = subprocess.Popen(["ip", "netns", "exec", e1, "ping", "-D", "-n", "-i",
                                         "0.01", "-W", "1", "198.19.0.6"],
                                        stdout=out, stderr=subprocess.STDOUT, text=True)
                try:
                    time.sleep(1.0)
                    start = time.time()
                    got = ask_vno(sp.client, view.id, "r1", location)
                    end = time.time()
                    _routes(e1, e2)  # a link made a veth pair again takes them with it
                    time.sleep(AFTER)
                finally:
                    ping.terminate()
                    ping.wait(timeout=10)
                out.seek(0)
                stamps = [float(line[1:line.index("]")]) for line in out.read().splitlines()
                          if line.startswith("[") and "bytes from" in line]
            phases = tuple((k.removeprefix("move-"), v) for k, v in got.timings
                           if k.startswith("move-"))
            samples.append(BetweenSample(location, end - start,
                                         _gap(stamps, start, end + AFTER), phases))
        sp.delete(view.id)
        return samples
    finally:
        testbed.down(name)


__all__ = ["BetweenSample", "bench_between"]
