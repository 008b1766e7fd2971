"""The SP's end of a console: set the session up through its VNO, connect,
and relay a terminal (raw mode, escape sequence) or a pipe."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import termios
import time
import tty
import weakref
from collections.abc import Callable
from typing import Any, cast

from vnetlib.console import compact
from vnetlib.console.wire import (
    MAX_ANSWER,
    ByteReader,
    ByteWriter,
    HopError,
    NotOffered,
    close_quietly,
    connect,
    dial,
    keep_ticket,
    open_line,
    peer_of,
    read_line,
    refusal_of,
)
from vnetlib.players import messages as m
from vnetlib.players.client import AsyncCalls, RemoteError, client_context
from vnetlib.players.pki import Credentials, PkiError
from vnetlib.players.sp import ServiceProvider

ESCAPE = 0x1D  # Ctrl-]
LINGER = 2.0  # seconds of silence after stdin's end before a piped session leaves
CHUNK = 16 << 10


_listeners: dict[tuple[str, str | None], str] = {}
"""(the VNO's API URL, its name) -> the console listener it answered with last."""
_calls: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, AsyncCalls]] = (
    weakref.WeakKeyDictionary())
"""Per loop, per SP credentials: the kept-alive HTTPS connections to VNOs."""
_SpareKey = tuple[str, str | None, int]
_spares: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Spares] = (
    weakref.WeakKeyDictionary())
"""Per loop: a TLS connection to a VNO's listener opened for the next session
(`open_console(..., keep=True)`)."""
SPARE_TTL = 5.0  # unused; the listener waits 10 s for a first line
SPARE_DELAY = 0.05  # after a session opened: the spare's handshake stays off its path


def _calls_of(sp: ServiceProvider) -> AsyncCalls:
    per_loop = _calls.setdefault(asyncio.get_running_loop(), {})
    calls = per_loop.get(id(sp.credentials))
    if calls is None:
        calls = per_loop[id(sp.credentials)] = AsyncCalls(sp.credentials)
    return calls


def close_calls() -> None:
    """Close this loop's kept-alive setup connections and spare listener
    connections (a client leaving its loop)."""
    with contextlib.suppress(RuntimeError):
        loop = asyncio.get_running_loop()
        for calls in _calls.pop(loop, {}).values():
            calls.close()
        spares = _spares.pop(loop, None)
        if spares is not None:
            spares.close()


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
                       *, answered: Callable[[], None] | None = None, keep: bool = False
                       ) -> tuple[ByteReader, ByteWriter]:
    """A console on `node` of `vnet`: (reader, writer) once every hop said OK;
    HopError with the refusing hop's reason otherwise, RemoteError for a
    setup the VNO refused (unknown VNet or node, not the owner, not ready).

    The first session from a VNO (by its URL and name) is set up over HTTPS
    (`request_session`), then its token presented on the listener the VNO
    answered with. Later sessions from the same VNO go to that listener
    directly and ask for the session on the connection itself (one TLS
    connection and one round trip fewer; the VNO authorizes the same way).
    With `keep`, a client that opens several sessions keeps one spare TLS
    connection to the listener, opened just after a session (off its path)
    and closed unused after `SPARE_TTL`, so the next session skips the
    handshake as well. `answered` is called when the setup request is out on
    the listener, or when the VNO's HTTPS answer is in (for the bench)."""
    context = client_context(sp.credentials)
    key = (sp.client.base_url, sp.vno_name)
    known = _listeners.get(key)
    if known is not None and sp.vno_name is not None:
        try:
            return await _open_on_listener(sp, known, vnet, node, kind, context, keep,
                                           answered)
        except NotOffered:
            _listeners.pop(key, None)
    session = await request_session(sp, vnet, node, kind)
    if answered is not None:
        answered()
    _listeners[key] = session.url
    return await dial(session.url, session.token, context, sp.credentials,
                      expect_name=sp.vno_name)


