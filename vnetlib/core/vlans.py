"""VLAN ids as a substrate resource, in the substrate's ledger.

A substrate whose crossing links are carried by its switch's VLANs
(``<encapsulation>vlan</encapsulation>`` first) gives each such link one
VLAN id, the same on every host's access port. The ids live in a table of
their own beside the ledger's (``ledger_vlans``, created in the ledger's
database on first use): one row per (substrate, VLAN id) naming the sliver
and link that hold it. Taking an id is an INSERT on that primary key, so two
PIP processes sharing one ledger (SQLite or PostgreSQL) cannot both take it:
the loser's transaction fails and it retries with the ids it now sees taken
(compare-and-swap on the row's existence). An id stays taken until its
sliver's rows are dropped: never reused while in use.

VLAN 1 (most switches' default VLAN) and 4094 (where the switch daemon parks
inter-switch ports, :data:`vnetlib.switch.daemon.PARKING_VLAN`) are never
handed out: ids are 2 to 4093, as the planner checks
(:data:`vnetlib.plan.build.VLAN_MIN`, ``VLAN_MAX``).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
    delete,
    func,
    select,
)
from sqlalchemy.engine import Connection

from vnetlib.core.ledger import Ledger
from vnetlib.plan.build import VLAN_MAX, VLAN_MIN, encapsulation_of
from vnetlib.players.db import StoreConflict
from vnetlib.spec.model import Substrate, VNetSpec

_md = MetaData()
vlans_table = Table(
    "ledger_vlans", _md,
    Column("substrate", String(64), nullable=False),
    Column("vlan", Integer, nullable=False, autoincrement=False),
    Column("sliver", String(128), nullable=False),
    Column("link", String(128), nullable=False),
    PrimaryKeyConstraint("substrate", "vlan"),
    UniqueConstraint("substrate", "sliver", "link"),
)
CAPACITY = VLAN_MAX - VLAN_MIN + 1
RETRIES = 8


class NoVlan(RuntimeError):
    """The substrate has no free VLAN id for a link (the message says how many)."""


def uses_vlans(substrate: Substrate) -> bool:
    """Whether the substrate carries its crossing links on VLANs."""
    return encapsulation_of(substrate) == "vlan"


class VlanLedger:
    """The VLAN ids of the ledger's substrate."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.substrate = ledger.substrate
        with ledger.db.transaction() as conn:
            _md.create_all(conn)

    def _used(self, conn: Connection) -> set[int]:
        return {int(r[0]) for r in conn.execute(select(vlans_table.c.vlan).where(
            vlans_table.c.substrate == self.substrate))}

    def take(self, conn: Connection, sliver: str, links: Iterable[str]) -> dict[str, int]:
        """One VLAN id per link, inside the caller's transaction (a link that
        has one keeps it); NoVlan if the ids run out."""
        have = {str(r.link): int(r.vlan) for r in conn.execute(select(vlans_table).where(
            vlans_table.c.substrate == self.substrate, vlans_table.c.sliver == sliver))}
        used = self._used(conn)
        out: dict[str, int] = {}
        candidate = VLAN_MIN
        for link in links:
            if link in have:
                out[link] = have[link]
                continue
            while candidate in used:
                candidate += 1
            if candidate > VLAN_MAX:
                raise NoVlan(f"substrate {self.substrate} has no free VLAN id for link {link} "
                             f"({len(used)} of {CAPACITY} in use)")
            conn.execute(vlans_table.insert().values(substrate=self.substrate, vlan=candidate,
                                                     sliver=sliver, link=link))
            out[link] = candidate
            used.add(candidate)
        return out

    def allocate(self, sliver: str, links: Iterable[str]) -> dict[str, int]:
        """:meth:`take` in a transaction of its own, retried when another
        process took one of the same ids first."""
        links = list(links)
        for _ in range(RETRIES):
            try:
                with self.ledger.db.transaction() as conn:
                    return self.take(conn, sliver, links)
            except StoreConflict:
                continue
        raise NoVlan(f"substrate {self.substrate}: could not take VLAN ids under contention")

    def of(self, sliver: str) -> dict[str, int]:
        with self.ledger.db.transaction(write=False) as conn:
            return {str(r.link): int(r.vlan) for r in conn.execute(select(vlans_table).where(
                vlans_table.c.substrate == self.substrate, vlans_table.c.sliver == sliver))}

    def drop(self, conn: Connection, sliver: str) -> None:
        """Free the sliver's ids, inside the caller's transaction."""
        conn.execute(delete(vlans_table).where(vlans_table.c.substrate == self.substrate,
                                               vlans_table.c.sliver == sliver))

    def release(self, sliver: str) -> None:
        with self.ledger.db.transaction() as conn:
            self.drop(conn, sliver)

    def free(self) -> int:
        with self.ledger.db.transaction(write=False) as conn:
            used = conn.execute(select(func.count()).select_from(vlans_table).where(
                vlans_table.c.substrate == self.substrate)).scalar_one()
        return CAPACITY - int(used)

    def shortage(self, substrate: Substrate, spec: VNetSpec) -> str | None:
        """The quote-time refusal: why `spec` cannot have a VLAN id for each of
        its links that may cross hosts (all of them: the embedding is not
        known yet), or None. Only for substrates that use VLANs."""
        if not uses_vlans(substrate):
            return None
        need, free = len(spec.links), self.free()
        if need <= free:
            return None
        return (f"not enough VLAN ids on this substrate: the VNet may need {need}, "
                f"{free} are free")
