"""The dispatcher and the shared rate-limit pause wait on the hub's clock, not on real time.

On a `FakeClock` a 30-second retry or a 30-second 429 pause passes at once: the tests below
bound each run by a few *real* seconds and check on the *fake* clock that the waits were
still kept. Each fails if the wait sleeps on real time instead (it then outlasts the bound).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from hub.clock import FakeClock
from hub.delivery.dispatcher import Claimed, Dispatcher
from hub.delivery.outbox import MATRIX, Outbox
from hub.delivery.ratelimit import SharedPause
from hub.errors import TemporaryDeliveryError
from hub.storage.db import Database, open_database
from hub.storage.models import outbox_table

START = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)
REAL_BOUND = 8.0  # seconds of real time each test may take, far below the 30 s it waits on its clock


class PausingSender:
    """Sends like the Matrix sender: waits out the shared pause first; the first send is refused
    with a 429 that pauses every send for `pause_for` seconds, and is retried after that."""

    def __init__(self, clock: FakeClock, pause: SharedPause, *, pause_for: float) -> None:
        self.clock = clock
        self.pause = pause
        self.pause_for = pause_for
        self.sent: dict[str, float] = {}  # dedupe-ish name -> fake monotonic time it was sent
        self.refused_at: float | None = None

    async def send(self, row: Claimed) -> str:
        await self.pause.wait()
        name = str(row.payload["name"])
        if self.refused_at is None:
            self.refused_at = self.clock.monotonic()
            self.pause.pause(self.pause_for)  # what classify_error does with M_LIMIT_EXCEEDED
            raise TemporaryDeliveryError("M_LIMIT_EXCEEDED", retry_after=self.pause_for)
        self.sent[name] = self.clock.monotonic()
        return f"sent {name}"


async def _store(url: str, clock: FakeClock) -> tuple[Database, Outbox]:
    db = await open_database(url)
    return db, Outbox(db, clock)


async def _run_until(dispatcher: Dispatcher, done: asyncio.Event) -> float:
    """Run the dispatcher until `done`; the real seconds it took (TimeoutError past REAL_BOUND)."""
    began = time.monotonic()
    await dispatcher.open()
    task = asyncio.create_task(dispatcher.run())
    try:
        await asyncio.wait_for(done.wait(), REAL_BOUND)
    finally:
        await dispatcher.stop(1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return time.monotonic() - began


async def test_the_shared_pause_is_waited_out_on_the_clock_it_reads() -> None:
    clock = FakeClock(START)
    pause = SharedPause(clock, "test")
    pause.pause(30.0)
    began = time.monotonic()
    await asyncio.wait_for(pause.wait(), REAL_BOUND)
    assert time.monotonic() - began < 1.0
    assert clock.monotonic() == pytest.approx(30.0)  # the whole pause passed on the fake clock
    assert pause.remaining == 0.0


async def test_a_retry_after_30_s_is_sent_once_the_fake_clock_has_moved_30_s(
    database_urls: dict[str, str],
) -> None:
    clock = FakeClock(START)
    db, outbox = await _store(database_urls["sqlite"], clock)
    attempts: list[float] = []
    sent = asyncio.Event()

    class RetryOnce:
        async def send(self, row: Claimed) -> str:
            attempts.append(clock.monotonic())
            if len(attempts) == 1:
                raise TemporaryDeliveryError("try again in 30 s", retry_after=30.0)
            sent.set()
            return "ok"

    async with db.transaction() as s:
        await outbox.enqueue(s, channel=MATRIX, kind="t", lane="!room", payload={"name": "a"},
                             dedupe_key="retry-once")
    dispatcher = Dispatcher(db, outbox, clock, {MATRIX: RetryOnce()}, poll_seconds=1.0)
    real = await _run_until(dispatcher, sent)
    assert len(attempts) == 2
    # Not before its time on the clock (the row's not_before), and soon after it: idle polls
    # of one second each move the fake clock on until the row is due.
    assert 30.0 <= attempts[1] - attempts[0] <= 33.0
    assert real < REAL_BOUND
    await db.close()


async def test_a_429_pauses_every_lane_on_the_fake_clock_and_then_all_are_sent(
    database_urls: dict[str, str],
) -> None:
    clock = FakeClock(START)
    db, outbox = await _store(database_urls["sqlite"], clock)
    pause = SharedPause(clock, "the homeserver")
    sender = PausingSender(clock, pause, pause_for=30.0)
    names = [f"lane{i}" for i in range(4)]
    async with db.transaction() as s:
        for name in names:
            await outbox.enqueue(s, channel=MATRIX, kind="t", lane=f"!{name}", payload={"name": name},
                                 dedupe_key=f"pause:{name}")
    everything = asyncio.Event()

    class Watching:
        async def send(self, row: Claimed) -> str:
            result = await sender.send(row)
            if set(sender.sent) == set(names):
                everything.set()
            return result

    dispatcher = Dispatcher(db, outbox, clock, {MATRIX: Watching()}, poll_seconds=1.0, concurrency=4)
    await _run_until(dispatcher, everything)
    assert sender.refused_at is not None
    # Every lane waited for the one pause (the refused row's retry too), none sent during it.
    assert all(at >= sender.refused_at + 30.0 for at in sender.sent.values()), sender.sent
    await db.close()


async def test_the_shutdown_grace_passes_on_the_fake_clock_and_the_stuck_send_stays_queued(
    database_urls: dict[str, str],
) -> None:
    clock = FakeClock(START)
    db, outbox = await _store(database_urls["sqlite"], clock)
    started = asyncio.Event()

    class Stuck:
        async def send(self, row: Claimed) -> str:
            started.set()
            await asyncio.Event().wait()  # a send that never finishes
            return "never"

    async with db.transaction() as s:
        await outbox.enqueue(s, channel=MATRIX, kind="t", lane="!room", payload={"name": "a"},
                             dedupe_key="stuck")
    dispatcher = Dispatcher(db, outbox, clock, {MATRIX: Stuck()}, poll_seconds=1.0)
    await dispatcher.open()
    task = asyncio.create_task(dispatcher.run())
    await asyncio.wait_for(started.wait(), REAL_BOUND)
    began, on_clock = time.monotonic(), clock.monotonic()
    # 30 s of grace on the clock: a grace on real time outlasts the bound.
    await asyncio.wait_for(dispatcher.stop(30.0), REAL_BOUND)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert time.monotonic() - began < REAL_BOUND
    assert clock.monotonic() - on_clock >= 30.0  # the whole grace passed, on the fake clock
    async with db.session() as s:
        status = (await s.execute(select(outbox_table.c.status)
                                  .where(outbox_table.c.dedupe_key == "stuck"))).scalar_one()
    assert status == "queued"  # cut off at shutdown: queued again, not lost nor stuck `sending`
    await db.close()
