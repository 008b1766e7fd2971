"""Calling another player's management node: mutual TLS, XML bodies, bounded waits.

Connections are kept alive between calls (HTTP/1.1), in one pool per process
keyed by (host, port, the client context: the credentials presented, made
anew when their files change), so a burst of calls to a
peer (a console set up down a chain, a negotiation) pays one mutual-TLS
handshake instead of one per call. A connection idle for `POOL_IDLE` seconds
is closed by a pruning thread (the servers close idle ones after their header
bound anyway); a reused one is checked again (the expected peer, and the
peer's certificate against the current CRL) before each call; a call on a
reused connection that the server had closed before answering is sent once
more on a fresh connection (the server closes only connections without a
request in progress). `timeout` bounds the whole call (connect, handshake,
send, and reading the reply), not only each socket operation. Errors are
typed: a `RemoteError` carries the other side's error document, a
`TransportError` says the call never got an answer, and an `UnexpectedPeer`
says the server's certificate, though from the lab CA, names another player
or role.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import select
import socket
import ssl
import threading
import time
from typing import NamedTuple
from urllib.parse import urlsplit

from lxml import etree

from vnetlib.players.peers import named, peer_identity
from vnetlib.players.pki import Credentials, Identity, PkiError, Role
from vnetlib.players.revocation import Stamp, stamp
from vnetlib.players.server import RDL_NS, XML_CONTENT_TYPE, ApiError

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_RESPONSE = 16 << 20
POOL_IDLE = 2.0
"""Seconds an idle kept-alive connection waits for the next call to its peer."""
POOL_PER_PEER = 4


class ClientError(Exception):
    """Base of the errors a PlayerClient raises."""


class TransportError(ClientError):
    """No answer: connection refused, TLS refused, timeout, broken reply."""


class UnexpectedPeer(ClientError):
    """The server is from the lab CA but is not the player this client expects."""

    def __init__(self, message: str, peer: Identity | None) -> None:
        super().__init__(message)
        self.peer = peer


class RemoteError(ClientError):
    """The server answered with an error status and (normally) an error document."""

    def __init__(self, status: int, code: str, message: str, document: bytes) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.document = document


class Relayed(ApiError):
    """An error another player answered, passed on with its status and code
    (a refusal the customer may see as it is: 4xx, never a provider's name)."""

    def __init__(self, exc: RemoteError) -> None:
        super().__init__(exc.message)
        self.status = exc.status  # type: ignore[misc]
        self.code = exc.code  # type: ignore[misc]


class _StalePeer(Exception):
    """A kept-alive connection's server certificate is revoked now."""


class Reply(NamedTuple):
    status: int
    body: bytes


def parse_error_document(status: int, body: bytes) -> RemoteError:
    """Read `<error code=".."><message>..</message></error>`, tolerating junk."""
    try:
        root = etree.fromstring(body, parser=etree.XMLParser(
            resolve_entities=False, no_network=True, load_dtd=False))
        if root.tag == f"{{{RDL_NS}}}error":
            message = root.findtext(f"{{{RDL_NS}}}message") or ""
            return RemoteError(status, root.get("code", "unknown"), message, body)
    except etree.XMLSyntaxError:
        pass
    snippet = body[:200].decode("utf-8", "replace")
    return RemoteError(status, "unknown", snippet or "(empty body)", body)


_Key = tuple[str, int, ssl.SSLContext]  # the context: the credentials as they are now
_contexts: dict[Credentials, tuple[tuple[Stamp | None, Stamp | None], ssl.SSLContext]] = {}
_contexts_lock = threading.Lock()


def client_context(credentials: Credentials) -> ssl.SSLContext:
    """One client context per credentials and process, so a call does not load
    the key again; made anew when the certificate or key file changed (a
    renewal), and reloading a changed CRL before each connection by itself."""
    files = (stamp(credentials.cert_path), stamp(credentials.key_path))
    with _contexts_lock:
        cached = _contexts.get(credentials)
        if cached is not None and cached[0] == files:
            return cached[1]
    ctx = credentials.client_context()
    with _contexts_lock:
        _contexts[credentials] = (files, ctx)
    return ctx


class _Pool:
    """Idle kept-alive connections per peer; a daemon thread closes the ones
    idle for POOL_IDLE seconds and ends when none is left."""

    def __init__(self) -> None:
        self._idle: dict[_Key, list[tuple[float, http.client.HTTPSConnection]]] = {}
        self._cond = threading.Condition()
        self._pruner: threading.Thread | None = None
        self._pid = os.getpid()

    def take(self, key: _Key) -> http.client.HTTPSConnection | None:
        """The most recently used live connection to `key`, or None."""
        stale: list[http.client.HTTPSConnection] = []
        found = None
        with self._cond:
            self._forked()
            conns = self._idle.get(key, [])
            now = time.monotonic()
            while conns:
                since, conn = conns.pop()
                if now - since < POOL_IDLE and not _closed_by_peer(conn):
                    found = conn
                    break
                stale.append(conn)
        for conn in stale:
            conn.close()
        return found

    def give(self, key: _Key, conn: http.client.HTTPSConnection) -> None:
        with self._cond:
            self._forked()
            conns = self._idle.setdefault(key, [])
            if len(conns) >= POOL_PER_PEER:
                extra = conn
            else:
                conns.append((time.monotonic(), conn))
                extra = None
                if self._pruner is None:
                    self._pruner = threading.Thread(target=self._prune, daemon=True,
                                                    name="vnet-client-pool")
                    self._pruner.start()
                self._cond.notify()
        if extra is not None:
            extra.close()

    def clear(self) -> None:
        """Close every idle connection (a test that counts descriptors, a fork)."""
        with self._cond:
            conns = [c for entries in self._idle.values() for _, c in entries]
            self._idle.clear()
            self._cond.notify()
        for conn in conns:
            conn.close()

    def _forked(self) -> None:
        if self._pid != os.getpid():  # a child must not share its parent's TLS sessions
            self._pid = os.getpid()
            self._idle.clear()
            self._pruner = None

    def _prune(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                old = [c for entries in self._idle.values() for t, c in entries
                       if now - t >= POOL_IDLE]
                for key in list(self._idle):
                    kept = [(t, c) for t, c in self._idle[key] if now - t < POOL_IDLE]
                    if kept:
                        self._idle[key] = kept
                    else:
                        del self._idle[key]
                if not self._idle and not old:
                    self._pruner = None
                    return
                if not old:
                    first = min(t for entries in self._idle.values() for t, _ in entries)
                    self._cond.wait(max(0.01, first + POOL_IDLE - now))
            for conn in old:
                conn.close()


class _Connection(http.client.HTTPSConnection):
    """Sends a request's head and a small body in one write, with Nagle off:
    http.client writes them apart, two TLS records the server reads apart."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send_output(self, message_body: object = None, encode_chunked: bool = False) -> None:
        if isinstance(message_body, bytes) and not encode_chunked:
            buffer: list[bytes] = self._buffer  # type: ignore[attr-defined]
            buffer.extend((b"", b""))
            head = b"\r\n".join(buffer)
            del buffer[:]
            self.send(head + message_body)
            return
        super()._send_output(message_body, encode_chunked)  # type: ignore[misc]


def _closed_by_peer(conn: http.client.HTTPSConnection) -> bool:
    """An idle connection with something to read has been closed by the server
    (close_notify or end of stream): nothing else may arrive unasked."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


_pool = _Pool()


def close_idle_connections() -> None:
    """Close the kept-alive connections of this process now."""
    _pool.clear()


class PlayerClient:
    """HTTPS client of one player's API, presenting this player's certificate."""

    def __init__(self, base_url: str, credentials: Credentials,
                 timeout: float = DEFAULT_TIMEOUT, *, expect_role: Role | None = None,
                 expect_name: str | None = None,
                 max_response: int = DEFAULT_MAX_RESPONSE) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"base_url {base_url!r}: expected https://host:port")
        if parts.query or parts.fragment:
            raise ValueError(f"base_url {base_url!r}: no query or fragment")
        self.base_url = base_url
        self._host = parts.hostname
        self._port = parts.port or 443
        self._prefix = parts.path.rstrip("/")
        self._credentials = credentials
        self._context = client_context(credentials)
        self.timeout = timeout
        self.expect_role = expect_role
        self.expect_name = expect_name
        self.max_response = max_response

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post(self, path: str, body: bytes) -> Reply:
        return self.request("POST", path, body)

    def put(self, path: str, body: bytes) -> Reply:
        return self.request("PUT", path, body)

    def delete(self, path: str) -> Reply:
        return self.request("DELETE", path)

    def request(self, method: str, path: str, body: bytes | None = None) -> Reply:
        """Send one request; return (status, body) on 1xx-3xx, raise otherwise."""
        if not path.startswith("/"):
            raise ValueError(f"path {path!r} must start with '/'")
        deadline = time.monotonic() + self.timeout
        key = (self._host, self._port, self._context)
        conn = _pool.take(key)
        reused = conn is not None
        while True:
            if conn is None:
                conn = _Connection(self._host, self._port, context=self._context,
                                   timeout=self.timeout)
            keep = False
            try:
                status, data, keep = self._exchange(conn, reused, method,
                                                    self._prefix + path, body, deadline)
                break
            except _StalePeer:  # a fresh handshake decides (a renewed or revoked server)
                conn.close()
                conn, reused = None, False
                continue
            except (OSError, http.client.HTTPException) as exc:
                if reused and _unanswered(exc):
                    conn.close()
                    conn, reused = None, False
                    continue
                kind = "TLS" if isinstance(exc, ssl.SSLError) else "transport"
                raise TransportError(
                    f"{method} {self.base_url}{path}: {kind} failure: {exc}") from exc
            finally:
                if not keep and conn is not None:
                    conn.close()
        if keep:
            _pool.give(key, conn)
        if status >= 400:
            raise parse_error_document(status, data)
        return Reply(status, data)

    def _exchange(self, conn: http.client.HTTPSConnection, reused: bool, method: str,
                  target: str, body: bytes | None, deadline: float
                  ) -> tuple[int, bytes, bool]:
        """(status, body, whether the connection may be used again)."""
        if reused:
            self._check_reused(conn)
        else:
            conn.connect()
            self._check_peer(conn, None)
        _bound(conn, deadline)
        headers = {"Accept": "application/xml"}
        if body is not None:
            headers["Content-Type"] = XML_CONTENT_TYPE
        conn.request(method, target, body=body, headers=headers)
        _bound(conn, deadline)
        response = conn.getresponse()
        chunks: list[bytes] = []
        size = 0
        while True:
            _bound(conn, deadline)
            chunk = response.read(1 << 16)
            if not chunk:
                break
            size += len(chunk)
            if size > self.max_response:
                raise TransportError(f"reply exceeds {self.max_response} bytes")
            chunks.append(chunk)
        return response.status, b"".join(chunks), not response.will_close

    def _check_reused(self, conn: http.client.HTTPSConnection) -> None:
        """A kept-alive connection's server must still be the expected peer,
        and its certificate not revoked since the handshake."""
        sock = conn.sock
        der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        try:
            if der is None:
                raise PkiError("no server certificate")
            peer = peer_identity(self._credentials, der)
        except PkiError as exc:
            raise _StalePeer(str(exc)) from exc
        self._check_peer(conn, peer)

    def _check_peer(self, conn: http.client.HTTPSConnection, known: Identity | None) -> None:
        """The server is the expected player (`known`: its identity, if checked already)."""
        if self.expect_role is None and self.expect_name is None:
            return
        sock = conn.sock
        der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        try:
            peer = known or (named(der)[0] if der else None)
        except PkiError as exc:
            raise UnexpectedPeer(f"{self.base_url}: {exc}", None) from exc
        if peer is None:
            raise UnexpectedPeer(f"{self.base_url}: no server certificate", None)
        if self.expect_role is not None and peer.role is not self.expect_role:
            raise UnexpectedPeer(
                f"{self.base_url} is {peer}, expected a {self.expect_role.value}", peer)
        if self.expect_name is not None and peer.name != self.expect_name:
            raise UnexpectedPeer(f"{self.base_url} is {peer}, expected {self.expect_name}", peer)


def _unanswered(exc: BaseException) -> bool:
    """The server closed a kept-alive connection before answering: it had not
    read the request (it closes only connections without one in progress)."""
    return isinstance(exc, (ConnectionError, http.client.BadStatusLine,
                            http.client.CannotSendRequest, ssl.SSLEOFError,
                            ssl.SSLZeroReturnError))


def _bound(conn: http.client.HTTPSConnection, deadline: float) -> None:
    """Shrink the socket timeout to what is left of the call's time."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("call timed out")
    if conn.sock is not None:
        conn.sock.settimeout(left)


# -- calls from an asyncio loop ------------------------------------------------------------

_AsyncKey = tuple[str, int, ssl.SSLContext]
ASYNC_HEAD_LIMIT = 16 << 10


class _AsyncConn:
    __slots__ = ("reader", "since", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.since = time.monotonic()

    def close(self) -> None:
        """Abort the connection (its socket closed even if the loop is gone)."""
        try:
            self.writer.transport.abort()
        except RuntimeError:  # the loop is closed: no callbacks, just the socket
            sock = self.writer.get_extra_info("socket")
            # asyncio hands out a TransportSocket, which has no close()
            sock = getattr(sock, "_sock", sock)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()


class AsyncCalls:
    """POSTs to other players from one asyncio loop (a player's HTTPS loop),
    without a worker thread: for the small calls of a console setup, whose
    handlers run on the loop. The same rules as `PlayerClient`: mutual TLS
    with this player's credentials, the server checked to be `expect_name`
    on a new connection and against the current CRL on a kept-alive one,
    kept-alive connections (idle at most `POOL_IDLE` s, `POOL_PER_PEER` per
    peer), a call on a kept-alive connection closed before any answer sent
    once more on a fresh one, `timeout` for the whole call, typed errors
    (`RemoteError`, `TransportError`, `UnexpectedPeer`). Use only from the
    loop it was first used on."""

    def __init__(self, credentials: Credentials,
                 max_response: int = DEFAULT_MAX_RESPONSE) -> None:
        self._credentials = credentials
        self.max_response = max_response
        self._idle: dict[_AsyncKey, list[_AsyncConn]] = {}
        self._pruning: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def close(self) -> None:
        """Close the kept-alive connections: on their loop if it still runs
        (from any thread), else at once."""
        loop = self._loop
        if loop is not None and loop.is_running():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not loop:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._close_now)
                    return
        self._close_now()

    def _close_now(self) -> None:
        for conns in self._idle.values():
            for c in conns:
                c.close()
        self._idle.clear()
        if self._pruning is not None:
            with contextlib.suppress(RuntimeError):
                self._pruning.cancel()
            self._pruning = None

    async def post(self, base_url: str, path: str, body: bytes, *, expect_name: str,
                   timeout: float = DEFAULT_TIMEOUT) -> Reply:
        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"base_url {base_url!r}: expected https://host:port")
        host, port = parts.hostname, parts.port or 443
        self._loop = asyncio.get_running_loop()
        key = (host, port, client_context(self._credentials))
        target = parts.path.rstrip("/") + path
        head = (f"POST {target} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Accept: application/xml\r\nContent-Type: {XML_CONTENT_TYPE}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode("ascii")
        try:
            async with asyncio.timeout(timeout):
                status, data = await self._call(key, expect_name, head + body, base_url)
        except TimeoutError as exc:
            raise TransportError(f"POST {base_url}{path}: timed out") from exc
        if status >= 400:
            raise parse_error_document(status, data)
        return Reply(status, data)

    async def _call(self, key: _AsyncKey, expect_name: str, request: bytes,
                    base_url: str) -> tuple[int, bytes]:
        conn = self._take(key)
        reused = conn is not None
        while True:
            if conn is None:
                conn = await self._connect(key, expect_name, base_url)
            elif not self._still_valid(conn, expect_name):
                conn.close()
                conn, reused = None, False
                continue
            try:
                status, data, keep = await self._exchange(conn, request)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ValueError) as exc:
                conn.close()
                if reused and isinstance(exc, (ConnectionError, asyncio.IncompleteReadError)):
                    conn, reused = None, False
                    continue
                raise TransportError(f"POST {base_url}: transport failure: {exc}") from exc
            except BaseException:
                conn.close()
                raise
            if keep:
                self._give(key, conn)
            else:
                conn.close()
            return status, data

    def _take(self, key: _AsyncKey) -> _AsyncConn | None:
        conns = self._idle.get(key)
        now = time.monotonic()
        while conns:
            conn = conns.pop()
            if (now - conn.since < POOL_IDLE and not conn.reader.at_eof()
                    and not conn.writer.transport.is_closing()):
                return conn
            conn.close()
        return None

    def _give(self, key: _AsyncKey, conn: _AsyncConn) -> None:
        conns = self._idle.setdefault(key, [])
        now = time.monotonic()
        for old in [c for c in conns if now - c.since >= POOL_IDLE]:
            conns.remove(old)
            old.close()
        if len(conns) >= POOL_PER_PEER:
            conn.close()
            return
        conn.since = now
        conns.append(conn)
        if self._pruning is None:
            self._pruning = asyncio.get_running_loop().call_later(POOL_IDLE, self._prune)

    def _prune(self) -> None:
        """Close the connections idle for `POOL_IDLE` s; again later while any is left."""
        self._pruning = None
        now = time.monotonic()
        for key in list(self._idle):
            kept = []
            for conn in self._idle[key]:
                if now - conn.since >= POOL_IDLE:
                    conn.close()
                else:
                    kept.append(conn)
            if kept:
                self._idle[key] = kept
            else:
                del self._idle[key]
        if self._idle:
            self._pruning = asyncio.get_running_loop().call_later(POOL_IDLE, self._prune)

    def _peer(self, conn: _AsyncConn) -> Identity:
        obj = conn.writer.get_extra_info("ssl_object")
        der = obj.getpeercert(binary_form=True) if obj is not None else None
        if not der:
            raise PkiError("no server certificate")
        return peer_identity(self._credentials, der)

    def _still_valid(self, conn: _AsyncConn, expect_name: str) -> bool:
        try:
            return self._peer(conn).name == expect_name
        except PkiError:
            return False

    async def _connect(self, key: _AsyncKey, expect_name: str, base_url: str) -> _AsyncConn:
        host, port, context = key
        try:
            reader, writer = await asyncio.open_connection(host, port, ssl=context,
                                                           server_hostname=host,
                                                           limit=ASYNC_HEAD_LIMIT)
        except (OSError, ssl.SSLError) as exc:
            kind = "TLS" if isinstance(exc, ssl.SSLError) else "transport"
            raise TransportError(f"POST {base_url}: {kind} failure: {exc}") from exc
        conn = _AsyncConn(reader, writer)
        try:
            peer = self._peer(conn)
        except PkiError as exc:
            conn.close()
            raise UnexpectedPeer(f"{base_url}: {exc}", None) from exc
        if peer.name != expect_name:
            conn.close()
            raise UnexpectedPeer(f"{base_url} is {peer}, expected {expect_name}", peer)
        return conn

    async def _exchange(self, conn: _AsyncConn, request: bytes) -> tuple[int, bytes, bool]:
        """(status, body, whether the connection may be used again)."""
        conn.writer.write(request)
        head = await conn.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ValueError(f"bad status line {lines[0][:80]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "transfer-encoding" in headers:
            raise ValueError("chunked reply")
        length = int(headers.get("content-length", "0"))
        if length > self.max_response:
            raise ValueError(f"reply exceeds {self.max_response} bytes")
        data = await conn.reader.readexactly(length) if length else b""
        keep = (version == "HTTP/1.1" and headers.get("connection", "").lower() != "close")
        return int(code), data, keep
