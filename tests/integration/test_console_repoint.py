"""An open console session follows its netns node when the node is made
again elsewhere (issue #13, item 4): SP -> VNO -> VNP -> PIP on real
substrates and real mutual TLS; the move is done by hand here (the node's
namespace deleted, made again and wired to the substrate's other host), the
PIP told with `vnetlib.console.repoint.hold` / `moved`, as the migration
code does."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tests.integration.players_fixtures import Players, Substrates, namespaces
from vnetlib import naming
from vnetlib.console import repoint
from vnetlib.console.client import open_console
from vnetlib.console.wire import ByteReader, ByteWriter
from vnetlib.core.records import Sliver
from vnetlib.players.pip import PipService
from vnetlib.players.pki import LabCA, Role
from vnetlib.players.sp import ServiceProvider
from vnetlib.spec import parse_vnet

ONE = b"""<vnet xmlns="urn:vnet:rdl:1" version="1" name="repoint">
  <node id="n1" location="berlin"/>
</vnet>"""
NODE_ADDRESS = "198.18.253.1"
HOST_ADDRESS = "198.18.253.2"


@dataclass
class Setup:
    players: Players
    sp: ServiceProvider
    vnet: str
    substrate: str

    @property
    def pip(self) -> PipService:
        service = self.players.nodes["pip-a"].service
        assert isinstance(service, PipService)
        return service

    def sliver(self) -> Sliver:
        (s,) = [s for s in self.pip.core.ledger.slivers()
                if s.state.value in ("provisioned", "ready")]
        return s

    def netns(self) -> str:
        s = self.sliver()
        return naming.vnode_netns(s.substrate, s.id, "n1")


@pytest.fixture(scope="module")
def setup(lab_ca: LabCA, substrates: Substrates,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    players = Players(lab_ca, tmp_path_factory.mktemp("repoint"))
    try:
        players.pip("pip-a", substrates.a)
        players.vnp("vnp", ["pip-a"])
        players.vno("vno", "vnp")
        sp = ServiceProvider(players.nodes["vno"].url, players.creds("sp", Role.SP), 300.0,
                             vno_name="vno")
        view = sp.request_vnet(parse_vnet(ONE))
        assert view.status == "ready"
        yield Setup(players, sp, view.id, substrates.a)
        sp.delete(view.id)
    finally:
        players.stop_all()
        for ns in namespaces(f"vn-{substrates.a}-"):
            subprocess.run(["ip", "netns", "delete", ns], check=False)


def ns_inode(netns: str) -> int:
    return Path(f"/run/netns/{netns}").stat().st_ino


def remake_on(netns: str, host_netns: str) -> None:
    """The node's namespace deleted and made again, wired to `host_netns`
    by a veth pair (what a move of a netns node does to it)."""
    subprocess.run(["ip", "netns", "delete", netns], check=True)
    for argv in (["ip", "netns", "add", netns],
                 ["ip", "-n", netns, "link", "set", "lo", "up"],
                 ["ip", "-n", netns, "link", "add", "rp0", "type", "veth", "peer", "name",
                  "rp1", "netns", host_netns],
                 ["ip", "-n", netns, "addr", "add", f"{NODE_ADDRESS}/30", "dev", "rp0"],
                 ["ip", "-n", netns, "link", "set", "rp0", "up"],
                 ["ip", "-n", host_netns, "addr", "add", f"{HOST_ADDRESS}/30", "dev", "rp1"],
                 ["ip", "-n", host_netns, "link", "set", "rp1", "up"]):
        subprocess.run(argv, check=True, capture_output=True)


def unwire(host_netns: str) -> None:
    subprocess.run(["ip", "-n", host_netns, "link", "delete", "rp1"], check=False,
                   capture_output=True)


async def read_until(reader: ByteReader, pattern: bytes, timeout: float = 15.0) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, got):
        left = deadline - time.monotonic()
        assert left > 0, f"no {pattern!r} in {got[-500:]!r}"
        chunk = await asyncio.wait_for(reader.read(65536), left)
        assert chunk, f"session ended before {pattern!r}: {got[-500:]!r}"
        got += chunk
    return got


async def ask(reader: ByteReader, writer: ByteWriter, command: str, tag: str) -> bytes:
    """Run `command` in the session; its output up to the `tag` line."""
    writer.write(f"{command}; echo {tag}-$((6*7))\n".encode())
    await writer.drain()
    return await read_until(reader, f"{tag}-42".encode())


def inode_in(text: bytes) -> int:
    found = re.findall(rb"net:\[(\d+)\]", text)
    assert found, text
    return int(found[-1])


def test_open_session_follows_its_node_to_another_host(setup: Setup) -> None:
    sliver = setup.sliver()
    netns = setup.netns()
    source = sliver.embedding.node_map["n1"]
    hosts = [h.name for h in setup.pip.core.substrate.hosts]
    target = next(h for h in hosts if h != source)
    host_netns = naming.host_netns(setup.substrate, target)
    before_ns = ns_inode(netns)
    hubs = {n: setup.players.nodes[n].console for n in ("vno", "vnp", "pip-a")}

    async def session() -> None:
        reader, writer = await open_console(setup.sp, setup.vnet, "n1")
        loop = asyncio.get_running_loop()
        try:
            out = await ask(reader, writer, "readlink /proc/self/ns/net", "before")
            assert inode_in(out) == before_ns
            for h in hubs.values():  # so that each listener serves this session only
                h.server.keep_spares = False
                await loop.run_in_executor(None, h.server.drop_spares)
            deadline = time.monotonic() + 5  # the dropped spares' far ends close
            while True:
                served = {n: h.server.stats()[0] for n, h in hubs.items()}
                if all(v == 1 for v in served.values()) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert all(v == 1 for v in served.values()), served
            assert await loop.run_in_executor(None, repoint.hold, sliver, "n1") == 1
            await loop.run_in_executor(None, remake_on, netns, host_netns)
            after = replace(sliver, embedding=replace(
                sliver.embedding, node_map={**sliver.embedding.node_map, "n1": target}))
            assert await loop.run_in_executor(None, repoint.moved, after, "n1") == 1
            assert b"n1 was moved" in await read_until(reader, rb"n1 was moved.*\]")
            out = await ask(reader, writer,
                            f"readlink /proc/self/ns/net; ping -c 1 -W 3 {HOST_ADDRESS}",
                            "after")
            moved_ns = inode_in(out)
            assert moved_ns == ns_inode(netns) != before_ns
            assert b"1 received" in out or b"1 packets received" in out, out
            # The hops above the PIP kept their connections; only the PIP's end moved.
            assert {n: h.server.stats()[0] for n, h in hubs.items()} == served
            for n in ("vno", "vnp"):
                rows = hubs[n].sessions.rows()
                assert [r for r in rows if r["used"] and r["closed"] is None], (n, rows)
        finally:
            writer.close()
            for h in hubs.values():
                h.server.keep_spares = True

    try:
        asyncio.run(session())
        # The next session (which may find a spare shell started before the
        # move, in the namespace the node left) lands in the node where it is.

        async def next_session() -> int:
            reader, writer = await open_console(setup.sp, setup.vnet, "n1")
            try:
                return inode_in(await ask(reader, writer, "readlink /proc/self/ns/net",
                                          "next"))
            finally:
                writer.close()

        assert asyncio.run(next_session()) == ns_inode(netns)
    finally:
        unwire(host_netns)
    assert repoint.open_sessions(sliver, "n1") == 0


def test_session_ends_with_a_notice_when_the_node_cannot_be_reopened(setup: Setup) -> None:
    sliver = setup.sliver()
    netns = setup.netns()

    async def session() -> bytes:
        reader, writer = await open_console(setup.sp, setup.vnet, "n1")
        loop = asyncio.get_running_loop()
        try:
            await ask(reader, writer, "true", "up")
            assert await loop.run_in_executor(None, repoint.hold, sliver, "n1") == 1
            subprocess.run(["ip", "netns", "delete", netns], check=True)
            assert await loop.run_in_executor(None, repoint.moved, sliver, "n1") == 0
            got = b""
            while chunk := await asyncio.wait_for(reader.read(65536), 15):
                got += chunk
            return got
        finally:
            writer.close()

    try:
        text = asyncio.run(session())
        assert b"could not be opened again" in text, text
    finally:
        subprocess.run(["ip", "netns", "add", netns], check=False)
    deadline = time.monotonic() + 10
    while repoint.open_sessions(sliver, "n1") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert repoint.open_sessions(sliver, "n1") == 0
