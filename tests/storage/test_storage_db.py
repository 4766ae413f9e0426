"""Storage: migrations on SQLite and PostgreSQL, refusal of a newer schema, state helpers."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, event, inspect, text

from hub.config import MatrixSettings
from hub.errors import SchemaTooNewError
from hub.matrix.session import MatrixSession, make_client
from hub.storage.db import Database, _script, open_database, private_dir
from hub.storage.lock import InstanceLock
from hub.storage.models import KeyValue, metadata

from tests.support.databases import backends

HEAD = _script().get_current_head()


def _column_names(conn: Connection, table: str) -> set[str]:
    return {col["name"] for col in inspect(conn).get_columns(table)}


@pytest.mark.parametrize("backend", backends())
async def test_migrations_upgrade_an_empty_database(backend: str, database_urls: dict[str, str]) -> None:
    db = await open_database(database_urls[backend])
    try:
        assert await db.revision() == HEAD
        async with db.engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        # Every table the models declare exists with the columns they declare.
        assert set(metadata.tables) <= tables
        for name, table in metadata.tables.items():
            async with db.engine.connect() as conn:
                cols = await conn.run_sync(_column_names, name)
            assert {c.name for c in table.columns} <= cols, name
        # Opening again is a no-op, not an error.
        await db.close()
        db = await open_database(database_urls[backend])
        assert await db.revision() == HEAD
    finally:
        await db.close()


@pytest.mark.parametrize("backend", backends())
async def test_newer_database_is_refused(backend: str, database_urls: dict[str, str]) -> None:
    db = await open_database(database_urls[backend])
    async with db.engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    await db.close()
    with pytest.raises(SchemaTooNewError, match=r"9999.*newer hub"):
        await open_database(database_urls[backend])


@pytest.mark.parametrize("backend", backends())
async def test_state_round_trip_and_ping(backend: str, database_urls: dict[str, str]) -> None:
    db = await open_database(database_urls[backend])
    try:
        assert await db.get_state("sync.next_batch") is None
        await db.set_state("sync.next_batch", "s1")
        await db.set_state("sync.next_batch", "s2")
        assert await db.get_state("sync.next_batch") == "s2"
        assert await db.ping()
    finally:
        await db.close()


async def test_sqlite_runs_in_wal_mode(database_urls: dict[str, str]) -> None:
    db = await open_database(database_urls["sqlite"])
    try:
        async with db.engine.connect() as conn:
            mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
        assert mode == "wal"
    finally:
        await db.close()


async def test_a_sqlite_write_transaction_writes_against_what_it_read(tmp_path: Any) -> None:
    """SQLite's driver starts a transaction only at the first write, so without an explicit
    BEGIN the reads before it see a state another connection may change before the write lands:
    read-then-insert races fail with UNIQUE violations. A write transaction holds the lock from
    its start, so the second writer waits and then sees the first one's row."""
    db = await open_database(f"sqlite:///{tmp_path / 'race.db'}")
    first_has_read = asyncio.Event()

    async def first() -> None:
        async with db.transaction() as s:
            assert await s.get(KeyValue, "k") is None
            first_has_read.set()
            await asyncio.sleep(0.3)  # the second writer tries to go now
            s.add(KeyValue(key="k", value="first"))

    async def second() -> None:
        await first_has_read.wait()
        async with db.transaction() as s:
            row = await s.get(KeyValue, "k")
            if row is None:
                s.add(KeyValue(key="k", value="second"))
            else:
                row.value = row.value + ",second"

    try:
        await asyncio.gather(first(), second())
        assert await db.get_state("k") == "first,second"
    finally:
        await db.close()


