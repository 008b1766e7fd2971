"""SPs' SSH public keys at the VNO (for its SSH front door to consoles):
a table `ssh_keys` in the VNO's store, and the routes

    PUT    /v1/keys/{name}   <ssh-key>ssh-ed25519 AAAA... comment</ssh-key>  -> 201 / 200
    GET    /v1/keys          -> <ssh-keys><ssh-key name= type= fingerprint=>...</ssh-keys>
    DELETE /v1/keys/{name}   -> 204

for the SP role, each SP seeing and changing only its own keys. A key belongs
to one SP only (its fingerprint is unique), so a key authenticates one SP.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

import asyncssh
from lxml import etree
from sqlalchemy import Column, Float, MetaData, String, Table, UniqueConstraint, delete, select

from vnetlib.players.db import Store, StoreConflict
from vnetlib.players.messages import NS
from vnetlib.players.pki import Identity, Role
from vnetlib.players.server import Conflict, NotFound, Service, Unprocessable, parse_xml

KEY_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_KEYS = 32  # per SP
MAX_KEY_TEXT = 16 << 10
ALLOWED_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                 "ecdsa-sha2-nistp521", "ssh-rsa", "sk-ssh-ed25519@openssh.com",
                 "sk-ecdsa-sha2-nistp256@openssh.com")


@dataclass(frozen=True, slots=True)
class SshKey:
    owner: str  # the SP's certificate name
    name: str
    key: str  # "TYPE BASE64", without the comment
    comment: str
    fingerprint: str  # SHA256:...
    created: float

    @property
    def type(self) -> str:
        return self.key.split(" ", 1)[0]


def parse_public_key(text: str) -> tuple[str, str, str]:
    """(normalized "TYPE BASE64", comment, SHA256 fingerprint) of one OpenSSH
    public key line; ValueError for anything else (several keys, options,
    private keys, unknown types, RSA under 2048 bits)."""
    line = text.strip()
    if not line or "\n" in line or len(line) > MAX_KEY_TEXT:
        raise ValueError("expected one OpenSSH public key line")
    parts = line.split(None, 2)
    if len(parts) < 2 or parts[0] not in ALLOWED_TYPES:
        raise ValueError(f"expected a key of type {', '.join(ALLOWED_TYPES)}")
    try:
        key = asyncssh.import_public_key(f"{parts[0]} {parts[1]}")
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise ValueError(f"not a valid public key: {exc}") from exc
    if key.get_algorithm() != parts[0]:
        raise ValueError("the key's type does not match its data")
    if parts[0] == "ssh-rsa" and getattr(key, "key_size", 2048) < 2048:
        raise ValueError("RSA keys need at least 2048 bits")
    normalized = key.export_public_key("openssh").decode().strip()
    comment = parts[2].strip() if len(parts) > 2 else ""
    return normalized, comment[:200], key.get_fingerprint("sha256")


class KeyStore:
    """The registered keys of every SP of one VNO."""

    def __init__(self, url: str, player: str) -> None:
        prefix = re.sub(r"[^a-z0-9]", "_", player.lower()) + "_" if player else ""
        md = MetaData()
        self.table = Table(
            f"{prefix}ssh_keys", md,
            Column("owner", String(80), primary_key=True),
            Column("name", String(64), primary_key=True),
            Column("key", String(MAX_KEY_TEXT), nullable=False),
            Column("comment", String(200), nullable=False),
            Column("fingerprint", String(100), nullable=False),
            Column("created", Float, nullable=False),
            UniqueConstraint("fingerprint", name=f"{prefix}ssh_keys_fingerprint"))
        self.db = Store(url, md)

    def close(self) -> None:
        self.db.close()

    def put(self, owner: str, name: str, text: str) -> tuple[SshKey, bool]:
        """Register (or replace) `owner`'s key `name`; (key, created). ValueError
        for a bad key; Conflict if the key is registered already (by anyone)."""
        key, comment, fingerprint = parse_public_key(text)
        rec = SshKey(owner, name, key, comment, fingerprint, time.time())
        t = self.table
        try:
            with self.db.transaction() as conn:
                old = conn.execute(select(t.c.fingerprint).where(
                    t.c.owner == owner, t.c.name == name)).first()
                if old is None and len(conn.execute(select(t.c.name).where(
                        t.c.owner == owner)).all()) >= MAX_KEYS:
                    raise Conflict(f"at most {MAX_KEYS} keys per SP")
                if old is not None:
                    conn.execute(delete(t).where(t.c.owner == owner, t.c.name == name))
                conn.execute(t.insert().values(
                    owner=owner, name=name, key=key, comment=comment,
                    fingerprint=fingerprint, created=rec.created))
        except StoreConflict as exc:
            raise Conflict(f"key {fingerprint} is registered already") from exc
        return rec, old is None

    def list(self, owner: str) -> list[SshKey]:
        t = self.table
        with self.db.transaction(write=False) as conn:
            rows = conn.execute(select(t).where(t.c.owner == owner).order_by(t.c.name)).all()
        return [SshKey(**r._mapping) for r in rows]

    def remove(self, owner: str, name: str) -> bool:
        t = self.table
        with self.db.transaction() as conn:
            gone = conn.execute(delete(t).where(t.c.owner == owner, t.c.name == name))
        return bool(gone.rowcount)

    def owner_of(self, fingerprint: str) -> str | None:
        """The SP that registered the key with this fingerprint, if any."""
        t = self.table
        with self.db.transaction(write=False) as conn:
            row = conn.execute(select(t.c.owner).where(t.c.fingerprint == fingerprint)).first()
        return None if row is None else str(row[0])


def key_text_from(body: bytes) -> str:
    """The key line of an `<ssh-key>` document (in the API namespace or none)."""
    doc = parse_xml(body)
    qname = etree.QName(doc)
    if qname.localname != "ssh-key" or qname.namespace not in (None, NS) or len(doc):
        raise Unprocessable("expected <ssh-key>TYPE BASE64 [comment]</ssh-key>")
    return doc.text or ""


def keys_xml(keys: list[SshKey]) -> bytes:
    root = etree.Element(f"{{{NS}}}ssh-keys", nsmap={None: NS})  # type: ignore[dict-item]
    for k in keys:
        el = etree.SubElement(root, f"{{{NS}}}ssh-key", name=k.name, type=k.type,
                              fingerprint=k.fingerprint)
        el.text = f"{k.key} {k.comment}".strip()
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def keys_from(body: bytes) -> list[tuple[str, str, str]]:
    """(name, fingerprint, key line) of each key of a `GET /v1/keys` reply."""
    doc = etree.fromstring(body, etree.XMLParser(resolve_entities=False, no_network=True))
    return [(el.get("name", ""), el.get("fingerprint", ""), el.text or "")
            for el in doc.iter(f"{{{NS}}}ssh-key")]


def key_xml(text: str) -> bytes:
    root = etree.Element(f"{{{NS}}}ssh-key", nsmap={None: NS})  # type: ignore[dict-item]
    root.text = text.strip()
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def add_key_routes(svc: Service, keys: KeyStore) -> None:
    def checked(name: str) -> str:
        if not KEY_NAME.match(name):
            raise Unprocessable("a key name is 1-64 of A-Z a-z 0-9 . _ -")
        return name

    def put(caller: Identity, params: Mapping[str, str], body: bytes) -> tuple[int, bytes]:
        name = checked(params["name"])
        try:
            rec, created = keys.put(caller.name, name, key_text_from(body))
        except ValueError as exc:
            raise Unprocessable(str(exc)) from exc
        return (201 if created else 200), keys_xml([rec])

    def get(caller: Identity, params: Mapping[str, str], body: bytes) -> tuple[int, bytes]:
        return 200, keys_xml(keys.list(caller.name))

    def remove(caller: Identity, params: Mapping[str, str], body: bytes) -> tuple[int, bytes]:
        if not keys.remove(caller.name, checked(params["name"])):
            raise NotFound(f"no key {params['name']}")
        return 204, b""

    sp = {Role.SP}
    svc.add_route("PUT", "/v1/keys/{name}", put, roles=sp)
    svc.add_route("GET", "/v1/keys", get, roles=sp)
    svc.add_route("DELETE", "/v1/keys/{name}", remove, roles=sp)
