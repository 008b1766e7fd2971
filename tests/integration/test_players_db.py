"""The players' store, the same tests on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, select, update

from vnetlib.players.db import Store, StoreConflict, StoreError, normalize_url, sqlite_url


def make_metadata() -> tuple[MetaData, Table]:
    """Tables with a unique name, so tests sharing one PostgreSQL stay apart."""
    md = MetaData()
    vnets = Table(f"vnets_{secrets.token_hex(4)}", md,
                  Column("id", String(64), primary_key=True),
                  Column("owner", String(64), nullable=False),
                  Column("version", Integer, nullable=False))
    return md, vnets


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "state" / "pip.db")
    pg: str = request.getfixturevalue("postgres_url")
    return pg


@pytest.fixture
def tables() -> tuple[MetaData, Table]:
    return make_metadata()


@pytest.fixture
def store(url: str, tables: tuple[MetaData, Table]) -> Iterator[Store]:
    md, _ = tables
    with Store(url, md) as s:
        yield s
        md.drop_all(s.engine)


def test_write_then_read(store: Store, tables: tuple[MetaData, Table]) -> None:
    _, vnets = tables
    with store.transaction() as conn:
        conn.execute(vnets.insert().values(id="a", owner="vno1", version=1))
    with store.transaction(write=False) as conn:
        rows = conn.execute(select(vnets.c.id, vnets.c.owner)).all()
    assert [tuple(r) for r in rows] == [("a", "vno1")]


def test_error_rolls_back(store: Store, tables: tuple[MetaData, Table]) -> None:
    _, vnets = tables
    with pytest.raises(RuntimeError), store.transaction() as conn:
        conn.execute(vnets.insert().values(id="a", owner="vno1", version=1))
        raise RuntimeError("abort")
    with store.transaction(write=False) as conn:
        assert conn.execute(select(vnets)).all() == []


def test_duplicate_key_is_a_conflict(store: Store, tables: tuple[MetaData, Table]) -> None:
    _, vnets = tables
    with store.transaction() as conn:
        conn.execute(vnets.insert().values(id="a", owner="vno1", version=1))
    with pytest.raises(StoreConflict), store.transaction() as conn:
        conn.execute(vnets.insert().values(id="a", owner="vno2", version=1))
    with store.transaction(write=False) as conn:
        assert conn.execute(select(vnets.c.owner)).scalar_one() == "vno1"


def test_reopened_store_sees_its_data(url: str, tables: tuple[MetaData, Table]) -> None:
    md, vnets = tables
    with Store(url, md) as first, first.transaction() as conn:
        conn.execute(vnets.insert().values(id="kept", owner="vno1", version=3))
    # A restarted player: new engine, same URL, same tables (create is a no-op).
    with Store(url, md) as again:
        with again.transaction(write=False) as conn:
            row = conn.execute(select(vnets)).one()
        assert tuple(row) == ("kept", "vno1", 3)
        md.drop_all(again.engine)


def test_sqlite_read_modify_write_serializes(tmp_path: Path) -> None:
    md, vnets = make_metadata()
    with Store(sqlite_url(tmp_path / "c.db"), md) as store:
        with store.transaction() as conn:
            conn.execute(vnets.insert().values(id="n", owner="x", version=0))

        def bump() -> None:
            for _ in range(20):
                with store.transaction() as conn:
                    v = conn.execute(select(vnets.c.version)).scalar_one()
                    conn.execute(update(vnets).values(version=v + 1))

        threads = [threading.Thread(target=bump) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        with store.transaction(write=False) as conn:
            assert conn.execute(select(vnets.c.version)).scalar_one() == 80


def test_plain_postgresql_url_uses_psycopg3() -> None:
    assert normalize_url("postgresql://u:p@127.0.0.1:5/db").drivername == "postgresql+psycopg"


def test_unsupported_database_is_refused() -> None:
    with pytest.raises(StoreError, match="unsupported database"):
        normalize_url("mysql://u:p@127.0.0.1/db")


def test_unreachable_postgresql_names_the_url_without_password() -> None:
    with pytest.raises(StoreError) as info:
        Store("postgresql://vnet:sekrit@127.0.0.1:1/vnet", MetaData())
    assert "127.0.0.1:1" in str(info.value)
    assert "sekrit" not in str(info.value)
