"""Sends due outbox rows: bounded concurrency, per-lane order, retries, leases.

A claim takes the *heads* of lanes (the lowest `seq` not yet sent in that
room or mailbox), marks them `sending` with a lease and the dispatcher's
instance id, and commits; the rows are then sent concurrently and each
outcome is recorded. Claiming only heads is what keeps messages to one room
in queue order while different rooms go out in parallel. On PostgreSQL the
claim uses ``FOR UPDATE SKIP LOCKED`` so several processes share the queue.

Throughput comes from doing the database work in batches: a claim takes a
batch of lane heads, and outcomes are written by one writer task that
commits everything finished since its last commit in one transaction (group
commit). Under load that is a few transactions for hundreds of rows; when
idle, each outcome is committed at once. A crash can lose only outcomes not
yet committed: those rows are sent again, with the same transaction id
(deduplicated by the homeserver) or as a second copy of an email (email is
at-least-once).

Crash recovery: on SQLite (one process) a claim is kept in memory only and
the row stays `queued` until its outcome is recorded, so a crash leaves
nothing to undo. On PostgreSQL each dispatcher holds a session advisory lock
on its instance id for its whole life; a claim whose owner's lock can be
taken belongs to a dead process and is requeued at once, by any living
process, without waiting for the lease to expire. Either way the resent row
keeps its txn_id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import bindparam, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from hub.clock import Clock, wait_tasks
from hub.delivery.outbox import Outbox, OutboxStatus
from hub.errors import PermanentDeliveryError, TemporaryDeliveryError
from hub.storage.db import Database
from hub.storage.models import outbox_table as T

__all__ = ["Claimed", "Dispatcher", "Preparing", "Sender", "backoff_seconds"]

log = logging.getLogger(__name__)

# Advisory-lock class for dispatcher instances (the two-int4 key space, which
# cannot collide with single-bigint locks such as the scheduler's).
_LOCK_CLASS = 0x48554230


@dataclass(frozen=True)
class Claimed:
    seq: int
    txn_id: str
    channel: str
    kind: str
    lane: str
    payload: dict[str, Any]
    attempts: int
    created_at: float
    priority: int = 0  # hub.core.ports.Priority


def _claimed(r: Any) -> Claimed:
    """A claim's row (`_COLUMNS`, in order) as a `Claimed`."""
    return Claimed(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7], r[8])


class Sender(Protocol):
    async def send(self, row: Claimed) -> str:
        """Deliver one row; return a short result (event id, SMTP reply).

        Raise TemporaryDeliveryError to retry later, PermanentDeliveryError to give up.
        """
        ...


@runtime_checkable
class Preparing(Protocol):
    """A sender that can look up what a claimed batch needs in one go, before its sends start.

    Optional: `MatrixSender` resolves the batch's room keys in one query instead of one per
    row. What it finds must still be checked by `send`, which may run seconds later.
    """

    async def prepare(self, rows: Sequence[Claimed]) -> None: ...


def backoff_seconds(attempts: int, *, base: float = 1.0, cap: float = 300.0) -> float:
    """Exponential backoff with full jitter: many rows failing together don't retry together."""
    ceiling = min(cap, base * (2 ** min(attempts, 20)))
    return random.uniform(ceiling / 2, ceiling)


# `status = 'queued'` alone (expired leases are requeued separately), so the scan
# walks the (status, priority, seq) index in that order instead of the whole table and its
# history of sent rows, and stops at the limit; the NOT EXISTS probe is two
# lookups in (status, lane, seq). `{extra}` is the SQLite claim's exclusion of
# rows it already holds in memory.
_CLAIM = """
SELECT o.seq FROM outbox o
WHERE o.status = 'queued'
  AND o.not_before <= :now
  AND o.channel IN ({channels})
  {extra}
  AND NOT EXISTS (
    SELECT 1 FROM outbox p
    WHERE p.lane = o.lane AND p.seq < o.seq AND p.status IN ('queued', 'sending')
  )
ORDER BY o.priority, o.seq
LIMIT :limit
"""

