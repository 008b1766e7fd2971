"""The SP's end of a console: set the session up through its VNO, connect,
and relay a terminal (raw mode, escape sequence) or a pipe."""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
import time
import tty
import weakref
from collections.abc import Callable
from typing import Any, cast

from vnetlib.console import compact
from vnetlib.console.wire import (
    ByteReader,
    ByteWriter,
    HopError,
    close_quietly,
    connect,
    dial,
    greet,
)
from vnetlib.players import messages as m
from vnetlib.players.client import AsyncCalls, client_context
from vnetlib.players.sp import ServiceProvider

ESCAPE = 0x1D  # Ctrl-]
LINGER = 2.0  # seconds of silence after stdin's end before a piped session leaves
CHUNK = 16 << 10


_listeners: dict[tuple[str, str | None], str] = {}
"""(the VNO's API URL, its name) -> the console listener it answered with last."""
_calls: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, AsyncCalls]] = (
    weakref.WeakKeyDictionary())
"""Per loop, per SP credentials: the kept-alive HTTPS connections to VNOs."""


def _calls_of(sp: ServiceProvider) -> AsyncCalls:
    per_loop = _calls.setdefault(asyncio.get_running_loop(), {})
    calls = per_loop.get(id(sp.credentials))
    if calls is None:
        calls = per_loop[id(sp.credentials)] = AsyncCalls(sp.credentials)
    return calls


def close_calls() -> None:
    """Close this loop's kept-alive setup connections (a client leaving its loop)."""
    with contextlib.suppress(RuntimeError):
        for calls in _calls.pop(asyncio.get_running_loop(), {}).values():
            calls.close()


async def request_session(sp: ServiceProvider, vnet: str, node: str,
                          kind: str = "shell") -> m.ConsoleSession:
    """The VNO's answer to a console request (`ServiceProvider.console`),
    asked from this loop on a kept-alive mutual-TLS connection, without a
    thread. The VNO must be known by name (`vno_name`: it is checked on a new
    connection, and against the CRL on a kept-alive one); otherwise the SP's
    own client asks in a thread."""
    if sp.vno_name is None:
        return await asyncio.to_thread(sp.console, vnet, node, kind)
    req = m.ConsoleRequest(node, cast(m.ConsoleKindName, kind))
    reply = await _calls_of(sp).post(sp.client.base_url, f"/v1/vnets/{vnet}/console",
                                     m.console_request_xml(req), expect_name=sp.vno_name,
                                     timeout=sp.client.timeout)
    try:
        return compact.read_session(reply.body)
    except ValueError as exc:
        raise ValueError(f"bad <console-session> reply: {exc}") from exc


async def open_console(sp: ServiceProvider, vnet: str, node: str, kind: str = "shell",
                       *, answered: Callable[[], None] | None = None
                       ) -> tuple[ByteReader, ByteWriter]:
    """A console on `node` of `vnet`: (reader, writer) once every hop said OK;
    HopError with the refusing hop's reason otherwise.

    When this process had a console from the same VNO before, the TLS
    connection to the listener it answered with then is opened while the
    setup request is under way, and greeted once the token is in (if the
    VNO answers with the same listener; otherwise it is dropped).
    `answered` is called when the VNO's answer is in (for the bench)."""
    context = client_context(sp.credentials)
    key = (sp.client.base_url, sp.vno_name)
    known = _listeners.get(key)
    early = None
    if known is not None:
        early = asyncio.create_task(connect(known, context, sp.credentials,
                                            expect_name=sp.vno_name))
    try:
        session = await request_session(sp, vnet, node, kind)
    except BaseException:
        await _drop(early)
        raise
    if answered is not None:
        answered()
    _listeners[key] = session.url
    if early is not None and session.url == known:
        try:
            reader, writer = await early
        except HopError:
            pass
        else:
            return await greet(reader, writer, session.token)
    else:
        await _drop(early)
    return await dial(session.url, session.token, context, sp.credentials,
                      expect_name=sp.vno_name)


