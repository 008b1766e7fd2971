"""A player's console listener: one asyncio loop in a thread of its own,
mutual TLS, every connection a task (no thread per connection).

Per connection: the TLS handshake and the greeting within a deadline, the
token checked against the player's `SessionTable` (unused, unexpired, and
presented by the identity it was minted for), the next hop opened, `OK`,
then bytes relayed both ways with bounded buffers (a pump reads only after
the other side's writer drained below its high-water mark), until either
side closes, the session is idle too long, or the listener stops (the
client then gets a notice before the connection closes).

A shell session's next hop is opened ahead (`prepare`), as soon as this
player has minted the token for it, so the data path down the chain is
being built while the setup's answers travel back up: the token's holder
then finds the next hop ready. A prepared next hop is used only by the
session of its token, and closed when the token expires unused.

Opening a next hop takes a TLS handshake, which costs more CPU than
everything else a hop does for a setup. So after each opening to a next hop
this player opens one spare connection to it, a moment later and off the
setup's path (mutual TLS, the peer's name checked); the next session's
opening to that hop takes it, checks its peer against the CRL again and only
greets it with its token. A spare is closed unused after `SPARE_TTL`, well
before the far end's greeting timeout, and is not kept while stopping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from vnetlib.console.loop import LoopThread
from vnetlib.console.sessions import Opener, Pending, SessionTable, TokenRefused, token_hash
from vnetlib.console.wire import (
    OPEN_MAGIC,
    STREAM_LIMIT,
    ByteReader,
    ByteWriter,
    HopError,
    NotOffered,
    SetupRefused,
    close_quietly,
    connect,
    greeting,
    open_line,
    peer_of,
    present,
    read_line,
    refusal,
    request_of,
    token_of,
)
from vnetlib.players.pki import Credentials, Identity, PkiError
from vnetlib.players.server import ApiError, UpstreamFailed

log = logging.getLogger(__name__)

CHUNK = 16 << 10
REGISTER_SPINS = 1000
LISTEN_BACKLOG = 128
WRITE_HIGH_WATER = 64 << 10
STOP_NOTICE = b"\r\n[vnet console: the session was stopped by a player on its path]\r\n"
IDLE_NOTICE = b"\r\n[vnet console: idle for too long, session closed]\r\n"
SPARE_TTL = 5.0  # a spare connection to a next hop, unused; the far end waits 10 s
SPARE_DELAY = 0.05  # after an opening: the spare's handshake stays off the setup's path
MAX_SPARES = 16

Setup = Callable[[Identity, str, str, str, str], Awaitable[Pending]]
"""(presenter, vnet, node, kind, peer address) -> the session of a setup made
on the listener (`VNET-CONSOLE-OPEN`): authorized, its next hop's token in."""


@dataclass(frozen=True, slots=True)
class ConsoleLimits:
    handshake_timeout: float = 10.0
    greeting_timeout: float = 10.0
    open_timeout: float = 20.0  # the next hop (and the ones after it) to answer OK
    idle_timeout: float = 1800.0
    max_sessions: int = 64  # relaying sessions; connections still greeting count too


DEFAULT_LIMITS = ConsoleLimits()


