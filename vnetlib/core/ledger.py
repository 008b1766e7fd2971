"""One ledger per substrate: slivers, their embeddings and tunnel ids.

On SQLite (a path) or PostgreSQL (a URL), through `vnetlib.players.db`.
Several PIP processes may share one PostgreSQL ledger:

- every change of a sliver is a compare-and-swap on its `version`: a write
  that lost the race raises `Stale` and changes nothing;
- allocations of one substrate are serialized by a row lock on the
  substrate's row (`SELECT ... FOR UPDATE`; SQLite's BEGIN IMMEDIATE does the
  same), so the residual capacity an embedding sees is the one it takes;
- a tunnel id is unique per substrate (primary key), so two claims of one
  id cannot both succeed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import replace

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from vnetlib.core import machine
from vnetlib.core.records import ENDED, LIVE, Sliver, State
from vnetlib.players.db import Store, StoreConflict

VNI_MIN = 4096
VNI_MAX = 2**24 - 1

_md = MetaData()
slivers_table = Table(
    "ledger_slivers", _md,
    Column("id", String(80), primary_key=True),
    Column("substrate", String(80), nullable=False, index=True),
    Column("owner", String(80), nullable=False),
    Column("name", String(120), nullable=False),
    Column("state", String(16), nullable=False),
    Column("expires", Float),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Column("version", Integer, nullable=False),
    Column("data", Text, nullable=False),
    UniqueConstraint("substrate", "owner", "name", name="ledger_slivers_owner_name"),
)
vnis_table = Table(
    "ledger_vnis", _md,
    Column("substrate", String(80), nullable=False),
    Column("vni", Integer, nullable=False, autoincrement=False),
    Column("sliver", String(80), nullable=False, index=True),
    Column("link", String(80), nullable=False),
    PrimaryKeyConstraint("substrate", "vni"),
)
substrates_table = Table(
    "ledger_substrates", _md,
    Column("name", String(80), primary_key=True),
)
# The substrate's pool of booted VMs (vnetlib.core.pool): one row per domain,
# changed by compare-and-swap on `version` like the slivers.
pool_table = Table(
    "ledger_pool", _md,
    Column("substrate", String(80), nullable=False),
    Column("domain", String(80), nullable=False),
    Column("host", String(80), nullable=False),
    Column("image", String(80), nullable=False),
    Column("vcpus", Integer, nullable=False),
    Column("memory_mb", Integer, nullable=False),
    Column("state", String(16), nullable=False),  # booting | ready | taken | destroying
    Column("sliver", String(80)),
    Column("vnode", String(80)),
    Column("holder", String(200), nullable=False),
    Column("updated", Float, nullable=False),
    Column("version", Integer, nullable=False),
    PrimaryKeyConstraint("substrate", "domain"),
)
pool_settings_table = Table(
    "ledger_pool_settings", _md,
    Column("substrate", String(80), primary_key=True),
    Column("data", Text, nullable=False),
)
# Hosts being drained (`vnet drain HOST`): they take no new virtual nodes.
drained_table = Table(
    "ledger_drained", _md,
    Column("substrate", String(80), nullable=False),
    Column("host", String(80), nullable=False),
    PrimaryKeyConstraint("substrate", "host"),
)


class Stale(RuntimeError):
    """Another writer changed the sliver first; re-read and decide again."""


class Exists(RuntimeError):
    """A sliver of that owner and name exists already."""


class NoVni(RuntimeError):
    """No free tunnel id is left on the substrate."""


def vni_in_range(vni: int) -> bool:
    return VNI_MIN <= vni <= VNI_MAX


def pick_vnis(used: Iterable[int], links: Iterable[str], where: str = "") -> dict[str, int]:
    """The lowest tunnel ids not in `used`, one per link (pure: reserves nothing)."""
    taken = set(used)
    result: dict[str, int] = {}
    candidate = VNI_MIN
    for link in links:
        while candidate in taken:
            candidate += 1
        if candidate > VNI_MAX:
            raise NoVni(f"substrate {where} has no free tunnel id left")
        result[link] = candidate
        taken.add(candidate)
    return result


class Ledger:
    def __init__(self, url: str, substrate: str) -> None:
        self.substrate = substrate
        self.db = Store(url, _md)
        with contextlib.suppress(StoreConflict), self.db.transaction() as conn:
            if conn.execute(select(substrates_table).where(
                    substrates_table.c.name == substrate)).first() is None:
                conn.execute(substrates_table.insert().values(name=substrate))

    def close(self) -> None:
        self.db.close()

    def describe(self) -> str:
        return self.db.describe()

    @staticmethod
    def substrates(url: str) -> list[str]:
        """The substrates that have a ledger in the database at `url`."""
        store = Store(url, _md)
        try:
            with store.transaction(write=False) as conn:
                return sorted(str(r[0]) for r in conn.execute(select(substrates_table.c.name)))
        finally:
            store.close()

    def forget(self) -> None:
        """Drop this substrate's ledger: its slivers, tunnel ids and lock row."""
        with self.db.transaction() as conn:
            conn.execute(delete(vnis_table).where(vnis_table.c.substrate == self.substrate))
            conn.execute(delete(slivers_table).where(*self._where()))
            conn.execute(delete(pool_table).where(pool_table.c.substrate == self.substrate))
            conn.execute(delete(pool_settings_table).where(
                pool_settings_table.c.substrate == self.substrate))
            conn.execute(delete(drained_table).where(
                drained_table.c.substrate == self.substrate))
            if inspect(conn).has_table("ledger_vlans"):  # vnetlib.core.vlans, made on first use
                conn.execute(text("DELETE FROM ledger_vlans WHERE substrate = :s"),
                             {"s": self.substrate})
            conn.execute(delete(substrates_table).where(
                substrates_table.c.name == self.substrate))

    # -- reading ---------------------------------------------------------------------

    def _where(self) -> list[ColumnElement[bool]]:
        return [slivers_table.c.substrate == self.substrate]

    @staticmethod
    def _sliver(row: object) -> Sliver:
        r = row._mapping  # type: ignore[attr-defined]
        return Sliver.from_row(id=r["id"], substrate=r["substrate"], owner=r["owner"],
                               name=r["name"], state=r["state"], expires=r["expires"],
                               created=r["created"], updated=r["updated"],
                               version=r["version"], data=r["data"])

    def get(self, sliver_id: str) -> Sliver | None:
        with self.db.transaction(write=False) as conn:
            row = conn.execute(select(slivers_table).where(
                *self._where(), slivers_table.c.id == sliver_id)).first()
        return None if row is None else self._sliver(row)

    def find(self, owner: str, name: str) -> Sliver | None:
        with self.db.transaction(write=False) as conn:
            row = conn.execute(select(slivers_table).where(
                *self._where(), slivers_table.c.owner == owner,
                slivers_table.c.name == name)).first()
        return None if row is None else self._sliver(row)

    def slivers(self, owner: str | None = None,
                states: Collection[State] | None = LIVE) -> list[Sliver]:
        query = select(slivers_table).where(*self._where()).order_by(slivers_table.c.created)
        if owner is not None:
            query = query.where(slivers_table.c.owner == owner)
        if states is not None:
            query = query.where(slivers_table.c.state.in_([s.value for s in states]))
        with self.db.transaction(write=False) as conn:
            return [self._sliver(row) for row in conn.execute(query)]

    # -- writing ---------------------------------------------------------------------

    def allocate(self, build: Callable[[list[Sliver]], Sliver]) -> Sliver:
        """Insert the sliver `build` makes from the slivers holding capacity now,
        with every other allocation of this substrate waiting meanwhile."""
        with self.db.transaction() as conn:
            conn.execute(select(substrates_table).where(
                substrates_table.c.name == self.substrate).with_for_update())
            now = time.time()
            rows = conn.execute(select(slivers_table).where(
                *self._where(), slivers_table.c.state.in_([s.value for s in LIVE])))
            holding = [s for s in map(self._sliver, rows)
                       if not (s.state is State.ALLOCATED and (s.expires or 0) <= now)]
            sliver = build(holding)
            taken = conn.execute(select(slivers_table.c.id, slivers_table.c.state).where(
                *self._where(), slivers_table.c.owner == sliver.owner,
                slivers_table.c.name == sliver.name)).first()
            if taken is not None:
                if State(taken.state) not in ENDED:
                    raise Exists(f"sliver {sliver.name} exists")
                # a tombstone: the name is free again
                self.drop_vnis(conn, taken.id)
                conn.execute(delete(slivers_table).where(*self._where(),
                                                         slivers_table.c.id == taken.id))
            sliver = replace(sliver, created=now, updated=now, version=1)
            try:
                conn.execute(slivers_table.insert().values(**self._columns(sliver)))
            except Exception as exc:
                raise Exists(f"sliver {sliver.name} exists") from exc
        return sliver

    def _columns(self, s: Sliver) -> dict[str, object]:
        return {"id": s.id, "substrate": self.substrate, "owner": s.owner, "name": s.name,
                "state": s.state.value, "expires": s.expires, "created": s.created,
                "updated": s.updated, "version": s.version, "data": s.data_json()}

    def update(self, old: Sliver, new: Sliver, *,
               also: Callable[[Connection], None] | None = None) -> Sliver:
        """Replace `old` by `new` if nobody changed it since `old` was read.

        `also` runs in the same transaction (tunnel ids taken with a transition).
        Raises Stale when the row moved on, IllegalTransition for a state that
        may not follow."""
        machine.check(old.id, old.state, new.state)
        new = replace(new, version=old.version + 1, updated=time.time())
        with self.db.transaction() as conn:
            cols = self._columns(new)
            del cols["id"], cols["created"]
            done = conn.execute(update(slivers_table).where(
                *self._where(), slivers_table.c.id == old.id,
                slivers_table.c.version == old.version).values(**cols))
            if done.rowcount != 1:
                raise Stale(f"sliver {old.name} changed meanwhile")
            if also is not None:
                also(conn)
        return new

    def purge(self, sliver_id: str) -> None:
        """Forget an ended sliver and its tunnel ids."""
        with self.db.transaction() as conn:
            conn.execute(delete(vnis_table).where(vnis_table.c.substrate == self.substrate,
                                                  vnis_table.c.sliver == sliver_id))
            conn.execute(delete(slivers_table).where(*self._where(),
                                                     slivers_table.c.id == sliver_id))

    def purge_ended(self, before: float) -> int:
        """Drop tombstones (deleted, expired) last changed before `before`."""
        with self.db.transaction() as conn:
            done = conn.execute(delete(slivers_table).where(
                *self._where(), slivers_table.c.state.in_(["deleted", "expired"]),
                slivers_table.c.updated < before))
            return int(done.rowcount or 0)

    # -- tunnel ids ------------------------------------------------------------------

    def vnis_of(self, sliver_id: str) -> dict[str, int]:
        with self.db.transaction(write=False) as conn:
            rows = conn.execute(select(vnis_table).where(
                vnis_table.c.substrate == self.substrate, vnis_table.c.sliver == sliver_id))
            return {str(r.link): int(r.vni) for r in rows}

    def used_vnis(self) -> set[int]:
        with self.db.transaction(write=False) as conn:
            return {int(r[0]) for r in conn.execute(select(vnis_table.c.vni).where(
                vnis_table.c.substrate == self.substrate))}

    def take_vnis(self, conn: Connection, sliver_id: str, links: Iterable[str],
                  avoid: Iterable[int] = ()) -> dict[str, int]:
        """One free tunnel id per link, inside the caller's transaction."""
        used = {int(r[0]) for r in conn.execute(select(vnis_table.c.vni).where(
            vnis_table.c.substrate == self.substrate))} | set(avoid)
        result = pick_vnis(used, links, self.substrate)
        for link, vni in result.items():
            conn.execute(vnis_table.insert().values(substrate=self.substrate, vni=vni,
                                                    sliver=sliver_id, link=link))
        return result

    def allocate_vnis(self, sliver_id: str, links: Iterable[str],
                      avoid: Iterable[int] = ()) -> dict[str, int]:
        links = list(links)
        for _ in range(8):  # PostgreSQL: a concurrent allocation may take an id first
            try:
                with self.db.transaction() as conn:
                    return self.take_vnis(conn, sliver_id, links, avoid)
            except StoreConflict:
                continue
        raise NoVni(f"substrate {self.substrate}: could not take tunnel ids under contention")

    def claim_vni(self, sliver_id: str, link: str, vni: int) -> bool:
        """Record `vni` for `link` if it is in range and free; else False."""
        if not vni_in_range(vni):
            return False
        try:
            with self.db.transaction() as conn:
                conn.execute(vnis_table.insert().values(substrate=self.substrate, vni=vni,
                                                        sliver=sliver_id, link=link))
        except StoreConflict:
            return False
        return True

    def release_vni(self, sliver_id: str, vni: int) -> None:
        with self.db.transaction() as conn:
            conn.execute(delete(vnis_table).where(
                vnis_table.c.substrate == self.substrate, vnis_table.c.vni == vni,
                vnis_table.c.sliver == sliver_id))

    def drop_vnis(self, conn: Connection, sliver_id: str) -> None:
        """Free a sliver's tunnel ids, inside the caller's transaction."""
        conn.execute(delete(vnis_table).where(
            vnis_table.c.substrate == self.substrate, vnis_table.c.sliver == sliver_id))

    def drop_link_vnis(self, conn: Connection, sliver_id: str, links: Iterable[str]) -> None:
        """Free the tunnel ids of some of a sliver's links (a move made them local)."""
        links = list(links)
        if links:
            conn.execute(delete(vnis_table).where(
                vnis_table.c.substrate == self.substrate, vnis_table.c.sliver == sliver_id,
                vnis_table.c.link.in_(links)))

    # -- drained hosts ---------------------------------------------------------------

    def drained(self) -> set[str]:
        """The hosts that take no new virtual nodes."""
        with self.db.transaction(write=False) as conn:
            return {str(r[0]) for r in conn.execute(select(drained_table.c.host).where(
                drained_table.c.substrate == self.substrate))}

    def set_drained(self, host: str, drained: bool) -> None:
        with self.db.transaction() as conn:
            conn.execute(delete(drained_table).where(
                drained_table.c.substrate == self.substrate, drained_table.c.host == host))
            if drained:
                conn.execute(drained_table.insert().values(substrate=self.substrate, host=host))
