"""The database: an async engine, migrations applied on open, small state helpers."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from hub.errors import SchemaTooNewError, StorageError
from hub.storage.models import KeyValue

__all__ = ["SQLITE_BUSY_MS", "Database", "async_url", "is_transient", "open_database", "private_dir",
           "private_file"]

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
# Alembic keeps the running migration in module-level state, and a migration awaits the
# driver between statements, so two databases opened at once in one process would clash.
# One lock per event loop: an asyncio.Lock belongs to the loop it first waited on.
_MIGRATING: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _migration_lock() -> asyncio.Lock:
    return _MIGRATING.setdefault(asyncio.get_running_loop(), asyncio.Lock())


def async_url(url: str) -> str:
    """Map the config's URL to the async driver SQLAlchemy needs."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def _script() -> ScriptDirectory:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg)


def _refuse_newer(current: str | None) -> bool:
    """Raise SchemaTooNewError if a newer hub migrated the database; True if migrations are pending."""
    script = _script()
    known = {rev.revision for rev in script.walk_revisions()}
    if current is not None and current not in known:
        raise SchemaTooNewError(
            f"the database is at schema revision {current}, which this version of the hub "
            f"does not know (newest known: {script.get_current_head()}); it was upgraded by a "
            "newer hub. Run that version, or restore a backup taken before the upgrade."
        )
    return current != script.get_current_head()


def _upgrade(connection: Connection) -> tuple[str | None, str | None]:
    """Apply pending migrations; refuse a database migrated by a newer hub.

    Returns the revisions before and after. Alembic's own INFO lines (two per open, one
    per migration) are silenced in `hub.logs`; `Database.migrate` logs one line instead,
    and only when something changed.
    """
    from alembic import command

    current = MigrationContext.configure(connection).get_current_revision()
    _refuse_newer(current)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")
    return current, MigrationContext.configure(connection).get_current_revision()


class Database:
    def __init__(self, url: str, engine: AsyncEngine) -> None:
        self.url = url
        self.engine = engine
        self.session = async_sessionmaker(engine, expire_on_commit=False)

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    async def migrate(self) -> str | None:
        try:
            async with _migration_lock(), self.engine.begin() as conn:
                before, after = await conn.run_sync(_upgrade)
        except SchemaTooNewError:
            raise
        except SQLAlchemyError as e:
            raise StorageError(f"cannot migrate the database: {e.__class__.__name__}: {e}") from e
        if before != after:
            log.info("database schema %s: %s -> %s", "created" if before is None else "upgraded",
                     before or "empty", after)
        return after

    async def revision(self) -> str | None:
        async with self.engine.connect() as conn:
            return await conn.run_sync(
                lambda c: MigrationContext.configure(c).get_current_revision()
            )

    async def pending(self) -> bool:
        """True while this version's migrations are not all applied (`hub worker`, which never
        migrates, waits for `hub run` to); SchemaTooNewError if a newer hub migrated it."""
        return _refuse_newer(await self.revision())

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except (SQLAlchemyError, OSError):
            return False

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session whose work commits together or not at all, and writes against what it read.

        SQLite's driver opens a transaction only at the first write, so the reads before it
        would each see whatever was committed at that moment, and a read-then-insert would race
        another connection (a UNIQUE violation, or a decision made on stale rows). BEGIN
        IMMEDIATE takes the write lock up front: writers queue (for up to the busy timeout)
        and each sees the last one's work. Plain `session()` reads stay concurrent. PostgreSQL
        needs nothing here; code that creates-if-missing there takes an advisory lock.
        """
        async with self.session() as s, s.begin():
            if not self.is_postgres:
                await s.execute(text("BEGIN IMMEDIATE"))
            yield s

    async def get_state(self, key: str) -> str | None:
        async with self.session() as s:
            row = await s.get(KeyValue, key)
            return row.value if row else None

    async def set_state(self, key: str, value: str, session: AsyncSession | None = None) -> None:
        if session is not None:
            await _put(session, key, value)
            return
        async with self.transaction() as s:
            await _put(s, key, value)

    async def close(self) -> None:
        await self.engine.dispose()


async def _put(session: AsyncSession, key: str, value: str) -> None:
    row = await session.get(KeyValue, key)
    if row is None:
        session.add(KeyValue(key=key, value=value))
    else:
        row.value = value


def is_transient(e: BaseException) -> bool:
    """A database error that waiting can cure: SQLite's "database is locked" (another writer
    held the lock past the busy timeout), a PostgreSQL connection lost or refused."""
    return isinstance(e, (OperationalError, InterfaceError, DisconnectionError))


# How long a SQLite writer waits for another's write lock before "database is locked".
SQLITE_BUSY_MS = 10_000


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets the web endpoint and the dispatcher read while the sync loop writes.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_rollback_before_close(dbapi_conn: Any, _record: Any) -> None:
    """Roll back whatever the connection still has open before the pool closes it.

    A task cancelled inside a transaction (the hub cancels its tasks at shutdown) makes
    SQLAlchemy invalidate and close the connection mid-statement. Python's sqlite3 then
    closes it with that statement unfinished, which SQLite turns into a "zombie" that keeps
    the transaction, and its write lock, until the cursor is garbage-collected; every other
    writer meanwhile fails with "database is locked". The rollback is queued on the
    connection's worker thread ahead of the close, so it runs even if this wait is cut short.
    """
    try:
        dbapi_conn.rollback()
    except asyncio.CancelledError:
        # Cancelled again while waiting: the rollback is queued all the same. Hand the
        # request on to the close that follows rather than swallow it.
        task = asyncio.current_task()
        if task is not None:
            task.cancel()
    except Exception:
        # Outside an event loop's greenlet (a connection garbage-collected by the pool)
        # this raises, and no statement is left open there to worry about.
        pass


# -- files only the hub's user may read ------------------------------------------------------
# The data directory and the SQLite database hold the Matrix access token, the video
# secret and the crypto store. Their modes are set here rather than left to the
# process umask: outside the systemd unit (UMask=0077) the usual 022 made them
# world-readable, and another local user logged in as the hub with its token. The
# files are created with their final mode (os.open, mkdir's mode), never chmod'ed
# after the fact, and the umask is never changed: it is process-wide, and other
# tasks create files at the same time.


def _tighten(path: Path, mode: int) -> None:
    """Take away what `mode` does not grant, from a file or directory the hub's user owns."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    current = stat.S_IMODE(st.st_mode)
    if not current & ~mode:
        return
    if st.st_uid != os.getuid():
        # Not ours (a shared parent, /tmp): changing it could break someone else's setup.
        log.warning("%s is readable by others (mode %o) and not owned by the hub's user; "
                    "it holds the hub's secrets, so restrict it to %o", path, current, mode)
        return
    try:
        path.chmod(current & mode)
    except OSError as e:
        log.warning("could not restrict %s to mode %o: %s", path, mode, e)
        return
    # Once: after this it is tight, and the next start says nothing.
    log.warning("restricted %s from mode %o to %o: it holds the hub's secrets", path, current,
                current & mode)


