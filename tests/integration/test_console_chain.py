"""Consoles through the chain SP -> VNO -> VNP -> PIP -> a netns node, on real
substrates, real mutual TLS and a real confined shell (vnetlib.console)."""

from __future__ import annotations

import asyncio
import logging
import os
import select
import socket
import ssl
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import cast

import pytest

from tests.integration.players_fixtures import Players, Substrates, namespaces
from vnetlib.console import client
from vnetlib.console.broker import ConsoleHub
from vnetlib.console.client import close_calls, open_console
from vnetlib.console.endpoints import NetnsShell
from vnetlib.console.relay import STOP_NOTICE
from vnetlib.console.wire import ByteReader, HopError, dial, open_line
from vnetlib.players import messages as m
from vnetlib.players.client import PlayerClient, RemoteError
from vnetlib.players.pki import Credentials, LabCA, Role
from vnetlib.players.sp import ServiceProvider
from vnetlib.spec import parse_vnet

SMALL = b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="cons">
  <node id="n1" location="berlin"/><node id="n2" location="berlin"/>
  <link id="l1"><endpoint node="n1" interface="e0"><address>198.19.252.1/30</address></endpoint>
    <endpoint node="n2" interface="e0"><address>198.19.252.2/30</address></endpoint></link>
</vnet>"""

ROOT = Path(__file__).resolve().parents[2]
# A separate process reading its stdin from a pipe, as `vnet console` does.
CLIENT = """
import asyncio, sys
from vnetlib.console.client import run_console
from vnetlib.players.pki import Credentials
from vnetlib.players.sp import ServiceProvider
url, cert, key, ca, vnet, node = sys.argv[1:7]
sp = ServiceProvider(url, Credentials(*map(__import__("pathlib").Path, (cert, key, ca))),
                     vno_name="vno")