def tcp_listener(host: str, port: int) -> socket.socket:
    """A listening socket whose proto is IPPROTO_TCP: asyncio turns Nagle's
    algorithm off only on accepted sockets of that proto, and without that a
    small write waits for the delayed ACK (40 ms) of the one before it."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                         socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


class ConsoleServer(LoopThread):
    """Listens at `url` (tls://host:port, bound at construction); start()/stop()."""

    def __init__(self, name: str, credentials: Credentials, sessions: SessionTable, *,
                 host: str = "127.0.0.1", port: int = 0,
                 limits: ConsoleLimits = DEFAULT_LIMITS) -> None:
        self.name = name
        self.credentials = credentials
        self.sessions = sessions
        self.limits = limits
        self.sock = tcp_listener(host, port)
        self.url = f"tls://{host}:{self.sock.getsockname()[1]}"
        self.client_context = credentials.client_context()
        super().__init__()
        self._thread_name = f"console-{name}"
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._writers: set[ByteWriter] = set()  # of live sessions, both sides
        self._prepared: dict[str, tuple[asyncio.Task[tuple[ByteReader, ByteWriter]],
                                        asyncio.TimerHandle]] = {}
        self._announced: set[str] = set()  # prepare() called, _prepare not run yet
        self._announce_lock = threading.Lock()
        self._stopping = False
        self._spares: dict[tuple[str, str | None],
                           tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = {}
        self._sparing: set[tuple[str, str | None]] = set()
        self._spare_timers: dict[tuple[str, str | None], asyncio.TimerHandle] = {}
        self._spare_epoch = 0
        self.keep_spares = True
        self.setup: Setup | None = None
        """Set by the player's console routes: setups taken on the listener itself."""

    # -- life cycle ----------------------------------------------------------------

    def start(self) -> ConsoleServer:
        self._start_loop()
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, sock=self.sock, ssl=self.credentials.server_context(),
            ssl_handshake_timeout=self.limits.handshake_timeout, limit=STREAM_LIMIT)

    def stop(self) -> None:
        super().stop()
        self.sock.close()

    def prepare(self, token_hash: str, opener: Opener, expires: float) -> None:
        """Start opening the next hop of a just-minted token (from a thread
        other than the loop's, before the token is handed out: the token's
        session, on the loop, waits for the opening to be registered if it
        comes first). Skipped when stopped or at the session limit."""
        loop = self._loop
        if loop is None or self._stopping:
            return
        with self._announce_lock:
            self._announced.add(token_hash)
        try:
            loop.call_soon_threadsafe(self._prepare, token_hash, opener, expires)
        except RuntimeError:  # the loop stopped meanwhile
            with self._announce_lock:
                self._announced.discard(token_hash)

    def _prepare(self, h: str, opener: Opener, expires: float) -> None:
        loop = asyncio.get_running_loop()
        with self._announce_lock:
            self._announced.discard(h)
        if self._stopping or len(self._prepared) >= self.limits.max_sessions:
            return
        task = loop.create_task(asyncio.wait_for(opener(), self.limits.open_timeout))
        task.add_done_callback(_observe)
        timer = loop.call_later(max(0.0, expires - time.time()), self._unclaimed, h)
        self._prepared[h] = (task, timer)

    async def _registered(self, h: str) -> None:
        """Let an announced preparation of `h` (already queued on this loop)
        run first."""
        for _ in range(REGISTER_SPINS):
            with self._announce_lock:
                if h not in self._announced:
                    return
            await asyncio.sleep(0)

    def _unclaimed(self, h: str) -> None:
        """The token expired unused, or was burnt: close what was opened for it
        (an expired token itself stays refused as expired)."""
        entry = self._prepared.pop(h, None)
        if entry is not None:
            entry[1].cancel()
            asyncio.get_running_loop().create_task(_discard(entry[0]))

    # -- next hops ------------------------------------------------------------------

    async def dial(self, url: str, token: str, expect_name: str | None
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The next hop at `url` (whose certificate must name `expect_name`),
        greeted with `token`: on a spare connection if one is ready, else on a
        fresh one; then a new spare is opened for the next session. HopError
        if the hop cannot be opened or refuses the token."""
        return await self._first_line(url, greeting(token), expect_name)

    async def ask(self, url: str, ref: str, node: str, kind: str, expect_name: str
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """`dial` with a setup line instead of a token (the next player's
        listener sets the session up itself): SetupRefused with what its
        HTTPS route would have answered, NotOffered if it takes no setup
        line, HopError otherwise."""
        try:
            return await self._first_line(url, open_line(ref, node, kind), expect_name)
        except SetupRefused:
            raise
        except HopError as exc:
            if exc.__cause__ is None and str(exc) == "bad greeting":
                raise NotOffered(url) from exc
            raise

    async def _first_line(self, url: str, line: bytes, expect_name: str | None
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if asyncio.get_running_loop() is not self._loop:  # a front door's own loop
            reader, writer = await connect(url, self.client_context, self.credentials,
                                           expect_name=expect_name)
            return await present(reader, writer, line)
        key = (url, expect_name)
        spare = self._take_spare(key)
        if not self._stopping and self.keep_spares and key not in self._spare_timers:
            self._spare_timers[key] = asyncio.get_running_loop().call_later(
                SPARE_DELAY, self._replenish, key)
        if spare is not None:
            reader, writer = spare
            try:
                who = peer_of(writer, self.credentials)  # revoked since the handshake?
            except PkiError as exc:
                await close_quietly(writer)
                raise HopError(f"the next hop failed: {exc}") from exc
            if expect_name is None or who.name == expect_name:
                try:
                    return await present(reader, writer, line)
                except HopError as exc:
                    if exc.__cause__ is None:  # the far end answered: a refusal
                        raise
                    # closed before it answered: the line was not read (a token burnt)
        reader, writer = await connect(url, self.client_context, self.credentials,
                                       expect_name=expect_name)
        return await present(reader, writer, line)

    def _take_spare(self, key: tuple[str, str | None]
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        entry = self._spares.pop(key, None)
        if entry is None:
            return None
        reader, writer, since = entry
        if (time.monotonic() - since >= SPARE_TTL or reader.at_eof()
                or writer.transport.is_closing()):
            asyncio.get_running_loop().create_task(close_quietly(writer))
            return None
        return reader, writer

    def _replenish(self, key: tuple[str, str | None]) -> None:
        self._spare_timers.pop(key, None)
        if (self._stopping or key in self._spares or key in self._sparing
                or len(self._spares) + len(self._sparing) >= MAX_SPARES):
            return
        self._sparing.add(key)
        asyncio.get_running_loop().create_task(self._open_spare(key))

    def spares(self) -> list[str]:
        """The local addresses of the spare connections, for tests."""
        loop = self._loop
        if loop is None:
            return []

        async def listed() -> list[str]:
            return [str(w.get_extra_info("sockname")) for _, w, _ in self._spares.values()]

        return asyncio.run_coroutine_threadsafe(listed(), loop).result(5)

    def drop_spares(self) -> None:
        """Close the spare connections and stop opening more for the openings
        made so far (a test that counts connections or descriptors)."""
        loop = self._loop
        if loop is None:
            return

        async def drop() -> None:
            self._spare_epoch += 1
            for timer in self._spare_timers.values():
                timer.cancel()
            self._spare_timers.clear()
            spares = list(self._spares.values())
            self._spares.clear()
            for _, writer, _ in spares:
                await close_quietly(writer)

        asyncio.run_coroutine_threadsafe(drop(), loop).result(5)

    async def _open_spare(self, key: tuple[str, str | None]) -> None:
        url, name = key
        epoch = self._spare_epoch
        try:
            reader, writer = await connect(url, self.client_context, self.credentials,
                                           expect_name=name)
        except HopError as exc:
            log.debug("%s: no spare connection to %s: %s", self.name, url, exc)
            return
        finally:
            self._sparing.discard(key)
        if self._stopping or key in self._spares or epoch != self._spare_epoch:
            await close_quietly(writer)
            return
        self._spares[key] = (reader, writer, time.monotonic())
        asyncio.get_running_loop().call_later(SPARE_TTL, self._expire_spare, key, writer)

    def _expire_spare(self, key: tuple[str, str | None], writer: asyncio.StreamWriter) -> None:
        entry = self._spares.get(key)
        if entry is not None and entry[1] is writer:
            del self._spares[key]
            asyncio.get_running_loop().create_task(close_quietly(writer))

    async def _shutdown(self) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for _, writer, _ in self._spares.values():
            await close_quietly(writer)
        self._spares.clear()
        for prep, timer in self._prepared.values():
            timer.cancel()
            await _discard(prep)
        self._prepared.clear()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.wait(list(self._conns), timeout=10)
        current = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not current]
        for t in rest:
            t.cancel()
        if rest:
            await asyncio.wait(rest, timeout=5)

    def stats(self) -> tuple[int, int]:
        """(connections being served, asyncio tasks of the loop), for tests."""
        loop = self._loop
        if loop is None:
            return 0, 0

        async def count() -> tuple[int, int]:
            return len(self._conns), len(asyncio.all_tasks()) - 1

        return asyncio.run_coroutine_threadsafe(count(), loop).result(5)

    def buffered(self) -> int:
        """Bytes waiting in the write buffers of live sessions (both sides), for tests."""
        loop = self._loop
        if loop is None:
            return 0

        async def total() -> int:
            n = 0
            for w in list(self._writers):
                transport = getattr(w, "transport", None)
                if transport is not None:
                    n += transport.get_write_buffer_size()
                else:
                    n += len(getattr(w, "pending", b""))
            return n

        return asyncio.run_coroutine_threadsafe(total(), loop).result(5)

    # -- one connection ---------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        transport = writer.transport
        if isinstance(transport, asyncio.WriteTransport):
            transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        pending: Pending | None = None
        outcome = "refused"
        nxt: tuple[ByteReader, ByteWriter] | None = None
        peer = str(writer.get_extra_info("peername"))
        try:
            if len(self._conns) > self.limits.max_sessions:
                raise TokenRefused("too many console sessions; try later")
            try:
                line = await read_line(reader, self.limits.greeting_timeout)
                who = peer_of(writer, self.credentials)  # as of the greeting: spares wait
                wanted = request_of(line) if self.setup is not None and line.startswith(
                    OPEN_MAGIC) else None
                token = "" if wanted is not None else token_of(line)
            except (TimeoutError, PkiError, ValueError, OSError) as exc:
                log.info("%s: console connection from %s refused: %s", self.name, peer,
                         exc or "no greeting in time")
                raise TokenRefused("bad greeting") from exc
            if wanted is not None:
                assert self.setup is not None
                try:
                    pending = await self.setup(who, *wanted, peer)
                except ApiError as exc:
                    log.info("%s: console setup by %s on %s/%s (%s) refused: %s", self.name,
                             who, *wanted, exc.message)
                    with contextlib.suppress(Exception):
                        writer.write(refusal(exc.status, exc.code, exc.message))
                        await asyncio.wait_for(writer.drain(), 2)
                    return
            else:
                try:
                    pending = self.sessions.consume(token, who, peer)
                except TokenRefused:
                    await self._registered(token_hash(token))
                    self._unclaimed(token_hash(token))  # a burnt token's prepared hop
                    raise
                await self._registered(pending.hash)
            prepared = self._prepared.pop(pending.hash, None)
            try:
                if prepared is not None:
                    prepared[1].cancel()
                    opened = await prepared[0]
                else:
                    opened = await asyncio.wait_for(pending.open(), self.limits.open_timeout)
                nxt = opened
                self._writers.update((writer, opened[1]))
            except (SetupRefused, ApiError) as exc:  # a setup refused below, or over HTTPS
                status = exc.status if exc.status < 500 else UpstreamFailed.status
                code = exc.code if exc.status < 500 else UpstreamFailed.code
                outcome = f"refused: {exc.message}"
                with contextlib.suppress(Exception):
                    writer.write(refusal(status, code, exc.message))
                    await asyncio.wait_for(writer.drain(), 2)
                return
            except (TimeoutError, HopError) as exc:
                outcome = f"next hop failed: {exc or 'timeout'}"
                raise TokenRefused(str(exc) or "the next hop did not answer") from exc
            writer.write(b"OK\n")
            await writer.drain()
            log.info("%s: console session of %s on %s/%s (%s) from %s opened", self.name,
                     who, pending.vnet, pending.node, pending.kind, peer)
            outcome = await self._relay(reader, writer, *opened)
        except TokenRefused as exc:
            with contextlib.suppress(Exception):
                writer.write(f"ERR {exc}\n".encode())
                await asyncio.wait_for(writer.drain(), 2)
        except asyncio.CancelledError:
            outcome = "stopped"
            with contextlib.suppress(Exception):
                writer.write(STOP_NOTICE)
        except Exception as exc:
            log.exception("%s: console session failed", self.name)
            outcome = f"failed: {exc}"
        finally:
            if nxt is not None:
                self._writers.difference_update((writer, nxt[1]))
                await close_quietly(nxt[1])
            await close_quietly(writer)
            if pending is not None:
                with contextlib.suppress(Exception):
                    self.sessions.finish(pending.hash, outcome)
                log.info("%s: console session on %s/%s closed: %s", self.name,
                         pending.vnet, pending.node, outcome)
            self._conns.discard(task)

    async def _relay(self, a_reader: ByteReader, a_writer: ByteWriter,
                     b_reader: ByteReader, b_writer: ByteWriter) -> str:
        """Bytes both ways until one side ends; the outcome in words."""
        last = time.monotonic()

        async def pump(src: ByteReader, dst: ByteWriter) -> None:
            nonlocal last
            while True:
                data = await src.read(CHUNK)
                if not data:
                    return
                last = time.monotonic()
                dst.write(data)
                await dst.drain()

        up = asyncio.create_task(pump(a_reader, b_writer))
        down = asyncio.create_task(pump(b_reader, a_writer))
        try:
            while True:
                left = self.limits.idle_timeout - (time.monotonic() - last)
                done, _ = await asyncio.wait({up, down}, timeout=max(left, 0.01),
                                             return_when=asyncio.FIRST_COMPLETED)
                if done:
                    first = up if up in done else down
                    side = "client" if first is up else "next hop"
                    exc = first.exception()
                    return f"closed by the {side}" + (f" ({exc})" if exc else "")
                if time.monotonic() - last >= self.limits.idle_timeout:
                    with contextlib.suppress(Exception):
                        a_writer.write(IDLE_NOTICE)
                    return "idle timeout"
        finally:
            for t in (up, down):
                t.cancel()
            await asyncio.gather(up, down, return_exceptions=True)


def _observe(task: asyncio.Task[tuple[ByteReader, ByteWriter]]) -> None:
    """A prepared next hop that failed is reported to its session, not to the loop."""
    if not task.cancelled():
        task.exception()


async def _discard(task: asyncio.Task[tuple[ByteReader, ByteWriter]]) -> None:
    """Close a prepared next hop, or stop opening it."""
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # A cancel that came as the opening finished does not undo it (wait_for
    # may return the result anyway): what was opened is closed here.
    if not task.cancelled() and task.exception() is None:
        await close_quietly(task.result()[1])
