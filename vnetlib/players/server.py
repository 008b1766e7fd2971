"""A management node's HTTP service: XML bodies, mutual TLS, one route table.

`Service` is the pure part: a route table and `dispatch`, which turns
(method, path, caller, body) into a response and every failure into an XML
error document. `ServiceServer` is the transport: a ThreadingHTTPServer on
127.0.0.1 whose sockets are TLS with a client certificate required, which
reads the caller's identity off the certificate, bounds request bodies and
every wait, and hands the rest to the service.

The TLS handshake runs in the connection's own thread, under its timeout, so
a client that connects and says nothing cannot stall the accept loop.
"""

from __future__ import annotations

import logging
import re
import secrets
import signal
import socket
import socketserver
import ssl
import sys
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, ClassVar, cast
from urllib.parse import urlsplit

from lxml import etree

from vnetlib.players.pki import Credentials, Identity, PkiError, Role, identity_of

log = logging.getLogger(__name__)

RDL_NS = "urn:vnet:rdl:1"
API_VERSION = "v1"
XML_CONTENT_TYPE = "application/xml; charset=utf-8"
XML_MEDIA_TYPES = frozenset({"application/xml", "text/xml"})
DEFAULT_MAX_BODY = 1 << 20
DEFAULT_TIMEOUT = 30.0
# A refused body up to this size is read and dropped before answering, so the
# client, still sending, gets the error instead of a connection reset.
DRAIN_LIMIT = 16 << 20

Handler = Callable[[Identity, Mapping[str, str], bytes], tuple[int, bytes]]
"""A route handler: (caller, path parameters, request body) -> (status, XML body)."""


# -- errors ---------------------------------------------------------------------------


