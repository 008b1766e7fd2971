"""Console chains against their depth: session setup and keystroke round trip,
beside a chain of as many plain TCP relays (socat) to an echo endpoint.

    .venv/bin/python -m bench.console [--depths 1 2 4 8] [--rounds 200] [--setups 30]
                                      [--pause 0.2] [--spawns 10]

Depth d is the number of VNPs stacked between the VNO and the PIP (d = 1 is
the plain SP -> VNO -> VNP -> PIP chain; deeper chains stack VNPs acting as
PIPs for the VNP above, as tests/integration/test_console_recursion.py does).
Hops = the proxy hops between the client and the endpoint = the players that
relay the data path = d + 2 (the VNO, d VNPs, the PIP); the TCP baseline has
as many socat relays in front of an echo endpoint (`printf '$ '; exec cat`).

Setup = what a library client does (`open_console(..., keep=True)`) until
the first prompt byte arrives: its first session asks the VNO over HTTPS and
presents the token on the VNO's console listener (what `vnet console`, one
session per process, always does); later ones ask the listener itself
(`VNET-CONSOLE-OPEN`, same authorization and chain), on a spare TLS
connection the client opened after the session before; baseline: TCP
connects through the relays until the echo endpoint's first byte. Round trip
= write one byte, read its echo (the node's pty echoes it). The players run
in this process (real mutual TLS on loopback, real substrate namespaces, a
real confined shell), so they share one interpreter; the client runs in a
process of its own (`--client process`, the default), as a user's client
does: in the players' process its CPU (its HTTPS call, its TLS handshake
with the VNO's listener) would queue behind theirs for the one interpreter
lock, a cost no user sees (`--client in-process` measures that way, as the
bench did before). Needs root; cleans up after itself.

Sessions follow each other `--pause` seconds apart. The first session of a
depth is reported apart ("first"): it finds no kept-alive HTTPS connection
between the players, no spare console connection between their listeners
and no spare shell at the node. The others find them: the steady state of a
console used now and then (a spare shell lives 60 s, a spare console
connection 5 s, the client's spare connection to the listener 5 s, a
kept-alive HTTPS connection 2 s, a player's cached record of the VNet 5 s,
so at depth 8 the HTTPS calls near the PIP find theirs, and a session a
minute after the last one pays the first's price). The per-hop
slope is the least-squares line through the setup medians against hops; its
intercept is what no hop adds (the client's request and the VNO's
answer, the endpoint). The endpoint's own cost is measured apart: a confined shell
started cold until its first prompt byte, what a session pays when no spare
shell is waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import queue
import secrets
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from tests.integration.players_fixtures import Players, namespaces
from vnetlib import naming
from vnetlib.console.client import open_console
from vnetlib.console.endpoints import SHELL
from vnetlib.lab import manage
from vnetlib.lab.layout import LabConfig
from vnetlib.players.confine import Confinement
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
    phases: tuple[tuple[float, float, float], ...] = ()  # request out, to OK, prompt
    first: float = 0.0
    lost: int = 0  # sessions measured again: their shell was killed from outside

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


class _Timed(ServiceProvider):
    """An SP that notes when its console request was sent on the listener
    (or answered over HTTPS, the first session)."""

    answered = 0.0

    def note(self) -> None:
        self.answered = time.perf_counter()


def console_figures(sp: _Timed, vnet: str, setups: int, rounds: int,
                    pause: float) -> Figures:
    """Sessions one after the other. A session whose shell dies under it is
    measured again, and counted in `Figures.lost` (on a shared machine,
    another PIP starting up kills the tenants it does not know: they share
    one cgroup parent)."""

    async def run() -> Figures:
        times = []
        rtts: list[float] = []
        phases: list[tuple[float, float, float]] = []
        first = 0.0
        lost = 0
        i = 0
        while i <= setups:
            start = time.perf_counter()
            r, w = await open_console(sp, vnet, "n1", answered=sp.note, keep=True)
            reader, writer = cast(asyncio.StreamReader, r), cast(asyncio.StreamWriter, w)
            try:
                t_ok = time.perf_counter()
                await _first_bytes(reader, b"$")
                took = time.perf_counter() - start
                if i == 0:
                    await asyncio.sleep(0.3)
                    await _first_bytes_drain(reader)
                    await _round_trips(reader, writer, 10)
                    rtts = await _round_trips(reader, writer, rounds)
            except (ConnectionError, RuntimeError):
                lost += 1
                if lost > max(3, setups // 3):
                    raise
                continue
            finally:
                await _close(writer)
            phases.append((sp.answered - start, t_ok - sp.answered, start + took - t_ok))
            if i == 0:
                first = took
            else:
                times.append(took)
            i += 1
            await asyncio.sleep(pause)
        return Figures(tuple(times), tuple(rtts), tuple(phases[1:]), first, lost)

    return asyncio.run(run())


def client_figures(sp: _Timed, vnet: str, setups: int, rounds: int, pause: float,
                   own_process: bool) -> Figures:
    if not own_process:
        return console_figures(sp, vnet, setups, rounds, pause)
    from bench.console import remote

    assert sp.vno_name is not None
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[Figures | str] = ctx.Queue()
    proc = ctx.Process(target=remote.run, args=(
        out, sp.client.base_url, sp.credentials, sp.vno_name, vnet, setups, rounds, pause))
    proc.start()
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                got = out.get(timeout=1)
                break
            except queue.Empty:
                if not proc.is_alive() or time.monotonic() > deadline:
                    got = f"the client process ended (exit code {proc.exitcode})"
                    break
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if isinstance(got, str):
        raise RuntimeError(f"the client process failed: {got}")
    return got


def endpoint_figures(confinement: Confinement, substrate: str, sliver: str,
                     count: int) -> tuple[float, ...]:
    """A confined `sh -i` in the node started cold, until its first prompt
    byte: what a session pays at the PIP when no spare shell waits."""
    netns = naming.vnode_netns(substrate, sliver, "n1")
    out = []
    for _ in range(count):
        start = time.perf_counter()
        spawned = confinement.spawn(sliver, netns, SHELL)
        try:
            got = b""
            while b"$" not in got:
                ready, _, _ = select.select([spawned.master_fd], [], [], 10)
                if not ready:
                    raise RuntimeError(f"no prompt from a cold shell: {got!r}")
                got += os.read(spawned.master_fd, 4096)
            out.append(time.perf_counter() - start)
        finally:
            confinement.end(spawned)
    return tuple(out)


def slope(rows: list[tuple[int, Figures, Figures]]) -> tuple[float, float]:
    """(seconds per hop, intercept) of the setup medians against hops."""
    xs = [float(depth + 2) for depth, _, _ in rows]
    ys = [c.setup_p50 for _, c, _ in rows]
    if len(rows) < 2:
        return ys[0] / xs[0], 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    k = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs)
    return k, my - k * mx


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
            first = 0.0
            for i in range(setups + 1):
                start = time.perf_counter()
                reader, writer = await asyncio.open_connection("127.0.0.1", ports[0])
                await _first_bytes(reader, b"$")
                took = time.perf_counter() - start
                if i == 0:
                    first = took
                    await _first_bytes_drain(reader)
                    await _round_trips(reader, writer, 10)
                    rtts = await _round_trips(reader, writer, rounds)
                else:
                    times.append(took)
                await _close(writer)
            return Figures(tuple(times), tuple(rtts), first=first)

        return asyncio.run(run())
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(5)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def table(rows: list[tuple[int, Figures, Figures]]) -> str:
    head = ("| depth | hops | path | first setup ms | setup p50 ms | setup p95 ms "
            "| setup p50 / hop ms | RTT p50 ms | RTT p95 ms | RTT p50 / hop ms |\n"
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    for depth, console, tcp in rows:
        hops = depth + 2
        for name, f in (("console (TLS, players)", console), ("TCP relays (socat)", tcp)):
            lines.append(f"| {depth} | {hops} | {name} | {ms(f.first)} | {ms(f.setup_p50)} "
                         f"| {ms(f.setup_p95)} | {ms(f.setup_p50 / hops)} | {ms(f.rtt_p50)} "
                         f"| {ms(f.rtt_p95)} | {ms(f.rtt_p50 / hops)} |")
    return head + "\n".join(lines) + "\n"


def breakdown(rows: list[tuple[int, Figures, Figures]]) -> str:
    out = ["| depth | hops | request out on the listener p50 ms | request to OK p50 ms "
           "| OK to first prompt byte p50 ms |", "|---:|---:|---:|---:|---:|"]
    for depth, c, _ in rows:
        cols = [ms(statistics.median(p[i] for p in c.phases)) for i in range(3)]
        out.append(f"| {depth} | {depth + 2} | " + " | ".join(cols) + " |")
    return "\n".join(out) + "\n"


def verdicts(rows: list[tuple[int, Figures, Figures]], cold: tuple[float, ...]) -> str:
    per_hop, fixed = slope(rows)
    tcp_hop, tcp_fixed = slope([(d, t, t) for d, _, t in rows])
    out = [f"Targets: setup p50 < {ms(SETUP_PER_HOP)} ms per hop and < "
           f"{ms(SETUP_AT_DEPTH_8)} ms at depth 8; keystroke RTT p50 < {ms(RTT_PER_HOP)} ms "
           f"per hop; the paper: {ms(PAPER_PER_HOP)} ms per hop.",
           f"- setup per hop (slope of the medians): {ms(per_hop)} ms "
           f"({'met' if per_hop < SETUP_PER_HOP else 'MISSED'}), intercept {ms(fixed)} ms; "
           f"TCP relays: {ms(tcp_hop)} ms per hop, intercept {ms(tcp_fixed)} ms",
           f"- endpoint: a cold confined shell to its first prompt byte p50 "
           f"{ms(statistics.median(cold))} ms, p95 {ms(Figures._p(cold, 0.95))} ms "
           f"({len(cold)} starts; a session that finds a spare shell does not pay it)"]
    for depth, c, _ in rows:
        hops = depth + 2
        setup_ok = c.setup_p50 / hops < SETUP_PER_HOP and (
            depth != 8 or c.setup_p50 < SETUP_AT_DEPTH_8)
        rtt_ok = c.rtt_p50 / hops < RTT_PER_HOP
        paper_ok = c.setup_p50 / hops < PAPER_PER_HOP
        out.append(f"- depth {depth}: setup {'met' if setup_ok else 'MISSED'} "
                   f"({ms(c.setup_p50)} ms, {ms(c.setup_p50 / hops)} ms/hop), "
                   f"RTT {'met' if rtt_ok else 'MISSED'} ({ms(c.rtt_p50 / hops)} ms/hop), "
                   f"paper's 20 ms/hop {'met' if paper_ok else 'MISSED'}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--rounds", type=int, default=200, help="keystroke round trips")
    ap.add_argument("--setups", type=int, default=30, help="session setups per depth")
    ap.add_argument("--pause", type=float, default=0.2, help="seconds between sessions")
    ap.add_argument("--spawns", type=int, default=10, help="cold shells started")
    ap.add_argument("--client", choices=("process", "in-process"), default="process",
                    help="where the console client runs (default: a process of its own)")
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
    cold: tuple[float, ...] = ()
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
            sp = _Timed(players.nodes[f"vno{depth}"].url,
                        players.creds(f"sp{depth}", Role.SP), 300.0, vno_name=f"vno{depth}")
            view = sp.request_vnet(parse_vnet(ONE_NODE % depth))
            try:
                console = client_figures(sp, view.id, args.setups, args.rounds, args.pause,
                                         args.client == "process")
                if not cold:
                    pip = players.nodes["pip-a"].service
                    (sliver,) = [s.id for s in pip.core.ledger.slivers()  # type: ignore[union-attr]
                                 if s.state.value in ("provisioned", "ready")]
                    cold = endpoint_figures(pip.confinement, lab.name,  # type: ignore[union-attr]
                                            sliver, args.spawns)
            finally:
                sp.delete(view.id)
            tcp = tcp_figures(depth + 2, args.setups, args.rounds)
            rows.append((depth, console, tcp))
            print(f"depth {depth}: console setup p50 {ms(console.setup_p50)} ms, RTT p50 "
                  f"{ms(console.rtt_p50)} ms; TCP setup p50 {ms(tcp.setup_p50)} ms, "
                  f"RTT p50 {ms(tcp.rtt_p50)} ms"
                  + (f"; {console.lost} sessions killed from outside, measured again"
                     if console.lost else ""), flush=True)
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
    print(verdicts(rows, cold))
    print(f"command: python -m bench.console --depths {' '.join(map(str, depths))} "
          f"--rounds {args.rounds} --setups {args.setups} --pause {args.pause} "
          f"--spawns {args.spawns} --client {args.client}")
    print(f"machine: {os.cpu_count()} CPUs; load average (1/5/15 min) before "
          f"{'/'.join(f'{x:.2f}' for x in load_before)}, after "
          f"{'/'.join(f'{x:.2f}' for x in load_after)}; {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
