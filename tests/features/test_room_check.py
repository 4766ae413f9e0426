"""The room check's report lines stay short enough to be sent, whatever the room's size; a pass
waits behind a fan-out, within its budget."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy import update

from hub.clock import FakeClock
from hub.config import Settings
from hub.core.homeserver import Homeserver
from hub.delivery.outbox import EMAIL, MATRIX, Outbox, OutboxStatus
from hub.features.room_check import CHECK_BUSY_ROWS, CHECK_PAUSE_MAX, RoomCheck, _some, page_pause
from hub.storage.db import open_database
from hub.storage.models import outbox_table


def test_a_report_line_names_ten_people_and_counts_the_rest() -> None:
    users = [f"@person_{i}:example.org" for i in range(3400)]
    line = _some(users)
    assert line.endswith(" and 3390 more")
    assert line.count("@person") == 10
    assert len(line) < 400  # 3,400 names made a report Synapse refused as M_TOO_LARGE
    assert "@person\\_0" in line  # escaped: Markdown in a name is shown, not rendered


def test_a_few_people_are_all_named() -> None:
    assert _some(["@a:x", "@b:x"]) == "@a:x, @b:x"


async def test_a_pass_waits_behind_a_fan_out_and_not_longer_than_its_budget(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2027, 3, 1, 9, tzinfo=UTC))
    db = await open_database(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        outbox = Outbox(db, clock)
        check = RoomCheck(db=db, outbox=outbox, clock=clock, provision=cast(Homeserver, None),
                          settings=lambda: cast(Settings, None), control_room=lambda: None)
        rows = [dict(channel=MATRIX, kind="icebreaker", lane=f"!pair{i}:x", payload={"n": i},
                     dedupe_key=f"fan:{i}") for i in range(CHECK_BUSY_ROWS + 1)]
        emails = [dict(channel=EMAIL, kind="digest", lane=f"mail{i}", payload={"n": i},
                       dedupe_key=f"mail:{i}") for i in range(2 * CHECK_BUSY_ROWS)]
        async with db.transaction() as s:
            await outbox.enqueue_many(s, emails)
        assert await check._behind_fanout(600) == 0  # emails do not take the homeserver's time
        async with db.transaction() as s:
            await outbox.enqueue_many(s, rows)
        # Still sending after the whole budget: the pass goes on anyway.
        assert await check._behind_fanout(600) == 600

        async def sent_later() -> None:
            await asyncio.sleep(0.05)  # a few of the check's pauses go by on the fake clock first
            async with db.transaction() as s:
                await s.execute(update(outbox_table).where(outbox_table.c.channel == MATRIX)
                                .values(status=OutboxStatus.SENT))

        done = asyncio.create_task(sent_later())
        waited = await check._behind_fanout(10 ** 9)
        await done
        assert 0 < waited < 10 ** 9 and waited % RoomCheck.check_pause == 0
        assert await check._behind_fanout(600) == 0  # nothing left: no wait
    finally:
        await db.close()


def test_a_page_is_followed_by_a_pause_that_keeps_the_check_to_its_share_of_a_core() -> None:
    assert page_pause(0.010, 5.0, 0.01) == 5.0  # a cheap page: the usual pace
    assert page_pause(0.130, 5.0, 0.01) == pytest.approx(13.0)  # 20 rooms of 5,000: 1 % of a core
    assert page_pause(5.0, 5.0, 0.01) == CHECK_PAUSE_MAX  # a lounge of 10,000: not an hour's pause
    assert page_pause(0.5, 5.0, 0.0) == 5.0