asyncio.run(run_console(sp, vnet, node, linger=3.0))
"""


class Chain:
    def __init__(self, players: Players, vnet: str, sp: ServiceProvider, sp_creds: Credentials):
        self.players, self.vnet, self.sp, self.sp_creds = players, vnet, sp, sp_creds

    def hub(self, name: str) -> ConsoleHub:
        return self.players.nodes[name].console


@pytest.fixture(scope="module")
def chain(lab_ca: LabCA, substrates: Substrates,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    players = Players(lab_ca, tmp_path_factory.mktemp("console"))
    try:
        players.pip("pip-a", substrates.a)
        players.vnp("vnp", ["pip-a"])
        players.vno("vno", "vnp")
        players.vno("vno2", "vnp")
        sp_creds = players.creds("sp", Role.SP)
        sp = ServiceProvider(players.nodes["vno"].url, sp_creds, 300.0, vno_name="vno")
        view = sp.request_vnet(parse_vnet(SMALL))
        assert view.status == "ready"
        yield Chain(players, view.id, sp, sp_creds)
        sp.delete(view.id)
    finally:
        players.stop_all()
        for ns in namespaces(f"vn-{substrates.a}-"):
            subprocess.run(["ip", "netns", "delete", ns], check=False)


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# The players' database pools may open a connection of their own meanwhile;
# a leak per hostile connection (each test makes a dozen) shows well above it.
FD_SLACK = 2


def settled(chain: Chain, fd_before: int, timeout: float = 10.0) -> None:
    """Wait until every listener serves no connection and the fds are back."""
    deadline = time.monotonic() + timeout
    for n in ("vno", "vnp", "pip-a"):
        chain.hub(n).server.drop_spares()
    while True:
        conns = {n: chain.hub(n).server.stats() for n in ("vno", "vnp", "pip-a")}
        if all(c == (0, 0) for c in conns.values()) and fds() <= fd_before + FD_SLACK:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"leak: {conns}, fds {fds()} > {fd_before}")
        time.sleep(0.1)


async def read_until(reader: ByteReader, marker: bytes,
                     timeout: float = 10.0) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while marker not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} in {got[-500:]!r}"
        chunk = await asyncio.wait_for(reader.read(65536), left)
        if not chunk:
            break
        got += chunk
    return got


def test_scripted_session_in_a_separate_process(chain: Chain) -> None:
    c = chain.sp_creds
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, chain.players.nodes["vno"].url, str(c.cert_path),
         str(c.key_path), str(c.ca_path), chain.vnet, "n1"],
        input=b"id -u; ip -o link show\nexit\n", capture_output=True, timeout=60, cwd=ROOT)
    took = time.perf_counter() - start
    text = out.stdout.decode("utf-8", "replace")
    assert out.returncode == 0, out.stderr.decode()
    uids = [int(w) for w in text.split() if w.isdigit() and 200000 <= int(w) < 300000]
    assert uids, text
    assert "e0" in text and "lo:" in text, text
    assert took < 30, took


def test_mapping_tables_hide_the_other_players(chain: Chain) -> None:
    async def session() -> None:
        reader, writer = await open_console(chain.sp, chain.vnet, "n2")
        writer.write(b"echo hi-$((40+2))\n")
        await writer.drain()
        assert b"hi-42" in await read_until(reader, b"hi-42")
        writer.close()

    asyncio.run(session())
    pip_url = chain.hub("pip-a").url
    vnp_url = chain.hub("vnp").url
    vno_rows = str(chain.hub("vno").sessions.rows())
    vnp_rows = str(chain.hub("vnp").sessions.rows())
    pip_rows = str(chain.hub("pip-a").sessions.rows())
    assert "pip-a" not in vno_rows and pip_url not in vno_rows and vnp_url in vno_rows
    assert "sp:sp" in vno_rows
    assert "sp:" not in vnp_rows and "vno:vno" in vnp_rows and pip_url in vnp_rows
    assert "sp:" not in pip_rows and "vno" not in pip_rows and "vnp:vnp" in pip_rows
    for rows in (chain.hub(n).sessions.rows() for n in ("vno", "vnp", "pip-a")):
        assert all(len(r["token_hash"]) == 64 for r in rows)


def test_the_next_session_greets_a_spare_connection(chain: Chain) -> None:
    """After a session, the VNO holds a spare mTLS connection to the VNP, and
    the next session's hop from the VNO to the VNP is that connection."""
    async def session() -> None:
        reader, writer = await open_console(chain.sp, chain.vnet, "n2")
        writer.write(b"echo spare-$((40+2))\n")
        await writer.drain()
        assert b"spare-42" in await read_until(reader, b"spare-42")
        writer.close()

    vno, vnp = chain.hub("vno"), chain.hub("vnp")
    asyncio.run(session())
    deadline = time.monotonic() + 5
    while not (spares := vno.server.spares()):
        assert time.monotonic() < deadline, "no spare connection to the VNP"
        time.sleep(0.02)
    assert len(spares) == 1
    asyncio.run(session())
    used = [r for r in vnp.sessions.rows() if r["used"] is not None]
    assert max(used, key=lambda r: r["used"])["peer"] == spares[0]


def test_later_sessions_are_set_up_on_the_vnos_listener(
        chain: Chain, caplog: pytest.LogCaptureFixture) -> None:
    """A client that knows the VNO's listener asks for the session there, and
    each player that knows its next player's listener asks there in turn: no
    HTTPS request and no token handed out anywhere; each player records a
    token minted for its caller and used by it at once. With keep=True the
    client holds a spare connection to the listener between sessions."""
    vno = chain.hub("vno")

    async def session(keep: bool) -> str:
        reader, writer = await open_console(chain.sp, chain.vnet, "n2", keep=keep)
        writer.write(b"echo open-$((40+2))\n")
        await writer.drain()
        assert b"open-42" in await read_until(reader, b"open-42")
        writer.close()
        return str(cast(asyncio.StreamWriter, writer).get_extra_info("sockname"))

    async def run() -> list[tuple[str, int]]:
        await session(False)  # the listener is known from here on
        seen = []
        try:
            for _ in range(3):
                caplog.clear()
                with caplog.at_level(logging.INFO, logger="vnetlib.players.transport"):
                    seen.append((await session(True), 0))
                    asked = [r.getMessage() for r in caplog.records]
                    assert not [a for a in asked if "/console" in a], asked
                deadline = time.monotonic() + 5
                while (waiting := (await asyncio.to_thread(vno.server.stats))[0]) != 1:
                    assert time.monotonic() < deadline, "no spare connection to the listener"
                    await asyncio.sleep(0.02)
                seen[-1] = (seen[-1][0], waiting)
        finally:
            close_calls()
        return seen

    seen = asyncio.run(run())
    assert all(waiting == 1 for _, waiting in seen)
    rows = {r["peer"]: r for r in vno.sessions.rows() if r["used"] is not None}
    for peer, _ in seen:
        row = rows[peer]
        assert row["owner"] == "sp:sp" and row["node"] == "n2" and row["kind"] == "shell"
        assert row["next_hop"] == chain.hub("vnp").url and row["used"] >= row["created"]


