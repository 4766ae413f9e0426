"""The outbox's own upkeep: a sent row's payload is emptied after 30 days, its dedupe key kept;
waiting until nothing is left to send.

(Claiming, sending and recording outcomes are the dispatcher's, in test_dispatcher.py.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from hub.clock import FakeClock, SystemClock
from hub.delivery.outbox import MATRIX, SENT_PAYLOAD_DAYS, Outbox
from hub.devserver.synapse import SynapseServer
from hub.storage.db import Database, open_database
from hub.storage.models import outbox_table as T

from tests.support.databases import backends
from tests.support.live_hub import hub_settings, running_hub

DAY = 86400.0
START = datetime(2027, 1, 4, 9, 0, tzinfo=UTC)
PAYLOAD = {"op": "message", "room_id": "!r:localhost", "body": "week 3 " * 1000}
Store = tuple[FakeClock, Database, Outbox]


async def _queue(db: Database, outbox: Outbox, *keys: str) -> None:
    async with db.transaction() as s:
        for key in keys:
            await outbox.enqueue(s, channel=MATRIX, kind="t", lane="!r", payload=PAYLOAD, dedupe_key=key)


async def _payloads(db: Database) -> dict[str, str]:
    async with db.session() as s:
        return {k: p for k, p in (await s.execute(select(T.c.dedupe_key, T.c.payload))).all()}


@pytest.fixture(params=backends())
async def store(request: pytest.FixtureRequest, database_urls: dict[str, str]) -> AsyncIterator[Store]:
    """An outbox on a fresh database of each backend, on a clock at START."""
    clock = FakeClock(START)
    db = await open_database(database_urls[request.param])
    try:
        yield clock, db, Outbox(db, clock)
    finally:
        await db.close()


async def test_old_sent_payloads_are_emptied_and_their_keys_still_block_a_resend(store: Store) -> None:
    clock, db, outbox = store
    await _queue(db, outbox, "old-1", "old-2", "old-3", "recent", "failed", "queued")
    now = START.timestamp()
    async with db.transaction() as s:
        for key, at in {"old-1": now, "old-2": now, "old-3": now + 1, "recent": now + 20 * DAY}.items():
            await s.execute(update(T).where(T.c.dedupe_key == key).values(status="sent", sent_at=at))
        await s.execute(update(T).where(T.c.dedupe_key == "failed")
                        .values(status="failed", sent_at=None, last_error="550 no such user"))
    clock.advance((SENT_PAYLOAD_DAYS + 1) * DAY)  # old-*: 31 days since sent; recent: 11

    assert await outbox.compact(batch=2) == 3  # two transactions: 2 rows, then 1
    payloads = await _payloads(db)
    assert {k for k, p in payloads.items() if p == "{}"} == {"old-1", "old-2", "old-3"}
    for key in ("recent", "failed", "queued"):
        assert json.loads(payloads[key]) == PAYLOAD, key
    assert await outbox.compact() == 0  # nothing left: a second run changes nothing

    # The row stays, so the same logical message is still refused: at most once, ever.
    async with db.transaction() as s:
        assert not await outbox.enqueue(s, channel=MATRIX, kind="t", lane="!r", payload=PAYLOAD,
                                        dedupe_key="old-1")
    async with db.session() as s:
        assert (await s.execute(select(T.c.status).where(T.c.dedupe_key == "old-1"))).scalar() == "sent"


async def test_wait_until_drained_waits_for_due_rows_and_ignores_later_ones_when_asked(store: Store) -> None:
    clock, db, outbox = store
    await asyncio.wait_for(outbox.wait_until_drained(), 1)  # empty
    await _queue(db, outbox, "now")
    async with db.transaction() as s:
        await outbox.enqueue(s, channel=MATRIX, kind="t", lane="!r", payload=PAYLOAD,
                             dedupe_key="next-week", not_before=START.timestamp() + 7 * DAY)
    assert await outbox.unsent() == 2 and await outbox.unsent(due_only=True) == 1
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(outbox.wait_until_drained(poll=0.05), 0.3)

    async def send_later() -> None:
        await asyncio.sleep(0.2)
        async with db.transaction() as s:
            await s.execute(update(T).where(T.c.dedupe_key == "now").values(status="sent"))

    sender = asyncio.create_task(send_later())
    await asyncio.wait_for(outbox.wait_until_drained(due_only=True, settle=2, poll=0.05), 5)
    await sender
    assert await outbox.unsent(due_only=True) == 0
    with pytest.raises(TimeoutError):  # next week's row is still to send
        await asyncio.wait_for(outbox.wait_until_drained(poll=0.05), 0.1)
    clock.advance(7 * DAY)
    assert await outbox.unsent(due_only=True) == 1


@pytest.mark.synapse
async def test_the_running_hub_compacts_at_start(
    synapse: SynapseServer, register: Callable[..., Any], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    db = await open_database(url)
    outbox = Outbox(db, SystemClock())
    await _queue(db, outbox, "long-ago", "yesterday")
    now = SystemClock().now().timestamp()
    async with db.transaction() as s:
        for key, at in {"long-ago": now - (SENT_PAYLOAD_DAYS + 5) * DAY, "yesterday": now - DAY}.items():
            await s.execute(update(T).where(T.c.dedupe_key == key).values(status="sent", sent_at=at))
    await db.close()

    bot = await register("hub")
    settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub", moderators=[],
                            database_url=url)
    async with running_hub(settings) as hub:
        assert hub.db is not None
        for _ in range(100):
            payloads = await _payloads(hub.db)
            if payloads["long-ago"] == "{}":
                break
            await asyncio.sleep(0.1)
    assert payloads["long-ago"] == "{}"
    assert json.loads(payloads["yesterday"]) == PAYLOAD