# For the claim only. A fan-out queues thousands of rows at once,
# faster than autovacuum re-analyzes the table, so the planner still believes
# almost nothing is queued: it then bitmap-scans every queued row, probes each
# lane and sorts them all, to return the first 32 (20-30 ms per claim with 2,000
# queued). Walking the (status, seq) index in order stops after 32 (2-4 ms).
# Set per session on the dispatcher's own connection, per transaction (SET LOCAL)
# on a pooled one.
_PG_PLAN = ("enable_bitmapscan", "enable_sort")

_COLUMNS = "seq, txn_id, channel, kind, lane, payload, attempts, created_at, priority"
_COLUMNS_O = ", ".join(f"o.{c}" for c in _COLUMNS.split(", "))

_SENT = (
    update(T)
    .where(T.c.seq == bindparam("k_seq"))
    .values(status=OutboxStatus.SENT, sent_at=bindparam("k_at"), result=bindparam("k_result"),
            attempts=bindparam("k_attempts"), claimed_until=None, claimed_by=None)
)

# PostgreSQL: a batch of sent rows in one statement, one round trip, in autocommit
# (one statement needs no transaction of its own).
_PG_SENT = text(
    "UPDATE outbox SET status = 'sent', sent_at = v.at, result = v.result, attempts = v.attempts, "
    "claimed_until = NULL, claimed_by = NULL "
    "FROM unnest(CAST(:seqs AS integer[]), CAST(:ats AS double precision[]), "
    "CAST(:results AS varchar[]), CAST(:attempts AS integer[])) AS v(seq, at, result, attempts) "
    "WHERE outbox.seq = v.seq"
)


