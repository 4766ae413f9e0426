"""hub.matrix.provision without a homeserver: how a room taught to nio replaces the one it had."""

from __future__ import annotations

from typing import Any

from nio import AsyncClient

from hub.clock import SystemClock
from hub.delivery.ratelimit import SharedPause
from hub.matrix.provision import Provision
from hub.matrix.room_view import room_from_state

HUB = "@hub:example.org"


def _joined(*users: str) -> list[dict[str, Any]]:
    return [{"type": "m.room.member", "state_key": u, "content": {"membership": "join"}} for u in users]


async def test_a_room_fed_again_with_the_same_members_stays_ready_to_send() -> None:
    client = AsyncClient("http://127.0.0.1:9", HUB)
    provision = Provision(client, SharedPause(SystemClock(), "test"))
    try:
        for room_id in ("!same:x", "!grown:x"):
            client.encrypted_rooms.add(room_id)
            # What a send made ready: the members' keys asked for in this run.
            sending = room_from_state(room_id, HUB, _joined(HUB, "@ada:x"), encrypted=True)
            sending.members_synced = True
            client.rooms[room_id] = sending
        # The state read at start (the control room's) lands while that send is on its way.
        provision.feed("!same:x", _joined(HUB, "@ada:x"))
        assert client.rooms["!same:x"].members_synced  # nio would refuse the send otherwise
        # Someone new: their keys are not known yet, so the next send asks for them first.
        provision.feed("!grown:x", _joined(HUB, "@ada:x", "@bo:x"))
        assert not client.rooms["!grown:x"].members_synced
    finally:
        await client.close()
