"""The VNO's and VNP's state stores: one table of records per player.

A record is (id, owner, name, JSON data): each player keeps what it must
remember of an order or a VNet in `data`, so the schema does not change when
a player learns a new field. Works on SQLite and PostgreSQL through
`vnetlib.players.db.Store`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    select,
    update,
)

from vnetlib.players.db import Store


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
            conn.execute(delete(self.records).where(self.records.c.id == record_id))

    @staticmethod
    def _record(row: Any) -> Record:
        return Record(row.id, row.owner, row.name, row.created, json.loads(row.data))