async def _drop(task: asyncio.Task[tuple[asyncio.StreamReader, asyncio.StreamWriter]] | None
                ) -> None:
    if task is None:
        return
    if not task.done():
        task.cancel()
    results = await asyncio.gather(task, return_exceptions=True)
    if isinstance(results[0], tuple):
        await close_quietly(results[0][1])


class Escape:
    """Finds `Ctrl-] q`, or `~.` at the start of a line, in typed input."""

    def __init__(self) -> None:
        self.state = "line-start"

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(bytes to send, whether the user asked to leave)."""
        out = bytearray()
        for b in data:
            if self.state == "ctrl":
                if b == ord("q"):
                    return bytes(out), True
                out += bytes([ESCAPE, b])
                self.state = "mid"
            elif self.state == "tilde":
                if b == ord("."):
                    return bytes(out), True
                out += bytes([ord("~"), b])
                self.state = "mid"
            elif b == ESCAPE:
                self.state = "ctrl"
            elif b == ord("~") and self.state == "line-start":
                self.state = "tilde"
            else:
                out.append(b)
                self.state = "line-start" if b in (10, 13) else "mid"
        return bytes(out), False


async def _stdin_chunks(fd: int, queue: asyncio.Queue[bytes]) -> None:
    """Everything read from `fd` into `queue`, then b"" at its end."""
    loop = asyncio.get_running_loop()
    try:
        readable: asyncio.Event = asyncio.Event()
        loop.add_reader(fd, readable.set)
    except PermissionError:  # a regular file: read it all, it ends
        while chunk := os.read(fd, CHUNK):
            await queue.put(chunk)
        await queue.put(b"")
        return
    try:
        os.set_blocking(fd, False)
        while True:
            await readable.wait()
            readable.clear()
            try:
                chunk = os.read(fd, CHUNK)
            except BlockingIOError:
                continue
            await queue.put(chunk)
            if not chunk:
                return
    finally:
        loop.remove_reader(fd)
        os.set_blocking(fd, True)


async def relay_stdio(reader: ByteReader, writer: ByteWriter, stdin: int = 0,
                      stdout: int = 1, *, linger: float = LINGER) -> str:
    """Relay until the remote side closes, the user escapes (terminal), or stdin
    ends and the remote stays silent for `linger` seconds (pipe). Restores the
    terminal always. Returns why it ended."""
    is_tty = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if is_tty else None
    if is_tty:
        tty.setraw(stdin)
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)
    feeder = asyncio.create_task(_stdin_chunks(stdin, queue))
    escape = Escape()
    last_output = time.monotonic()
    stdin_done = False

    async def down() -> None:
        nonlocal last_output
        while data := await reader.read(CHUNK):
            last_output = time.monotonic()
            await asyncio.to_thread(_write_all, stdout, data)

    out_task = asyncio.create_task(down())
    try:
        while True:
            if stdin_done:
                left = linger - (time.monotonic() - last_output)
                if left <= 0:
                    return "input ended"
                done, _ = await asyncio.wait({out_task}, timeout=left)
                if done:
                    return "closed by the remote side"
                continue
            get = asyncio.create_task(queue.get())
            waiting: set[asyncio.Future[Any]] = {get, out_task}
            ready, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if out_task in ready:
                get.cancel()
                await asyncio.gather(get, return_exceptions=True)
                return "closed by the remote side"
            chunk = get.result()
            if not chunk:
                stdin_done = True
                last_output = max(last_output, time.monotonic())
                continue
            if is_tty:
                chunk, leave = escape.feed(chunk)
                if leave:
                    if chunk:
                        writer.write(chunk)
                    return "left by the user"
            writer.write(chunk)
            await writer.drain()
    finally:
        for t in (feeder, out_task):
            t.cancel()
        await asyncio.gather(feeder, out_task, return_exceptions=True)
        with contextlib.suppress(Exception):
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 2)
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


async def run_console(sp: ServiceProvider, vnet: str, node: str, kind: str = "shell",
                      stdin: int = 0, stdout: int = 1, *, linger: float = LINGER) -> str:
    reader, writer = await open_console(sp, vnet, node, kind)
    return await relay_stdio(reader, writer, stdin, stdout, linger=linger)