def test_a_listener_that_moved_is_asked_over_https_again(chain: Chain) -> None:
    """A player restarted elsewhere: whoever knew its listener (the client, the
    VNO for the VNP's) finds it gone, sets the session up over HTTPS, and
    learns the new one."""
    vno = chain.hub("vno")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        gone = f"tls://127.0.0.1:{s.getsockname()[1]}"

    async def session() -> None:
        reader, writer = await open_console(chain.sp, chain.vnet, "n2")
        writer.write(b"echo moved-$((40+2))\n")
        await writer.drain()
        assert b"moved-42" in await read_until(reader, b"moved-42")
        writer.close()

    asyncio.run(session())  # both know the listeners now
    client._listeners[(chain.sp.client.base_url, "vno")] = gone
    vno.listeners["vnp"] = gone
    asyncio.run(session())
    assert client._listeners[(chain.sp.client.base_url, "vno")] == vno.url
    assert vno.listeners["vnp"] == chain.hub("vnp").url


def test_setups_on_the_listener_are_refused_as_over_https(chain: Chain,
                                                          lab_ca: LabCA) -> None:
    fd_before = fds()
    vno_creds = lab_ca.issue("vno", Role.VNO)

    async def line(url: str, creds: Credentials, data: bytes) -> bytes:
        reader, writer = await open_tls(url, creds.client_context())
        writer.write(data)
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return answer

    async def run() -> None:
        _, writer = await open_console(chain.sp, chain.vnet, "n1")  # knows the listener
        writer.close()
        for vnet, node in ((chain.vnet, "zz9"), ("vnope", "n1")):
            with pytest.raises(RemoteError) as refused:
                await open_console(chain.sp, vnet, node)
            assert refused.value.status == 404, refused.value
        other = ServiceProvider(chain.sp.client.base_url, lab_ca.issue("sp-other", Role.SP),
                                30.0, vno_name="vno")
        with pytest.raises(RemoteError) as refused:  # not the owner: as if there were none
            await open_console(other, chain.vnet, "n1")
        assert refused.value.status == 404
        url = chain.hub("vno").url
        assert (await line(url, vno_creds, open_line(chain.vnet, "n1", "shell"))
                ).startswith(b"REFUSED 403 ")
        assert await line(url, chain.sp_creds, b"VNET-CONSOLE-OPEN 1 v n1\n") == \
            b"ERR bad greeting\n"
        # each player's listener checks its caller as its route does
        assert (await line(chain.hub("vnp").url, lab_ca.issue("vno2", Role.VNO),
                           open_line(vno_order(chain), "n1", "shell"))
                ).startswith(b"REFUSED 404 ")  # another VNO's order: as if there were none
        assert (await line(chain.hub("vnp").url, chain.sp_creds,
                           open_line(vno_order(chain), "n1", "shell"))
                ).startswith(b"REFUSED 403 ")
        assert (await line(chain.hub("pip-a").url, vno_creds,
                           open_line("x1", "n1", "shell"))).startswith(b"REFUSED 403 ")
        close_calls()

    asyncio.run(run())
    settled(chain, fd_before)


def tenant_processes(chain: Chain) -> list[str]:
    pip = chain.players.nodes["pip-a"].service
    (sliver,) = pip.core.ledger.slivers()  # type: ignore[union-attr]
    uid = pip.confinement.uids.get(sliver.id)  # type: ignore[union-attr]
    out = subprocess.run(["pgrep", "-u", str(uid)], capture_output=True, text=True)
    return out.stdout.split()


