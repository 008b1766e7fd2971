"""GENI Aggregate Manager API v3 on a PIP: XML-RPC over the players' mutual TLS.

`mount(service)` adds one route, `POST /v1/geni/am/3`, to a `PipService`; the
methods run on the same PIP core as our own API (`vnetlib.core.pip`):

| AM API v3 | PIP core |
| --- | --- |
| GetVersion | (static) |
| ListResources | the advertisement (`advertise` on the residual substrate) as an ad RSpec |
| Allocate(slice, creds, request RSpec) | `allocate(caller, slice name, spec, expires_in)` |
| Renew(urns, creds, time) | `renew` |
| Provision(urns) | `provision` (no boundary links: a GENI request is one aggregate's) |
| Describe(urns) / Status(urns) | the sliver, as a manifest RSpec / statuses |
| PerformOperationalAction(urns, geni_start...) | `control` of the nodes named (a slice: all) |
| Delete(urns) | `delete` |
| Shutdown(slice) | stop every node of a provisioned sliver, delete a reservation |

Identity and authorization are the TLS connection's: the caller's certificate
names the owner of the slivers it makes, so a slice URN of another caller is
simply not found. Who may call it is, by default, who may call `/v1/slivers`:
a VNP (`DEFAULT_ROLES`), so an SP's requests go through its VNO and a VNP with
their price limits. A PIP's operator may open it to SP certificates too
(`geni_sp_access = true` in the `[pip]` section: `SP_ROLES`), for GENI tools
that talk to an aggregate directly. The `credentials` argument
GENI requires must be present and well formed (a list of structs with
`geni_type`, `geni_version` and a `geni_value` that, for `geni_sfa`, is a
`signed-credential` XML document); it grants nothing beyond the certificate.
Answers are GENI's `{code: {geni_code, am_type, am_code}, value, output}`;
a request that is not XML-RPC gets an XML-RPC fault. Every answer is HTTP 200.
"""

from __future__ import annotations

import base64
import datetime as dt
import inspect
import logging
import secrets
import time
import xmlrpc.client
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lxml import etree

from vnetlib.core.ledger import Exists
from vnetlib.core.pip import Busy, CoreError, DeployFailed, NotFound, Rejected, spec_of
from vnetlib.core.records import Sliver, State
from vnetlib.geni import urns
from vnetlib.geni.documents import advertisement_rspec, iso, sliver_manifest
from vnetlib.geni.rspec import parse_request
from vnetlib.geni.schema import GENI_NS, VNET_NS, safe_parser
from vnetlib.players.negotiation import advertise
from vnetlib.players.pki import Identity, Role
from vnetlib.spec import SpecErrors

if TYPE_CHECKING:
    from vnetlib.players.pip import PipService

log = logging.getLogger(__name__)

ROUTE = "/v1/geni/am/3"
AM_TYPE = "vnet"
DEFAULT_ROLES = frozenset({Role.VNP})  # as the PIP's own API (players/aggregate.py)
SP_ROLES = frozenset({Role.SP, Role.VNP})  # [pip] geni_sp_access = true
CREDENTIAL_TYPES = frozenset({"geni_sfa", "geni_abac"})
ACTIONS = {"geni_start": "start", "geni_stop": "stop", "geni_restart": "restart",
           "vnet_suspend": "suspend", "vnet_resume": "resume"}

# GENI AM API v3 error codes
SUCCESS, BADARGS, ERROR, FORBIDDEN, BADVERSION, SERVERERROR = 0, 1, 2, 3, 4, 5
REFUSED, SEARCHFAILED, UNSUPPORTED, BUSY, EXPIRED, ALREADYEXISTS = 7, 12, 13, 14, 15, 17

ALLOCATION = {State.ALLOCATED: "geni_allocated", State.PROVISIONING: "geni_provisioned",
              State.PROVISIONED: "geni_provisioned", State.READY: "geni_provisioned",
              State.FAILED: "geni_provisioned", State.DELETING: "geni_unallocated",
              State.DELETED: "geni_unallocated", State.EXPIRED: "geni_unallocated"}
