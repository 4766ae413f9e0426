"""Helpers shared by the cohort live tests: waiting for the hub's rooms and for its outbox to drain."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import select

from hub.features.cohort_setup import create_cohort
from hub.features.room_queue import load_env, queue_room_message
from hub.service import Hub
from hub.storage.models import Cohort, HubRoom, hub_room_table

__all__ = ["new_cohort", "pair_in_new_cohort", "quiet", "room_of"]


async def new_cohort(hub: Hub, slug: str, name: str) -> Cohort:
    """A cohort made in the running hub's own database, as `!hub cohort create` makes it."""
    assert hub.db is not None and hub.outbox is not None
    async with hub.db.transaction() as s:
        env = await load_env(s, hub.outbox, hub.clock, hub.settings)
        return await create_cohort(s, env, slug=slug, name=name, timezone="UTC", start=None, weeks=12,
                                   source="command")


async def room_of(hub: Hub, key: str, timeout: float = 60) -> str:
    """The room id once the hub has created the room `key` (and invited its members)."""
    assert hub.db is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with hub.db.session() as s:
            r = (await s.execute(select(HubRoom).where(hub_room_table.c.key == key))).scalar_one_or_none()
        if r is not None and r.room_id and r.status == "ready":
            return r.room_id
        await asyncio.sleep(0.1)
    raise TimeoutError(f"room {key} was not created in {timeout}s")


async def quiet(hub: Hub, timeout: float = 30) -> None:
    """Wait until nothing is left to send and the calendar has nothing due, so the database holds still.

    The program's periodic tick would otherwise queue (say) a new cohort's launch post
    whenever it next fires, in the middle of a test comparing snapshots.
    """
    assert hub.outbox is not None and hub.program is not None
    try:
        async with asyncio.timeout(timeout):
            while True:
                await hub.outbox.wait_until_drained(poll=0.1)
                await hub.program.tick_now()
                if await hub.outbox.unsent() == 0:
                    break
    except TimeoutError:
        raise TimeoutError("the outbox did not drain") from None
    await asyncio.sleep(0.5)


async def pair_in_new_cohort(hub: Hub, mod: Any, mentor: Any, mentee: Any, *, emails: bool = False) -> str:
    """As a moderator does it in the control room: cohort `spring`, mentor Ada and mentee Bo
    (with addresses if `emails`), paired; returns the pair room's id once the hub made it."""
    control = hub.control_room_id
    assert control
    await mod.wait_joined(control, mod.user_id, timeout=20)
    ada, bo = (" email=ada@example.org", " email=bo@example.org") if emails else ("", "")
    for command in ['!hub cohort create spring "Spring 2027"',
                    f"!hub add spring mentor {mentor.user_id} Ada{ada}",
                    f"!hub add spring mentee {mentee.user_id} Bo{bo}",
                    f"!hub pair spring {mentor.user_id} {mentee.user_id}"]:
        await mod.ask(control, command)
    return await room_of(hub, "pair:1")


async def post_in_pair_room(hub: Hub, text: str, dedupe_key: str, key: str = "pair:1") -> None:
    """Queue a notice for a pair room by its key, as the hub's features do (sent by its dispatcher)."""
    assert hub.db is not None and hub.outbox is not None
    async with hub.db.transaction() as s:
        env = await load_env(s, hub.outbox, hub.clock, hub.settings)
        room = (await s.execute(select(HubRoom).where(hub_room_table.c.key == key))).scalar_one()
        assert await queue_room_message(s, env, room, text, kind="test", dedupe_key=dedupe_key)
