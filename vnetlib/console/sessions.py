"""The mapping table of a player's console sessions: single-use tokens in
memory (the secrets, and the authority on whether a token may still be
used), and a `console_sessions` table in the player's database (the record:
token hash, who may present it, next hop, times).

The record is written by a writer thread of the table, in batches (one
transaction, one statement per kind of event for many rows), so that no
database work lies on a session's setup path and little competes with it;
`rows()` and `close()` wait for what is queued. A crash loses at most the
records of the last moments, never a token's single use (that is decided in
memory, under a lock)."""

from __future__ import annotations

import contextvars
import hashlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Float, MetaData, String, Table, bindparam, select, update

from vnetlib.console.wire import ByteReader, ByteWriter
from vnetlib.players.db import Store
from vnetlib.players.pki import Identity

log = logging.getLogger(__name__)

TOKEN_BYTES = 32
TOKEN_TTL = 30.0
WRITE_DELAY = 0.05
"""Seconds the writer waits after its first event, gathering a session's others."""

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
        c = self.table.c
        self._insert = self.table.insert()
        self._used = (update(self.table).where(c.token_hash == bindparam("h"))
                      .values(used=bindparam("u"), peer=bindparam("p")))
        self._closed = (update(self.table).where(c.token_hash == bindparam("h"))
                        .values(closed=bindparam("c"), outcome=bindparam("o")))
        self._queue: list[tuple[str, dict[str, Any]]] = []
        self._queued = threading.Condition()
        self._written = 0  # events written (or lost) so far
        self._seq = 0  # events queued so far
        self._stop = False
        self._writer = threading.Thread(target=self._write, daemon=True,
                                        name=f"console-records-{player}")
        self._writer.start()

    def close(self) -> None:
        """Write what is queued, then close the database."""
        with self._queued:
            self._stop = True
            self._queued.notify_all()
        self._writer.join(30)
        self.db.close()

    def _record(self, kind: str, values: dict[str, Any]) -> None:
        """Queue an event of a session's record. The writer is woken only by
        the first event after it emptied the queue, then lets `WRITE_DELAY`
        pass so that one transaction writes a session's events together."""
        with self._queued:
            self._queue.append((kind, values))
            self._seq += 1
            if len(self._queue) == 1:
                self._queued.notify_all()

    def _write(self) -> None:
        while True:
            with self._queued:
                while not self._queue and not self._stop:
                    self._queued.wait()
                if not self._queue:
                    return
            if not self._stop:
                time.sleep(WRITE_DELAY)
            with self._queued:
                batch, self._queue = self._queue, []
            try:
                self._write_batch(batch)
            except Exception:
                log.exception("console session records lost: %d", len(batch))
            with self._queued:
                self._written += len(batch)
                self._queued.notify_all()

    def _write_batch(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        """One transaction: new rows (with what happened to them since, merged
        in), then the updates of rows written before, in order, each statement
        for many rows at once."""
        rows: dict[str, dict[str, Any]] = {}
        used: list[dict[str, Any]] = []
        closed: list[dict[str, Any]] = []
        for kind, values in batch:
            if kind == "mint":
                rows[values["token_hash"]] = dict(values)
            elif values["h"] in rows:
                row = rows[values["h"]]
                if kind == "used":
                    row.update(used=values["u"], peer=values["p"])
                else:
                    row.update(closed=values["c"], outcome=values["o"])
            else:
                (used if kind == "used" else closed).append(values)
        with self.db.transaction() as conn:
            if rows:
                full = [{"used": None, "peer": None, "closed": None, "outcome": None, **r}
                        for r in rows.values()]
                conn.execute(self._insert, full)
            if used:
                conn.execute(self._used, used)
            if closed:
                conn.execute(self._closed, closed)

    def flush(self) -> None:
        """Wait until every record queued so far is written."""
        with self._queued:
            target = self._seq
            if self._queue:
                self._queued.notify_all()
            while self._written < target and self._writer.is_alive():
                self._queued.wait(1.0)

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
        self._record("mint", {"token_hash": p.hash, "owner": str(owner), "vnet": vnet,
                              "node": node, "kind": kind, "next_hop": next_hop,
                              "created": now})
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
        self._record("used", {"h": h, "u": now, "p": peer[:120]})
        return p

    def finish(self, h: str, outcome: str, *, used: bool = True) -> None:
        closed = time.time()
        self._record("closed", {"h": h, "c": closed, "o": outcome[:200]})

    def rows(self) -> list[dict[str, Any]]:
        self.flush()
        with self.db.transaction(write=False) as conn:
            return [dict(r._mapping) for r in conn.execute(select(self.table))]

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)
