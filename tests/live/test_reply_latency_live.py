"""Replies as a moderator meets them: quick every time, and not stuck behind a fan-out.

Read the way the moderator's client sees it: the reply's server timestamp against the
command's. Two faults these catch (issue 17): the dispatcher woken before the command's
transaction committed, which found nothing and slept its 1 s poll (2-3 of 30 pings took
1.05 s); and a reply queued behind every row of a fan-out in progress (49 s behind an
icebreaker to 2,000 rooms).
"""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from hub.core.effects import Outgoing, RoomMessage
from hub.delivery.effect_writer import row_spec
from hub.delivery.outbox import OutboxStatus
from hub.devserver.synapse import SynapseServer
from hub.service import Hub
from hub.storage.models import outbox_table as T

from tests.support.delivery import make_rooms
from tests.support.live_hub import hub_settings, running_hub
from tests.support.matrix_user import Participant

# Times replies against a bound: alone, not beside another worker (pyproject "serial").
pytestmark = [pytest.mark.synapse, pytest.mark.serial]

PINGS = 100
LIMIT_MS = 300  # the bound on this machine; a healthy reply takes 20-100 ms
FANOUT_ROOMS = 500


async def _in_control_room(hub: Hub, lead: Participant) -> str:
    room = hub.control_room_id
    assert room is not None
    await lead.client.join(room)
    await lead.wait_until(lambda: room in lead.client.rooms, 10)
    return room


def _server_ms(lead: Participant, room: str, event_id: str) -> int:
    return next(int(ev.server_timestamp) for ev in lead.in_room(room) if ev.event_id == event_id)


async def test_a_hundred_pings_none_over_300_ms(
        synapse: SynapseServer, register: Any, participant: Any, tmp_path: Path) -> None:
    bot = await register("hub")
    lead = await participant("lead")
    settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub",
                            moderators=[lead.user_id])
    async with running_hub(settings) as hub:
        room = await _in_control_room(hub, lead)
        waits: list[int] = []
        for _ in range(PINGS):
            ping = await lead.send(room, "!hub ping")
            reply = await lead.wait_for_reply(room, ping)
            waits.append(int(reply.server_timestamp) - _server_ms(lead, room, ping))
    slow = [w for w in waits if w > LIMIT_MS]
    print(f"\n{PINGS} pings: p50 {statistics.median(waits)} ms, slowest {sorted(waits)[-8:]} ms")
    assert not slow, f"{len(slow)} of {PINGS} replies took over {LIMIT_MS} ms: {sorted(slow)}"


async def test_a_ping_during_a_500_room_fan_out_is_answered_before_it_ends(
        synapse: SynapseServer, register: Any, participant: Any, tmp_path: Path) -> None:
    bot, reader = await register("hub"), await register("reader")
    lead = await participant("lead")
    rooms = await make_rooms(synapse.url, bot, reader, FANOUT_ROOMS)
    settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub",
                            moderators=[lead.user_id])
    async with running_hub(settings) as hub:
        assert hub.outbox is not None and hub.db is not None
        room = await _in_control_room(hub, lead)
        rows = [row_spec(Outgoing(RoomMessage.notice(f"fan-out {i}", room_id=r), "fanout", f"fanout:{i}"))
                for i, r in enumerate(rooms)]
        async with hub.db.transaction() as s:
            assert await hub.outbox.enqueue_many(s, rows) == FANOUT_ROOMS  # a fan-out's priority
        ping = await lead.send(room, "!hub ping")
        await lead.wait_for_reply(room, ping, timeout=120)
        async with hub.db.session() as s:
            sent_by_then = int((await s.execute(select(func.count()).select_from(T).where(
                (T.c.kind == "fanout") & (T.c.status == OutboxStatus.SENT)))).scalar() or 0)
        async with asyncio.timeout(180):
            await hub.outbox.wait_until_drained()
    print(f"\nthe reply came when {sent_by_then} of {FANOUT_ROOMS} fan-out rows were sent")
    # Ahead of the fan-out, not after it: at most the sends in flight and one claimed batch
    # went first. Behind it (claiming in queue order), all 500 would have.
    assert sent_by_then < FANOUT_ROOMS // 2, sent_by_then
