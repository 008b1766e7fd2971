"""A console through a VNP acting as a PIP (depth 2): SP -> VNO -> VNP ->
VNP -> PIP -> node, each hop relaying the same way."""

from __future__ import annotations

import asyncio
import time

from tests.integration.players_fixtures import Players, Substrates
from tests.integration.test_console_chain import SMALL, read_until
from vnetlib.console.client import open_console
from vnetlib.spec import parse_vnet


def test_console_at_depth_two(players: Players, substrates: Substrates) -> None:
    players.pip("pip-a", substrates.a)
    players.vnp("vnp-mid", ["pip-a"])
    players.vnp("vnp", ["vnp-mid"])
    players.vno("vno", "vnp")
    sp = players.sp("sp", "vno")
    view = sp.request_vnet(parse_vnet(SMALL))
    assert view.status == "ready"

    async def session() -> tuple[bytes, float]:
        start = time.perf_counter()
        reader, writer = await open_console(sp, view.id, "n2")
        took = time.perf_counter() - start
        writer.write(b"id -u; ip -o link show\nexit\n")
        await writer.drain()
        got = await read_until(reader, b"e0")
        writer.close()
        return got, took

    got, took = asyncio.run(session())
    uids = [int(w) for w in got.split() if w.isdigit() and 200000 <= int(w) < 300000]
    assert uids, got
    assert took < 10
    # every VNP of the path relayed: each knows its customer and its next hop only
    top = str(players.nodes["vnp"].console.sessions.rows())
    mid = str(players.nodes["vnp-mid"].console.sessions.rows())
    pip = str(players.nodes["pip-a"].console.sessions.rows())
    assert "vno:vno" in top and players.nodes["vnp-mid"].console.url in top
    assert "vnp:vnp" in mid and "vno" not in mid and players.nodes["pip-a"].console.url in mid
    assert "vnp:vnp-mid" in pip and "vnp:vnp'" not in pip and "vno" not in pip
    sp.delete(view.id)
