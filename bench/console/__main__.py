"""Console chains against their depth: session setup and keystroke round trip,
beside a chain of as many plain TCP relays (socat) to an echo endpoint.

    .venv/bin/python -m bench.console [--depths 1 2 4 8] [--rounds 200] [--setups 30]

Depth d is the number of VNPs stacked between the VNO and the PIP (d = 1 is
the plain SP -> VNO -> VNP -> PIP chain; deeper chains stack VNPs acting as
PIPs for the VNP above, as tests/integration/test_console_recursion.py does).
Hops = the proxy hops between the client and the endpoint = the players that
relay the data path = d + 2 (the VNO, d VNPs, the PIP); the TCP baseline has
as many socat relays in front of an echo endpoint (`printf '$ '; exec cat`).

Setup = the console request over HTTPS down the chain + the data path's
connect (a TLS connection per hop, the shell started at the PIP) until the
first prompt byte arrives; baseline: TCP connects through the relays until
the echo endpoint's first byte. Round trip = write one byte, read its echo
(the node's pty echoes it). The players run in this process (real mutual TLS
on loopback, real substrate namespaces, a real confined shell), so they share
one interpreter with the client. Needs root; cleans up after itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.integration.players_fixtures import Players, namespaces
from vnetlib.console.wire import dial
from vnetlib.lab import manage
from vnetlib.lab.layout import LabConfig
from vnetlib.players.pki import LabCA, Role
from vnetlib.players.sp import ServiceProvider
from vnetlib.spec import parse_vnet

SETUP_PER_HOP = 0.002  # targets: median setup per hop; at depth 8 overall
SETUP_AT_DEPTH_8 = 0.020
RTT_PER_HOP = 0.001
PAPER_PER_HOP = 0.02  # the paper's per-hop figure

ONE_NODE = b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="bench%d">
  <node id="n1" location="berlin"/>
</vnet>"""


@dataclass(frozen=True, slots=True)
class Figures:
    setups: tuple[float, ...]
    rtts: tuple[float, ...]
    phases: tuple[tuple[float, float, float], ...] = ()  # HTTPS, connect to OK, prompt

    @staticmethod
    def _p(values: tuple[float, ...], q: float) -> float:
        s = sorted(values)
        return s[min(len(s) - 1, round(q * (len(s) - 1)))]

    @property
    def setup_p50(self) -> float:
        return statistics.median(self.setups)

    @property
    def setup_p95(self) -> float:
        return self._p(self.setups, 0.95)

    @property
    def rtt_p50(self) -> float:
        return statistics.median(self.rtts)

    @property
    def rtt_p95(self) -> float:
        return self._p(self.rtts, 0.95)


async def _first_bytes(reader: asyncio.StreamReader, marker: bytes) -> None:
    got = b""
    while marker not in got:
        chunk = await asyncio.wait_for(reader.read(4096), 10)
        if not chunk:
            raise RuntimeError(f"closed before {marker!r}: {got!r}")
        got += chunk


async def _round_trips(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        writer.write(b"x")
        await writer.drain()
        await _first_bytes(reader, b"x")
        out.append(time.perf_counter() - start)
    return out


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 2)
    except Exception:  # a TLS close that does not finish is aborted
        writer.transport.abort()


def console_figures(sp: ServiceProvider, vnet: str, setups: int, rounds: int) -> Figures:
    async def run() -> Figures:
        context = sp.credentials.client_context()
        times = []
        rtts: list[float] = []
        phases: list[tuple[float, float, float]] = []
        for i in range(setups + 1):
            start = time.perf_counter()
            session = await asyncio.to_thread(sp.console, vnet, "n1")
            t_https = time.perf_counter()
            reader, writer = await dial(session.url, session.token, context, sp.credentials)
            t_ok = time.perf_counter()
            await _first_bytes(reader, b"$")
            took = time.perf_counter() - start
            phases.append((t_https - start, t_ok - t_https, start + took - t_ok))
            if i == 0:  # the first one warms caches and connections up
                await asyncio.sleep(0.3)
                await _first_bytes_drain(reader)
                await _round_trips(reader, writer, 10)
                rtts = await _round_trips(reader, writer, rounds)
            else:
                times.append(took)
            await _close(writer)
        return Figures(tuple(times), tuple(rtts), tuple(phases[1:]))

    return asyncio.run(run())


