"""The mapping table of a player's console sessions: single-use tokens in
memory (the secrets, and the authority on whether a token may still be
used), and a `console_sessions` table in the player's database (the record:
token hash, who may present it, next hop, times).

The record is written by a writer thread of the table, in the order the
events happened, so that no database commit lies on a session's setup path;
`rows()` and `close()` wait for what is queued. A crash loses at most the
records of the last moments, never a token's single use (that is decided in
memory, under a lock)."""

from __future__ import annotations

import contextvars
import hashlib
import logging
import queue
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Float, MetaData, String, Table, select, update
from sqlalchemy.sql import Executable

from vnetlib.console.wire import ByteReader, ByteWriter
from vnetlib.players.db import Store
from vnetlib.players.pki import Identity

log = logging.getLogger(__name__)

TOKEN_BYTES = 32
TOKEN_TTL = 30.0

Opener = Callable[[], Awaitable[tuple[ByteReader, ByteWriter]]]
"""Opens the next hop: its (reader, writer)."""


_in_process = contextvars.ContextVar("console_setup_in_process", default=False)


def setup_in_process(dispatch: Callable[..., Any], *args: Any) -> Any:
    """Call a player's console route from its own front door (SSH, web), in
    a thread of `asyncio.to_thread` (which runs it in a copy of the caller's
    context): the door opens the next hop itself, on its own loop, so the
    route must not open it ahead for the door's token."""
    _in_process.set(True)
    return dispatch(*args)


def in_process_setup() -> bool:
    return _in_process.get()


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
        self._records: queue.Queue[Callable[[], Executable] | None] = queue.Queue()
        self._writer = threading.Thread(target=self._write, daemon=True,
                                        name=f"console-records-{player}")
        self._writer.start()

    def close(self) -> None:
        """Write what is queued, then close the database."""
        self._records.put(None)
        self._writer.join(30)
        self.db.close()

    def _record(self, statement: Callable[[], Executable]) -> None:
        """Queue a record; the writer thread builds its statement (SQLAlchemy's
        construction costs more than the rest of a hop's setup bookkeeping)."""
        self._records.put(statement)

    def _write(self) -> None:
        while True:
            first = self._records.get()
            batch = [first]
            while first is not None and not self._records.empty():
                batch.append(self._records.get_nowait())
            todo = [b for b in batch if b is not None]
            try:
                if todo:
                    with self.db.transaction() as conn:
                        for statement in todo:
                            conn.execute(statement())
            except Exception:
                log.exception("console session records lost: %d", len(todo))
            finally:
                for _ in batch:
                    self._records.task_done()
            if len(todo) < len(batch):
                return

    def flush(self) -> None:
        """Wait until every record queued so far is written."""
        self._records.join()

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
        self._record(lambda: self.table.insert().values(
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
        self._record(lambda: update(self.table).where(self.table.c.token_hash == h)
                     .values(used=now, peer=peer[:120]))
        return p

    def finish(self, h: str, outcome: str, *, used: bool = True) -> None:
        closed = time.time()
        self._record(lambda: update(self.table).where(self.table.c.token_hash == h)
                     .values(closed=closed, outcome=outcome[:200]))

    def rows(self) -> list[dict[str, Any]]:
        self.flush()
        with self.db.transaction(write=False) as conn:
            return [dict(r._mapping) for r in conn.execute(select(self.table))]

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)
