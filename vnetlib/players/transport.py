"""The players' HTTPS transport: one asyncio loop in a background thread,
aiohttp's HTTP/1.1 parser, mutual TLS, handlers in a bounded thread pool.

An open connection costs a socket and a few kilobytes of memory, never a
thread: the loop thread accepts, does the TLS handshakes and reads requests;
only `Service.dispatch` and `Credentials.peer_identity` (which may block: a
playbook run, a revocation list) run in the pool of `Limits.workers` threads.
A request that finds every worker taken waits up to `Limits.queue_wait`, then
gets 503.

aiohttp has no bound on the TLS handshake or on reading a request (its
keep-alive timer only covers connections that send nothing at all, and only
in recent versions), and asyncio none on the number of connections; so the
TLS handshake is started here, by hand, on a plain TCP connection (`_Conn`)
once the client sends its first bytes (a silent connection costs no TLS
state), and `_Conn` keeps the bookkeeping:

- at most `Limits.max_connections` open connections (fewer if the descriptor
  limit is lower); one more evicts the oldest connection that has not sent a
  complete request yet, or is closed at once if all of them have;
- a request's headers must arrive within `Limits.header_timeout` of the
  connection, and its body within `read_timeout` (the TLS handshake, within
  `Limits.handshake_timeout`, counts against both);
- connections are kept alive after a successful answer (HTTP/1.1), for at
  most `Limits.requests_per_connection` requests; between requests a
  connection is idle again: evictable, and closed unless the next request's
  headers arrive within `Limits.header_timeout` of the previous answer (and
  its body within `read_timeout`); an error answer closes the connection;
- `stop()` closes the listening socket and every connection without a
  request at once, lets requests in flight finish within its timeout, then
  cuts the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import threading
import time
from asyncio.sslproto import SSLProtocol
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from types import FrameType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from vnetlib.players import timeouts
from vnetlib.players.peers import peer_identity
from vnetlib.players.pki import Credentials, Identity, PkiError, check_source
from vnetlib.players.server import (
    DEFAULT_MAX_BODY,
    DEFAULT_TIMEOUT,
    DRAIN_LIMIT,
    XML_CONTENT_TYPE,
    XML_MEDIA_TYPES,
    ApiError,
    BadRequest,
    LengthRequired,
    Outcome,
    PayloadTooLarge,
    Service,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
    error_document,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

METHODS = frozenset({"GET", "POST", "PUT", "DELETE"})
BACKLOG = 128
"""The listen queue, and how many connections asyncio accepts in one go (each
takes a descriptor before the cap is checked: the cap leaves room for them)."""
FD_RESERVE = 64
"""Descriptors kept free of connections for the handlers (database, playbook pipes)."""
SSL_SHUTDOWN_TIMEOUT = 5.0
CLOSE_WAIT = 0.5
"""How long stop() lets answered connections close by themselves before cutting them."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The transport's bounds; the defaults suit a management node."""

    max_connections: int = 512
    workers: int = 32
    handshake_timeout: float = 10.0
    header_timeout: float = 10.0
    read_timeout: float = timeouts.REQUEST_READ
    """A whole request, headers and body, from the moment it connected."""
    queue_wait: float = 30.0
    requests_per_connection: int = 1000


def connection_cap(wanted: int, reserve: int = FD_RESERVE) -> int:
    """`wanted`, lowered so connections cannot take the descriptors the rest of
    the process needs (an accept() failing with EMFILE stalls every client)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 0
    return max(1, min(wanted, soft - in_use - reserve - BACKLOG))


def _xml_response(outcome: Outcome, keep_alive: bool = False) -> web.Response:
    resp = web.Response(status=outcome.status, body=outcome.body or None)
    resp.headers.update(outcome.headers)
    if outcome.body:
        resp.headers["Content-Type"] = XML_CONTENT_TYPE
    resp.headers["Server"] = "vnet"
    if not keep_alive:
        resp.force_close()
    return resp


class _Http(RequestHandler):
    """aiohttp's connection protocol, tied to its `_Conn`, with XML errors."""

    __slots__ = ("conn",)

    conn: _Conn

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """Errors aiohttp finds itself (a bad request line, an oversized header)."""
        if status >= 500:
            log.error("request from %s failed", self.conn.peer, exc_info=exc)
        else:
            log.info("bad request from %s: %s", self.conn.peer, message or exc)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        text = message or HTTPStatus(status).phrase
        return _xml_response(Outcome(status, error_document(f"http-{status}", text)))


