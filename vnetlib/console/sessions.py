"""The mapping table of a player's console sessions: single-use tokens in
memory (the secrets), and a `console_sessions` table in the player's database
(the record: token hash, who may present it, next hop, times)."""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Float, MetaData, String, Table, select, update

from vnetlib.console.wire import ByteReader, ByteWriter
from vnetlib.players.db import Store
from vnetlib.players.pki import Identity

TOKEN_BYTES = 32
TOKEN_TTL = 30.0

Opener = Callable[[], Awaitable[tuple[ByteReader, ByteWriter]]]
"""Opens the next hop: its (reader, writer)."""


class TokenRefused(Exception):
    """A token that is unknown, used, expired, or presented by someone else."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Pending:
    """A minted token's session: who may open it, for what, and how to go on."""

    hash: str
    owner: Identity
    vnet: str
    node: str
    kind: str
    next_hop: str
    expires: float
    open: Opener


class SessionTable:
    """Tokens minted by this player and the record of every session."""

    def __init__(self, url: str, player: str, ttl: float = TOKEN_TTL) -> None:
        prefix = re.sub(r"[^a-z0-9]", "_", player.lower()) + "_" if player else ""
        md = MetaData()
        self.table = Table(
            f"{prefix}console_sessions", md,
            Column("token_hash", String(64), primary_key=True),
            Column("owner", String(120), nullable=False),
            Column("vnet", String(80), nullable=False),
            Column("node", String(80), nullable=False),
            Column("kind", String(16), nullable=False),
            Column("next_hop", String(300), nullable=False),
            Column("created", Float, nullable=False),
            Column("used", Float),
            Column("peer", String(120)),
            Column("closed", Float),
            Column("outcome", String(200)))
        self.db = Store(url, md)
        self.ttl = ttl
        self._pending: dict[str, Pending] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self.db.close()

    def mint(self, owner: Identity, vnet: str, node: str, kind: str, next_hop: str,
             opener: Opener) -> tuple[str, float]:
        """A fresh token for `owner` only; returns (token, expiry in epoch seconds)."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = time.time()
        p = Pending(token_hash(token), owner, vnet, node, kind, next_hop, now + self.ttl,
                    opener)
        with self._lock:
            for h in [h for h, q in self._pending.items() if q.expires <= now]:
                del self._pending[h]
            self._pending[p.hash] = p
        with self.db.transaction() as conn:
            conn.execute(self.table.insert().values(
                token_hash=p.hash, owner=str(owner), vnet=vnet, node=node, kind=kind,
                next_hop=next_hop, created=now))
        return token, p.expires

    def consume(self, token: str, presenter: Identity, peer: str) -> Pending:
        """The token's session, once: TokenRefused unless unused, unexpired and
        presented by the identity it was minted for (a wrong presenter burns it)."""
        h = token_hash(token)
        with self._lock:
            p = self._pending.pop(h, None)
        if p is None:
            raise TokenRefused("unknown or used token")
        now = time.time()
        if p.expires <= now:
            self.finish(h, "expired", used=False)
            raise TokenRefused("expired token")
        if p.owner != presenter:
            self.finish(h, f"refused: presented by {presenter}", used=False)
            raise TokenRefused("token not issued to you")
        with self.db.transaction() as conn:
            conn.execute(update(self.table).where(self.table.c.token_hash == h)
                         .values(used=now, peer=peer[:120]))
        return p

    def finish(self, h: str, outcome: str, *, used: bool = True) -> None:
        with self.db.transaction() as conn:
            conn.execute(update(self.table).where(self.table.c.token_hash == h)
                         .values(closed=time.time(), outcome=outcome[:200]))

    def rows(self) -> list[dict[str, Any]]:
        with self.db.transaction(write=False) as conn:
            return [dict(r._mapping) for r in conn.execute(select(self.table))]

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)
