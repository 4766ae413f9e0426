"""The durable outbox: every outgoing side effect is a row, written with the change that causes it.

Features call `Outbox.enqueue(session, ...)` inside their own transaction, so
the message exists exactly when the change does. The row's `dedupe_key` is
the logical message's natural key: enqueueing it again is a no-op, which is
what makes "each scheduled item goes to each target at most once, ever" hold
across restarts, catch-ups and several processes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import case, event, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from hub.clock import Clock
from hub.core.ports import Priority
from hub.storage.db import Database
from hub.storage.models import OutboxRow, outbox_table

__all__ = ["EMAIL", "MATRIX", "SENT_PAYLOAD_DAYS", "UNSENT", "Outbox", "OutboxStats", "OutboxStatus",
           "Priority"]

T = outbox_table
_INSERT_CHUNK = 5000  # rows per executemany in `insert_new`
SENT_PAYLOAD_DAYS = 30  # how long a sent row keeps its payload (`Outbox.compact`)
_COMPACT_BATCH = 500  # rows per transaction in `compact`: SQLite's write lock stays short
_EMPTY_PAYLOAD = "{}"
_WAKE_PENDING = "hub.outbox.wake_after_commit"  # Session.info: a commit hook is registered
MATRIX = "matrix"
EMAIL = "email"


class OutboxStatus(StrEnum):
    """An outbox row's life (`outbox.status`); each member is the stored string."""

    QUEUED = "queued"  # waiting for its time, its lane, or a retry
    SENDING = "sending"  # claimed by a dispatcher (`claimed_by` until `claimed_until`)
    SENT = "sent"
    FAILED = "failed"  # permanently, or out of attempts; kept with its payload for the operator


# Rows still to send: waiting, or claimed and not yet recorded.
UNSENT: tuple[OutboxStatus, ...] = (OutboxStatus.QUEUED, OutboxStatus.SENDING)

@dataclass(frozen=True)
class OutboxStats:
    queued: dict[str, int]
    sending: dict[str, int]
    sent: dict[str, int]
    failed: dict[str, int]
    oldest_queued_age: float  # seconds; 0 when nothing is waiting


