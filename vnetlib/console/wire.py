"""The console wire protocol, both ends.

A client connects with mutual TLS and sends one line, `VNET-CONSOLE 1
<token>\\n`. The hop answers `OK\\n` once its own next hop answered OK (so an
`ERR <reason>\\n` anywhere on the path reaches the client), then relays raw
bytes both ways until either side closes. TLS in asyncio cannot half-close,
so an end of stream from either side ends the whole session.

A listener also takes the setup itself as the first line, `VNET-CONSOLE-OPEN
1 <ref> <node> <kind>\\n`, from a caller that knows the listener (its player
answered an earlier setup over HTTPS): the same authorization as the
player's HTTPS console route, then the session on this very connection,
without a token handed out (the connection is the presenter). A refusal of
the setup is `REFUSED <status> <code> <message>\\n`, what the HTTPS route
would have answered; a listener that takes no setup answers `ERR bad
greeting`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
import weakref
from typing import Any, Protocol
from urllib.parse import urlsplit

from vnetlib.players.peers import peer_identity
from vnetlib.players.pki import Credentials, Identity, PkiError

MAGIC = b"VNET-CONSOLE 1 "
OPEN_MAGIC = b"VNET-CONSOLE-OPEN 1 "
MAX_LINE = 128
MAX_ANSWER = 512
"""Bytes of an answer line a client reads (a refusal carries a message)."""
REFUSED = b"REFUSED "
VNET_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")
NODE_ID = re.compile(r"[a-z][a-z0-9_\-]{0,14}")
KINDS = frozenset({"shell", "serial", "vnc"})
STREAM_LIMIT = 64 << 10
DIAL_TIMEOUT = 10.0
RESUME_TTL = 60.0
"""Seconds a TLS 1.3 session ticket of a listener is offered again."""

_tickets: weakref.WeakKeyDictionary[ssl.SSLContext, dict[tuple[str, int],
                                                          tuple[ssl.SSLSession, float]]] = (
    weakref.WeakKeyDictionary())
_ticket_of: weakref.WeakKeyDictionary[asyncio.StreamWriter,
                                      tuple[ssl.SSLContext, tuple[str, int]]] = (
    weakref.WeakKeyDictionary())


class _Resuming:
    """An SSLContext that offers `session` (a ticket from an earlier
    connection to the same listener) on the connection asyncio wraps with
    it: a resumed TLS 1.3 handshake (PSK with a fresh ECDHE share) skips
    both ends' certificate signatures and chain checks. What those checks
    gave is checked again on every connection all the same: `connect` and
    the listener's greeting check the peer's certificate (kept in the
    session) against the current CRL and the expected name."""

    def __init__(self, context: ssl.SSLContext, session: ssl.SSLSession) -> None:
        self._context = context
        self._session = session

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        obj = self._context.wrap_bio(*args, **kwargs)
        with contextlib.suppress(ValueError, ssl.SSLError):
            obj.session = self._session
        return obj

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _resuming(context: ssl.SSLContext, host: str, port: int) -> Any:
    entry = _tickets.get(context, {}).get((host, port))
    if entry is None or time.monotonic() - entry[1] >= RESUME_TTL:
        return context
    return _Resuming(context, entry[0])


TICKET_DELAY = 0.02
"""Seconds after a session opened before its listener's ticket is kept:
reading it (`SSLObject.session` copies the TLS session, certificates and
all) costs about 0.4 ms, which would lie on the setup's path at every hop."""


def keep_ticket(writer: asyncio.StreamWriter) -> None:
    """The listener's newest ticket, once the connection has read past it;
    `TICKET_DELAY` from now, off the session's path."""
    if writer in _ticket_of:
        asyncio.get_running_loop().call_later(TICKET_DELAY, _keep_ticket_now, writer)


def _keep_ticket_now(writer: asyncio.StreamWriter) -> None:
    where = _ticket_of.pop(writer, None)
    obj = writer.get_extra_info("ssl_object")
    if where is None or obj is None:
        return
    try:
        session = obj.session
    except (ValueError, ssl.SSLError):  # closed meanwhile
        return
    if session is not None and session.has_ticket:
        _tickets.setdefault(where[0], {})[where[1]] = (session, time.monotonic())


class HopError(Exception):
    """The next hop could not be reached or refused the session."""


class HopRefused(HopError):
    """The next hop answered, refusing (`ERR <reason>`)."""


class NotOffered(HopError):
    """The listener takes no setup line (not a player that offers it)."""


class SetupRefused(HopError):
    """A listener refused a setup line (`REFUSED status code message`): what
    its player's HTTPS route would have answered."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class ByteReader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class ByteWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


def greeting(token: str) -> bytes:
    return MAGIC + token.encode() + b"\n"


def token_of(line: bytes) -> str:
    """The token of a greeting line; ValueError for anything else."""
    if not line.startswith(MAGIC) or not line.endswith(b"\n") or len(line) > MAX_LINE:
        raise ValueError("bad greeting")
    token = line[len(MAGIC):-1].decode("ascii", "replace").strip()
    if not token or not all(c.isalnum() or c in "-_" for c in token):
        raise ValueError("bad greeting")
    return token


def open_line(vnet: str, node: str, kind: str) -> bytes:
    """The setup line for a VNO's listener; ValueError for a bad request."""
    if not VNET_ID.fullmatch(vnet) or not NODE_ID.fullmatch(node) or kind not in KINDS:
        raise ValueError(f"bad console request {vnet}/{node} ({kind})")
    return OPEN_MAGIC + f"{vnet} {node} {kind}\n".encode()


