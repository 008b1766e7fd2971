"""The players in this process over one lab substrate (PIP, VNP, VNO on
real mutual TLS), so that a VNet is requested through the chain, a console
session is open through every hop, and the PIP's own core moves the node:
what a PIP process does when it moves a node (its console sessions are in
that process and follow the node, `vnetlib.console.repoint`)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from vnetlib import paths
from vnetlib.console.client import open_console
from vnetlib.console.wire import ByteReader, ByteWriter, close_quietly
from vnetlib.core.pip import PipCore
from vnetlib.core.records import Sliver
from vnetlib.lab import manage
from vnetlib.players import cgroups
from vnetlib.players.config import PipSection, PlayerConfig, Upstream, VnoSection, VnpSection
from vnetlib.players.db import sqlite_url
from vnetlib.players.node import ManagementNode
from vnetlib.players.pip import PipService
from vnetlib.players.pki import LabCA, Role
from vnetlib.players.sp import ServiceProvider
from vnetlib.spec import parse_vnet

T = TypeVar("T")
PIP, VNP, VNO = "pip-mv", "vnp-mv", "vno-mv"


class Loop:
    """An event loop in a thread of its own, for console sessions that stay
    open while the caller's thread moves the node."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class Session:
    """An open console session on a node, through SP -> VNO -> VNP -> PIP."""

    loop: Loop
    reader: ByteReader
    writer: ByteWriter

    def ask(self, command: str, tag: str, timeout: float = 30.0) -> bytes:
        """Run `command` on the console; its output up to the `tag` line
        (AssertionError when it does not come within `timeout`)."""
        return self.loop.run(self._ask(command, tag, timeout), timeout + 5)

    async def _ask(self, command: str, tag: str, timeout: float) -> bytes:
        self.writer.write(f"{command}; echo {tag}-$((6*7))\n".encode())
        await self.writer.drain()
        got = b""
        deadline = time.monotonic() + timeout
        while not re.search(f"{tag}-42".encode(), got):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no answer to {command!r}: {got[-300:]!r}")
            chunk = await asyncio.wait_for(self.reader.read(65536), left)
            if not chunk:
                raise AssertionError(f"the session ended: {got[-300:]!r}")
            got += chunk
        return got

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run(close_quietly(self.writer), 10)


class Chain:
    """PIP, VNP and VNO over `substrate`, and an SP; `close` stops them."""

    def __init__(self, substrate: str, workdir: Path) -> None:
        self.ca = LabCA.create(workdir / "ca", "migration bench")
        self.workdir = workdir
        self.nodes: dict[str, ManagementNode] = {}
        self.loop = Loop()
        try:
            section = PipSection(
                substrate=str(paths.substrate_dir(substrate) / "substrate.xml"),
                inventory=str(manage.inventory_path(substrate)), price_per_cpu=1.0,
                price_per_mbps=0.0, reservation_seconds=120.0)
            self._start(PIP, Role.PIP, pip=section)
            self._start(VNP, Role.VNP, vnp=VnpSection((Upstream(PIP, self.nodes[PIP].url),),
                                                      60.0, False))
            self._start(VNO, Role.VNO, vno=VnoSection(Upstream(VNP, self.nodes[VNP].url),
                                                      None))
            self.sp = ServiceProvider(self.nodes[VNO].url, self.ca.issue("sp-mv", Role.SP),
                                      600.0, vno_name=VNO)
        except BaseException:
            self.close()
            raise

    def _start(self, name: str, role: Role, **sections: Any) -> None:
        # The PIP keeps its slivers in the lab's ledger, the one the direct
        # path (`vnet up/migrate`) uses: one allocation of tunnel ids per
        # substrate, whoever deploys on it.
        store = (sqlite_url(paths.state_db()) if role is Role.PIP
                 else f"sqlite:///{self.workdir / f'{name}.db'}")
        config = PlayerConfig(name=name, role=role, store=store, pki=self.ca.directory,
                              **sections)
        self.nodes[name] = ManagementNode(config, self.ca.issue(name, role)).start()

    @property
    def core(self) -> PipCore:
        service = self.nodes[PIP].service
        assert isinstance(service, PipService)
        return service.core

    def request(self, spec: str) -> tuple[str, Sliver]:
        """The VNet requested through the chain: its id at the SP, the PIP's sliver."""
        view = self.sp.request_vnet(parse_vnet(spec.encode()))
        if view.status != "ready":
            raise RuntimeError(f"the VNet is {view.status}")
        return view.id, self.sliver()

    def sliver(self) -> Sliver:
        (s,) = [s for s in self.core.ledger.slivers(VNP)
                if s.state.value in ("provisioned", "ready")]
        return s

    def move(self, node: str, target: str) -> Any:
        """The PIP moves `node` to host `target` (in this process, where its
        console sessions are)."""
        s = self.sliver()
        return self.core.migrate(s.owner, s.name, node, target)

    def console(self, vnet_id: str, node: str, kind: str) -> Session:
        reader, writer = self.loop.run(open_console(self.sp, vnet_id, node, kind))
        return Session(self.loop, reader, writer)

    def close(self) -> None:
        for name in list(self.nodes)[::-1]:
            node = self.nodes.pop(name)
            with contextlib.suppress(Exception):
                node.stop()
            if name == PIP:
                cgroups.clear(cgroups.service_parent(name))
        self.loop.close()


@contextlib.contextmanager
def chain(substrate: str, workdir: Path) -> Iterator[Chain]:
    made = Chain(substrate, workdir)
    try:
        yield made
    finally:
        made.close()
