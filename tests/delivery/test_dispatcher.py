"""The dispatcher against real databases (SQLite and PostgreSQL): order, outcomes, recovery."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import func, select, update

from hub.clock import SystemClock
from hub.delivery.dispatcher import Claimed, Dispatcher
from hub.delivery.outbox import MATRIX, Outbox
from hub.errors import PermanentDeliveryError, TemporaryDeliveryError
from hub.storage.db import Database, open_database
from hub.storage.models import outbox_table as T

from tests.support.databases import backends

BOTH = pytest.mark.parametrize("backend", backends())
# Leases and several dispatchers sharing a queue exist on PostgreSQL only: SQLite runs one
# process, with claims in memory. Not generated at all for SQLite, rather than skipped.
POSTGRESQL = pytest.mark.parametrize("backend", [b for b in backends() if b == "postgresql"])


class Recorder:
    """A sender that records what it was asked to send, in order, per lane."""

    def __init__(self, fail: dict[str, list[Exception]] | None = None, delay: float = 0.0) -> None:
        self.sent: dict[str, list[int]] = defaultdict(list)
        self.attempts: list[str] = []
        self.fail = fail or {}
        self.delay = delay
        self.in_flight = 0
        self.max_in_flight = 0

    async def send(self, row: Claimed) -> str:
        self.attempts.append(row.txn_id)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(random.uniform(0, self.delay))
            queue = self.fail.get(row.payload["n_key"], [])
            if queue:
                raise queue.pop(0)
            self.sent[row.lane].append(row.payload["n"])
            return f"ok-{row.payload['n']}"
        finally:
            self.in_flight -= 1


async def _db(database_urls: dict[str, str], backend: str) -> tuple[Database, Outbox]:
    db = await open_database(database_urls[backend])
    return db, Outbox(db, SystemClock())


async def _queue(db: Database, outbox: Outbox, lanes: int, per_lane: int, tag: str = "") -> None:
    rows: list[dict[str, Any]] = []
    for i in range(per_lane):
        for lane in range(lanes):
            n = i
            rows.append(dict(channel=MATRIX, kind="test", lane=f"!lane{lane}",
                             payload={"n": n, "n_key": f"{lane}:{n}"},
                             dedupe_key=f"{tag}test:{lane}:{n}"))
    async with db.transaction() as s:
        await outbox.enqueue_many(s, rows)


async def _status_counts(db: Database) -> dict[str, int]:
    async with db.session() as s:
        rows = (await s.execute(select(T.c.status, func.count()).group_by(T.c.status))).all()
    return {status: int(n) for status, n in rows}


async def _until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.05)


@BOTH
async def test_many_lanes_keep_order_with_bounded_concurrency(
    database_urls: dict[str, str], backend: str
) -> None:
    db, outbox = await _db(database_urls, backend)
    await _queue(db, outbox, lanes=30, per_lane=10)
    sender = Recorder(delay=0.01)
    d = Dispatcher(db, outbox, SystemClock(), {MATRIX: sender}, concurrency=8)
    await d.open()
    task = asyncio.create_task(d.run())

    async def done() -> bool:
        return (await _status_counts(db)).get("sent", 0) == 300

    await _until(done)
    await d.stop()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert all(sender.sent[f"!lane{i}"] == list(range(10)) for i in range(30))
    assert 1 < sender.max_in_flight <= 8
    async with db.session() as s:
        results = (await s.execute(select(T.c.result).where(T.c.lane == "!lane0")
                                   .order_by(T.c.seq))).scalars().all()
    assert results == [f"ok-{i}" for i in range(10)]
    await db.close()


@BOTH
async def test_temporary_error_retries_in_order_and_permanent_is_reported(
    database_urls: dict[str, str], backend: str
) -> None:
    db, outbox = await _db(database_urls, backend)
    await _queue(db, outbox, lanes=3, per_lane=3)
    sender = Recorder(fail={
        "0:0": [TemporaryDeliveryError("451 later", retry_after=0.3)],
        "1:1": [PermanentDeliveryError("M_FORBIDDEN")],
        "2:0": [PermanentDeliveryError("suppressed", reported=True)],
    })
    reported: list[tuple[int, str]] = []

    async def on_failed(row: Claimed, reason: str) -> None:
        reported.append((row.payload["n"], reason))

    d = Dispatcher(db, outbox, SystemClock(), {MATRIX: sender}, on_failed=on_failed,
                   poll_seconds=0.1)
    await d.open()
    task = asyncio.create_task(d.run())

    async def done() -> bool:
        c = await _status_counts(db)
        return c.get("sent", 0) == 7 and c.get("failed", 0) == 2

    await _until(done)
    await d.stop()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # The retried head kept its place: nothing behind it overtook it.
    assert sender.sent["!lane0"] == [0, 1, 2]
    assert sender.sent["!lane1"] == [0, 2]
    # Only the failure nobody was told about yet is reported.
    assert reported == [(1, "M_FORBIDDEN")]
    async with db.session() as s:
        row = (await s.execute(select(T.c.attempts, T.c.last_error, T.c.status)
                               .where(T.c.dedupe_key == "test:0:0"))).one()
    assert row.attempts == 2 and row.status == "sent" and "451" in row.last_error
    await db.close()


@BOTH
async def test_stop_gives_back_claimed_rows_and_waits_for_in_flight(
    database_urls: dict[str, str], backend: str
) -> None:
    db, outbox = await _db(database_urls, backend)
    await _queue(db, outbox, lanes=40, per_lane=1)
    sender = Recorder(delay=0.3)
    d = Dispatcher(db, outbox, SystemClock(), {MATRIX: sender}, concurrency=4)
    await d.open()
    task = asyncio.create_task(d.run())
    await _until(lambda: asyncio.sleep(0, result=sender.in_flight == 4))
    await d.stop(grace=5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    counts = await _status_counts(db)
    # The four in flight finished and were recorded; the rest are queued, not stuck `sending`.
    assert counts.get("sent", 0) == sum(len(v) for v in sender.sent.values()) >= 4
    assert counts.get("sending", 0) == 0
    assert counts["queued"] == 40 - counts["sent"]
    await db.close()


@BOTH
async def test_rows_of_a_dead_dispatcher_are_freed_at_start(
    database_urls: dict[str, str], backend: str
) -> None:
    db, outbox = await _db(database_urls, backend)
    await _queue(db, outbox, lanes=5, per_lane=1)
    dead = Dispatcher(db, outbox, SystemClock(), {MATRIX: Recorder()})
    await dead.open()
    claimed = await dead.claim(10)
    assert len(claimed) == 5
    alive = Dispatcher(db, outbox, SystemClock(), {MATRIX: Recorder()})
    if backend == "postgresql":
        # The owner still holds its lock: its claims are respected.
        assert await alive.open() == 0
        assert (await _status_counts(db)).get("sending") == 5
        # It dies (its session, and so its lock, is gone): freed at once, no lease wait.
        assert dead._lock_conn is not None
        await dead._lock_conn.invalidate()
        dead._lock_conn = None
        assert await alive.release_orphans() == 5
    else:
        # SQLite: one process, so claims live in memory and a crash leaves rows queued.
        assert (await _status_counts(db)) == {"queued": 5}
        assert await alive.open() == 0
    assert (await _status_counts(db)) == {"queued": 5}
    again = await alive.claim(10)
    assert [r.txn_id for r in again] == [r.txn_id for r in claimed]  # same transaction ids
    await alive.stop()
    await db.close()


@POSTGRESQL
async def test_expired_lease_is_claimed_again(database_urls: dict[str, str], backend: str) -> None:
    db, outbox = await _db(database_urls, backend)
    await _queue(db, outbox, lanes=1, per_lane=2)
    d = Dispatcher(db, outbox, SystemClock(), {MATRIX: Recorder()})
    first = await d.claim(10)
    assert len(first) == 1  # only the lane's head
    assert await d.claim(10) == []  # the head is in flight: the lane waits
    async with db.transaction() as s:
        await s.execute(update(T).where(T.c.seq == first[0].seq).values(claimed_until=0))
    assert await d.release_expired() == 1
    again = await d.claim(10)
    assert [r.seq for r in again] == [first[0].seq]
    await db.close()


@POSTGRESQL
async def test_a_send_longer_than_its_lease_is_not_claimed_again_while_its_owner_lives(
        database_urls: dict[str, str], backend: str) -> None:
    """One row inviting a whole cohort can take minutes: its living owner keeps the lease."""
    db_a, outbox_a = await _db(database_urls, backend)
    db_b, outbox_b = await _db(database_urls, backend)
    await _queue(db_a, outbox_a, lanes=1, per_lane=1)
    slow = Recorder(delay=0)
    calls: list[str] = []

    class Slow:
        async def send(self, row: Claimed) -> str:
            calls.append(row.txn_id)
            await asyncio.sleep(3.0)  # six leases of 0.5 s
            return await slow.send(row)

    # Both check leases every lease/4 = 0.125 s; b would take a's row as soon as it looked expired.
    a = Dispatcher(db_a, outbox_a, SystemClock(), {MATRIX: Slow()}, lease_seconds=0.5, poll_seconds=0.05)
    await a.open()
    task_a = asyncio.create_task(a.run())
    await _until(lambda: _started(calls), timeout=10)
    b = Dispatcher(db_b, outbox_b, SystemClock(), {MATRIX: Slow()}, lease_seconds=0.5, poll_seconds=0.05)
    await b.open()
    task_b = asyncio.create_task(b.run())

    async def sent() -> bool:
        return (await _status_counts(db_a)).get("sent", 0) == 1

    await _until(sent, timeout=20)
    for d in (a, b):
        await d.stop()
    for t in (task_a, task_b):
        t.cancel()
    await asyncio.gather(task_a, task_b, return_exceptions=True)
    assert len(calls) == 1, calls  # one attempt, not one per expired lease
    await db_a.close()
    await db_b.close()


async def _started(calls: list[str]) -> bool:
    return bool(calls)


@BOTH
async def test_oldest_queued_age_ignores_future_rows_but_not_failing_ones(
    database_urls: dict[str, str], backend: str
) -> None:
    db, outbox = await _db(database_urls, backend)
    now = SystemClock().now().timestamp()
    async with db.transaction() as s:
        await outbox.enqueue(s, channel=MATRIX, kind="later", lane="!a", payload={},
                             dedupe_key="later", not_before=now + 7 * 86400)
    assert (await outbox.stats()).oldest_queued_age == 0.0  # scheduled for next week: not late
    async with db.transaction() as s:
        await outbox.enqueue(s, channel=MATRIX, kind="old", lane="!b", payload={}, dedupe_key="old")
        await s.execute(update(T).where(T.c.dedupe_key == "old").values(created_at=now - 3600,
                                                                        not_before=now - 3600))
    assert 3590 < (await outbox.stats()).oldest_queued_age < 3700
    async with db.transaction() as s:  # it failed once and waits for its retry: still late
        await s.execute(update(T).where(T.c.dedupe_key == "old").values(attempts=1, not_before=now + 60))
    assert 3590 < (await outbox.stats()).oldest_queued_age < 3700
    stats = await outbox.stats()
    assert stats.queued == {"matrix": 2}
    await db.close()


@POSTGRESQL
async def test_two_dispatchers_share_postgresql_without_double_sends(
    database_urls: dict[str, str], backend: str
) -> None:
    db_a, outbox_a = await _db(database_urls, backend)
    db_b, outbox_b = await _db(database_urls, backend)
    await _queue(db_a, outbox_a, lanes=25, per_lane=8)
    sender = Recorder(delay=0.01)  # shared: it sees every send from both dispatchers
    a = Dispatcher(db_a, outbox_a, SystemClock(), {MATRIX: sender}, concurrency=6, poll_seconds=0.05)
    b = Dispatcher(db_b, outbox_b, SystemClock(), {MATRIX: sender}, concurrency=6, poll_seconds=0.05)
    await a.open()
    await b.open()
    tasks = [asyncio.create_task(a.run()), asyncio.create_task(b.run())]

    async def done() -> bool:
        return (await _status_counts(db_a)).get("sent", 0) == 200

    await _until(done, timeout=60)
    await a.stop()
    await b.stop()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert a.sent_count > 0 and b.sent_count > 0  # both did real work
    assert a.sent_count + b.sent_count == 200 == len(sender.attempts) == len(set(sender.attempts))
    assert all(sender.sent[f"!lane{i}"] == list(range(8)) for i in range(25))
    await db_a.close()
    await db_b.close()


@BOTH
async def test_temporary_failures_give_up_after_24_hours_and_report(
    database_urls: dict[str, str], backend: str
) -> None:
    db, outbox = await _db(database_urls, backend)
    await _queue(db, outbox, lanes=2, per_lane=1)
    now = SystemClock().now().timestamp()
    async with db.transaction() as s:  # one row has been failing for 25 hours, the other for 1
        await s.execute(update(T).where(T.c.lane == "!lane0").values(created_at=now - 25 * 3600))
        await s.execute(update(T).where(T.c.lane == "!lane1").values(created_at=now - 3600))
    sender = Recorder(fail={"0:0": [TemporaryDeliveryError("451 still greylisted")],
                            "1:0": [TemporaryDeliveryError("451 still greylisted")]})
    reported: list[str] = []

    async def on_failed(row: Claimed, reason: str) -> None:
        reported.append(row.lane)

    d = Dispatcher(db, outbox, SystemClock(), {MATRIX: sender}, on_failed=on_failed)
    for row in await d.claim(10):
        await d._deliver(row)
    await d.flush()
    async with db.session() as s:
        rows = dict((await s.execute(select(T.c.lane, T.c.status))).all())
        reason = (await s.execute(select(T.c.last_error).where(T.c.lane == "!lane0"))).scalar()
    assert rows == {"!lane0": "failed", "!lane1": "queued"}
    assert reason is not None and "gave up after 1 attempts" in reason and "451" in reason
    assert reported == ["!lane0"]
    await db.close()


class PreparingRecorder(Recorder):
    """A `Preparing` sender: records each claimed batch it is shown before the batch's sends."""

    def __init__(self, *, fail_prepare: bool = False) -> None:
        super().__init__()
        self.batches: list[list[int]] = []
        self.prepared_before_send: list[bool] = []
        self.fail_prepare = fail_prepare

    async def prepare(self, rows: Sequence[Claimed]) -> None:
        self.batches.append([r.seq for r in rows])
        if self.fail_prepare:
            raise RuntimeError("the lookup's database went away")

    async def send(self, row: Claimed) -> str:
        self.prepared_before_send.append(any(row.seq in b for b in self.batches))
        return await super().send(row)


@BOTH
@pytest.mark.parametrize("fail_prepare", [False, True])
async def test_a_preparing_sender_sees_each_claimed_batch_before_its_sends(
    database_urls: dict[str, str], backend: str, fail_prepare: bool
) -> None:
    """`MatrixSender` looks a batch's rooms up in one query this way; a failed look-up sends anyway."""
    db, outbox = await _db(database_urls, backend)
    await _queue(db, outbox, lanes=40, per_lane=2)
    sender = PreparingRecorder(fail_prepare=fail_prepare)
    d = Dispatcher(db, outbox, SystemClock(), {MATRIX: sender}, concurrency=8)
    await d.open()
    task = asyncio.create_task(d.run())

    async def done() -> bool:
        return (await _status_counts(db)).get("sent", 0) == 80

    await _until(done)
    await d.stop()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await db.close()
    assert all(sender.sent[f"!lane{i}"] == [0, 1] for i in range(40))
    assert len(sender.prepared_before_send) == 80 and all(sender.prepared_before_send)
    # Batches, not rows: at most twice the concurrency each, and far fewer than the rows.
    assert all(1 <= len(b) <= 16 for b in sender.batches)
    assert len(sender.batches) <= 80 // 4
