"""A management node's HTTP service: XML bodies, mutual TLS, one route table.

`Service` is the pure part: a route table and `dispatch`, which turns
(method, path, caller, body) into a response and every failure into an XML
error document. `ServiceServer` (in `vnetlib.players.transport`, re-exported
here) is the transport: an asyncio loop in one background thread with
aiohttp's HTTP/1.1 parser, TLS with a client certificate required, the
caller's identity from `Credentials.peer_identity` on every request, and
handlers run in a bounded thread pool. It bounds the number of connections
(idle ones are evicted first), the TLS handshake, the time to send headers
and body, the body's size, and the wait for a free worker (503); an open
connection costs no thread, and stop() does not wait for idle ones.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, cast

from lxml import etree

from vnetlib.players.pki import Identity, Role

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
LoopHandler = Callable[[Identity, Mapping[str, str], bytes], Awaitable[tuple[int, bytes]]]
"""The same, as a coroutine run on the transport's loop: for a handler that
only waits (on other players) and never blocks, so that it needs no worker."""


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
    on_loop: LoopHandler | None = field(default=None, compare=False)


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
                  roles: Collection[Role] | None = None,
                  on_loop: LoopHandler | None = None) -> None:
        """`on_loop`: the same handler as a coroutine, which the transport
        runs on its loop instead of `handler` in a worker (`dispatch`, for
        callers in a thread of their own, keeps using `handler`)."""
        method = method.upper()
        if any(r.method == method and r.pattern == pattern for r in self._routes):
            raise ValueError(f"route {method} {pattern} is already taken")
        self._routes.append(Route(method, pattern, handler,
                                  None if roles is None else frozenset(roles), _compile(pattern),
                                  on_loop))

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

    def loop_route(self, method: str, path: str) -> LoopHandler | None:
        """The coroutine handler of the route `method path`, if it has one."""
        try:
            route, _ = self._find(method.upper(), path)
        except ApiError:
            return None
        return route.on_loop

    async def dispatch_on_loop(self, method: str, path: str, identity: Identity,
                               body: bytes) -> Outcome:
        """`dispatch` for a route with a coroutine handler; never raises."""
        try:
            route, params = self._find(method.upper(), path)
            if route.roles is not None:
                require_role(identity, *sorted(route.roles))
            assert route.on_loop is not None
            status, reply = await route.on_loop(identity, params, body)
            return Outcome(status, reply)
        except ApiError as exc:
            return Outcome(exc.status, error_document(exc.code, exc.message))
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

if TYPE_CHECKING:
    from vnetlib.players.transport import Limits as Limits
    from vnetlib.players.transport import ServiceServer as ServiceServer


def __getattr__(name: str) -> Any:
    """Limits, ServiceServer: the aiohttp transport, imported on first use
    (clients import this module for ApiError and the XML helpers only)."""
    if name in ("Limits", "ServiceServer"):
        from vnetlib.players import transport
        return getattr(transport, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
