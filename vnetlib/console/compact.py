"""The console setup's two messages between players, read and written without
the API schema's validator.

A console request or session is one element with two or three attributes.
Checking one against the whole API schema (and building a fresh XML parser
for it) costs more than everything else a hop does to set a session up, so
between players the messages are checked here, by hand, to exactly what the
schema allows (`vnet-api-1.xsd`: `console-request`, `console-session`), with
one safe parser per thread. The VNO, where a customer's request enters,
still validates it against the schema.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from typing import cast

from lxml import etree

from vnetlib.console.wire import KINDS, NODE_ID
from vnetlib.players import messages as m
from vnetlib.players.server import BadRequest, Unprocessable

NS = m.NS
URL = re.compile(r"tls://[A-Za-z0-9.:\[\]-]{1,255}:[0-9]{1,5}")
TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
MAX_BYTES = 4096

_local = threading.local()


def _parser() -> etree.XMLParser:
    parser: etree.XMLParser | None = getattr(_local, "parser", None)
    if parser is None:
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                                 huge_tree=False, remove_blank_text=True)
        _local.parser = parser
    return parser


def _element(body: bytes, expected: str, allowed: frozenset[str]) -> dict[str, str]:
    """The attributes of a childless `<expected>` in the API namespace;
    BadRequest for what is not XML, Unprocessable for what the schema refuses."""
    if not body.strip() or len(body) > MAX_BYTES:
        raise BadRequest(f"a <{expected}> of 1 to {MAX_BYTES} bytes is required")
    try:
        root = etree.fromstring(body, parser=_parser())
    except etree.XMLSyntaxError as exc:
        line, column = exc.position
        raise BadRequest(f"malformed XML at line {line}, column {column}: {exc.msg}") from exc
    if getattr(root.getroottree().docinfo, "doctype", ""):
        raise BadRequest("malformed XML: DOCTYPE declarations are not accepted")
    if root.tag != f"{{{NS}}}{expected}":
        raise Unprocessable(f"expected <{expected}> in namespace {NS}")
    if len(root) or (root.text or "").strip():
        raise Unprocessable(f"<{expected}> has no content")
    attrs = {str(k): str(v) for k, v in root.attrib.items()}
    extra = set(attrs) - allowed
    if extra:
        raise Unprocessable(f"<{expected}> has no attribute {sorted(extra)[0]}")
    missing = allowed - set(attrs)
    if missing:
        raise Unprocessable(f"<{expected}> needs the attribute {sorted(missing)[0]}")
    return attrs


def read_request(body: bytes) -> m.ConsoleRequest:
    """A `<console-request node=".." kind=".."/>` from another player."""
    a = _element(body, "console-request", frozenset({"node", "kind"}))
    if not NODE_ID.fullmatch(a["node"]):
        raise Unprocessable(f"bad node id {a['node'][:40]!r}")
    if a["kind"] not in KINDS:
        raise Unprocessable(f"bad console kind {a['kind'][:40]!r}")
    return m.ConsoleRequest(a["node"], cast(m.ConsoleKindName, a["kind"]))


def request_xml(r: m.ConsoleRequest) -> bytes:
    if not NODE_ID.fullmatch(r.node) or r.kind not in KINDS:
        raise ValueError(f"bad console request {r}")
    return (f'<console-request xmlns="{NS}" node="{r.node}" kind="{r.kind}"/>').encode()


def read_session(body: bytes) -> m.ConsoleSession:
    """A `<console-session url=".." token=".." expires=".."/>` answered by
    the next player; ValueError if it is not one."""
    try:
        a = _element(body, "console-session", frozenset({"url", "token", "expires"}))
    except (BadRequest, Unprocessable) as exc:
        raise ValueError(f"bad <console-session> reply: {exc.message}") from exc
    if not URL.fullmatch(a["url"]) or not TOKEN.fullmatch(a["token"]):
        raise ValueError("bad <console-session> reply: url or token malformed")
    try:
        when = dt.datetime.fromisoformat(a["expires"])
    except ValueError as exc:
        raise ValueError(f"bad <console-session> reply: expires: {exc}") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return m.ConsoleSession(a["url"], a["token"], when.timestamp())


def session_xml(s: m.ConsoleSession) -> bytes:
    if not URL.fullmatch(s.url) or not TOKEN.fullmatch(s.token):
        raise ValueError("bad console session")
    expires = dt.datetime.fromtimestamp(s.expires, dt.UTC).isoformat(timespec="seconds")
    return (f'<?xml version=\'1.0\' encoding=\'UTF-8\'?>\n<console-session xmlns="{NS}" '
            f'url="{s.url}" token="{s.token}" expires="{expires}"/>').encode()