class Outbox:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self._listeners: list[Callable[[], None]] = []

    def on_enqueue(self, listener: Callable[[], None]) -> None:
        """Called after a transaction that enqueued rows may have committed (wakes the dispatcher)."""
        self._listeners.append(listener)

    def notify(self) -> None:
        for listener in self._listeners:
            listener()

    def notify_after_commit(self, session: AsyncSession) -> None:
        """Wake the listeners once `session`'s transaction has committed (not at all on rollback).

        Waking before the commit was the 1 s stall on replies: the dispatcher looked, found
        nothing (the row was not committed yet), and slept its poll interval. One hook per
        transaction, however many rows it queues.
        """
        sync = session.sync_session
        if sync.info.get(_WAKE_PENDING):
            return
        sync.info[_WAKE_PENDING] = True

        def committed(_session: Any) -> None:
            sync.info.pop(_WAKE_PENDING, None)
            self.notify()

        def rolled_back(_session: Any, _previous: Any) -> None:
            # The hook stays registered for the session's next transaction, if any.
            sync.info.pop(_WAKE_PENDING, None)

        event.listen(sync, "after_commit", committed, once=True)
        event.listen(sync, "after_soft_rollback", rolled_back, once=True)

    def row(
        self, *, channel: str, kind: str, lane: str, payload: dict[str, Any], dedupe_key: str,
        not_before: float | None = None, priority: Priority = Priority.INTERACTIVE,
    ) -> dict[str, Any]:
        """The column values of one new row (a fresh transaction id, queued now)."""
        now = self.clock.now().timestamp()
        return dict(
            txn_id=uuid.uuid4().hex,
            dedupe_key=dedupe_key[:400],
            channel=channel,
            kind=kind,
            lane=lane,
            payload=json.dumps(payload, separators=(",", ":"), ensure_ascii=False),
            status=OutboxStatus.QUEUED,
            attempts=0,
            not_before=now if not_before is None else not_before,
            created_at=now,
            priority=int(priority),
        )

    @staticmethod
    async def insert_new(session: AsyncSession, rows: list[dict[str, Any]]) -> int:
        """Insert `row()` values in order, skipping any whose dedupe_key exists; returns the rowcount."""
        dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
        stmt: Any
        if dialect == "postgresql":
            stmt = postgresql.insert(OutboxRow).on_conflict_do_nothing(index_elements=["dedupe_key"])
        else:
            stmt = sqlite.insert(OutboxRow).on_conflict_do_nothing(index_elements=["dedupe_key"])
        if len(rows) == 1:
            result = await session.execute(stmt.values(**rows[0]))
            return int(getattr(result, "rowcount", 0) or 0)
        # Bounded executemany chunks: the driver buffers a whole call's parameters.
        for i in range(0, len(rows), _INSERT_CHUNK):
            await session.execute(stmt, rows[i:i + _INSERT_CHUNK])
        return len(rows)

    async def enqueue(
        self,
        session: AsyncSession,
        *,
        channel: str,
        kind: str,
        lane: str,
        payload: dict[str, Any],
        dedupe_key: str,
        not_before: float | None = None,
        priority: Priority = Priority.INTERACTIVE,
    ) -> bool:
        """Queue one row in the caller's transaction; False if `dedupe_key` was queued before."""
        row = self.row(channel=channel, kind=kind, lane=lane, payload=payload, dedupe_key=dedupe_key,
                       not_before=not_before, priority=priority)
        inserted = await self.insert_new(session, [row])
        self.notify_after_commit(session)
        return bool(inserted)

    async def enqueue_many(
        self, session: AsyncSession, rows: list[dict[str, Any]], *, priority: Priority = Priority.BULK,
    ) -> int:
        """Fan-out enqueue, `priority` BULK unless told; rows whose dedupe_key exists are skipped.

        Returns how many were new. A few rows someone waits for (the backup plan after
        `!hub dropped`) pass `Priority.INTERACTIVE`; a row with its own "priority" keeps it
        (a fan-out's notice to the moderators, which their replies queue behind).
        """
        if not rows:
            return 0
        keys = [r["dedupe_key"] for r in rows]
        existing = set(
            (await session.execute(select(T.c.dedupe_key).where(T.c.dedupe_key.in_(keys))))
            .scalars()
            .all()
        )
        fresh = [
            self.row(channel=r["channel"], kind=r["kind"], lane=r["lane"], payload=r["payload"],
                     dedupe_key=r["dedupe_key"], not_before=r.get("not_before"),
                     priority=r.get("priority", priority))
            for r in rows
            if r["dedupe_key"] not in existing
        ]
        if fresh:
            await session.execute(insert(OutboxRow), fresh)
            self.notify_after_commit(session)
        return len(fresh)

    async def stats(self) -> OutboxStats:
        now = self.clock.now().timestamp()
        counts: dict[str, dict[str, int]] = {s: {} for s in OutboxStatus}
        async with self.db.session() as s:
            rows = await s.execute(
                select(T.c.status, T.c.channel, func.count()).group_by(T.c.status, T.c.channel)
            )
            for status, channel, n in rows.all():
                counts.setdefault(status, {})[channel] = int(n)
            # Age counts from when a row became due: a message scheduled for next
            # week is not late. A row that has failed at least once counts from its
            # creation, so retries that keep failing do turn /healthz red.
            due_since = case(
                ((T.c.attempts == 0) & (T.c.not_before > T.c.created_at), T.c.not_before),
                else_=T.c.created_at,
            )
            oldest = (
                await s.execute(
                    select(func.min(due_since)).where(
                        T.c.status.in_(UNSENT)
                        & ~((T.c.attempts == 0) & (T.c.not_before > now))
                    )
                )
            ).scalar()
        return OutboxStats(
            queued=counts[OutboxStatus.QUEUED],
            sending=counts[OutboxStatus.SENDING],
            sent=counts[OutboxStatus.SENT],
            failed=counts[OutboxStatus.FAILED],
            oldest_queued_age=max(0.0, now - oldest) if oldest is not None else 0.0,
        )

    async def compact(self, *, keep_days: float = SENT_PAYLOAD_DAYS, batch: int = _COMPACT_BATCH) -> int:
        """Empty the payloads of rows sent more than `keep_days` ago; returns how many.

        Nothing reads a sent row's payload again, and a digest email's is about
        21 KB: without this the table grows by the whole text of every message
        ever sent. The row itself stays, because its dedupe_key is what keeps
        "at most once, ever" true when a catch-up or a re-run queues the same
        key again. Failed rows keep their payload for the operator.
        """
        cutoff = self.clock.now().timestamp() - keep_days * 86400
        due = (
            select(T.c.seq)
            .where((T.c.status == OutboxStatus.SENT) & (T.c.sent_at < cutoff)
                   & (T.c.payload != _EMPTY_PAYLOAD))
            .order_by(T.c.seq)
            .limit(batch)
        )
        total = 0
        while True:
            async with self.db.transaction() as s:
                result = await s.execute(update(T).where(T.c.seq.in_(due)).values(payload=_EMPTY_PAYLOAD))
            done = int(getattr(result, "rowcount", 0) or 0)
            total += done
            if done < batch:
                return total

    async def unsent(self, *, due_only: bool = False, channel: str | None = None) -> int:
        """Rows still to send (queued or being sent); with `due_only`, only those due now;
        with `channel`, only that channel's."""
        cond: ColumnElement[bool] = T.c.status.in_(UNSENT)
        if due_only:
            cond = cond & (T.c.not_before <= self.clock.now().timestamp())
        if channel is not None:
            cond = cond & (T.c.channel == channel)
        async with self.db.session() as s:
            return int((await s.execute(select(func.count()).select_from(T).where(cond))).scalar() or 0)

    async def wait_until_drained(self, *, due_only: bool = False, settle: int = 1, poll: float = 0.2) -> None:
        """Return once nothing is left to send; bound it with `asyncio.timeout`.

        `settle` readings of zero in a row are needed: a sent row can cause the next one (a
        room created, then its invites), queued a moment after the last reading. `due_only`
        ignores rows waiting for a later time, including a retry's backoff, so it returns
        while a retry is pending; without it a row scheduled for next week never drains.
        Used by `hub demo` between steps, and by the tests and benchmarks.
        """
        calm = 0
        while True:
            calm = calm + 1 if await self.unsent(due_only=due_only) == 0 else 0
            if calm >= settle:
                return
            await self.clock.sleep(poll)

    async def outcome(self, dedupe_key: str, *, within: float,
                      poll: float = 0.1) -> tuple[str, str | None] | None:
        """The row's status and result once it is sent or failed; None if not within `within` s.

        For the rare caller that must know how a Matrix write went before going on (the room
        check's rejoin): the write still goes through the outbox, and is waited for here.
        """
        deadline = self.clock.monotonic() + within
        while True:
            async with self.db.session() as s:
                row = (await s.execute(select(T.c.status, T.c.result).where(
                    T.c.dedupe_key == dedupe_key[:400]))).first()
            if row is not None and row.status in (OutboxStatus.SENT, OutboxStatus.FAILED):
                return str(row.status), None if row.result is None else str(row.result)
            if self.clock.monotonic() >= deadline:
                return None
            await self.clock.sleep(poll)

    async def release_stale_claims(self, *, all_claims: bool) -> int:
        """Put rows left `sending` by a crashed process back in the queue.

        With one process (SQLite) every claim at start-up is stale; with several
        processes only expired leases are, since another process may be mid-send.
        The row keeps its txn_id, so the resend is deduplicated by the homeserver.
        """
        now = self.clock.now().timestamp()
        cond = T.c.status == OutboxStatus.SENDING
        if not all_claims:
            cond = cond & (T.c.claimed_until < now)
        async with self.db.transaction() as s:
            result = await s.execute(
                update(T).where(cond).values(status=OutboxStatus.QUEUED, claimed_until=None, claimed_by=None)
            )
        return int(getattr(result, "rowcount", 0) or 0)