class _TLS(SSLProtocol):
    """asyncio's TLS protocol (what loop.start_tls uses), with a 32 KiB read
    buffer instead of 256 KiB: a TLS record is at most 16 KiB + overhead, and
    every connection in its handshake holds one."""

    max_size = 32 * 1024


class _Conn(asyncio.Protocol):
    """One client connection. Plain TCP until the client's first bytes (so an
    idle connection costs no TLS state); then `_TLS` over it, with this object
    as the application protocol, passing the plaintext to aiohttp."""

    def __init__(self, hub: ServiceServer) -> None:
        self.hub = hub
        self.peer = "?"
        self.raw: asyncio.Transport | None = None
        self.ssl: _TLS | None = None
        self.tls: asyncio.Transport | None = None
        self.http: _Http | None = None
        self.busy = False
        self.closed = False
        self.requests = 0
        self.deadline: asyncio.TimerHandle | None = None
        self.read_by = hub.loop.time() + hub.read_bound  # loop time: the whole request in

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self.raw is None:
            self._accepted(transport)
        else:
            self._secured(transport)

    def _accepted(self, transport: asyncio.Transport) -> None:
        self.raw = transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else "?"
        if not self.hub.admit(self):
            self.closed = True
            transport.abort()
            return
        self.deadline = self.hub.loop.call_later(self.hub.header_bound, self.expire)

    def _start_tls(self, first: bytes) -> None:
        """What loop.start_tls does, but fed with the bytes already read."""
        assert self.raw is not None
        hub, raw = self.hub, self.raw
        raw.pause_reading()
        waiter: asyncio.Future[None] = hub.loop.create_future()
        waiter.add_done_callback(self._handshake_done)
        self.ssl = _TLS(hub.loop, self, hub.context, waiter, server_side=True,
                        ssl_handshake_timeout=hub.limits.handshake_timeout,  # type: ignore[arg-type]
                        ssl_shutdown_timeout=SSL_SHUTDOWN_TIMEOUT)
        raw.set_protocol(self.ssl)
        self.ssl.connection_made(raw)
        view = memoryview(first)
        while view and not self.closed:
            buf = self.ssl.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            self.ssl.buffer_updated(n)
            view = view[n:]
        if not raw.is_closing():
            raw.resume_reading()

    def _handshake_done(self, waiter: asyncio.Future[None]) -> None:
        exc = None if waiter.cancelled() else waiter.exception()
        if exc is not None or waiter.cancelled():
            log.info("connection from %s refused: %s", self.peer,
                     exc or "handshake cancelled")
            self.abort()

    def _secured(self, transport: asyncio.Transport) -> None:
        """The handshake is done: from here on aiohttp reads the plaintext."""
        self.tls = transport
        if self.closed:
            transport.abort()
            return
        http = self.hub.new_http()
        http.conn = self
        self.http = http
        http.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.http is not None:
            self.http.data_received(data)
        elif self.ssl is None and not self.closed:
            self._start_tls(data)

    def eof_received(self) -> bool | None:
        if self.http is not None:
            self.http.eof_received()
        return None

    def pause_writing(self) -> None:
        if self.http is not None:
            self.http.pause_writing()

    def resume_writing(self) -> None:
        if self.http is not None:
            self.http.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.hub.forget(self)
        if self.deadline is not None:
            self.deadline.cancel()
        if self.http is not None:
            self.http.connection_lost(exc)

    def begin_request(self) -> bool:
        """The headers are in: the connection is busy, no longer evictable."""
        if self.closed:
            return False
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        self.busy = True
        self.requests += 1
        self.hub.mark_busy(self)
        return True

    def end_request(self) -> None:
        """Answered and kept alive: idle again, with the next request's bounds."""
        if self.closed:
            return
        hub = self.hub
        self.busy = False
        self.read_by = hub.loop.time() + hub.read_bound
        hub.mark_idle(self)
        self.deadline = hub.loop.call_later(hub.header_bound, self.expire)

    def expire(self) -> None:
        if not self.busy and not self.closed:
            log.info("closing connection from %s: no complete request header within %g s",
                     self.peer, self.hub.header_bound)
            self.abort()

    def abort(self) -> None:
        self.closed = True
        self.hub.forget(self)
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        transport = self.tls or self.raw
        if transport is not None:
            transport.abort()


