"""Replies ahead of fan-outs, and the dispatcher woken only once a row is committed.

On SQLite and PostgreSQL: the claim is SQL that differs between them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from hub.clock import SystemClock
from hub.core.ports import Priority
from hub.delivery.dispatcher import Claimed, Dispatcher
from hub.delivery.outbox import MATRIX, Outbox
from hub.storage.db import Database, open_database

from tests.support.databases import backends

BOTH = pytest.mark.parametrize("backend", backends())


def _row(n: int, lane: str) -> dict[str, Any]:
    return dict(channel=MATRIX, kind="test", lane=lane, payload={"n": n}, dedupe_key=f"prio:{lane}:{n}")


async def _open(database_urls: dict[str, str], backend: str) -> tuple[Database, Outbox, Dispatcher]:
    db = await open_database(database_urls[backend])
    outbox = Outbox(db, SystemClock())

    class Unused:
        async def send(self, row: Claimed) -> str:
            raise AssertionError("these tests only claim")

    return db, outbox, Dispatcher(db, outbox, SystemClock(), {MATRIX: Unused()})


@BOTH
async def test_an_answer_queued_after_a_fan_out_is_claimed_first(
        database_urls: dict[str, str], backend: str) -> None:
    db, outbox, dispatcher = await _open(database_urls, backend)
    try:
        async with db.transaction() as s:
            await outbox.enqueue_many(s, [_row(i, f"!room{i}") for i in range(300)])
        async with db.transaction() as s:
            await outbox.enqueue(s, **_row(0, "!control"))
        claimed = await dispatcher.claim(8)
        assert claimed[0].lane == "!control"
        assert claimed[0].priority == Priority.INTERACTIVE
        assert [c.payload["n"] for c in claimed[1:]] == list(range(7))  # then the fan-out, in order
    finally:
        await dispatcher.stop()
        await db.close()


@BOTH
async def test_a_fan_outs_own_notice_to_the_moderators_keeps_its_priority(
        database_urls: dict[str, str], backend: str) -> None:
    """The digest's report rides in its fan-out (`enqueue_many`) but is claimed ahead of it:
    as bulk it waited for 10,000 emails, and the moderator's reply behind it in its lane too."""
    db, outbox, dispatcher = await _open(database_urls, backend)
    try:
        async with db.transaction() as s:
            await outbox.enqueue_many(s, [*(_row(i, f"!room{i}") for i in range(300)),
                                          {**_row(0, "!control"), "priority": Priority.INTERACTIVE}])
        claimed = await dispatcher.claim(2)
        assert [(c.lane, c.priority) for c in claimed] == [("!control", Priority.INTERACTIVE),
                                                           ("!room0", Priority.BULK)]
    finally:
        await dispatcher.stop()
        await db.close()


@BOTH
async def test_an_answer_never_overtakes_an_earlier_row_to_the_same_room(
        database_urls: dict[str, str], backend: str) -> None:
    db, outbox, dispatcher = await _open(database_urls, backend)
    try:
        async with db.transaction() as s:
            await outbox.enqueue_many(s, [_row(i, f"!room{i}") for i in range(20)])
        async with db.transaction() as s:
            await outbox.enqueue(s, **_row(99, "!room5"))  # behind the fan-out's row to !room5
        claimed = await dispatcher.claim(40)
        assert sorted(c.payload["n"] for c in claimed) == list(range(20))  # not 99: not its lane's head
    finally:
        await dispatcher.stop()
        await db.close()


@BOTH
async def test_listeners_are_woken_after_the_commit_once_and_not_on_rollback(
        database_urls: dict[str, str], backend: str) -> None:
    db, outbox, _ = await _open(database_urls, backend)
    woken = asyncio.Event()
    outbox.on_enqueue(woken.set)
    try:
        async with db.transaction() as s:
            await outbox.enqueue(s, **_row(1, "!a"))
            await outbox.enqueue(s, **_row(2, "!a"))
            await outbox.enqueue_many(s, [_row(3, "!b")])
            assert not woken.is_set()  # before the commit, a claim would find nothing
        assert woken.is_set()
        woken.clear()
        with pytest.raises(RuntimeError):
            async with db.transaction() as s:
                await outbox.enqueue(s, **_row(4, "!a"))
                raise RuntimeError("the change fails")
        assert not woken.is_set()
    finally:
        await db.close()


@BOTH
async def test_a_row_is_sent_at_once_although_the_poll_is_long(
        database_urls: dict[str, str], backend: str) -> None:
    """With the wake-up before the commit, the dispatcher looked too early and slept its poll."""
    db = await open_database(database_urls[backend])
    outbox = Outbox(db, SystemClock())
    sent = asyncio.Queue[float]()

    class Stamp:
        async def send(self, row: Claimed) -> str:
            sent.put_nowait(time.monotonic())
            return "ok"

    dispatcher = Dispatcher(db, outbox, SystemClock(), {MATRIX: Stamp()}, poll_seconds=30.0)
    await dispatcher.open()
    task = asyncio.create_task(dispatcher.run())
    try:
        waits = []
        for i in range(20):
            async with db.transaction() as s:
                await outbox.enqueue(s, **_row(i, "!control"))
            queued = time.monotonic()
            waits.append(await asyncio.wait_for(sent.get(), 10) - queued)
        assert max(waits) < 2.0, waits  # a missed wake-up waits the 30 s poll (and times out)
    finally:
        await dispatcher.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await db.close()