def test_shell_is_killed_when_the_client_leaves_and_serial_is_refused(chain: Chain) -> None:
    async def session() -> None:
        reader, writer = await open_console(chain.sp, chain.vnet, "n1")
        writer.write(b"sleep 300 &\necho started\n")
        await writer.drain()
        await read_until(reader, b"started\r\n")
        deadline = time.monotonic() + 5  # the shell and its background sleep
        while len(tenant_processes(chain)) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert len(tenant_processes(chain)) >= 2
        writer.close()

    asyncio.run(session())
    shell = chain.hub("pip-a").endpoints[("netns", "shell")]
    assert isinstance(shell, NetnsShell)

    def session_left() -> set[str]:  # tenant processes other than the node's spare shell
        return set(tenant_processes(chain)) - {str(p) for p in shell.spare_pids()}

    deadline = time.monotonic() + 10
    while session_left() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert session_left() == set()
    pip = chain.players.nodes["pip-a"].service
    (sliver,) = pip.core.ledger.slivers()  # type: ignore[union-attr]
    uid = pip.confinement.uids.get(sliver.id)  # type: ignore[union-attr]
    sleeping = subprocess.run(["pgrep", "-u", str(uid), "-x", "sleep"], capture_output=True)
    assert sleeping.stdout == b""  # the spare is a fresh shell, not the session's
    with pytest.raises(RemoteError) as refused:
        chain.sp.console(chain.vnet, "n1", "serial")
    assert refused.value.status == 409 and "no serial console for netns" in refused.value.message
    with pytest.raises(RemoteError) as missing:
        chain.sp.console(chain.vnet, "nope")
    assert missing.value.status in (404, 422)


def nice_of(pids: set[int]) -> set[int]:
    out = subprocess.run(["ps", "-o", "ni=", "-p", ",".join(map(str, pids))],
                         capture_output=True, text=True)
    return {int(x) for x in out.stdout.split()}


def test_the_next_session_takes_a_spare_shell_at_normal_priority(chain: Chain) -> None:
    shell = chain.hub("pip-a").endpoints[("netns", "shell")]
    assert isinstance(shell, NetnsShell)

    async def session(command: bytes, marker: bytes) -> bytes:
        reader, writer = await open_console(chain.sp, chain.vnet, "n1")
        writer.write(command)
        await writer.drain()
        got = await read_until(reader, marker)
        writer.close()
        return got

    asyncio.run(session(b"echo one-$((0+1))\n", b"one-1"))

    def spare_shell() -> set[int]:  # n1's spare's processes once its `sh -i` runs
        pids = shell.spare_pids("n1")
        return pids if pids & {int(p) for p in tenant_processes(chain)} else set()

    deadline = time.monotonic() + 20
    while not spare_shell() and time.monotonic() < deadline:
        time.sleep(0.05)
    spare = spare_shell()
    assert spare and nice_of(spare) == {19}  # waiting at the lowest priority

    async def takes_it() -> set[int]:  # nice values read while the session is on
        reader, writer = await open_console(chain.sp, chain.vnet, "n1")
        writer.write(b"echo $$; echo two-$((1+1))\n")
        await writer.drain()
        got = await read_until(reader, b"two-2")
        # the session's processes: the tenant's, less the next spare's
        mine = {int(p) for p in tenant_processes(chain)} - shell.spare_pids()
        assert nice_of(mine) == {0}  # raised back to normal priority
        writer.close()
        assert b"two-2" in got
        return mine

    during = asyncio.run(takes_it())
    assert during and during <= spare  # the session ran in the spare's processes


def test_setup_opens_the_data_path_ahead_and_an_unused_token_closes_it(chain: Chain) -> None:
    """A setup alone builds the chain's connections down to a shell at the
    PIP; the token expiring unused tears it all down again."""
    hubs = {n: chain.hub(n) for n in ("vno", "vnp", "pip-a")}
    fd_before = fds()
    vnp_ttl = hubs["vnp"].sessions.ttl
    hubs["vnp"].sessions.ttl = 1.0  # the VNP's token, held by the VNO's prepared hop
    hubs["vno"].sessions.ttl = 1.0
    for hub in hubs.values():  # no spare connections to count as well
        hub.server.drop_spares()
        hub.server.keep_spares = False
    try:
        chain.sp.console(chain.vnet, "n1")
    finally:
        hubs["vnp"].sessions.ttl = hubs["vno"].sessions.ttl = vnp_ttl
    deadline = time.monotonic() + 5  # (a spare being opened when dropped closes too)
    while time.monotonic() < deadline and not (
            hubs["vnp"].server.stats()[0] == 1 and hubs["pip-a"].server.stats()[0] == 1):
        time.sleep(0.02)
    # nobody connected to the VNO, yet the VNP and the PIP each relay a session
    assert hubs["vno"].server.stats()[0] == 0
    assert hubs["vnp"].server.stats()[0] == 1 and hubs["pip-a"].server.stats()[0] == 1
    settled(chain, fd_before)  # the VNO's token expired: everything closed
    for hub in hubs.values():
        hub.server.keep_spares = True
    rows = [r for r in hubs["pip-a"].sessions.rows() if r["outcome"]]
    assert rows[-1]["outcome"].startswith("closed by the client")


