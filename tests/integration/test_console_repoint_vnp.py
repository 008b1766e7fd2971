"""The VNP's end of a console session that follows its node to another PIP
(issue #13, item 4, between PIPs): SP -> VNO -> VNP -> PIP A, real mutual
TLS, real substrates. The move is done by hand, as the VNP's move code does
it to the order: `repoint.hold_order`, the node's end at PIP A gone (its
shell killed), the order's parts re-pointed at a sliver of PIP B holding a
node of the same name, `repoint.moved_order`; the session, through the same
VNO and client connections, lands in PIP B's node."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.integration.players_fixtures import Players, Substrates, namespaces
from tests.integration.test_console_repoint import ask, inode_in, ns_inode, read_until
from vnetlib import naming
from vnetlib.console import client, repoint
from vnetlib.console.client import open_console
from vnetlib.players.pip import PipService
from vnetlib.players.pki import LabCA, Role
from vnetlib.players.sp import ServiceProvider
from vnetlib.players.stores import Record
from vnetlib.players.vnp import VnpService
from vnetlib.spec import parse_vnet

ONE = """<vnet xmlns="urn:vnet:rdl:1" version="1" name="%s">
  <node id="n1" location="%s"/>
</vnet>"""


@dataclass
class Setup:
    players: Players
    sp: ServiceProvider
    vnets: dict[str, str]  # PIP name -> the VNet whose n1 it holds

    @property
    def vnp(self) -> VnpService:
        service = self.players.nodes["vnp"].service
        assert isinstance(service, VnpService)
        return service

    def order(self, pip: str) -> Record:
        (rec,) = [r for r in self.vnp.store.all() if r.data.get("kind") == "vnet"
                  and [p["provider"] for p in r.data["parts"]] == [pip]]
        return rec

    def netns(self, pip: str) -> str:
        service = self.players.nodes[pip].service
        assert isinstance(service, PipService)
        (s,) = [s for s in service.core.ledger.slivers()
                if s.state.value in ("provisioned", "ready")]
        return naming.vnode_netns(s.substrate, s.id, "n1")


@pytest.fixture(scope="module")
def setup(lab_ca: LabCA, substrates: Substrates,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    players = Players(lab_ca, tmp_path_factory.mktemp("repoint-vnp"))
    vnets: dict[str, str] = {}
    sp = None
    try:
        players.pip("pip-a", substrates.a)
        players.pip("pip-b", substrates.b)
        players.vnp("vnp", ["pip-a", "pip-b"])
        players.vno("vno", "vnp")
        sp = ServiceProvider(players.nodes["vno"].url, players.creds("sp", Role.SP), 300.0,
                             vno_name="vno")
        for pip, location in (("pip-a", "berlin"), ("pip-b", "paris")):
            view = sp.request_vnet(parse_vnet(ONE % (f"rv{pip[-1]}", location)))
            assert view.status == "ready"
            vnets[pip] = view.id
        yield Setup(players, sp, vnets)
    finally:
        if sp is not None:
            for vnet in vnets.values():
                sp.delete(vnet)
        players.stop_all()
        for prefix in (substrates.a, substrates.b):
            for ns in namespaces(f"vn-{prefix}-"):
                subprocess.run(["ip", "netns", "delete", ns], check=False)


def pid_in(text: bytes) -> int:
    found = re.findall(rb"pid-(\d+)", text)
    assert found, text
    return int(found[-1])


@pytest.mark.parametrize("setup_line", [False, True], ids=["over-https", "on-listeners"])
def test_open_session_follows_its_node_to_another_pip(setup: Setup, setup_line: bool) -> None:
    """Set up over HTTPS with tokens (a client's first session), or on the
    listeners (a session after one: the VNP's end is opened by its setup line)."""
    order = setup.order("pip-a")
    there = setup.order("pip-b")
    parts: list[dict[str, Any]] = order.data["parts"]
    before_ns, after_ns = ns_inode(setup.netns("pip-a")), ns_inode(setup.netns("pip-b"))
    hubs = {n: setup.players.nodes[n].console for n in ("vno", "vnp", "pip-a", "pip-b")}

    async def session() -> None:
        if setup_line:  # every hop learns its next hop's listener from this one
            _, first = await open_console(setup.sp, setup.vnets["pip-a"], "n1")
            first.close()
        else:  # the client forgets the listeners: it asks over HTTPS
            client._listeners.clear()
        reader, writer = await open_console(setup.sp, setup.vnets["pip-a"], "n1")
        loop = asyncio.get_running_loop()

        def call(f: Any, *args: Any, **kwargs: Any) -> Any:
            return loop.run_in_executor(None, lambda: f(*args, **kwargs))

        try:
            out = await ask(reader, writer, "readlink /proc/self/ns/net; echo pid-$$", "before")
            assert inode_in(out) == before_ns
            assert await call(repoint.hold_order, "vnp", order.id, "n1") == 1
            os.kill(pid_in(out), signal.SIGKILL)  # the node's end at PIP A is gone
            deadline = loop.time() + 1.0  # the hops above do not see it end (a prompt may come)
            while (left := deadline - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    assert await asyncio.wait_for(reader.read(4096), left), "session ended"
            await call(setup.vnp.store.save, order.id,
                       {**order.data, "parts": there.data["parts"]})
            assert await call(repoint.moved_order, "vnp", order.id, "n1") == 1
            assert b"n1 was moved" in await read_until(reader, rb"n1 was moved.*\]")
            out = await ask(reader, writer, "readlink /proc/self/ns/net", "after")
            assert inode_in(out) == after_ns != before_ns
            vno_rows = await call(hubs["vno"].sessions.rows)
            assert [r for r in vno_rows if r["used"] and r["closed"] is None], vno_rows
            assert await call(hubs["pip-b"].server.stats) >= (1, 0)
        finally:
            writer.close()
            await call(setup.vnp.store.save, order.id, {**order.data, "parts": parts})

    asyncio.run(session())
    # the VNP's hop closes on its own loop once the client's end is gone
    deadline = time.monotonic() + 10
    while repoint.open_order_sessions("vnp", order.id, "n1") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert repoint.open_order_sessions("vnp", order.id, "n1") == 0


def test_a_move_that_did_not_happen_keeps_the_session_as_it_is(setup: Setup) -> None:
    order = setup.order("pip-a")

    async def session() -> None:
        reader, writer = await open_console(setup.sp, setup.vnets["pip-a"], "n1")
        loop = asyncio.get_running_loop()
        try:
            first = pid_in(await ask(reader, writer, "echo pid-$$", "one"))
            assert await loop.run_in_executor(
                None, repoint.hold_order, "vnp", order.id, "n1") == 1
            assert await loop.run_in_executor(
                None, lambda: repoint.moved_order("vnp", order.id, "n1",
                                                  reconnect=False)) == 0
            assert pid_in(await ask(reader, writer, "echo pid-$$", "two")) == first
        finally:
            writer.close()

    asyncio.run(session())
