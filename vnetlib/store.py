"""The local PIP path's state store: VNets, their embedding and plan, and tunnel ids.

Built on the players' store (`vnetlib.players.db`), so the same code runs on
SQLite (a file path, the default) and PostgreSQL (a URL). Every write is one
transaction, so a crash leaves either the old or the new record, never half
of one. The tables are those of the earlier sqlite3 version: existing files
keep working.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    delete,
    select,
    update,
)

from vnetlib.players import db

VNI_MIN = 4096
VNI_MAX = 2**24 - 1


class VNetNotFound(LookupError):
    """No VNet has that id or name (as opposed to several having the name)."""


_metadata = MetaData()
vnets_table = Table(
    "vnets", _metadata,
    Column("id", String, primary_key=True),
    Column("name", String, nullable=False),
    Column("lab", String, nullable=False),
    Column("status", String, nullable=False),
    Column("spec_xml", Text, nullable=False),
    Column("embedding", Text),
    Column("plan", Text),
    Column("timings", Text),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
)
vnis_table = Table(
    "vnis", _metadata,
    Column("lab", String, nullable=False),
    Column("vni", Integer, nullable=False, autoincrement=False),
    Column("vnet_id", String, nullable=False),
    Column("link", String, nullable=False),
    PrimaryKeyConstraint("lab", "vni"),
)


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


def _url(where: Path | str) -> str:
    text = str(where)
    return text if "://" in text else db.sqlite_url(where)


class Store:
    """The local path's records; `where` is a SQLite file path or a database URL."""

    def __init__(self, where: Path | str) -> None:
        self.path = where
        self._db = db.Store(_url(where), _metadata)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_vnet(self, vnet_id: str, name: str, lab: str, spec_xml: str) -> None:
        now = time.time()
        with self._db.transaction() as conn:
            conn.execute(vnets_table.insert().values(
                id=vnet_id, name=name, lab=lab, status="planning", spec_xml=spec_xml,
                created=now, updated=now))

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
        with self._db.transaction() as conn:
            conn.execute(update(vnets_table).where(vnets_table.c.id == vnet_id).values(**fields))

    def remove_vnet(self, vnet_id: str) -> None:
        with self._db.transaction() as conn:
            conn.execute(delete(vnis_table).where(vnis_table.c.vnet_id == vnet_id))
            conn.execute(delete(vnets_table).where(vnets_table.c.id == vnet_id))

    def remove_lab(self, lab: str) -> list[str]:
        with self._db.transaction() as conn:
            ids = [str(r[0]) for r in conn.execute(
                select(vnets_table.c.id).where(vnets_table.c.lab == lab)
                .order_by(vnets_table.c.created))]
            conn.execute(delete(vnis_table).where(vnis_table.c.lab == lab))
            conn.execute(delete(vnets_table).where(vnets_table.c.lab == lab))
        return ids

    def vnets(self, lab: str | None = None) -> list[VNetRecord]:
        query = select(vnets_table).order_by(vnets_table.c.created)
        if lab is not None:
            query = query.where(vnets_table.c.lab == lab)
        with self._db.transaction(write=False) as conn:
            return [self._record(row) for row in conn.execute(query)]

    def find_vnet(self, ref: str) -> VNetRecord:
        """A VNet by id, or by name when exactly one VNet has that name."""
        with self._db.transaction(write=False) as conn:
            rows = list(conn.execute(select(vnets_table).where(vnets_table.c.id == ref)))
            if not rows:
                rows = list(conn.execute(select(vnets_table).where(vnets_table.c.name == ref)
                                         .order_by(vnets_table.c.created)))
        if not rows:
            raise VNetNotFound(f"no VNet with id or name {ref!r}")
        if len(rows) > 1:
            ids = ", ".join(r.id for r in rows)
            raise LookupError(f"several VNets are named {ref!r} ({ids}): give the id")
        return self._record(rows[0])

    def allocate_vnis(
        self, lab: str, vnet_id: str, links: list[str], *, dry_run: bool = False
    ) -> dict[str, int]:
        """Reserve one VXLAN id per link, unique within the lab; `dry_run`
        returns the ids that would be reserved and reserves none."""
        for _ in range(5):  # on PostgreSQL a concurrent allocation may take an id first
            with self._db.transaction(write=False) as conn:
                used = {int(r[0]) for r in conn.execute(
                    select(vnis_table.c.vni).where(vnis_table.c.lab == lab))}
            result: dict[str, int] = {}
            candidate = VNI_MIN
            for link in links:
                while candidate in used:
                    candidate += 1
                if candidate > VNI_MAX:
                    raise RuntimeError(f"lab {lab} has no free VXLAN id left")
                result[link] = candidate
                used.add(candidate)
            if dry_run:
                return result
            try:
                with self._db.transaction() as conn:
                    for link, vni in result.items():
                        conn.execute(vnis_table.insert().values(lab=lab, vni=vni,
                                                                vnet_id=vnet_id, link=link))
                return result
            except db.StoreConflict:
                continue
        raise RuntimeError(f"lab {lab}: could not allocate VXLAN ids under contention")

    @staticmethod
    def _record(row: Any) -> VNetRecord:
        return VNetRecord(
            row.id,
            row.name,
            row.lab,
            row.status,
            row.spec_xml,
            _loads(row.embedding),
            _loads(row.plan),
            _loads(row.timings),
            row.created,
            row.updated,
        )
