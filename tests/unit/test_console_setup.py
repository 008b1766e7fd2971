"""The console setup's cheap parts: the messages between players checked by
hand exactly as the API schema would, the record cache dropped by the
player's own writes, and the session records written in batches."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import Column, MetaData, String, Table, select, update

from vnetlib.console import compact
from vnetlib.console.broker import RecordCache
from vnetlib.console.sessions import SessionTable
from vnetlib.players import messages as m
from vnetlib.players.db import Store, sqlite_url
from vnetlib.players.pki import Identity, Role
from vnetlib.players.server import BadRequest, Unprocessable
from vnetlib.players.stores import PlayerStore, Record

NS = m.NS
TOKEN = "A" * 43


def test_requests_round_trip_and_pass_the_schema() -> None:
    req = m.ConsoleRequest("n1", "serial")
    body = compact.request_xml(req)
    assert compact.read_request(body) == req
    assert m.console_request_from(m.read(body, "console-request")) == req


@pytest.mark.parametrize("body, error", [
    (b"", BadRequest),
    (b"<console-request", BadRequest),
    (f'<!DOCTYPE x [<!ENTITY e "n1">]><console-request xmlns="{NS}" node="&e;" '
     'kind="shell"/>'.encode(), BadRequest),
    (b'<console-request node="n1" kind="shell"/>', Unprocessable),
    (f'<console-session xmlns="{NS}" node="n1" kind="shell"/>'.encode(), Unprocessable),
    (f'<console-request xmlns="{NS}" node="n1"/>'.encode(), Unprocessable),
    (f'<console-request xmlns="{NS}" node="n1" kind="shell" x="1"/>'.encode(),
     Unprocessable),
    (f'<console-request xmlns="{NS}" node="N1" kind="shell"/>'.encode(), Unprocessable),
    (f'<console-request xmlns="{NS}" node="n1" kind="ssh"/>'.encode(), Unprocessable),
    (f'<console-request xmlns="{NS}" node="n1" kind="shell"><x/></console-request>'.encode(),
     Unprocessable),
    (f'<console-request xmlns="{NS}" node="n1" kind="shell">t</console-request>'.encode(),
     Unprocessable),
])
def test_bad_requests_are_refused_as_the_schema_would(body: bytes, error: type) -> None:
    with pytest.raises(error):
        compact.read_request(body)
    with pytest.raises((BadRequest, Unprocessable)):
        m.read(body, "console-request")


def test_sessions_round_trip_and_pass_the_schema() -> None:
    s = m.ConsoleSession("tls://127.0.0.1:4444", TOKEN, float(int(time.time()) + 30))
    body = compact.session_xml(s)
    assert compact.read_session(body) == s
    assert m.console_session_from(m.parse_reply(body, "console-session")) == s


@pytest.mark.parametrize("url, token", [
    ("https://127.0.0.1:4444", TOKEN), ("tls://127.0.0.1:4444", "short"),
    ("tls://a b:1", TOKEN), ('tls://x":1', TOKEN)])
def test_bad_sessions_are_refused(url: str, token: str) -> None:
    body = (f'<console-session xmlns="{NS}" url="{url}" token="{token}" '
            'expires="2030-01-01T00:00:00+00:00"/>').encode()
    with pytest.raises(ValueError):
        compact.read_session(body)


def test_the_record_cache_is_dropped_by_the_players_writes(tmp_path: Path) -> None:
    store = PlayerStore(sqlite_url(tmp_path / "s.db"), "vnp")
    try:
        store.insert(Record("o1", "vno1", "v", 1.0, {"status": "ready"}))
        cache = RecordCache(store)
        loads = []

        def load() -> Record:
            loads.append(1)
            rec = store.get("o1")
            assert rec is not None
            return rec

        key = ("order", "vno1", "o1")
        assert cache.get(key, load).data["status"] == "ready"
        assert cache.get(key, load).data["status"] == "ready"
        assert len(loads) == 1  # the second read came from the cache
        store.save("o1", {"status": "releasing"})
        assert cache.get(key, load).data["status"] == "releasing"
        assert len(loads) == 2
        store.remove("o1")
        with pytest.raises(AssertionError):
            cache.get(key, load)
    finally:
        store.close()


def test_the_pip_sliver_cache_is_dropped_by_write_transactions_only(tmp_path: Path) -> None:
    """The PIP caches the sliver a console setup reads; any write transaction
    of its ledger's engine (whatever method made it) drops the cache, reads
    do not."""
    md = MetaData()
    rows = Table("t", md, Column("k", String, primary_key=True), Column("v", String))
    db = Store(sqlite_url(tmp_path / "l.db"), md)
    try:
        with db.transaction() as conn:
            conn.execute(rows.insert().values(k="s1", v="ready"))
        cache = RecordCache().watch_engine(db.engine)
        loads = []

        def load() -> str:
            loads.append(1)
            with db.transaction(write=False) as conn:
                return str(conn.execute(select(rows.c.v)).scalar_one())

        key = ("sliver", "vnp1", "s1")
        assert cache.get(key, load) == "ready"
        with db.transaction(write=False) as conn:  # a read elsewhere
            conn.execute(select(rows.c.v)).all()
        assert cache.get(key, load) == "ready"
        assert len(loads) == 1
        with db.transaction() as conn:
            conn.execute(update(rows).values(v="deleting"))
        assert cache.get(key, load) == "deleting"
        assert len(loads) == 2
        with pytest.raises(RuntimeError), db.transaction() as conn:  # rolled back
            conn.execute(update(rows).values(v="gone"))
            raise RuntimeError
        assert cache.get(key, load) == "deleting"
        assert len(loads) == 3
    finally:
        db.close()


def test_session_records_are_written_in_batches(tmp_path: Path) -> None:
    table = SessionTable(sqlite_url(tmp_path / "c.db"), "pip")
    owner = Identity("vnp1", Role.VNP)

    async def opener() -> tuple[object, object]:
        raise AssertionError("not opened here")

    try:
        tokens = [table.mint(owner, "v", "n1", "shell", "shell:n1", opener)[0]  # type: ignore[arg-type]
                  for _ in range(3)]
        used = table.consume(tokens[0], owner, "peer")
        table.finish(used.hash, "closed by the client")
        rows = {r["token_hash"]: r for r in table.rows()}
        assert len(rows) == 3
        row = rows[used.hash]
        assert (row["peer"], row["outcome"]) == ("peer", "closed by the client")
        assert row["used"] is not None and row["closed"] is not None
        later = table.consume(tokens[1], owner, "peer2")  # its row was written before
        table.finish(later.hash, "idle timeout")
        row = {r["token_hash"]: r for r in table.rows()}[later.hash]
        assert (row["peer"], row["outcome"]) == ("peer2", "idle timeout")
    finally:
        table.close()