def test_setup_and_round_trip_times(chain: Chain, capsys: pytest.CaptureFixture[str]) -> None:
    async def measure() -> tuple[float, float, float]:
        t0 = time.perf_counter()
        session = await asyncio.to_thread(chain.sp.console, chain.vnet, "n1")
        t1 = time.perf_counter()
        reader, writer = await dial(session.url, session.token,
                                    chain.sp_creds.client_context(), chain.sp_creds)
        t2 = time.perf_counter()
        await read_until(reader, b"$ ")
        rtts = []
        for _i in range(20):
            s = time.perf_counter()
            writer.write(b"x")
            await writer.drain()
            await read_until(reader, b"x")
            rtts.append(time.perf_counter() - s)
        writer.close()
        return t1 - t0, t2 - t1, sorted(rtts)[len(rtts) // 2]

    setup, connect, rtt = asyncio.run(measure())
    with capsys.disabled():
        print(f"\nconsole: setup over HTTPS {setup:.3f}s, connect {connect:.3f}s "
              f"(3 hops + shell), keystroke round trip {rtt * 1000:.1f} ms")
    assert rtt < 0.5


def test_hostile_clients_are_refused_without_leaks(chain: Chain, lab_ca: LabCA) -> None:
    vno_hub = chain.hub("vno")
    ctx = chain.sp_creds.client_context()
    fd_before = fds()

    async def attempt(url: str, token: str, creds: Credentials) -> str:
        try:
            _reader, writer = await dial(url, token, creds.client_context(), creds)
        except HopError as exc:
            return str(exc)
        writer.close()
        return "OK"

    async def scenarios() -> None:
        # replayed token: the second use is refused
        s = chain.sp.console(chain.vnet, "n1")
        assert await attempt(s.url, s.token, chain.sp_creds) == "OK"
        assert "unknown or used" in await attempt(s.url, s.token, chain.sp_creds)
        # expired token
        vno_hub.sessions.ttl = 0.3
        try:
            s = chain.sp.console(chain.vnet, "n1")
        finally:
            vno_hub.sessions.ttl = 30.0
        await asyncio.sleep(0.5)
        assert "expired" in await attempt(s.url, s.token, chain.sp_creds)
        # another VNO's listener does not know this VNO's token
        s = chain.sp.console(chain.vnet, "n1")
        assert "unknown" in await attempt(chain.hub("vno2").url, s.token, chain.sp_creds)
        # presented by the wrong identity: another SP at the VNO, another VNO at the VNP
        other_sp = lab_ca.issue("sp-other", Role.SP)
        assert "not issued to you" in await attempt(s.url, s.token, other_sp)
        vnp_session = m.console_session_from(m.parse_reply(PlayerClient(
            chain.players.nodes["vnp"].url, lab_ca.issue("vno", Role.VNO), 30.0).post(
                f"/v1/vnets/{vno_order(chain)}/console",
                m.console_request_xml(m.ConsoleRequest("n1"))).body, "console-session"))
        assert "not issued to you" in await attempt(vnp_session.url, vnp_session.token,
                                                    lab_ca.issue("vno2", Role.VNO))
        # garbage instead of the greeting; a greeting without end
        for junk in (b"GET / HTTP/1.1\r\n\r\n", b"x" * 100_000):
            reader, writer = await open_tls(vno_hub.url, ctx)
            writer.write(junk)
            answer = await asyncio.wait_for(reader.read(), 10)
            assert answer in (b"", b"ERR bad greeting\n"), answer
            writer.close()
        # half-open: connected, never greets; cut at the greeting deadline
        vno_hub.server.limits = replace(vno_hub.server.limits, greeting_timeout=1.0)
        try:
            reader, writer = await open_tls(vno_hub.url, ctx)
            start = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 10) == b"ERR bad greeting\n"
            assert time.monotonic() - start < 5
            writer.close()
        finally:
            vno_hub.server.limits = replace(vno_hub.server.limits, greeting_timeout=10.0)

        # over the session limit: refused while another session is open (the
        # connections above gone first: they would count against the limit)
        deadline = time.monotonic() + 10
        while (await asyncio.to_thread(vno_hub.server.stats))[0]:
            assert time.monotonic() < deadline, "the VNO still serves a hostile connection"
            await asyncio.sleep(0.05)
        vno_hub.server.limits = replace(vno_hub.server.limits, max_sessions=1)
        try:
            _, holder = await open_console(chain.sp, chain.vnet, "n1")
            s = chain.sp.console(chain.vnet, "n1")
            assert "too many" in await attempt(s.url, s.token, chain.sp_creds)
            holder.close()
            # the refused token is still good (and its prepared next hop used)
            deadline = time.monotonic() + 5
            while (result := await attempt(s.url, s.token, chain.sp_creds)) != "OK":
                assert "too many" in result and time.monotonic() < deadline, result
                await asyncio.sleep(0.1)
        finally:
            vno_hub.server.limits = replace(vno_hub.server.limits, max_sessions=64)

    asyncio.run(scenarios())
    settled(chain, fd_before)