async def test_a_sqlite_transaction_cancelled_mid_read_releases_the_write_lock(tmp_path: Any) -> None:
    """Cancelling a task inside a write transaction while a read is under way (the hub does
    this to its tasks at shutdown) makes SQLAlchemy throw the connection away. Python's
    sqlite3 then closes it with the read's statement still open, which leaves a "zombie"
    that keeps the transaction, and the write lock, until the cursor is garbage-collected:
    every other writer got "database is locked". The pool rolls back before closing."""
    url = f"sqlite:///{tmp_path / 'cancel.db'}"
    db = await open_database(url)
    other = await open_database(url)
    reading = asyncio.Event()

    def slow(x: int) -> int:
        time.sleep(0.05)  # runs on the connection's worker thread
        return x

    @event.listens_for(db.engine.sync_engine, "connect")
    def _slow_function(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.create_function("slow", 1, slow)

    await db.engine.dispose()  # the pool's connections were made before the function existed
    held: list[BaseException] = []  # keeps the traceback, and with it the open cursor, alive

    async def writer() -> None:
        try:
            async with db.transaction() as s:
                s.add(KeyValue(key="k", value="never"))
                await s.flush()
                reading.set()
                await s.execute(text("SELECT slow(value) FROM kv, (SELECT 1 UNION SELECT 2)"))
        except BaseException as e:
            held.append(e)
            raise

    try:
        await db.set_state("a", "1")  # a second row, so the read has more to step through
        task = asyncio.create_task(writer())
        await reading.wait()
        await asyncio.sleep(0.02)  # inside the slow read
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert held
        started = time.monotonic()
        await other.set_state("b", "2")  # waits up to the busy timeout (10 s) if still locked
        assert time.monotonic() - started < 2
        assert await other.get_state("k") is None  # the cancelled write did not land
    finally:
        await other.close()
        await db.close()


@pytest.mark.parametrize("backend", [b for b in backends() if b == "postgresql"])
async def test_postgresql_compresses_outbox_payloads_with_lz4(
    backend: str, database_urls: dict[str, str]
) -> None:
    """Migration 0008: a digest-sized payload is TOASTed; lz4 compresses it several times faster
    than pglz, which made queueing a 2,000-recipient digest take a second on PostgreSQL."""
    db = await open_database(database_urls[backend])
    try:
        async with db.engine.begin() as conn:
            method = (await conn.execute(text(
                "SELECT attcompression::text FROM pg_attribute "
                "WHERE attrelid = 'outbox'::regclass AND attname = 'payload'"))).scalar()
            payload = '{"html":"' + "<p>week 3</p>" * 2000 + '"}'
            await conn.execute(text(
                "INSERT INTO outbox (txn_id, dedupe_key, channel, kind, lane, payload, status,"
                " attempts, not_before, created_at)"
                " VALUES ('t1', 'k1', 'email', 'digest', 'l', :p, 'queued', 0, 0, 0)"),
                {"p": payload})
            stored = (await conn.execute(text(
                "SELECT payload, pg_column_compression(payload) FROM outbox WHERE txn_id = 't1'"))).one()
        assert method == "l"
        assert stored == (payload, "lz4")
    finally:
        await db.close()


# -- file modes (issue 18 item 10) --------------------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual login umask, under which the hub used to leave its secrets world-readable."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def _open_storage_as_the_hub_does(data_dir: Path) -> tuple[Database, InstanceLock]:
    """Hub.start's order: data_dir, the database, the instance lock, the Matrix client's store."""
    private_dir(data_dir)
    db = await open_database(f"sqlite:///{data_dir / 'hub.db'}")
    await db.set_state("matrix.access_token", "syt_secret")  # a write: the WAL and -shm exist
    lock = InstanceLock(db)
    await lock.acquire()
    settings = MatrixSettings(homeserver="http://127.0.0.1:1", user_id="@hub:localhost",
                              password=None, access_token=None)
    client = make_client(settings, MatrixSession(settings, db, data_dir).store_dir)
    await client.close()
    return db, lock


async def test_data_dir_database_and_crypto_store_are_private_under_umask_022(
        tmp_path: Path, umask_022: None) -> None:
    data_dir = tmp_path / "hub"
    db, lock = await _open_storage_as_the_hub_does(data_dir)
    try:
        modes = {p.name: _mode(p) for p in [data_dir, *data_dir.iterdir()]}
        assert modes == {"hub": 0o700, "hub.db": 0o600, "hub.db-wal": 0o600, "hub.db-shm": 0o600,
                         "hub.db.lock": 0o600, "crypto": 0o700}, {k: oct(v) for k, v in modes.items()}
    finally:
        await lock.release()
        await db.close()


async def test_an_install_left_readable_by_an_older_hub_is_restricted_once(
        tmp_path: Path, umask_022: None, caplog: pytest.LogCaptureFixture) -> None:
    data_dir = tmp_path / "hub"
    db, lock = await _open_storage_as_the_hub_does(data_dir)
    await lock.release()
    await db.close()
    (data_dir / "hub.db-wal").touch()  # closing checkpoints the WAL away; an unclean stop leaves it
    loose = [data_dir, data_dir / "crypto"]
    for path in [*loose, data_dir / "hub.db", data_dir / "hub.db-wal", data_dir / "hub.db.lock"]:
        path.chmod(0o755 if path in loose else 0o644)
    with caplog.at_level(logging.WARNING, logger="hub.storage.db"):
        db, lock = await _open_storage_as_the_hub_does(data_dir)
    try:
        assert _mode(data_dir) == _mode(data_dir / "crypto") == 0o700
        assert {_mode(data_dir / n) for n in ("hub.db", "hub.db-wal", "hub.db-shm", "hub.db.lock")} == {0o600}
        restricted = [r.getMessage() for r in caplog.records if "restricted" in r.getMessage()]
        assert len(restricted) == 5, restricted
        assert not any("syt_secret" in r.getMessage() for r in caplog.records)
    finally:
        await lock.release()
        await db.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hub.storage.db"):
        db, lock = await _open_storage_as_the_hub_does(data_dir)
    await lock.release()
    await db.close()
    assert not [r for r in caplog.records if "restricted" in r.getMessage()]


async def test_an_existing_parent_of_the_database_is_left_alone(tmp_path: Path, umask_022: None) -> None:
    """`sqlite:////tmp/x.db` must never chmod /tmp; only the hub's own data_dir is restricted."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    db = await open_database(f"sqlite:///{shared / 'x.db'}")
    await db.close()
    assert _mode(shared) == 0o755 and _mode(shared / "x.db") == 0o600
