"""The PIP's state store: VNets, their embedding and plan, and tunnel ids.

SQLite through the standard library. Every write is one transaction, so a
crash leaves either the old or the new record, never half of one.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS vnets (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    lab TEXT NOT NULL,
    status TEXT NOT NULL,
    spec_xml TEXT NOT NULL,
    embedding TEXT,
    plan TEXT,
    timings TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS vnis (
    lab TEXT NOT NULL,
    vni INTEGER NOT NULL,
    vnet_id TEXT NOT NULL,
    link TEXT NOT NULL,
    PRIMARY KEY (lab, vni)
);
"""

VNI_MIN = 4096
VNI_MAX = 2**24 - 1


@dataclass(frozen=True, slots=True)
class VNetRecord:
    id: str
    name: str
    lab: str
    status: str
    spec_xml: str
    embedding: dict[str, Any] | None
    plan: dict[str, Any] | None
    timings: dict[str, float] | None
    created: float
    updated: float


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def add_vnet(self, vnet_id: str, name: str, lab: str, spec_xml: str) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO vnets (id, name, lab, status, spec_xml, created, updated)"
                " VALUES (?, ?, ?, 'planning', ?, ?, ?)",
                (vnet_id, name, lab, spec_xml, now, now),
            )

    def update_vnet(
        self,
        vnet_id: str,
        *,
        status: str | None = None,
        embedding: dict[str, Any] | None = None,
        plan: dict[str, Any] | None = None,
        timings: dict[str, float] | None = None,
    ) -> None:
        fields: dict[str, Any] = {"updated": time.time()}
        if status is not None:
            fields["status"] = status
        if embedding is not None:
            fields["embedding"] = json.dumps(embedding)
        if plan is not None:
            fields["plan"] = json.dumps(plan)
        if timings is not None:
            fields["timings"] = json.dumps(timings)
        assignments = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as db:
            db.execute(f"UPDATE vnets SET {assignments} WHERE id = ?", (*fields.values(), vnet_id))

    def remove_vnet(self, vnet_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM vnis WHERE vnet_id = ?", (vnet_id,))
            db.execute("DELETE FROM vnets WHERE id = ?", (vnet_id,))

    def remove_lab(self, lab: str) -> list[str]:
        with self._tx() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM vnets WHERE lab = ?", (lab,))]
            db.execute("DELETE FROM vnis WHERE lab = ?", (lab,))
            db.execute("DELETE FROM vnets WHERE lab = ?", (lab,))
        return ids

    def vnets(self, lab: str | None = None) -> list[VNetRecord]:
        query = "SELECT * FROM vnets"
        args: tuple[str, ...] = ()
        if lab is not None:
            query += " WHERE lab = ?"
            args = (lab,)
        return [self._record(row) for row in self._db.execute(query + " ORDER BY created", args)]

    def find_vnet(self, ref: str) -> VNetRecord:
        """A VNet by id, or by name when exactly one VNet has that name."""
        rows = list(self._db.execute("SELECT * FROM vnets WHERE id = ?", (ref,)))
        if not rows:
            rows = list(self._db.execute("SELECT * FROM vnets WHERE name = ?", (ref,)))
        if not rows:
            raise LookupError(f"no VNet with id or name {ref!r}")
        if len(rows) > 1:
            ids = ", ".join(r[0] for r in rows)
            raise LookupError(f"several VNets are named {ref!r} ({ids}): give the id")
        return self._record(rows[0])

    def allocate_vnis(
        self, lab: str, vnet_id: str, links: list[str], *, dry_run: bool = False
    ) -> dict[str, int]:
        """Reserve one VXLAN id per link, unique within the lab; `dry_run`
        returns the ids that would be reserved and reserves none."""
        with self._tx() as db:
            used = {r[0] for r in db.execute("SELECT vni FROM vnis WHERE lab = ?", (lab,))}
            result: dict[str, int] = {}
            candidate = VNI_MIN
            for link in links:
                while candidate in used:
                    candidate += 1
                if candidate > VNI_MAX:
                    raise RuntimeError(f"lab {lab} has no free VXLAN id left")
                if not dry_run:
                    db.execute(
                        "INSERT INTO vnis (lab, vni, vnet_id, link) VALUES (?, ?, ?, ?)",
                        (lab, candidate, vnet_id, link),
                    )
                result[link] = candidate
                used.add(candidate)
        return result

    @staticmethod
    def _record(row: tuple[Any, ...]) -> VNetRecord:
        (vid, name, lab, status, spec_xml, emb, plan, timings, created, updated) = row
        return VNetRecord(
            vid,
            name,
            lab,
            status,
            spec_xml,
            _loads(emb),
            _loads(plan),
            _loads(timings),
            created,
            updated,
        )