def vno_order(chain: Chain) -> str:
    """How the VNP knows the SP's VNet (the VNO's key for it)."""
    service = chain.players.nodes["vno"].service
    return str(service.store.get(chain.vnet).data["key"])  # type: ignore[union-attr]


async def open_tls(url: str, ctx: ssl.SSLContext) -> tuple[asyncio.StreamReader,
                                                           asyncio.StreamWriter]:
    host, port = url.removeprefix("tls://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port), ssl=ctx, server_hostname=host)


def test_slow_reader_with_a_large_paste_stays_bounded(chain: Chain) -> None:
    """10 MB pasted while nobody reads the echo: every hop's buffers stay small
    (its reads wait for its writes to drain); then the session goes on."""
    fd_before = fds()
    paste = (b"y" * 1023 + b"\n") * (10 * 1024)
    hubs = [chain.hub(n) for n in ("vno", "vnp", "pip-a")]
    peak = 0

    async def session() -> bytes:
        nonlocal peak
        reader, writer = await open_console(chain.sp, chain.vnet, "n1")
        await read_until(reader, b"$ ")

        async def push() -> None:
            for i in range(0, len(paste), 65536):
                writer.write(paste[i:i + 65536])
                await writer.drain()

        pusher = asyncio.create_task(push())
        for _ in range(20):  # nobody reads the echo meanwhile
            await asyncio.sleep(0.2)
            peak = max(peak, *(await asyncio.to_thread(lambda: [h.server.buffered()
                                                               for h in hubs])))
        await asyncio.wait_for(pusher, 60)
        writer.write(b"echo ali''ve\n")
        await writer.drain()
        got = await read_until(reader, b"alive", timeout=90)
        writer.close()
        return got

    got = asyncio.run(session())
    assert b"alive" in got
    assert peak < 1 << 20, peak
    settled(chain, fd_before)


def test_terminal_mode_escape_restores_the_terminal(chain: Chain) -> None:
    """On a terminal: raw mode while connected, Ctrl-] q leaves, the terminal's
    settings are back afterwards."""
    c = chain.sp_creds
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        proc = subprocess.Popen(
            [sys.executable, "-c", CLIENT, chain.players.nodes["vno"].url, str(c.cert_path),
             str(c.key_path), str(c.ca_path), chain.vnet, "n1"],
            stdin=slave, stdout=slave, stderr=slave, cwd=ROOT)
        try:
            got = b""
            deadline = time.monotonic() + 20
            sent = False
            while b"ttyok" not in got and time.monotonic() < deadline:
                if b"$ " in got and not sent:
                    os.write(master, b"echo tty-$((1))-ok | tr -d 1-\r")
                    sent = True
                r, _, _ = select.select([master], [], [], 0.5)
                if r:
                    got += os.read(master, 65536)
            assert b"ttyok" in got, got
            os.write(master, b"\x1dq")
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_session_ends_with_a_notice_when_a_player_stops(chain: Chain) -> None:
    async def session() -> bytes:
        reader, writer = await open_console(chain.sp, chain.vnet, "n1")
        await read_until(reader, b"$ ")
        await asyncio.to_thread(chain.players.stop, "vnp")
        rest = await read_until(reader, b"on its path", timeout=20)
        writer.close()
        return rest

    got = asyncio.run(session())
    assert STOP_NOTICE.strip() in got
