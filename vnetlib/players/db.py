"""A player's state store: SQLAlchemy Core over SQLite (default) or PostgreSQL.

Each player keeps its own store and describes its tables in a `MetaData` it
owns; `Store` only opens the database, creates missing tables and hands out
transactions. Reading and writing go through `transaction()`, which commits
when the block ends and rolls back if it raises.

SQLite needs two adjustments to behave like a database under threads: the
Python driver's own transaction handling is turned off so SQLAlchemy's BEGIN
is the real one, and write transactions start with BEGIN IMMEDIATE so two
read-modify-write blocks serialize instead of failing with "database is
locked" at commit. WAL mode lets readers go on meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, create_engine, event, exc
from sqlalchemy.engine import URL, make_url

SQLITE_BUSY_TIMEOUT_MS = 30_000
SCHEMA_LOCK = 0x766E6574  # "vnet": the advisory lock held while tables are created


class StoreError(Exception):
    """The store cannot be opened or used; the message names the database."""


class StoreConflict(StoreError):
    """A write broke a uniqueness or reference constraint (maps to HTTP 409)."""


def sqlite_url(path: Path | str) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def normalize_url(url: str | URL) -> URL:
    """Pick the drivers vnet depends on: psycopg 3 for PostgreSQL."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StoreError(f"unsupported database {parsed.render_as_string(hide_password=True)}: "
                         "use sqlite:///path or postgresql+psycopg://...")
    if parsed.get_backend_name() == "postgresql" and find_spec("psycopg") is None:
        raise StoreError("a PostgreSQL store needs psycopg: pip install 'vnetlib[postgresql]'")
    return parsed


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy's BEGIN be the real one
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys = ON")
        if engine.url.database not in (None, "", ":memory:"):
            cur.execute("PRAGMA journal_mode = WAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("vnet_write", True)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class Store:
    """An open database with the caller's tables created."""

    def __init__(self, url: str | URL, metadata: MetaData, *, echo: bool = False) -> None:
        self.url = normalize_url(url)
        self.metadata = metadata
        backend = self.url.get_backend_name()
        if backend == "sqlite" and self.url.database not in (None, "", ":memory:"):
            Path(self.url.database or "").parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {"echo": echo}
        if backend == "postgresql":
            kwargs.update(pool_pre_ping=True, connect_args={"connect_timeout": 10})
        self.engine = create_engine(self.url, **kwargs)
        if backend == "sqlite":
            _configure_sqlite(self.engine)
        try:
            with self.transaction() as conn:
                if backend == "postgresql":  # processes starting together: one creates
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
                metadata.create_all(conn)
        except exc.OperationalError as e:
            self.engine.dispose()
            raise StoreError(f"cannot open {self.describe()}: {e.orig}") from e

    def describe(self) -> str:
        """The URL without its password, for messages and logs."""
        return self.url.render_as_string(hide_password=True)

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Connection]:
        """One transaction: committed at the end of the block, rolled back on error.

        `write=False` marks a read-only block; on SQLite it then does not take
        the write lock. Constraint violations come out as StoreConflict.
        """
        with self.engine.connect() as conn:
            conn = conn.execution_options(vnet_write=write)
            try:
                with conn.begin():
                    yield conn
            except exc.IntegrityError as e:
                raise StoreConflict(str(e.orig)) from e

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_store(url: str | URL, metadata: MetaData) -> Store:
    return Store(url, metadata)