OPERATIONAL = {State.ALLOCATED: "geni_pending_allocation",
               State.PROVISIONING: "geni_configuring", State.PROVISIONED: "geni_ready",
               State.READY: "geni_ready", State.FAILED: "geni_failed",
               State.DELETING: "geni_stopping", State.DELETED: "geni_notready",
               State.EXPIRED: "geni_notready"}


class AmError(Exception):
    """A refusal, answered as `code.geni_code` = `code` with the message as output."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _rspec_version(options: Mapping[str, Any]) -> None:
    want = options.get("geni_rspec_version")
    if not isinstance(want, Mapping):
        raise AmError(BADARGS, "options.geni_rspec_version is required: "
                               "{type: GENI, version: 3}")
    if str(want.get("type", "")).lower() != "geni" or str(want.get("version", "")) != "3":
        raise AmError(BADVERSION, f"RSpec version {dict(want)} is not served: GENI 3 only")


def check_credentials(credentials: Any) -> None:
    """GENI's credentials argument: present and well formed (the TLS identity decides)."""
    if not isinstance(credentials, list) or not credentials:
        raise AmError(FORBIDDEN, "credentials: a non-empty list of credential structs "
                                 "is required (the caller's certificate decides access)")
    for i, cred in enumerate(credentials):
        if not isinstance(cred, Mapping):
            raise AmError(BADARGS, f"credentials[{i}] is not a struct")
        ctype, value = cred.get("geni_type"), cred.get("geni_value")
        if ctype not in CREDENTIAL_TYPES or "geni_version" not in cred:
            raise AmError(BADARGS, f"credentials[{i}]: geni_type must be one of "
                                   f"{', '.join(sorted(CREDENTIAL_TYPES))}, with geni_version")
        raw = value.data if isinstance(value, xmlrpc.client.Binary) else value
        if isinstance(raw, str):
            raw = raw.encode()
        if not isinstance(raw, bytes) or not raw.strip():
            raise AmError(BADARGS, f"credentials[{i}]: geni_value is empty")
        if ctype == "geni_sfa":
            try:
                root = etree.fromstring(raw, safe_parser())
            except etree.XMLSyntaxError as exc:
                raise AmError(BADARGS, f"credentials[{i}]: not well-formed XML: "
                                       f"{exc.msg}") from exc
            if etree.QName(root).localname != "signed-credential":
                raise AmError(BADARGS, f"credentials[{i}]: an SFA credential is a "
                                       "<signed-credential> document")


def _end_time(text: Any) -> float:
    """Seconds from now until an RFC 3339 time."""
    if not isinstance(text, str):
        raise AmError(BADARGS, f"not an RFC 3339 time: {text!r}")
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise AmError(BADARGS, f"not an RFC 3339 time: {text!r}") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(1.0, when.timestamp() - time.time())