def request_of(line: bytes) -> tuple[str, str, str]:
    """(vnet, node, kind) of a setup line; ValueError for anything else."""
    if not line.startswith(OPEN_MAGIC) or not line.endswith(b"\n") or len(line) > MAX_LINE:
        raise ValueError("bad greeting")
    words = line[len(OPEN_MAGIC):-1].decode("ascii", "replace").split(" ")
    if len(words) != 3:
        raise ValueError("bad greeting")
    vnet, node, kind = words
    if not VNET_ID.fullmatch(vnet) or not NODE_ID.fullmatch(node) or kind not in KINDS:
        raise ValueError("bad greeting")
    return vnet, node, kind


def refusal(status: int, code: str, message: str) -> bytes:
    """A setup's refusal line (the message cut to fit and to one line)."""
    text = " ".join(message.split())
    line = f"{status} {code} {text}".encode("utf-8", "replace")[:MAX_ANSWER - 10]
    return REFUSED + line.decode("utf-8", "ignore").encode() + b"\n"


def refusal_of(line: bytes) -> tuple[int, str, str] | None:
    """(status, code, message) of a refusal line, None if it is none."""
    if not line.startswith(REFUSED):
        return None
    status, _, rest = line[len(REFUSED):].decode("utf-8", "replace").strip().partition(" ")
    code, _, message = rest.partition(" ")
    if not status.isdigit():
        return None
    return int(status), code, message


def address_of(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "tls" or not parts.hostname or not parts.port:
        raise HopError(f"bad console url {url!r}: expected tls://host:port")
    return parts.hostname, parts.port


def peer_of(writer: asyncio.StreamWriter, credentials: Credentials) -> Identity:
    obj = writer.get_extra_info("ssl_object")
    der = obj.getpeercert(binary_form=True) if obj is not None else None
    if not der:
        raise PkiError("no peer certificate")
    return peer_identity(credentials, der)


async def read_line(reader: asyncio.StreamReader, timeout: float,
                    limit: int = MAX_LINE) -> bytes:
    """One line of at most `limit` bytes (ValueError if longer or cut)."""
    try:
        line = await asyncio.wait_for(reader.readuntil(b"\n"), timeout)
    except asyncio.IncompleteReadError as exc:
        raise ValueError("connection closed before the end of the line") from exc
    except asyncio.LimitOverrunError as exc:
        raise ValueError("line too long") from exc
    if len(line) > limit:
        raise ValueError("line too long")
    return line


async def close_quietly(writer: ByteWriter, timeout: float = 2.0) -> None:
    """Close, waiting a little for buffered data to leave; abort if it does not."""
    with contextlib.suppress(Exception):
        writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), timeout)
    except (TimeoutError, Exception):
        transport = getattr(writer, "transport", None)
        if transport is not None:
            transport.abort()


async def dial(url: str, token: str, context: ssl.SSLContext, credentials: Credentials,
               *, expect_name: str | None = None, timeout: float = DIAL_TIMEOUT
               ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to a console listener, check who answers, present `token`; the
    streams once the far end said OK. HopError otherwise."""
    reader, writer = await connect(url, context, credentials, expect_name=expect_name,
                                   timeout=timeout)
    return await greet(reader, writer, token, timeout=timeout)


async def connect(url: str, context: ssl.SSLContext, credentials: Credentials,
                  *, expect_name: str | None = None, timeout: float = DIAL_TIMEOUT
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A mutual-TLS connection to a console listener whose certificate names
    `expect_name` (and is not revoked), not greeted yet. HopError otherwise."""
    host, port = address_of(url)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            host, port, ssl=_resuming(context, host, port), server_hostname=host,
            limit=STREAM_LIMIT), timeout)
    except (TimeoutError, OSError) as exc:
        raise HopError(f"cannot reach the next hop: {exc or 'timeout'}") from exc
    _ticket_of[writer] = (context, (host, port))
    try:
        who = peer_of(writer, credentials)
        if expect_name is not None and who.name != expect_name:
            raise HopError(f"the next hop is {who}, not {expect_name}")
    except BaseException as exc:
        await close_quietly(writer)
        if isinstance(exc, PkiError):
            raise HopError(f"the next hop failed: {exc}") from exc
        raise
    return reader, writer


async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, token: str,
                *, timeout: float = DIAL_TIMEOUT
                ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Present `token` on a connection from `connect`; the streams once the
    far end said OK. HopError otherwise (the connection is then closed)."""
    return await present(reader, writer, greeting(token), timeout=timeout)


async def present(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes,
                  *, timeout: float = DIAL_TIMEOUT
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Send a first `line` (a greeting or a setup line) on a connection from
    `connect`; the streams once the far end said OK. SetupRefused for a
    refused setup, HopError otherwise (the connection is then closed; a
    HopError without a cause is the far end's own answer)."""
    try:
        writer.write(line)
        await writer.drain()
        answer = await read_line(reader, timeout, MAX_ANSWER)
    except BaseException as exc:
        await close_quietly(writer)
        if isinstance(exc, HopError):
            raise
        if isinstance(exc, (OSError, ValueError, PkiError, asyncio.TimeoutError)):
            raise HopError(f"the next hop failed: {exc or 'timeout'}") from exc
        raise
    if answer != b"OK\n":
        await close_quietly(writer)
        refused = refusal_of(answer)
        if refused is not None:
            raise SetupRefused(*refused)
        reason = answer.decode("utf-8", "replace").strip()
        raise HopRefused(reason[4:] if reason.startswith("ERR ") else "refused")
    keep_ticket(writer)
    return reader, writer
