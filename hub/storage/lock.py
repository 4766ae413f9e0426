"""One active `hub run` per install: a second process on the same database stands by.

The hub keeps one Matrix device for the life of the install (its token, device id and
sync position live in the database; its encryption keys in `hub.data_dir`). Two
processes driving that device at once would race for its to-device messages (the
room keys participants send) and fork its one-time keys, and commands in encrypted
rooms would stop decrypting. So a second process on the same database waits, and
takes over within `poll_seconds` of the active one stopping or dying:

- PostgreSQL: a session advisory lock on a connection held for the process's life;
  the server frees it when that connection goes, including on `kill -9`.
- SQLite: `flock` on a file beside the database; the kernel frees it with the process.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import IO

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from hub.clock import Clock, SystemClock
from hub.storage.db import Database, private_file

__all__ = ["InstanceLock"]

log = logging.getLogger(__name__)
# Distinct from the dispatcher's (0x48554230) and the config sync's (0x48554231) classes.
_LOCK_CLASS, _LOCK_ID = 0x48554232, 1


class InstanceLock:
    def __init__(self, db: Database, *, poll_seconds: float = 2.0, clock: Clock | None = None) -> None:
        self.db = db
        self.poll_seconds = poll_seconds
        self.clock: Clock = clock or SystemClock()
        self._conn: AsyncConnection | None = None
        self._file: IO[str] | None = None

    async def acquire(self) -> bool:
        """Wait until this process is the install's only active hub; True if it had to wait."""
        waited = False
        while not await self._try():
            if not waited:
                log.warning("another hub process is active on this database (%s) and holds the hub's "
                            "Matrix device; standing by until it stops", self._holder())
                waited = True
            await self.clock.sleep(self.poll_seconds)
        if waited:
            log.info("the other hub process has stopped; taking over")
        return waited

    async def release(self) -> None:
        if self._conn is not None:
            # Invalidate, not close: a pooled connection would keep the session, and the lock.
            with contextlib.suppress(Exception):
                await self._conn.invalidate()
            self._conn = None
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the flock
            self._file = None

    async def _try(self) -> bool:
        if self.db.is_postgres:
            return await self._try_postgres()
        path = self._sqlite_path()
        return True if path is None else self._try_file(path)

    async def _try_postgres(self) -> bool:
        if self._conn is None:
            self._conn = await self.db.engine.connect()
        got = (await self._conn.execute(text("SELECT pg_try_advisory_lock(:c, :i)"),
                                        {"c": _LOCK_CLASS, "i": _LOCK_ID})).scalar()
        await self._conn.commit()  # a session lock outlives the transaction; don't sit in one
        return bool(got)

    def _sqlite_path(self) -> Path | None:
        url = self.db.url
        if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
            return None  # an in-memory database belongs to this process alone
        return Path(url[len("sqlite:///"):] + ".lock")

    def _try_file(self, path: Path) -> bool:
        # 0600 like the database beside it: only a pid, but nobody else's business.
        f = private_file(path).open("a+", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return False
        f.truncate(0)
        f.write(f"{os.getpid()}\n")  # for the standby's message, and for an operator's `cat`
        f.flush()
        self._file = f
        return True

    def _holder(self) -> str:
        path = None if self.db.is_postgres else self._sqlite_path()
        if path is None:
            return "PostgreSQL advisory lock"
        try:
            pid = path.read_text(encoding="utf-8").strip()
        except OSError:
            pid = ""
        return f"pid {pid}, {path}" if pid else str(path)