async def _first_bytes_drain(reader: asyncio.StreamReader) -> None:
    """Whatever is still coming (the rest of the prompt), so echoes start clean."""
    while True:
        try:
            if not await asyncio.wait_for(reader.read(4096), 0.2):
                return
        except TimeoutError:
            return


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tcp_figures(hops: int, setups: int, rounds: int) -> Figures:
    """The same figures through `hops` socat relays to an echo endpoint."""
    ports = [free_port() for _ in range(hops + 1)]
    procs = [subprocess.Popen(
        ["socat", f"TCP-LISTEN:{ports[-1]},bind=127.0.0.1,reuseaddr,fork,nodelay",
         "SYSTEM:printf '$ '; exec cat"])]
    for i in range(hops):
        procs.append(subprocess.Popen(
            ["socat", f"TCP-LISTEN:{ports[i]},bind=127.0.0.1,reuseaddr,fork,nodelay",
             f"TCP:127.0.0.1:{ports[i + 1]},nodelay"]))
    try:
        deadline = time.monotonic() + 10
        for port in ports:
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        time.sleep(0.3)  # the probe connections' children are gone

        async def run() -> Figures:
            times, rtts = [], []
            for i in range(setups + 1):
                start = time.perf_counter()
                reader, writer = await asyncio.open_connection("127.0.0.1", ports[0])
                await _first_bytes(reader, b"$")
                took = time.perf_counter() - start
                if i == 0:
                    await _first_bytes_drain(reader)
                    await _round_trips(reader, writer, 10)
                    rtts = await _round_trips(reader, writer, rounds)
                else:
                    times.append(took)
                await _close(writer)
            return Figures(tuple(times), tuple(rtts))

        return asyncio.run(run())
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(5)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def table(rows: list[tuple[int, Figures, Figures]]) -> str:
    head = ("| depth | hops | path | setup p50 ms | setup p95 ms | setup p50 / hop ms "
            "| RTT p50 ms | RTT p95 ms | RTT p50 / hop ms |\n"
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    for depth, console, tcp in rows:
        hops = depth + 2
        for name, f in (("console (TLS, players)", console), ("TCP relays (socat)", tcp)):
            lines.append(f"| {depth} | {hops} | {name} | {ms(f.setup_p50)} | {ms(f.setup_p95)} "
                         f"| {ms(f.setup_p50 / hops)} | {ms(f.rtt_p50)} | {ms(f.rtt_p95)} "
                         f"| {ms(f.rtt_p50 / hops)} |")
    return head + "\n".join(lines) + "\n"


def breakdown(rows: list[tuple[int, Figures, Figures]]) -> str:
    out = ["| depth | hops | HTTPS setup p50 ms | data path to OK p50 ms "
           "| OK to first prompt byte p50 ms |", "|---:|---:|---:|---:|---:|"]
    for depth, c, _ in rows:
        cols = [ms(statistics.median(p[i] for p in c.phases)) for i in range(3)]
        out.append(f"| {depth} | {depth + 2} | " + " | ".join(cols) + " |")
    return "\n".join(out) + "\n"


def verdicts(rows: list[tuple[int, Figures, Figures]]) -> str:
    out = [f"Targets: setup p50 < {ms(SETUP_PER_HOP)} ms per hop and < "
           f"{ms(SETUP_AT_DEPTH_8)} ms at depth 8; keystroke RTT p50 < {ms(RTT_PER_HOP)} ms "
           f"per hop; the paper: {ms(PAPER_PER_HOP)} ms per hop."]
    for depth, c, _ in rows:
        hops = depth + 2
        setup_ok = c.setup_p50 / hops < SETUP_PER_HOP and (
            depth != 8 or c.setup_p50 < SETUP_AT_DEPTH_8)
        rtt_ok = c.rtt_p50 / hops < RTT_PER_HOP
        paper_ok = c.setup_p50 / hops < PAPER_PER_HOP
        out.append(f"- depth {depth}: setup {'met' if setup_ok else 'MISSED'} "
                   f"({ms(c.setup_p50 / hops)} ms/hop), RTT {'met' if rtt_ok else 'MISSED'} "
                   f"({ms(c.rtt_p50 / hops)} ms/hop), paper's 20 ms/hop "
                   f"{'met' if paper_ok else 'MISSED'}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--rounds", type=int, default=200, help="keystroke round trips")
    ap.add_argument("--setups", type=int, default=30, help="session setups per depth")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.console needs root (lab substrates)", file=sys.stderr)
        return 2
    if shutil.which("socat") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "socat"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    depths = sorted(set(args.depths))
    load_before = os.getloadavg()
    started = time.time()
    home = Path(tempfile.mkdtemp(prefix="bench-console-"))
    os.environ["VNET_HOME"] = str(home)
    tag = secrets.token_hex(2)
    lab = LabConfig(name=f"c{tag}", hosts=1, data_network="198.18.231.0/24",
                    mgmt_network="198.19.231.0/24", locations=("berlin",))
    players = Players(LabCA.create(home / "ca", "bench console"), home)
    rows: list[tuple[int, Figures, Figures]] = []
    made = False
    try:
        manage.up(lab)
        made = True
        players.pip("pip-a", lab.name)
        below = "pip-a"
        for level in range(1, max(depths) + 1):
            players.vnp(f"vnp{level}", [below])
            below = f"vnp{level}"
            if level in depths:
                players.vno(f"vno{level}", below)
        for depth in depths:
            sp = ServiceProvider(players.nodes[f"vno{depth}"].url,
                                 players.creds(f"sp{depth}", Role.SP), 300.0,
                                 vno_name=f"vno{depth}")
            view = sp.request_vnet(parse_vnet(ONE_NODE % depth))
            try:
                console = console_figures(sp, view.id, args.setups, args.rounds)
            finally:
                sp.delete(view.id)
            tcp = tcp_figures(depth + 2, args.setups, args.rounds)
            rows.append((depth, console, tcp))
            print(f"depth {depth}: console setup p50 {ms(console.setup_p50)} ms, RTT p50 "
                  f"{ms(console.rtt_p50)} ms; TCP setup p50 {ms(tcp.setup_p50)} ms, "
                  f"RTT p50 {ms(tcp.rtt_p50)} ms", flush=True)
    finally:
        players.stop_all()
        if made:
            manage.down(lab.name)
        for ns in namespaces(f"vn-{lab.name}-"):
            subprocess.run(["ip", "netns", "delete", ns], check=False)
        shutil.rmtree(home, ignore_errors=True)
    load_after = os.getloadavg()
    print()
    print(table(rows))
    print(breakdown(rows))
    print(verdicts(rows))
    print(f"command: python -m bench.console --depths {' '.join(map(str, depths))} "
          f"--rounds {args.rounds} --setups {args.setups}")
    print(f"machine: {os.cpu_count()} CPUs; load average (1/5/15 min) before "
          f"{'/'.join(f'{x:.2f}' for x in load_before)}, after "
          f"{'/'.join(f'{x:.2f}' for x in load_after)}; {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