async def _open_on_listener(sp: ServiceProvider, url: str, vnet: str, node: str, kind: str,
                            context: ssl.SSLContext, keep: bool,
                            answered: Callable[[], None] | None
                            ) -> tuple[ByteReader, ByteWriter]:
    """A session asked for on the VNO's listener itself (`VNET-CONSOLE-OPEN`),
    on a spare connection if one is ready (its peer checked against the CRL
    again), else on a new one. A spare closed before it answered is replaced
    by a new connection once."""
    line = open_line(vnet, node, kind)
    skey = (url, sp.vno_name, id(sp.credentials))
    spares = _spares_here() if keep else None
    conn = spares.take(skey, sp.credentials) if spares is not None else None
    if spares is not None:
        spares.plan(skey, url, context, sp)
    fresh = conn is None
    while True:
        if conn is None:
            try:
                conn = await connect(url, context, sp.credentials, expect_name=sp.vno_name,
                                     timeout=sp.client.timeout)
            except HopError as exc:  # the VNO moved its listener (a restart): ask it
                raise NotOffered(url) from exc
        reader, writer = conn
        try:
            writer.write(line)
            await writer.drain()
            if answered is not None:
                answered()
            answer = await read_line(reader, sp.client.timeout, MAX_ANSWER)
        except (TimeoutError, OSError, ValueError) as exc:
            await close_quietly(writer)
            cut = exc.__cause__
            unanswered = isinstance(exc, ConnectionError) or (
                isinstance(cut, asyncio.IncompleteReadError) and not cut.partial)
            if not fresh and unanswered:  # a spare the listener closed meanwhile
                conn, fresh = None, True
                continue
            raise HopError(f"the VNO's listener failed: {exc or 'timeout'}") from exc
        break
    if answer == b"OK\n":
        keep_ticket(writer)
        return reader, writer
    await close_quietly(writer)
    refused = refusal_of(answer)
    if refused is not None:
        status, code, message = refused
        raise RemoteError(status, code, message, b"")
    reason = answer.decode("utf-8", "replace").strip()
    if reason == "ERR bad greeting":
        raise NotOffered(url)
    raise HopError(reason[4:] if reason.startswith("ERR ") else "refused")


class _Spares:
    """One loop's spare TLS connections to VNO listeners, at most one per
    (listener, VNO name, credentials): opened `SPARE_DELAY` after a session
    took or missed one, closed unused after `SPARE_TTL`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ready: dict[_SpareKey, tuple[asyncio.StreamReader, asyncio.StreamWriter,
                                          asyncio.TimerHandle]] = {}
        self.planned: dict[_SpareKey, asyncio.TimerHandle] = {}
        self.opening: dict[_SpareKey, asyncio.Task[None]] = {}

    def take(self, key: _SpareKey, credentials: Credentials
             ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        entry = self.ready.pop(key, None)
        if entry is None:
            return None
        reader, writer, timer = entry
        timer.cancel()
        try:
            fit = peer_of(writer, credentials).name == key[1]  # revoked since the handshake?
        except PkiError:
            fit = False
        if not fit or reader.at_eof() or writer.transport.is_closing():
            writer.transport.abort()
            return None
        return reader, writer

    def plan(self, key: _SpareKey, url: str, context: ssl.SSLContext,
             sp: ServiceProvider) -> None:
        if key in self.ready or key in self.planned or key in self.opening:
            return
        self.planned[key] = self.loop.call_later(SPARE_DELAY, self._start, key, url,
                                                 context, sp)

    def _start(self, key: _SpareKey, url: str, context: ssl.SSLContext,
               sp: ServiceProvider) -> None:
        self.planned.pop(key, None)
        self.opening[key] = self.loop.create_task(self._open(key, url, context, sp))

    async def _open(self, key: _SpareKey, url: str, context: ssl.SSLContext,
                    sp: ServiceProvider) -> None:
        try:
            reader, writer = await connect(url, context, sp.credentials,
                                           expect_name=sp.vno_name, timeout=sp.client.timeout)
        except HopError:
            return
        finally:
            self.opening.pop(key, None)
        timer = self.loop.call_later(SPARE_TTL, self._expire, key, writer)
        self.ready[key] = (reader, writer, timer)

    def _expire(self, key: _SpareKey, writer: asyncio.StreamWriter) -> None:
        entry = self.ready.get(key)
        if entry is not None and entry[1] is writer:
            del self.ready[key]
            writer.transport.abort()

    def close(self) -> None:
        for timer in self.planned.values():
            timer.cancel()
        for task in self.opening.values():
            task.cancel()
        for _, writer, timer in self.ready.values():
            timer.cancel()
            writer.transport.abort()
        self.planned.clear()
        self.opening.clear()
        self.ready.clear()


def _spares_here() -> _Spares:
    loop = asyncio.get_running_loop()
    spares = _spares.get(loop)
    if spares is None:
        spares = _spares[loop] = _Spares(loop)
    return spares


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