def private_dir(path: Path) -> Path:
    """`path`, created 0700 if missing and restricted to its owner if it was looser."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)  # parents: the umask's default
    _tighten(path, 0o700)
    return path


def private_file(path: Path) -> Path:
    """`path`, created empty with mode 0600 if missing, restricted to its owner if it was looser."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        _tighten(path, 0o600)
    return path


def _sqlite_file(url: str) -> Path | None:
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url[len("sqlite:///") :])
    return None


def _private_sqlite(path: Path) -> None:
    """The database and its WAL and shared-memory files, 0600.

    SQLite gives a new -wal or -shm file the database file's own mode (it fchmods it
    past the umask), so an 0600 database is all a fresh install needs; files left by
    an older hub are restricted here.
    """
    private_file(path)
    for suffix in ("-wal", "-shm"):
        _tighten(path.with_name(path.name + suffix), 0o600)


# PostgreSQL: every statement planned for its own parameters. The driver prepares each statement,
# and after five runs PostgreSQL may keep one generic plan for it, made with the statistics of
# the moment. A fan-out queues 20,000 rows faster than autovacuum re-analyzes the outbox, so a
# generic plan made while the table looked small (a fresh install, the first big digest) stays
# in use over a large one: with `hub run` alone, PostgreSQL spent 5.7-6.5 ms of CPU per email
# (the claim most of it) instead of 0.3 (bench/workers.py, bench/README.md "Email workers").
# Planning each run costs well under a millisecond.


async def open_database(url: str, *, migrate: bool = True) -> Database:
    """Open (creating the SQLite file 0600, in a new folder 0700, if needed) and migrate."""
    sqlite_path = _sqlite_file(url)
    if sqlite_path is not None:
        if not sqlite_path.parent.exists():
            # A folder the hub makes is its own; an existing one (maybe /tmp) is left as it is.
            sqlite_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _private_sqlite(sqlite_path)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs.update(pool_size=10, max_overflow=10, pool_pre_ping=True,
                      connect_args={"server_settings": {"plan_cache_mode": "force_custom_plan"}})
    engine = create_async_engine(async_url(url), **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine.pool, "close", _sqlite_rollback_before_close)
    db = Database(url, engine)
    if migrate:
        try:
            await db.migrate()
        except Exception:
            await engine.dispose()
            raise
    return db
