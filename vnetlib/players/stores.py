"""The players' state stores: one table of records per player, plus the PIP's VNIs.

A record is (id, owner, name, JSON data): each player keeps what it must
remember of a sliver or a VNet in `data`, so the schema does not change when
a player learns a new field. Works on SQLite and PostgreSQL through
`vnetlib.players.db.Store`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    select,
    update,
)

from vnetlib.players.db import Store, StoreConflict

VNI_MIN = 16_384  # above the local path's range start, to keep the two apart
VNI_MAX = 2**24 - 1


@dataclass(frozen=True, slots=True)
class Record:
    id: str
    owner: str
    name: str
    created: float
    data: dict[str, Any]


class PlayerStore:
    """Records of one player (slivers at a PIP, orders at a VNP, VNets at a VNO)."""

    def __init__(self, url: str, player: str = "") -> None:
        # Tables are prefixed with the player's name, so players may share one
        # PostgreSQL database without seeing each other's rows.
        prefix = re.sub(r"[^a-z0-9]", "_", player.lower()) + "_" if player else ""
        md = MetaData()
        self.records = Table(
            f"{prefix}records", md,
            Column("id", String(80), primary_key=True),
            Column("owner", String(80), nullable=False, index=True),
            Column("name", String(80), nullable=False),
            Column("created", Float, nullable=False),
            Column("data", Text, nullable=False),
            UniqueConstraint("owner", "name", name=f"{prefix}records_owner_name"),
        )
        self.vnis = Table(
            f"{prefix}vnis", md,
            Column("vni", Integer, primary_key=True, autoincrement=False),
            Column("record", String(80), nullable=False, index=True),
            Column("link", String(80), nullable=False),
        )
        self.db = Store(url, md)

    def close(self) -> None:
        self.db.close()

    def describe(self) -> str:
        return self.db.describe()

    # -- records ---------------------------------------------------------------------

    def insert(self, record: Record) -> None:
        """Add a record; StoreConflict if its id or (owner, name) exists."""
        with self.db.transaction() as conn:
            conn.execute(self.records.insert().values(
                id=record.id, owner=record.owner, name=record.name, created=record.created,
                data=json.dumps(record.data)))

    def save(self, record_id: str, data: dict[str, Any]) -> None:
        with self.db.transaction() as conn:
            conn.execute(update(self.records).where(self.records.c.id == record_id)
                         .values(data=json.dumps(data)))

    def get(self, record_id: str) -> Record | None:
        with self.db.transaction(write=False) as conn:
            row = conn.execute(select(self.records).where(self.records.c.id == record_id)).first()
        return None if row is None else self._record(row)

    def find(self, owner: str, name: str) -> Record | None:
        with self.db.transaction(write=False) as conn:
            row = conn.execute(select(self.records).where(
                self.records.c.owner == owner, self.records.c.name == name)).first()
        return None if row is None else self._record(row)

    def all(self, owner: str | None = None) -> list[Record]:
        query = select(self.records).order_by(self.records.c.created)
        if owner is not None:
            query = query.where(self.records.c.owner == owner)
        with self.db.transaction(write=False) as conn:
            return [self._record(row) for row in conn.execute(query)]

    def remove(self, record_id: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(delete(self.vnis).where(self.vnis.c.record == record_id))
            conn.execute(delete(self.records).where(self.records.c.id == record_id))

    @staticmethod
    def _record(row: Any) -> Record:
        return Record(row.id, row.owner, row.name, row.created, json.loads(row.data))

    # -- VXLAN ids -------------------------------------------------------------------

    def used_vnis(self) -> set[int]:
        with self.db.transaction(write=False) as conn:
            return {int(r[0]) for r in conn.execute(select(self.vnis.c.vni))}

    def allocate_vnis(self, record_id: str, links: Iterable[str],
                      avoid: Iterable[int] = ()) -> dict[str, int]:
        """One free VNI per link, recorded for `record_id`."""
        links = list(links)
        for _ in range(5):  # concurrent allocations on PostgreSQL may collide: retry
            used = self.used_vnis() | set(avoid)
            result: dict[str, int] = {}
            candidate = VNI_MIN
            for link in links:
                while candidate in used:
                    candidate += 1
                if candidate > VNI_MAX:
                    raise RuntimeError("no free VXLAN id left")
                result[link] = candidate
                used.add(candidate)
            try:
                with self.db.transaction() as conn:
                    for link, vni in result.items():
                        conn.execute(self.vnis.insert().values(vni=vni, record=record_id,
                                                               link=link))
                return result
            except StoreConflict:
                continue
        raise RuntimeError("could not allocate VXLAN ids: too much contention")

    def claim_vni(self, record_id: str, link: str, vni: int) -> bool:
        """Record `vni` for `link` if it is free; False if it is taken."""
        try:
            with self.db.transaction() as conn:
                conn.execute(self.vnis.insert().values(vni=vni, record=record_id, link=link))
        except StoreConflict:
            return False
        return True

    def release_vni(self, vni: int) -> None:
        with self.db.transaction() as conn:
            conn.execute(delete(self.vnis).where(self.vnis.c.vni == vni))

    def vnis_of(self, record_id: str) -> dict[str, int]:
        with self.db.transaction(write=False) as conn:
            rows = conn.execute(select(self.vnis).where(self.vnis.c.record == record_id))
            return {str(r.link): int(r.vni) for r in rows}
