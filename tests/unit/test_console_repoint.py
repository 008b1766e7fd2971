"""`Repointable` on in-memory endpoints: what the PIP end of a session does
when its node's endpoint ends during a move (a VM's source QEMU stopping) and
when the migration code calls `moved` from its own thread."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from vnetlib.console import repoint
from vnetlib.console.wire import ByteReader, ByteWriter, HopError
from vnetlib.core.records import Embedding, Sliver, State


class Line:
    """An endpoint: bytes fed in come out of read(); writes are kept."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.written = bytearray()
        self.closed = False

    async def read(self, n: int = -1) -> bytes:
        return await self.queue.get()

    def write(self, data: bytes) -> None:
        if self.closed:
            raise OSError("closed")
        self.written += data

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(b"")

    async def wait_closed(self) -> None:
        pass


def sliver(node_host: str = "h1") -> Sliver:
    return Sliver(id="v-1", substrate="sub", owner="vnp1", name="v.0", state=State.READY,
                  spec_xml="", embedding=Embedding({"n1": node_host}, {}, "test"))


def test_a_held_session_waits_for_its_node_then_reads_the_new_endpoint() -> None:
    async def run() -> None:
        old, new = Line("old"), Line("new")
        opened: list[str] = []

        async def reopen(s: Sliver) -> tuple[ByteReader, ByteWriter]:
            opened.append(s.embedding.node_map["n1"])
            return new, new

        before = sliver("h1")
        end = repoint.Repointable(repoint.key_of(before, "n1"), "serial", (old, old), reopen)
        try:
            old.queue.put_nowait(b"boot\r\n")
            assert await end.read() == b"boot\r\n"
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, repoint.hold, before, "n1") == 1
            await asyncio.sleep(0.01)
            reading = asyncio.create_task(end.read())
            old.queue.put_nowait(b"")  # the source QEMU stopped: its line ended
            await asyncio.sleep(0.05)
            assert not reading.done()  # held: not the end of the session
            after = replace(before, embedding=Embedding({"n1": "h2"}, {}, "test"))
            assert await loop.run_in_executor(None, repoint.moved, after, "n1") == 1
            new.queue.put_nowait(b"login: ")
            assert await asyncio.wait_for(reading, 5) == b"login: "
            assert opened == ["h2"] and old.closed
            end.write(b"root\n")
            await end.drain()
            assert bytes(new.written) == b"root\n"
        finally:
            end.close()
        assert repoint.open_sessions(before, "n1") == 0

    asyncio.run(run())


def test_an_endpoint_that_ends_unheld_ends_the_session() -> None:
    async def run() -> None:
        line = Line("only")

        async def reopen(s: Sliver) -> tuple[ByteReader, ByteWriter]:
            raise AssertionError("no move")

        end = repoint.Repointable(repoint.key_of(sliver(), "n1"), "shell", (line, line),
                                  reopen)
        line.queue.put_nowait(b"")
        assert await asyncio.wait_for(end.read(), 5) == b""
        end.close()

    asyncio.run(run())


def test_a_node_that_cannot_be_reopened_ends_the_session_with_a_notice() -> None:
    async def run() -> None:
        line = Line("old")

        async def reopen(s: Sliver) -> tuple[ByteReader, ByteWriter]:
            raise HopError("node n1 has no serial console now")

        s = sliver()
        end = repoint.Repointable(repoint.key_of(s, "n1"), "serial", (line, line), reopen)
        loop = asyncio.get_running_loop()
        reading = asyncio.create_task(end.read())
        assert await loop.run_in_executor(None, repoint.moved, s, "n1") == 0
        notice = await asyncio.wait_for(reading, 5)
        assert b"could not be opened again" in notice
        assert await asyncio.wait_for(end.read(), 5) == b""
        end.close()

    asyncio.run(run())


def test_moved_without_sessions_is_a_no_op() -> None:
    assert repoint.hold(sliver(), "n9") == 0
    assert repoint.moved(sliver(), "n9") == 0


def test_moved_without_reconnect_only_ends_the_hold() -> None:
    async def run() -> None:
        line = Line("old")

        async def reopen(s: Sliver) -> tuple[ByteReader, ByteWriter]:
            raise AssertionError("not reopened")

        s = sliver()
        end = repoint.Repointable(repoint.key_of(s, "n1"), "shell", (line, line), reopen)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, repoint.hold, s, "n1")
        assert await loop.run_in_executor(
            None, lambda: repoint.moved(s, "n1", reconnect=False)) == 0
        await asyncio.sleep(0.01)
        line.queue.put_nowait(b"still here")
        assert await end.read() == b"still here"
        end.close()

    asyncio.run(run())
