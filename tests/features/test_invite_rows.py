"""An invite to the hub is answered through the outbox: a `Join` row, or a `LeaveRoom` row.

The sync handler queues them (it does no network work itself); a batch seen again (a
replay after a crash) queues nothing twice, and a command from the room waits for the join.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from hub.clock import FakeClock
from hub.config import settings_from_dict
from hub.core.effects import Join
from hub.delivery.dispatcher import Claimed
from hub.delivery.outbox import Outbox
from hub.service import Hub
from hub.storage.db import open_database
from hub.storage.models import outbox_table as T

MOD = "@mod:example.org"


async def _hub(tmp_path: Path) -> Hub:
    settings = settings_from_dict({
        "hub": {"data_dir": str(tmp_path)},
        "database": {"url": f"sqlite:///{tmp_path / 'hub.db'}"},
        "matrix": {"homeserver": "http://127.0.0.1:1", "user_id": "@hub:example.org", "password": "x",
                   "control_room": "#mods:example.org", "moderators": [MOD]},
        "web": {"listen": "127.0.0.1:0", "secret": "test-secret-not-real"},
    }, base=tmp_path, env={})
    hub = Hub(settings, clock=FakeClock(datetime(2027, 3, 1, tzinfo=UTC)))
    hub.db = await open_database(settings.database.url)
    hub.outbox = Outbox(hub.db, hub.clock)
    return hub


async def _rows(hub: Hub) -> list[tuple[str, str, dict[str, Any]]]:
    assert hub.db is not None
    async with hub.db.session() as s:
        rows = (await s.execute(select(T.c.kind, T.c.lane, T.c.payload).order_by(T.c.seq))).all()
    return [(kind, lane, json.loads(payload)) for kind, lane, payload in rows]


async def test_a_moderators_invite_is_a_join_row_and_a_strangers_a_leave_row_each_once(
    tmp_path: Path,
) -> None:
    hub = await _hub(tmp_path)
    await hub._consider_invite("!dm:example.org", MOD, "batch1", direct=True)
    await hub._consider_invite("!dm:example.org", MOD, "batch1", direct=True)  # still joining
    await hub._consider_invite("!spam:example.org", "@stranger:example.org", "batch1")
    await hub._consider_invite("!spam:example.org", "@stranger:example.org", "batch1")  # replayed
    assert await _rows(hub) == [
        ("invite-join", "join:!dm:example.org",
         {"op": "join", "room_id": "!dm:example.org", "inviter": MOD, "direct": True}),
        ("invite-decline", "join:!spam:example.org", {"op": "leave_room", "room_id": "!spam:example.org"}),
    ]
    assert hub.db is not None
    await hub.db.close()


async def test_a_command_from_a_room_being_joined_waits_for_the_join_row(tmp_path: Path) -> None:
    hub = await _hub(tmp_path)
    await hub._consider_invite("!dm:example.org", MOD, "batch1", direct=True)
    done: list[str] = []

    class Rooms:  # the join handler of hub.features.room_joins, as the sender calls it
        async def join(self, row: Claimed, effect: Join) -> str:
            done.append(effect.room_id)
            return "joined"

        async def kind_of(self, room_id: str) -> None:
            return None

    hub.rooms = Rooms()  # type: ignore[assignment]
    kind = asyncio.create_task(hub.room_kind("!dm:example.org"))
    await asyncio.sleep(0)
    assert not kind.done()  # waiting for the join
    row = Claimed(seq=1, txn_id="t", channel="matrix", kind="invite-join", lane="join:!dm:example.org",
                  payload={}, attempts=0, created_at=0.0)
    assert await hub._join(row, Join("!dm:example.org", MOD, direct=True)) == "joined"
    await asyncio.wait_for(kind, 1)
    assert done == ["!dm:example.org"] and hub.clock.monotonic() == 0.0  # not the 10 s bound
    assert hub.db is not None
    await hub.db.close()