class ApiError(Exception):
    """An error the caller gets back as an XML error document with `status`."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad-request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ApiError):
    status, code = 400, "malformed"


class Unauthenticated(ApiError):
    status, code = 401, "unauthenticated"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not-found"


class MethodNotAllowed(ApiError):
    status, code = 405, "method-not-allowed"


class Conflict(ApiError):
    status, code = 409, "conflict"


class Gone(ApiError):
    """The object existed but is no more (an expired reservation)."""

    status, code = 410, "gone"


class LengthRequired(ApiError):
    status, code = 411, "length-required"


class PayloadTooLarge(ApiError):
    status, code = 413, "too-large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported-media-type"


class Unprocessable(ApiError):
    """Well-formed XML that the schema rejects."""

    status, code = 422, "schema-invalid"


class UpstreamFailed(ApiError):
    """Another player this one depends on failed or timed out."""

    status, code = 502, "upstream-failed"


class Unavailable(ApiError):
    status, code = 503, "unavailable"


def error_document(code: str, message: str) -> bytes:
    root = etree.Element(f"{{{RDL_NS}}}error", nsmap={None: RDL_NS})  # type: ignore[dict-item]
    root.set("code", code)
    etree.SubElement(root, f"{{{RDL_NS}}}message").text = message
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


# -- XML helpers for handlers -----------------------------------------------------------


def _safe_parser() -> etree.XMLParser:
    # No entities, no DTDs, no network: request bodies come from other domains.
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           huge_tree=False)


def parse_xml(body: bytes) -> etree._Element:
    """Parse a request body, or raise BadRequest naming line, column and problem."""
    if not body.strip():
        raise BadRequest("empty body: an XML document is required")
    etree.clear_error_log()  # stale entries of earlier documents in this thread
    try:
        root = etree.fromstring(body, parser=_safe_parser())
    except etree.XMLSyntaxError as exc:
        line, column = exc.position
        raise BadRequest(f"malformed XML at line {line}, column {column}: {exc.msg}") from exc
    if getattr(root.getroottree().docinfo, "doctype", ""):
        raise BadRequest("malformed XML: DOCTYPE declarations are not accepted")
    return root


def validate(doc: etree._Element, schema: etree.XMLSchema, *, max_errors: int = 10) -> None:
    """Raise Unprocessable naming each offending line and element path."""
    if schema.validate(doc):
        return
    problems = [f"line {e.line}, element {e.path}: {e.message}"
                for e in list(cast(Iterable[Any], schema.error_log))[:max_errors]]
    raise Unprocessable("schema-invalid document: " + "; ".join(problems))


# -- authorization helpers ------------------------------------------------------------


def require_role(identity: Identity, *roles: Role) -> None:
    if identity.role not in roles:
        allowed = ", ".join(r.value for r in roles)
        raise Forbidden(f"{identity} may not call this: only {allowed}")


def require_owner(identity: Identity, owner: str, what: str) -> None:
    """Deny access to another player's object as if it did not exist.

    404 rather than 403, so a VNO cannot learn which VNets other VNOs have.
    """
    if identity.name != owner:
        raise NotFound(f"no {what}")


# -- routing --------------------------------------------------------------------------

_PARAM_RE = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_PARAM_VALUE = r"[A-Za-z0-9._~-]+"
_VERSION_RE = re.compile(r"^/(v\d+)(?:/|$)")


def _compile(pattern: str) -> re.Pattern[str]:
    if not pattern.startswith(f"/{API_VERSION}/"):
        raise ValueError(f"route {pattern!r} must start with /{API_VERSION}/")
    parts = []
    for segment in pattern.split("/")[1:]:
        if m := _PARAM_RE.match(segment):
            parts.append(f"(?P<{m.group(1)}>{_PARAM_VALUE})")
        elif "{" in segment or "}" in segment:
            raise ValueError(f"route {pattern!r}: a parameter must fill a whole segment")
        else:
            parts.append(re.escape(segment))
    return re.compile("^/" + "/".join(parts) + "$")


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: str
    handler: Handler
    roles: frozenset[Role] | None
    regex: re.Pattern[str] = field(compare=False)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What dispatch decided: status, XML body, and any extra headers."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


class Service:
    """A route table for one player's API, independent of sockets.

    Subclass it or build one and add routes::

        svc = Service("pip1")

        @svc.route("GET", "/v1/vnets/{id}", roles={Role.VNP})
        def get_vnet(caller, params, body): ...
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._routes: list[Route] = []
        self.add_route("GET", f"/{API_VERSION}/whoami", self._whoami)

    @property
    def routes(self) -> tuple[Route, ...]:
        return tuple(self._routes)

    def add_route(self, method: str, pattern: str, handler: Handler, *,
                  roles: Collection[Role] | None = None) -> None:
        method = method.upper()
        if any(r.method == method and r.pattern == pattern for r in self._routes):
            raise ValueError(f"route {method} {pattern} is already taken")
        self._routes.append(Route(method, pattern, handler,
                                  None if roles is None else frozenset(roles), _compile(pattern)))

    def route(self, method: str, pattern: str, *,
              roles: Collection[Role] | None = None) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.add_route(method, pattern, handler, roles=roles)
            return handler
        return register

    def dispatch(self, method: str, path: str, identity: Identity, body: bytes) -> Outcome:
        """Route one request; never raises."""
        try:
            route, params = self._find(method.upper(), path)
            if route.roles is not None:
                require_role(identity, *sorted(route.roles))
            status, reply = route.handler(identity, params, body)
            return Outcome(status, reply)
        except ApiError as exc:
            headers = {}
            if isinstance(exc, MethodNotAllowed):
                headers["Allow"] = ", ".join(sorted({r.method for r in self._routes
                                                     if r.regex.match(path)}))
            return Outcome(exc.status, error_document(exc.code, exc.message), headers)
        except Exception:
            ref = secrets.token_hex(4)
            log.exception("%s: handler for %s %s by %s failed (ref %s)",
                          self.name, method, path, identity, ref)
            return Outcome(500, error_document(
                "internal", f"internal error in {self.name}; the server log has ref {ref}"))

    def _find(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        allowed = False
        for route in self._routes:
            if m := route.regex.match(path):
                if route.method == method:
                    return route, m.groupdict()
                allowed = True
        if allowed:
            raise MethodNotAllowed(f"{method} is not allowed on {path}")
        v = _VERSION_RE.match(path)
        if v and v.group(1) != API_VERSION:
            raise NotFound(f"API version {v.group(1)} is not served here; use /{API_VERSION}/")
        raise NotFound(f"no resource at {path}")

    def _whoami(self, identity: Identity, params: Mapping[str, str],
                body: bytes) -> tuple[int, bytes]:
        root = etree.Element(f"{{{RDL_NS}}}identity", nsmap={None: RDL_NS})  # type: ignore[dict-item]
        root.set("name", identity.name)
        root.set("role", identity.role.value)
        root.set("service", self.name)
        return 200, etree.tostring(root, xml_declaration=True, encoding="UTF-8")


# -- transport ------------------------------------------------------------------------


class _RequestHandler(BaseHTTPRequestHandler):
    server: _TLSServer
    protocol_version = "HTTP/1.1"
    server_version = "vnet"
    sys_version = ""
    _unread: int = 0  # bytes of the request body not read yet

    def setup(self) -> None:
        # StreamRequestHandler.timeout stays None, so this bound holds throughout.
        self.request.settimeout(self.server.request_timeout)
        self.request.do_handshake()
        super().setup()

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """http.server's own errors (bad request line, 501...) as XML too."""
        self.close_connection = True
        text = message or self.responses.get(code, ("error",))[0]
        self._respond(Outcome(code, error_document(f"http-{code}", text)))

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: " + format, self.client_address[0], *args)

    def _serve(self, method: str) -> None:
        self.close_connection = True  # one request per connection keeps the bounds simple
        self._unread = 0
        try:
            identity = self._identity()
            path = self._path()
            body = self._body()
        except ApiError as exc:
            self._drain()
            self._respond(Outcome(exc.status, error_document(exc.code, exc.message)))
            return
        outcome = self.server.service.dispatch(method, path, identity, body)
        log.info("%s %s %s -> %d", identity, method, path, outcome.status)
        self._respond(outcome)

    def _identity(self) -> Identity:
        der = self.connection.getpeercert(binary_form=True)
        if not der:
            raise Unauthenticated("a client certificate from the lab CA is required")
        try:
            return identity_of(der)
        except PkiError as exc:
            raise Unauthenticated(f"client certificate does not name a player: {exc}") from exc

    def _path(self) -> str:
        parts = urlsplit(self.path)
        if parts.query or parts.fragment:
            raise BadRequest("query strings are not part of this API")
        if not parts.path.startswith("/"):
            raise BadRequest(f"bad request target {self.path!r}")
        return parts.path

    def _body(self) -> bytes:
        if "Transfer-Encoding" in self.headers:
            raise LengthRequired("chunked bodies are not accepted; send Content-Length")
        raw = self.headers.get("Content-Length", "0")
        if not raw.isdigit():
            raise BadRequest(f"bad Content-Length {raw!r}")
        length = self._unread = int(raw)
        limit = self.server.max_body
        if length > limit:
            raise PayloadTooLarge(f"body of {length} bytes exceeds the limit of {limit}")
        if length == 0:
            return b""
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype not in XML_MEDIA_TYPES:
            raise UnsupportedMediaType(f"Content-Type {ctype or 'none'!r}: send application/xml")
        body = self.rfile.read(length)
        self._unread = 0
        if len(body) != length:
            raise BadRequest(f"body ended after {len(body)} of {length} bytes")
        return body

    def _drain(self) -> None:
        if not 0 < self._unread <= DRAIN_LIMIT:
            return
        try:
            while self._unread > 0:
                chunk = self.rfile.read(min(self._unread, 1 << 16))
                if not chunk:
                    break
                self._unread -= len(chunk)
        except OSError:
            pass

    def _respond(self, outcome: Outcome) -> None:
        try:
            self.send_response(outcome.status)
            for name, value in outcome.headers.items():
                self.send_header(name, value)
            if outcome.body:
                self.send_header("Content-Type", XML_CONTENT_TYPE)
            self.send_header("Content-Length", str(len(outcome.body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if outcome.body:
                self.wfile.write(outcome.body)
        except OSError as exc:
            log.info("could not answer %s: %s", self.client_address[0], exc)


class _TLSServer(ThreadingHTTPServer):
    # Non-daemon request threads, joined on close: shutdown waits for requests
    # in flight, each bounded by the request timeout.
    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext, service: Service,
                 max_body: int, request_timeout: float) -> None:
        self.context = context
        self.service = service
        self.max_body = max_body
        self.request_timeout = request_timeout
        super().__init__(address, _RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup; not needed here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        return self.context.wrap_socket(sock, server_side=True,
                                        do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Failed handshakes (no certificate, foreign CA) land here: log, no traceback.
        exc = sys.exc_info()[1]
        if isinstance(exc, ssl.SSLError | OSError):
            log.info("connection from %s refused: %s", client_address[0], exc)
        else:
            log.error("connection from %s failed", client_address[0], exc_info=exc)


class ServiceServer:
    """A Service listening with mutual TLS; bound (and its port known) on creation."""

    def __init__(self, service: Service, credentials: Credentials, *,
                 host: str = "127.0.0.1", port: int = 0, max_body: int = DEFAULT_MAX_BODY,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.service = service
        self._server = _TLSServer((host, port), credentials.server_context(), service,
                                  max_body, timeout)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def start(self) -> ServiceServer:
        """Serve in a background thread; returns at once."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name=f"vnet-{self.service.name}", daemon=True)
        self._thread.start()
        log.info("%s listening on %s", self.service.name, self.url)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, finish requests in flight, close the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout)
            self._thread = None
        self._server.server_close()
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
