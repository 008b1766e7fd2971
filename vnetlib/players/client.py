"""Calling another player's management node: mutual TLS, XML bodies, bounded waits.

One connection per request, matching the server, so no state survives a
failure. `timeout` bounds the whole call (connect, handshake, send, and
reading the reply), not only each socket operation. Errors are typed: a
`RemoteError` carries the other side's error document, a `TransportError`
says the call never got an answer, and an `UnexpectedPeer` says the server's
certificate, though from the lab CA, names another player or role.
"""

from __future__ import annotations

import http.client
import ssl
import time
from typing import NamedTuple
from urllib.parse import urlsplit

from lxml import etree

from vnetlib.players.pki import Credentials, Identity, PkiError, Role, identity_of
from vnetlib.players.server import RDL_NS, XML_CONTENT_TYPE, ApiError

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_RESPONSE = 16 << 20


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
        self._context = credentials.client_context()
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
        conn = http.client.HTTPSConnection(self._host, self._port, context=self._context,
                                           timeout=self.timeout)
        try:
            status, data = self._exchange(conn, method, self._prefix + path, body, deadline)
        except (OSError, http.client.HTTPException) as exc:
            kind = "TLS" if isinstance(exc, ssl.SSLError) else "transport"
            raise TransportError(
                f"{method} {self.base_url}{path}: {kind} failure: {exc}") from exc
        finally:
            conn.close()
        if status >= 400:
            raise parse_error_document(status, data)
        return Reply(status, data)

    def _exchange(self, conn: http.client.HTTPSConnection, method: str, target: str,
                  body: bytes | None, deadline: float) -> tuple[int, bytes]:
        conn.connect()
        self._check_peer(conn)
        _bound(conn, deadline)
        headers = {"Accept": "application/xml", "Connection": "close"}
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
        return response.status, b"".join(chunks)

    def _check_peer(self, conn: http.client.HTTPSConnection) -> None:
        if self.expect_role is None and self.expect_name is None:
            return
        sock = conn.sock
        der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        try:
            peer = identity_of(der) if der else None
        except PkiError as exc:
            raise UnexpectedPeer(f"{self.base_url}: {exc}", None) from exc
        if peer is None:
            raise UnexpectedPeer(f"{self.base_url}: no server certificate", None)
        if self.expect_role is not None and peer.role is not self.expect_role:
            raise UnexpectedPeer(
                f"{self.base_url} is {peer}, expected a {self.expect_role.value}", peer)
        if self.expect_name is not None and peer.name != self.expect_name:
            raise UnexpectedPeer(f"{self.base_url} is {peer}, expected {self.expect_name}", peer)


def _bound(conn: http.client.HTTPSConnection, deadline: float) -> None:
    """Shrink the socket timeout to what is left of the call's time."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("call timed out")
    if conn.sock is not None:
        conn.sock.settimeout(left)