class Dispatcher:
    def __init__(
        self,
        db: Database,
        outbox: Outbox,
        clock: Clock,
        senders: dict[str, Sender],
        *,
        concurrency: int = 16,
        lease_seconds: float = 120.0,
        poll_seconds: float = 1.0,
        give_up_after: dict[str, float] | None = None,
        on_failed: Callable[[Claimed, str], Awaitable[None]] | None = None,
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.clock = clock
        self.senders = senders
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        # How long a row may keep failing temporarily before it is failed for good.
        self.give_up_after = give_up_after or {"email": 24 * 3600.0, "matrix": 24 * 3600.0}
        self.on_failed = on_failed
        self.instance = str(secrets.randbelow(2**31 - 2) + 1)
        self._lock_conn: AsyncConnection | None = None
        self._writer_conn: AsyncConnection | None = None  # PostgreSQL: the outcome writer's own
        self._owns_lock = False  # PostgreSQL: `open()` took this instance's lock; keep holding it
        self._wake = asyncio.Event()
        self._stopping = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._sending: Counter[str] = Counter()  # channel -> sends in flight (`sending`)
        self._buffer: deque[Claimed] = deque()
        # Group commit: outcomes wait here for the writer's next transaction.
        self._sent: list[dict[str, Any]] = []
        self._other: list[tuple[int, dict[str, Any]]] = []
        self._pending = asyncio.Event()
        # One commit at a time, so `flush()` also waits for the writer's commit in progress.
        self._commit_lock = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None
        self._last_orphan_check = 0.0
        self._claimed: set[int] = set()  # SQLite: seqs claimed and not yet recorded
        self.linger_after = 4
        self.linger_seconds = 0.03
        self.sent_count = 0
        outbox.on_enqueue(self.wake)

    def wake(self) -> None:
        self._wake.set()

    # -- ownership and crash recovery ---------------------------------------------

    async def open(self) -> int:
        """Take this instance's lock (PostgreSQL) and requeue rows left by dead runs."""
        if self.db.is_postgres:
            await self._hold_lock()
            self._owns_lock = True
            return await self.release_orphans()
        return await self.outbox.release_stale_claims(all_claims=True)

    async def _hold_lock(self) -> AsyncConnection:
        if self._lock_conn is not None and not (self._lock_conn.closed or self._lock_conn.invalidated):
            return self._lock_conn
        conn = await self.db.engine.connect()
        # Autocommit: the claim is one statement, so it needs no BEGIN and COMMIT
        # round trips (each one also wakes the server on the same small machine).
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("SELECT pg_advisory_lock(:c, :i)"),
                           {"c": _LOCK_CLASS, "i": int(self.instance)})
        for setting in _PG_PLAN:
            await conn.execute(text(f"SET {setting} = off"))
        await conn.commit()  # session-level lock: outlives the transaction
        self._lock_conn = conn
        return conn

    async def renew_leases(self) -> int:
        """Extend the leases of this dispatcher's claims, still held by a living process.

        A send may outlast its lease for good reason: one row invites a whole cohort into
        its lounge, thousands of invites at the homeserver's pace. Without renewal another
        process (or this one) requeued it when the lease ran out, and a second attempt ran
        beside the first (seen every 2 minutes in a 4,000-person build). Renewed at each
        orphan check, a quarter of the lease, so a living claim never expires; a dead
        process's claims stop being renewed, and are freed by its advisory lock anyway.
        """
        if not self.db.is_postgres or not self._owns_lock:
            return 0  # SQLite: claims live in memory and never expire
        try:
            conn = await self._hold_lock()
            result = await conn.execute(
                text("UPDATE outbox SET claimed_until = :until "
                     "WHERE status = 'sending' AND claimed_by = :me"),
                {"until": self.clock.now().timestamp() + self.lease_seconds, "me": self.instance})
        except Exception:
            log.exception("renewing this dispatcher's leases failed; will retry")
            return 0
        return int(getattr(result, "rowcount", 0) or 0)

    async def release_expired(self) -> int:
        """Requeue `sending` rows whose lease ran out (a send that hung, a lost process)."""
        self._last_orphan_check = self.clock.monotonic()
        try:
            async with self.db.engine.begin() as conn:
                result = await conn.execute(
                    update(T).where((T.c.status == OutboxStatus.SENDING)
                                    & (T.c.claimed_until < self.clock.now().timestamp()))
                    .values(status=OutboxStatus.QUEUED, claimed_until=None, claimed_by=None)
                )
        except Exception:
            log.exception("requeueing rows with expired leases failed; will retry")
            return 0
        released = int(getattr(result, "rowcount", 0) or 0)
        if released:
            log.warning("requeued %d rows whose lease expired", released)
        return released

    async def release_orphans(self) -> int:
        """Requeue `sending` rows whose dispatcher is gone (its advisory lock is free)."""
        self._last_orphan_check = self.clock.monotonic()
        if not self.db.is_postgres:
            return 0
        try:
            conn = await self._hold_lock()
            owners = (await conn.execute(text(
                "SELECT DISTINCT claimed_by FROM outbox WHERE status = 'sending' "
                "AND claimed_by IS NOT NULL AND claimed_by <> :me"), {"me": self.instance})
            ).scalars().all()
            released = 0
            for owner in owners:
                if not str(owner).isdigit():
                    continue
                key = {"c": _LOCK_CLASS, "i": int(owner)}
                got = (await conn.execute(text("SELECT pg_try_advisory_lock(:c, :i)"), key)).scalar()
                if not got:
                    continue  # alive: its claims are its own
                try:
                    result = await conn.execute(
                        update(T).where((T.c.status == OutboxStatus.SENDING) & (T.c.claimed_by == owner))
                        .values(status=OutboxStatus.QUEUED, claimed_until=None, claimed_by=None)
                    )
                    released += int(getattr(result, "rowcount", 0) or 0)
                finally:
                    await conn.execute(text("SELECT pg_advisory_unlock(:c, :i)"), key)
                await conn.commit()
            await conn.commit()
        except Exception:
            log.exception("checking for rows left by stopped dispatchers failed; will retry")
            if self._lock_conn is not None:
                await self._lock_conn.invalidate()
                self._lock_conn = None
            return 0
        if released:
            log.info("requeued %d rows left in flight by a stopped dispatcher", released)
        return released

    # -- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Loop until `stop()`; keeps up to `concurrency` sends in flight from claimed batches."""
        self._writer = asyncio.create_task(self._write_outcomes(), name="outbox-writer")
        try:
            while not self._stopping:
                if self.clock.monotonic() - self._last_orphan_check > self.lease_seconds / 4:
                    await self.renew_leases()
                    await self.release_orphans()
                    await self.release_expired()
                if not self._buffer and len(self._in_flight) < self.concurrency:
                    self._wake.clear()
                    try:
                        # A batch of up to twice the free slots: the next sends are
                        # ready when slots free up, without a claim per row.
                        claimed = await self.claim(2 * self.concurrency - len(self._in_flight))
                    except Exception:
                        log.exception("outbox claim failed; retrying")
                        await self.clock.sleep(self.poll_seconds)
                        continue
                    await self._prepare(claimed)
                    self._buffer.extend(claimed)
                started = False
                while self._buffer and len(self._in_flight) < self.concurrency and not self._stopping:
                    task = asyncio.create_task(self._deliver(self._buffer.popleft()))
                    self._in_flight.add(task)
                    task.add_done_callback(self._done)
                    started = True
                if started and not self._buffer:
                    continue  # more may be due right away
                # On the clock (no task per wake-up: this loop wakes once per finished send):
                # on a fake one, idle polls move time on, and a retry's backoff passes at once.
                await self.clock.wait(self._wake, self.poll_seconds)
                self._wake.clear()
        finally:
            if self._buffer:
                await self._unclaim([r.seq for r in self._buffer])
                self._buffer.clear()

    async def _prepare(self, rows: list[Claimed]) -> None:
        """Let each channel's sender look up what the batch needs at once (`Preparing`)."""
        by_channel: dict[str, list[Claimed]] = {}
        for row in rows:
            by_channel.setdefault(row.channel, []).append(row)
        for channel, batch in by_channel.items():
            sender = self.senders.get(channel)
            if isinstance(sender, Preparing):
                try:
                    await sender.prepare(batch)
                except Exception as e:  # each send then looks up what it needs itself
                    log.warning("preparing %d %s rows failed (%s); they are sent one lookup each",
                                len(batch), channel, e)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._wake.set()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming; give in-flight sends `grace` seconds, record outcomes. Unsent rows stay queued."""
        self._stopping = True
        self._wake.set()
        if self._in_flight:
            # The grace is on the hub's clock, like every other wait of the dispatcher: on a
            # FakeClock it passes after one turn of the loop (`FakeClock.wait`), so a test of a
            # send stuck at shutdown does not wait out real seconds.
            pending = await wait_tasks(self.clock, set(self._in_flight), grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
                log.warning("%d sends still in flight at shutdown; they stay queued", len(pending))
        await self.flush()
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        if self._buffer:
            await self._unclaim([r.seq for r in self._buffer])
            self._buffer.clear()
        if self._writer_conn is not None:
            await self._writer_conn.invalidate()  # autocommit: not for the pool
            self._writer_conn = None
        self._owns_lock = False
        if self._lock_conn is not None:
            # Invalidate, not close: a pooled connection would keep the session, and with
            # it the lock, alive; the lock must go with this dispatcher.
            await self._lock_conn.invalidate()
            self._lock_conn = None

    async def _unclaim(self, seqs: list[int]) -> None:
        """Give back claimed rows that were never sent (shutdown)."""
        self._claimed.difference_update(seqs)
        if not self.db.is_postgres:
            return  # SQLite claims are in memory only
        try:
            async with self.db.transaction() as s:
                await s.execute(
                    update(T).where(T.c.seq.in_(seqs) & (T.c.status == OutboxStatus.SENDING))
                    .values(status=OutboxStatus.QUEUED, claimed_until=None, claimed_by=None)
                )
        except Exception:
            log.exception("could not give back %d claimed rows; the next start will", len(seqs))

    async def claim(self, limit: int) -> list[Claimed]:
        now = self.clock.now().timestamp()
        channels = list(self.senders)
        if not channels or limit <= 0:
            return []
        names = ", ".join(f":ch{i}" for i in range(len(channels)))
        params: dict[str, Any] = {"now": now, "limit": limit}
        params.update({f"ch{i}": c for i, c in enumerate(channels)})
        if not self.db.is_postgres:
            return await self._claim_in_memory(names, params)
        # One statement: pick the heads and mark them in the same round trip (the
        # database's CPU is shared with everything else on a small machine).
        # Core connections, not ORM sessions, on the hot path: the session's
        # bookkeeping costs more than these statements.
        sql = (f"UPDATE outbox SET status = 'sending', claimed_until = :until, claimed_by = :me "
               f"WHERE seq IN ({_CLAIM.format(channels=names, extra='')} FOR UPDATE SKIP LOCKED) "
               f"RETURNING {_COLUMNS}")
        params.update(until=now + self.lease_seconds, me=self.instance)
        if self._owns_lock:
            # The connection that holds this instance's lock (taken by `open()`), in
            # autocommit: the claim costs one round trip, and a failed statement leaves
            # no aborted transaction behind. A lost connection (the lock went with it)
            # is replaced, and the lock taken again, right here rather than at the next
            # orphan check: meanwhile other processes would take our claims for a dead
            # run's.
            conn = await self._hold_lock()
            rows = list((await conn.execute(text(sql), params)).all())
        else:
            async with self.db.engine.begin() as s:
                for setting in _PG_PLAN:
                    await s.execute(text(f"SET LOCAL {setting} = off"))
                rows = list((await s.execute(text(sql), params)).all())
        # RETURNING comes in no particular order; the batch is started in the claim's order.
        return [_claimed(r) for r in sorted(rows, key=lambda r: (r[8], r[0]))]

    async def _claim_in_memory(self, names: str, params: dict[str, Any]) -> list[Claimed]:
        """SQLite: one process, so the claim lives in memory and the rows stay `queued`.

        A `sending` mark would tell a restarted run nothing (every claim at start-up
        is a dead run's, SQLite or not), and writing it rewrites each whole row,
        payload included. An in-flight head stays `queued`, which alone keeps its
        lane's next row from being a head; `_claimed` keeps it from being claimed
        twice until its outcome is committed. The claimed seqs are excluded in the
        query itself: filtering them afterwards read (and decoded) each in-flight
        row's payload again at every claim, about as many payloads as were sent.
        """
        sql = _CLAIM.format(channels=names,
                            extra="AND o.seq NOT IN (SELECT value FROM json_each(:claimed))")
        sql = sql.replace("SELECT o.seq FROM", f"SELECT {_COLUMNS_O} FROM")
        # Under the commit lock: an outcome committed while this SELECT's snapshot is
        # open would leave `_claimed` before the query runs, and the row, still
        # `queued` in that snapshot, would be claimed a second time.
        async with self._commit_lock, self.db.engine.connect() as conn:
            params["claimed"] = json.dumps(sorted(self._claimed))
            rows = (await conn.execute(text(sql), params)).all()
        out = [_claimed(r) for r in rows]
        self._claimed.update(r.seq for r in out)
        return out

    # -- one row ----------------------------------------------------------------------

    def sending(self, channel: str) -> int:
        """Sends of `channel` in flight now: at `concurrency`, a fan-out is going out."""
        return self._sending[channel]

    async def _deliver(self, row: Claimed) -> None:
        sender = self.senders[row.channel]
        self._sending[row.channel] += 1
        try:
            result = await sender.send(row)
        except TemporaryDeliveryError as e:
            await self._retry(row, e)
            return
        except PermanentDeliveryError as e:
            await self._fail(row, e.reason, notify=not e.reported)
            return
        except asyncio.CancelledError:
            # Shutdown: the row stays `sending` until the next start (or a living
            # process, on PostgreSQL) frees it; it keeps its txn_id.
            raise
        except Exception as e:  # a bug in a sender must not kill the dispatcher
            log.exception("unexpected error sending outbox row %s", row.seq)
            await self._retry(row, TemporaryDeliveryError(f"{e.__class__.__name__}: {e}"))
            return
        finally:
            self._sending[row.channel] -= 1
        self._sent.append({"k_seq": row.seq, "k_at": self.clock.now().timestamp(),
                           "k_result": result[:255], "k_attempts": row.attempts + 1})
        self._pending.set()
        self.sent_count += 1

    async def _retry(self, row: Claimed, e: TemporaryDeliveryError) -> None:
        now = self.clock.now().timestamp()
        if now - row.created_at > self.give_up_after.get(row.channel, 86400.0):
            await self._fail(row, f"gave up after {row.attempts + 1} attempts: {e.reason}")
            return
        delay = e.retry_after if e.retry_after is not None else backoff_seconds(row.attempts)
        log.info("outbox row %s (%s to %s) will be retried in %.1fs: %s",
                 row.seq, row.kind, row.lane, delay, e.reason)
        self._record(row.seq, status=OutboxStatus.QUEUED, attempts=row.attempts + 1, not_before=now + delay,
                     last_error=e.reason[:2000], claimed_until=None, claimed_by=None)

    async def _fail(self, row: Claimed, reason: str, *, notify: bool = True) -> None:
        log.warning("outbox row %s (%s to %s) failed: %s", row.seq, row.kind, row.lane, reason)
        self._record(row.seq, status=OutboxStatus.FAILED, attempts=row.attempts + 1,
                     last_error=reason[:2000], claimed_until=None, claimed_by=None)
        if notify and self.on_failed is not None:
            try:
                await self.on_failed(row, reason)
            except Exception:
                log.exception("could not report failed outbox row %s", row.seq)

    # -- outcomes (group commit) ----------------------------------------------------

    def _record(self, seq: int, **values: Any) -> None:
        self._other.append((seq, values))
        self._pending.set()

    async def _write_outcomes(self) -> None:
        while True:
            await self._pending.wait()
            batch = len(self._sent) + len(self._other)
            try:
                await self._commit_outcomes()
            except Exception:
                # Kept in memory and retried: losing an outcome would resend the row.
                log.exception("recording outbox outcomes failed; retrying")
                await self.clock.sleep(0.5)
                continue
            if batch >= self.linger_after:
                # Busy: let outcomes gather for a moment, so a fan-out costs a few
                # dozen commits rather than one per row. A lone outcome (a reply,
                # the next message of a room) is committed at once.
                await self.clock.sleep(self.linger_seconds)

    async def _commit_outcomes(self) -> None:
        async with self._commit_lock:
            await self._commit_locked()

    async def _commit_locked(self) -> None:
        self._pending.clear()
        sent, self._sent = self._sent, []
        other, self._other = self._other, []
        if not sent and not other:
            return
        try:
            if self.db.is_postgres and not other:
                await self._commit_sent_pg(sent)
            else:
                async with self.db.engine.begin() as s:
                    if sent:
                        await s.execute(_SENT, sent)  # one executemany for the whole batch
                    for seq, values in other:
                        await s.execute(update(T).where(T.c.seq == seq).values(**values))
        except BaseException:
            self._sent[:0] = sent
            self._other[:0] = other
            self._pending.set()
            raise
        self._claimed.difference_update(v["k_seq"] for v in sent)
        self._claimed.difference_update(seq for seq, _ in other)
        self._wake.set()  # a lane's next row may be claimable now

    async def _commit_sent_pg(self, sent: list[dict[str, Any]]) -> None:
        if self._writer_conn is None or self._writer_conn.closed:
            conn = await self.db.engine.connect()
            self._writer_conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        try:
            await self._writer_conn.execute(_PG_SENT, {
                "seqs": [v["k_seq"] for v in sent], "ats": [v["k_at"] for v in sent],
                "results": [v["k_result"] for v in sent], "attempts": [v["k_attempts"] for v in sent]})
        except BaseException:
            conn, self._writer_conn = self._writer_conn, None
            await conn.invalidate()  # state unknown: the next batch gets a fresh connection
            raise

    async def flush(self) -> None:
        """Commit every recorded outcome now (used at shutdown and by tests)."""
        for attempt in range(5):
            try:
                await self._commit_outcomes()
                return
            except Exception:
                if attempt == 4:
                    log.exception("could not record %d outbox outcomes; those rows will be resent",
                                  len(self._sent) + len(self._other))
                    return
                await self.clock.sleep(0.2 * (attempt + 1))