@dataclass
class GeniAggregate:
    """The AM API v3 of one PIP service; `url` is announced by GetVersion."""

    service: PipService
    roles: frozenset[Role] = DEFAULT_ROLES
    url: str = ""
    methods: dict[str, Callable[..., Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.methods = {
            "GetVersion": self.get_version, "ListResources": self.list_resources,
            "Describe": self.describe, "Allocate": self.allocate, "Renew": self.renew,
            "Provision": self.provision, "Status": self.status,
            "PerformOperationalAction": self.perform_operational_action,
            "Delete": self.delete, "Shutdown": self.shutdown}

    @property
    def pip(self) -> str:
        return self.service.name

    # -- the route ---------------------------------------------------------------------

    def handle(self, caller: Identity, params: Mapping[str, str],
               body: bytes) -> tuple[int, bytes]:
        try:
            args, method = self._call(body)
        except AmError as exc:
            return 200, _fault(exc.code, str(exc))
        fn = self.methods.get(method or "")
        if fn is None:
            return 200, _fault(-32601, f"no method {method!r}: the AM API v3 has "
                                       f"{', '.join(sorted(self.methods))}")
        try:
            if caller.role not in self.roles and method != "GetVersion":
                raise AmError(FORBIDDEN, f"{caller} may not use this aggregate: it serves "
                                         f"{', '.join(sorted(r.value for r in self.roles))}")
            try:
                bound = inspect.signature(fn).bind(caller, *args)
            except TypeError as exc:
                raise AmError(BADARGS, f"{method}: wrong arguments ({exc})") from exc
            if not isinstance(bound.arguments.get("options", {}), dict):
                raise AmError(BADARGS, f"{method}: options must be a struct")
            value = fn(caller, *args)
            result = {"code": {"geni_code": SUCCESS, "am_type": AM_TYPE}, "value": value,
                      "output": ""}
        except AmError as exc:
            result = _result(exc.code, str(exc))
        except SpecErrors as exc:
            result = _result(BADARGS, f"the request RSpec is invalid: {exc}")
        except CoreError as exc:
            result = _result(*self._core_error(exc, method))
        except Exception:
            ref = secrets.token_hex(4)
            log.exception("%s: GENI %s by %s failed (ref %s)", self.pip, method, caller, ref)
            result = _result(SERVERERROR, f"internal error; the aggregate's log has ref {ref}")
        return 200, xmlrpc.client.dumps((result,), methodresponse=True,
                                        allow_none=True).encode()

    def _call(self, body: bytes) -> tuple[tuple[Any, ...], str | None]:
        try:
            root = etree.fromstring(body, safe_parser())
        except etree.XMLSyntaxError as exc:
            raise AmError(-32700, f"not well-formed XML: {exc.msg}") from exc
        if getattr(root.getroottree().docinfo, "doctype", "") or root.tag != "methodCall":
            raise AmError(-32600, "not an XML-RPC methodCall")
        try:
            return xmlrpc.client.loads(body, use_builtin_types=False)
        except Exception as exc:  # xmlrpc raises many kinds on bad input
            raise AmError(-32600, f"not a valid XML-RPC call: {exc}") from exc

    def _core_error(self, exc: CoreError, method: str | None) -> tuple[int, str]:
        if isinstance(exc, Rejected):
            return REFUSED, f"cannot allocate: {exc.public}"
        if isinstance(exc, Busy):
            return BUSY, str(exc)
        if isinstance(exc, DeployFailed):
            ref = secrets.token_hex(4)
            log.error("%s: GENI %s failed (ref %s): %s", self.pip, method, ref, exc)
            return ERROR, f"{method} failed on the substrate (ref {ref} in the PIP's log)"
        if isinstance(exc, NotFound):
            return SEARCHFAILED, str(exc)
        if exc.kind == "gone":
            return EXPIRED, str(exc)
        if isinstance(exc.__cause__, Exists):
            return ALREADYEXISTS, str(exc)
        return ERROR, str(exc)

    # -- looking slivers up --------------------------------------------------------------

    def _slivers(self, caller: Identity, urn_list: Any) -> list[tuple[Sliver, set[str]]]:
        """The caller's slivers the URNs name, with the nodes named (empty: all)."""
        if not isinstance(urn_list, list) or not urn_list:
            raise AmError(BADARGS, "a non-empty list of slice or sliver URNs is required")
        found: dict[str, tuple[Sliver, set[str] | None]] = {}
        for urn in urn_list:
            s, node = self._sliver_of(caller, urn)
            _, nodes = found.setdefault(s.id, (s, set()))
            if node is None or nodes is None:
                found[s.id] = (s, None)  # the whole sliver
            else:
                nodes.add(node)
        return [(s, nodes or set()) for s, nodes in found.values()]

    def _sliver_of(self, caller: Identity, urn: Any) -> tuple[Sliver, str | None]:
        if not isinstance(urn, str):
            raise AmError(BADARGS, f"not a URN: {urn!r}")
        try:
            kind = urns.parse_urn(urn).type
        except ValueError as exc:
            raise AmError(BADARGS, str(exc)) from exc
        core = self.service.core
        if kind == "slice":
            return core.sliver(caller.name, self._slice(urn)), None
        try:
            sid, part = urns.sliver_parts(self.pip, urn)
        except ValueError as exc:
            raise AmError(SEARCHFAILED, str(exc)) from exc
        for s in core.slivers(caller.name):
            if s.id == sid:
                s = core.sliver(caller.name, s.name)
                if part is not None and part not in {n.id for n in spec_of(s.spec_xml).nodes}:
                    raise AmError(SEARCHFAILED, f"{urn}: no such node")
                return s, part
        raise AmError(SEARCHFAILED, f"no sliver {urn}")

    @staticmethod
    def _slice(urn: Any) -> str:
        if not isinstance(urn, str):
            raise AmError(BADARGS, f"not a slice URN: {urn!r}")
        try:
            return urns.slice_name(urn)
        except ValueError as exc:
            raise AmError(BADARGS, str(exc)) from exc

    # -- answers ---------------------------------------------------------------------------

    def _sliver_status(self, s: Sliver, error: str = "") -> list[dict[str, Any]]:
        """One entry per virtual node (GENI slivers), with its operational state."""
        expires = iso(s.expires) if s.expires else iso(time.time() + 365 * 86400)
        out = []
        for node in spec_of(s.spec_xml).nodes:
            op = OPERATIONAL[s.state]
            if op == "geni_ready" and s.node_state(node.id) != "running":
                op = "geni_notready"
            out.append({"geni_sliver_urn": urns.sliver_urn(self.pip, s.id, node.id),
                        "geni_expires": expires, "geni_allocation_status": ALLOCATION[s.state],
                        "geni_operational_status": op, "geni_error": error or s.error,
                        "vnet_node": node.id, "vnet_state": s.node_state(node.id)})
        return out

    def _manifest(self, s: Sliver) -> str:
        return sliver_manifest(self.pip, s).decode()

    def _described(self, slivers: Sequence[Sliver]) -> dict[str, Any]:
        return {"geni_rspec": "".join(self._manifest(s) for s in slivers[:1]),
                "geni_urn": urns.slice_urn(slivers[0].name) if slivers else "",
                "geni_slivers": [x for s in slivers for x in self._sliver_status(s)]}

    # -- the methods --------------------------------------------------------------------------

    def get_version(self, caller: Identity, options: Any = None) -> dict[str, Any]:
        rspec = {"type": "GENI", "version": "3", "namespace": GENI_NS,
                 "schema": f"{GENI_NS}/request.xsd", "extensions": [VNET_NS]}
        ad = dict(rspec, schema=f"{GENI_NS}/ad.xsd")
        return {"geni_api": 3, "geni_api_versions": {"3": self.url or ROUTE},
                "geni_request_rspec_versions": [rspec], "geni_ad_rspec_versions": [ad],
                "geni_credential_types": [{"geni_type": "geni_sfa", "geni_version": "3"}],
                "geni_single_allocation": True, "geni_allocate": "geni_single",
                "urn": urns.aggregate_urn(self.pip), "am_type": AM_TYPE}

    def list_resources(self, caller: Identity, credentials: Any,
                       options: Mapping[str, Any]) -> str:
        check_credentials(credentials)
        _rspec_version(options)
        core = self.service.core
        p = core.pricing
        text = advertisement_rspec(advertise(self.pip, core.residual(), p.per_cpu,
                                             p.per_mbps))
        return _compressed(text) if options.get("geni_compressed") else text.decode()

    def describe(self, caller: Identity, urn_list: Any, credentials: Any,
                 options: Mapping[str, Any]) -> dict[str, Any]:
        check_credentials(credentials)
        _rspec_version(options)
        described = self._described([s for s, _ in self._slivers(caller, urn_list)])
        if options.get("geni_compressed"):
            described["geni_rspec"] = _compressed(described["geni_rspec"].encode())
        return described

    def allocate(self, caller: Identity, slice_urn: Any, credentials: Any, rspec: Any,
                 options: Mapping[str, Any]) -> dict[str, Any]:
        check_credentials(credentials)
        name = self._slice(slice_urn)
        if not isinstance(rspec, str):
            raise AmError(BADARGS, "the request RSpec must be a string")
        spec = parse_request(rspec.encode(), source=f"request RSpec of {slice_urn}", name=name)
        if spec.boundary:
            raise AmError(UNSUPPORTED, "links to other aggregates (stitching) are not taken "
                                       "through the AM API; use a VNP")
        try:
            self.service.core.sliver(caller.name, name)
        except CoreError:
            pass  # unknown, expired or deleted: the name is free
        else:
            raise AmError(ALREADYEXISTS, f"slice {name} has a sliver here already")
        end = options.get("geni_end_time")
        expires_in = None if end is None else _end_time(end)
        s = self.service.core.allocate(caller.name, name, spec, expires_in=expires_in)
        log.info("%s: GENI allocated %s for %s until %s", self.pip, name, caller, s.expires)
        return {"geni_rspec": self._manifest(s), "geni_slivers": self._sliver_status(s)}

    def renew(self, caller: Identity, urn_list: Any, credentials: Any, expiration: Any,
              options: Mapping[str, Any]) -> list[dict[str, Any]]:
        check_credentials(credentials)
        seconds = _end_time(expiration)
        out = []
        for s, _ in self._slivers(caller, urn_list):
            out += self._sliver_status(self.service.core.renew(caller.name, s.name, seconds))
        return out

    def provision(self, caller: Identity, urn_list: Any, credentials: Any,
                  options: Mapping[str, Any]) -> dict[str, Any]:
        check_credentials(credentials)
        done = [self.service.core.provision(caller.name, s.name)
                for s, _ in self._slivers(caller, urn_list)]
        return self._described(done)

    def status(self, caller: Identity, urn_list: Any, credentials: Any,
               options: Mapping[str, Any]) -> dict[str, Any]:
        check_credentials(credentials)
        slivers = [s for s, _ in self._slivers(caller, urn_list)]
        return {"geni_urn": urns.slice_urn(slivers[0].name),
                "geni_slivers": [x for s in slivers for x in self._sliver_status(s)]}

    def perform_operational_action(self, caller: Identity, urn_list: Any, credentials: Any,
                                   action: Any, options: Mapping[str, Any]
                                   ) -> list[dict[str, Any]]:
        check_credentials(credentials)
        if action not in ACTIONS:
            raise AmError(UNSUPPORTED, f"action {action!r}: one of {', '.join(ACTIONS)}")
        out = []
        for s, nodes in self._slivers(caller, urn_list):
            targets = sorted(nodes) or [n.id for n in spec_of(s.spec_xml).nodes]
            cur = s
            for node in targets:
                cur = self.service.core.control(caller.name, s.name, node, ACTIONS[action])
            out += self._sliver_status(cur)
        return out

    def delete(self, caller: Identity, urn_list: Any, credentials: Any,
               options: Mapping[str, Any]) -> list[dict[str, Any]]:
        check_credentials(credentials)
        out = []
        for s, _ in self._slivers(caller, urn_list):
            gone = self.service.core.delete(caller.name, s.name)
            out += [dict(x, geni_allocation_status="geni_unallocated")
                    for x in self._sliver_status(gone)]
        log.info("%s: GENI deleted %s for %s", self.pip, urn_list, caller)
        return out

    def shutdown(self, caller: Identity, slice_urn: Any, credentials: Any,
                 options: Mapping[str, Any]) -> bool:
        """Stop every node of the slice's provisioned sliver (a reservation is
        released); the sliver stays for its owner to inspect or delete."""
        check_credentials(credentials)
        core = self.service.core
        s = core.sliver(caller.name, self._slice(slice_urn))
        if s.state is State.ALLOCATED:
            core.delete(caller.name, s.name)
            return True
        for node in spec_of(s.spec_xml).nodes:
            if s.node_state(node.id) != "stopped":
                s = core.control(caller.name, s.name, node.id, "stop")
        return True


def _compressed(text: bytes) -> str:
    """GENI's `geni_compressed`: zlib, then base64."""
    return base64.b64encode(zlib.compress(text)).decode()


def _result(code: int, message: str) -> dict[str, Any]:
    return {"code": {"geni_code": code, "am_type": AM_TYPE}, "value": 0, "output": message}


def _fault(code: int, message: str) -> bytes:
    return xmlrpc.client.dumps(xmlrpc.client.Fault(code, message), methodresponse=True).encode()


def mount(service: PipService, *, sp_access: bool = False,
          roles: frozenset[Role] | None = None, url: str = "") -> GeniAggregate:
    """Serve the AM API v3 of `service` at `POST /v1/geni/am/3` to `roles`: by
    default a VNP's, and an SP's too with `sp_access` (the PIP's `geni_sp_access`)."""
    if roles is None:
        roles = SP_ROLES if sp_access else DEFAULT_ROLES
    am = GeniAggregate(service, roles, url)
    service.add_route("POST", ROUTE, am.handle)
    return am
