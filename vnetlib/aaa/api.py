"""The VNO's end-user API (Interface 6): an SP manages the end users of its
VNets, and reads their accounting.

    POST   /v1/users                      <end-user identity password vnet node [session-timeout]/>
    GET    /v1/users                      the caller's users (no passwords)
    DELETE /v1/users/{user}               (the identity's part before @realm)
    POST   /v1/users/{user}/password      <end-user password=.../>
    GET    /v1/accounting                 <accounting> of the caller's users
    GET    /v1/vnets/{id}/end-users       the VNet's users attached now (from accounting)

A user is bound to an attachment point (`<attach node=...>`) of one of the
caller's ready VNets; the accept the VNO's RADIUS server gives for the user
names it by `<VNP order>/<node>`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from vnetlib.aaa.users import EndUser, UserError, UserStore, accounting
from vnetlib.players.messages import NS
from vnetlib.players.pki import Identity, Role
from vnetlib.players.server import Conflict, NotFound, Service, Unprocessable


@dataclass(frozen=True, slots=True)
class VNetAttachments:
    """What the VNO knows of one of its VNets, for binding users to it."""

    owner: str
    ready: bool
    order: str | None  # the VNP's id of the VNet, the handle's first part
    points: Mapping[str, tuple[str, str]]  # node -> (pool, realm)


Lookup = Callable[[str], VNetAttachments | None]
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def _element(tag: str, **attrs: str | None) -> etree._Element:
    el = etree.Element(f"{{{NS}}}{tag}", nsmap={None: NS})  # type: ignore[dict-item]
    for k, v in attrs.items():
        if v is not None:
            el.set(k.replace("_", "-"), v)
    return el


def _bytes(el: etree._Element) -> bytes:
    return bytes(etree.tostring(el, xml_declaration=True, encoding="UTF-8"))


def user_xml(identity: str, password: str, vnet: str, node: str,
             session_timeout: int | None = None) -> bytes:
    return _bytes(_element("end-user", identity=identity, password=password, vnet=vnet,
                           node=node, session_timeout=None if session_timeout is None
                           else str(session_timeout)))


def password_xml(password: str) -> bytes:
    return _bytes(_element("end-user", password=password))


def users_xml(users: list[EndUser]) -> bytes:
    root = _element("end-users")
    for u in users:
        root.append(_element("end-user", identity=u.identity, vnet=u.vnet, node=u.node,
                             session_timeout=None if u.session_timeout is None
                             else str(u.session_timeout)))
    return _bytes(root)


def users_from(body: bytes) -> list[dict[str, str]]:
    doc = etree.fromstring(body, _PARSER)
    return [{str(k): str(v) for k, v in el.attrib.items()} for el in doc.iter(f"{{{NS}}}end-user")]


def accounting_xml(records: list[dict[str, str]]) -> bytes:
    root = _element("accounting")
    for r in records:
        root.append(_element("record", **r))
    return _bytes(root)


def accounting_from(body: bytes) -> list[dict[str, str]]:
    doc = etree.fromstring(body, _PARSER)
    return [{str(k): str(v) for k, v in el.attrib.items()} for el in doc.iter(f"{{{NS}}}record")]


def _one(body: bytes) -> dict[str, str]:
    try:
        doc = etree.fromstring(body, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise Unprocessable(f"not XML: {exc}") from exc
    if doc.tag != f"{{{NS}}}end-user":
        raise Unprocessable("expected an <end-user> document")
    return {str(k): str(v) for k, v in doc.attrib.items()}


def add_user_routes(svc: Service, store: UserStore, lookup: Lookup) -> None:
    def mine(caller: Identity) -> list[EndUser]:
        out = []
        for u in store.all():
            v = lookup(u.vnet)
            if v is not None and v.owner == caller.name:
                out.append(u)
        return out

    def owned(caller: Identity, local: str) -> EndUser:
        identity = f"{local}@{store.realm}"
        user = store.get(identity)
        if user is None or user not in mine(caller):
            raise NotFound(f"no end user {identity}")
        return user

    def add(caller: Identity, params: Mapping[str, str], body: bytes) -> tuple[int, bytes]:
        d = _one(body)
        vnet_id, node = d.get("vnet", ""), d.get("node", "")
        v = lookup(vnet_id)
        if v is None or v.owner != caller.name:
            raise NotFound(f"no VNet {vnet_id}")
        if not v.ready or v.order is None:
            raise Conflict(f"VNet {vnet_id} is not ready")
        point = v.points.get(node)
        if point is None:
            raise Unprocessable(f"VNet {vnet_id} has no attachment point at node {node!r}")
        pool, realm = point
        if realm != store.realm:
            raise Unprocessable(f"the attachment point at {node} is of realm {realm!r}, "
                                f"not this VNO's ({store.realm!r})")
        try:
            timeout = int(d["session-timeout"]) if "session-timeout" in d else None
            user = store.add(EndUser(d.get("identity", ""), vnet_id, node,
                                     f"{v.order}/{node}", pool, timeout), d.get("password", ""))
        except UserError as exc:
            if "exists" in str(exc):
                raise Conflict(str(exc)) from exc
            raise Unprocessable(str(exc)) from exc
        except ValueError as exc:
            raise Unprocessable(str(exc)) from exc
        return 201, users_xml([user])

    def listing(caller: Identity, params: Mapping[str, str], body: bytes) -> tuple[int, bytes]:
        return 200, users_xml(mine(caller))

    def remove(caller: Identity, params: Mapping[str, str], body: bytes) -> tuple[int, bytes]:
        store.remove(owned(caller, params["user"]).identity)
        return 204, b""

    def passwd(caller: Identity, params: Mapping[str, str], body: bytes) -> tuple[int, bytes]:
        user = owned(caller, params["user"])
        try:
            store.passwd(user.identity, _one(body).get("password", ""))
        except UserError as exc:
            raise Unprocessable(str(exc)) from exc
        return 204, b""

    def acct(caller: Identity, params: Mapping[str, str], body: bytes) -> tuple[int, bytes]:
        known = {u.identity for u in mine(caller)}
        records = [r for r in accounting(store.directory) if r.get("identity") in known]
        return 200, accounting_xml(records)

    def attached_now(caller: Identity, params: Mapping[str, str],
                     body: bytes) -> tuple[int, bytes]:
        v = lookup(params["id"])
        if v is None or v.owner != caller.name:
            raise NotFound(f"no VNet {params['id']}")
        users = {u.identity for u in store.all() if u.vnet == params["id"]}
        return 200, accounting_xml(attached(accounting(store.directory), users))

    sp = {Role.SP}
    svc.add_route("GET", "/v1/vnets/{id}/end-users", attached_now, roles=sp)
    svc.add_route("POST", "/v1/users", add, roles=sp)
    svc.add_route("GET", "/v1/users", listing, roles=sp)
    svc.add_route("DELETE", "/v1/users/{user}", remove, roles=sp)
    svc.add_route("POST", "/v1/users/{user}/password", passwd, roles=sp)
    svc.add_route("GET", "/v1/accounting", acct, roles=sp)


def attached(records: list[dict[str, str]], identities: set[str]) -> list[dict[str, str]]:
    """The sessions of `identities` that started and did not stop: the last
    record of each (user, port, session) is a Start or an Interim-Update."""
    last: dict[tuple[str, str, str], dict[str, str]] = {}
    for r in records:
        if r.get("identity") in identities:
            last[(r["identity"], r.get("port", ""), r.get("session", ""))] = r
    return [r for r in last.values() if r.get("status") in ("Start", "Interim-Update")]


def aaa_dir(pki: str | Path, name: str) -> Path:
    """The VNO's AAA directory: beside its credentials directory, as the lab
    lays players out (`<lab>/credentials/<name>` -> `<lab>/aaa/<name>`).
    A `[vno] aaa_dir` key of the player configuration would be the general
    place; until it exists this is where the lab starts the VNO's server."""
    return Path(pki).resolve().parent.parent / "aaa" / name