class ServiceServer:
    """A Service listening with mutual TLS; bound (and its port known) on creation.

    `timeout` bounds reading a request (together with `limits.read_timeout`)
    and writing its answer; it does not bound the handler.
    """

    def __init__(self, service: Service, credentials: Credentials, *,
                 host: str = "127.0.0.1", port: int = 0, max_body: int = DEFAULT_MAX_BODY,
                 timeout: float = DEFAULT_TIMEOUT, limits: Limits | None = None,
                 check_source: bool = False) -> None:
        self.service = service
        self.credentials = credentials
        self.check_source = check_source
        self.context = credentials.server_context()
        self.max_body = max_body
        self.timeout = timeout
        self.limits = limits or Limits()
        self.read_bound = min(timeout, self.limits.read_timeout)
        self.header_bound = min(self.read_bound, self.limits.header_timeout)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP: asyncio turns Nagle's algorithm off only on accepted
        # sockets of that proto; with it on, an answer's second write (headers,
        # then body) waits for the client's delayed ACK, 40 ms.
        self._sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, port))
            self._sock.listen(BACKLOG)
        except BaseException:
            self._sock.close()
            raise
        self._address: tuple[str, int] = self._sock.getsockname()[:2]
        self.max_connections = self.limits.max_connections
        self._thread: threading.Thread | None = None
        self._stopped = False
        # loop-side state: touched only in the loop thread once started
        self.loop = asyncio.new_event_loop()
        self._executor = ThreadPoolExecutor(self.limits.workers,
                                            thread_name_prefix=f"vnet-{service.name}-worker")
        self._server: asyncio.Server | None = None
        self._web: web.Server | None = None
        self._slots: asyncio.Semaphore | None = None
        self._idle: dict[_Conn, None] = {}  # oldest first: eviction order
        self._busy: set[_Conn] = set()
        self._inflight = 0
        self._drained: asyncio.Event | None = None

    # -- public API -----------------------------------------------------------------

    @property
    def host(self) -> str:
        return str(self._address[0])

    @property
    def port(self) -> int:
        return int(self._address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    @property
    def open_connections(self) -> int:
        """Connections counted against the cap (read it from the loop thread, or
        accept a momentary value)."""
        return len(self._idle) + len(self._busy)

    def start(self) -> ServiceServer:
        """Serve in a background thread; returns at once."""
        if self._thread is not None or self._stopped:
            raise RuntimeError("server already started")
        self._thread = threading.Thread(target=self._run, name=f"vnet-{self.service.name}",
                                        daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self.loop).result(30)
        log.info("%s listening on %s (at most %d connections, %d workers)",
                 self.service.name, self.url, self.max_connections, self.limits.workers)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, close idle connections at once, let requests in flight
        finish within `timeout`, then cut what is left."""
        if self._stopped:
            return
        self._stopped = True
        thread, self._thread = self._thread, None
        if thread is None:
            self._sock.close()
            self.loop.close()
            self._executor.shutdown(wait=False)
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(timeout), self.loop).result(
                timeout + 10)
        except Exception:
            log.exception("%s: shutdown did not complete", self.service.name)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            thread.join(10)
            self._executor.shutdown(wait=False, cancel_futures=True)
        log.info("%s stopped", self.service.name)

    def run_until_signal(self, signals: Collection[int] = (signal.SIGINT, signal.SIGTERM),
                         ready: Callable[[ServiceServer], None] | None = None,
                         stopping: Callable[[], None] | None = None) -> int:
        """Serve until one of `signals` arrives, then stop cleanly; for `vnet serve`.

        Must run in the main thread (signal handlers live there). `stopping` runs
        once a signal came, before the server waits for requests in flight (so
        long handlers can be told to give up). Returns the signal number that
        ended it.
        """
        got: list[int] = []
        done = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            got.append(signum)
            done.set()

        previous = {s: signal.signal(s, on_signal) for s in signals}
        try:
            self.start()
            if ready is not None:
                ready(self)
            while not done.wait(1.0):
                pass
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if stopping is not None:
                stopping()
            self.stop()
        return got[0]

    def __enter__(self) -> ServiceServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- loop thread: lifecycle ---------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    async def _open(self) -> None:
        self._slots = asyncio.Semaphore(self.limits.workers)
        self._drained = asyncio.Event()
        self._drained.set()
        self._web = web.Server(self._handle)
        self.max_connections = connection_cap(self.limits.max_connections)
        self._server = await self.loop.create_server(lambda: _Conn(self), sock=self._sock,
                                                     backlog=BACKLOG)

    async def _shutdown(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        if self._server is not None:
            self._server.close()
        for conn in list(self._idle):
            conn.abort()
        assert self._drained is not None
        try:
            async with asyncio.timeout(grace):
                await self._drained.wait()
        except TimeoutError:
            log.warning("%s: %d requests still running after %g s; cutting them",
                        self.service.name, self._inflight, grace)
        # Answered connections close by themselves (TLS close), briefly waited for.
        end = min(deadline, time.monotonic() + CLOSE_WAIT)
        while self._busy and time.monotonic() < end:
            await asyncio.sleep(0.01)
        for conn in [*self._idle, *self._busy]:
            conn.abort()
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)

    # -- loop thread: connection bookkeeping (called by _Conn) -----------------------------

    def admit(self, conn: _Conn) -> bool:
        """Count a new connection in; at the cap, evict the oldest one without a
        request, or refuse this one if every connection has a request."""
        if self.open_connections >= self.max_connections:
            victim = next(iter(self._idle), None)
            if victim is None:
                log.warning("%s: %d connections, all with requests: refusing %s",
                            self.service.name, self.open_connections, conn.peer)
                return False
            log.info("%s: at %d connections: evicting idle %s", self.service.name,
                     self.max_connections, victim.peer)
            victim.abort()
        self._idle[conn] = None
        return True

    def mark_busy(self, conn: _Conn) -> None:
        self._idle.pop(conn, None)
        self._busy.add(conn)

    def mark_idle(self, conn: _Conn) -> None:
        self._busy.discard(conn)
        self._idle[conn] = None

    def forget(self, conn: _Conn) -> None:
        self._idle.pop(conn, None)
        self._busy.discard(conn)

    def new_http(self) -> _Http:
        assert self._web is not None
        return _Http(self._web, loop=self.loop, keepalive_timeout=self.header_bound,
                     logger=log, access_log=None,  # type: ignore[arg-type]
                     auto_decompress=False, lingering_time=0.0)

    # -- loop thread: one request ----------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        protocol = request.protocol
        assert isinstance(protocol, _Http)
        conn = protocol.conn
        if not conn.begin_request():
            raise ConnectionResetError("connection closed before its request was read")
        assert self._drained is not None
        self._inflight += 1
        self._drained.clear()
        try:
            outcome = await self._outcome(request, conn)
            keep = (outcome.status < 400 and not self._stopped and request.keep_alive
                    and conn.requests < self.limits.requests_per_connection)
            resp = _xml_response(outcome, keep)
            try:
                async with asyncio.timeout(self.timeout):
                    await resp.prepare(request)
                    await resp.write_eof()
            except (TimeoutError, OSError) as exc:
                log.info("could not answer %s: %s", conn.peer, exc or "write timed out")
                conn.abort()
            else:
                if keep:
                    conn.end_request()
            return resp
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._drained.set()

    async def _outcome(self, request: web.BaseRequest, conn: _Conn) -> Outcome:
        method = request.method
        if method not in METHODS:
            return Outcome(501, error_document("http-501", f"Unsupported method ({method!r})"))
        try:
            path = _path(request.raw_path)
            body = await self._body(request)
        except ApiError as exc:
            await self._drain(request)
            return Outcome(exc.status, error_document(exc.code, exc.message))
        except TimeoutError:
            return Outcome(408, error_document(
                "request-timeout", f"request not received within {self.read_bound:g} s"))
        try:
            if self.service.loop_route(method, path) is not None:
                return await self._answer_on_loop(conn, method, path, body)
            return await self._in_worker(self._answer, conn, method, path, body)
        except Unauthenticated as exc:
            if conn.requests > 1:  # revoked while kept alive: cut, as a new handshake would
                log.info("closing kept-alive connection from %s: %s", conn.peer, exc.message)
                conn.abort()
            return Outcome(exc.status, error_document(exc.code, exc.message))
        except ApiError as exc:
            return Outcome(exc.status, error_document(exc.code, exc.message))

    def _answer(self, conn: _Conn, method: str, path: str, body: bytes) -> Outcome:
        """In one worker: who is calling, then the service's answer."""
        identity = self._identity(conn)
        outcome = self.service.dispatch(method, path, identity, body)
        log.info("%s %s %s -> %d", identity, method, path, outcome.status)
        return outcome

    async def _answer_on_loop(self, conn: _Conn, method: str, path: str,
                              body: bytes) -> Outcome:
        """`_answer` for a route whose handler is a coroutine: on this loop, no
        worker (the revocation check reads the CRL only when its file changed)."""
        identity = self._identity(conn)
        outcome = await self.service.dispatch_on_loop(method, path, identity, body)
        log.info("%s %s %s -> %d", identity, method, path, outcome.status)
        return outcome

    async def _in_worker(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` in the pool; Unavailable if no worker frees up in time."""
        assert self._slots is not None
        slots = self._slots
        try:
            async with asyncio.timeout(self.limits.queue_wait):
                await slots.acquire()
        except TimeoutError:
            raise Unavailable(f"{self.service.name} is busy: all {self.limits.workers} "
                              "workers are taken; try again later") from None
        try:
            future = self.loop.run_in_executor(self._executor, fn, *args)
        except BaseException:
            slots.release()
            raise
        future.add_done_callback(lambda _: slots.release())
        return await asyncio.shield(future)

    def _identity(self, conn: _Conn) -> Identity:
        """In a worker: the revocation check inside peer_identity may block."""
        sslobj = conn.tls.get_extra_info("ssl_object") if conn.tls is not None else None
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if not der:
            raise Unauthenticated("a client certificate from the lab CA is required")
        try:
            identity = peer_identity(self.credentials, der)
        except PkiError as exc:
            raise Unauthenticated(f"client certificate does not name a player: {exc}") from exc
        if self.check_source:
            try:
                check_source(der, conn.peer)
            except PkiError as exc:
                log.warning("%s: refused %s from %s: %s", self.service.name, identity,
                            conn.peer, exc)
                raise Unauthenticated(f"client refused: {exc}") from exc
        return identity

    async def _body(self, request: web.BaseRequest) -> bytes:
        headers = request.headers
        if "Transfer-Encoding" in headers:
            raise LengthRequired("chunked bodies are not accepted; send Content-Length")
        raw = headers.get("Content-Length", "0")
        if not raw.isdigit():
            raise BadRequest(f"bad Content-Length {raw!r}")
        length = int(raw)
        if length > self.max_body:
            raise PayloadTooLarge(f"body of {length} bytes exceeds the limit of {self.max_body}")
        if length == 0:
            return b""
        ctype = headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype and ctype not in XML_MEDIA_TYPES:
            raise UnsupportedMediaType(f"Content-Type {ctype or 'none'!r}: send application/xml")
        if headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        async with asyncio.timeout_at(_read_by(request)):
            try:
                return await request.content.readexactly(length)
            except asyncio.IncompleteReadError as exc:
                raise BadRequest(f"body ended after {len(exc.partial)} of {length} bytes") \
                    from exc

    async def _drain(self, request: web.BaseRequest) -> None:
        """Read and drop a refused body, so the client, still sending, gets the
        error instead of a reset."""
        left = request.content_length or 0
        if not 0 < left <= DRAIN_LIMIT or "Transfer-Encoding" in request.headers:
            return
        with contextlib.suppress(TimeoutError, OSError, asyncio.IncompleteReadError):
            async with asyncio.timeout_at(_read_by(request)):
                while left > 0:
                    chunk = await request.content.readany()
                    if not chunk:
                        break
                    left -= len(chunk)


def _read_by(request: web.BaseRequest) -> float:
    protocol = request.protocol
    assert isinstance(protocol, _Http)
    return protocol.conn.read_by


def _path(target: str) -> str:
    parts = urlsplit(target)
    if parts.query or parts.fragment:
        raise BadRequest("query strings are not part of this API")
    if not parts.path.startswith("/"):
        raise BadRequest(f"bad request target {target!r}")
    return parts.path
