"""Who counts as a moderator by power in the control room (issue 18: trust only rooms the hub made).

The control room is found by its alias. A stranger who registers that alias before the
hub first starts creates the room and decides who has power 50 in it; that power must not
make moderators. In a control room the hub created, power 50 still does.
"""

from __future__ import annotations

from typing import Any

import pytest
from nio import RoomCreateResponse, RoomPutStateResponse

from tests.support.live_hub import hub_settings, running_hub

pytestmark = pytest.mark.synapse


async def test_power_in_a_squatted_control_room_makes_no_moderator(
        synapse: Any, register: Any, participant: Any, tmp_path: Any) -> None:
    bot = await register("hub")
    lead, squatter = await participant("lead"), await participant("squat")
    friend = await participant("friend")
    settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub",
                            moderators=[lead.user_id])
    alias_local = settings.matrix.control_room[1:].split(":", 1)[0]
    # Before the hub's first start: a public room under the hub's alias, the friend at power 50.
    created = await squatter.client.room_create(
        alias=alias_local, name="Mentoring moderators",
        initial_state=[{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "public"}}],
        power_level_override={"users": {friend.user_id: 50}},  # v12: the creator is not listed
    )
    assert isinstance(created, RoomCreateResponse), created
    room = str(created.room_id)
    for person in (friend, lead):
        await person.client.join(room)
    async with running_hub(settings) as hub:
        assert hub.control_room_id == room  # the hub did join it (the alias pointed there)
        await squatter.wait_joined(room, bot.user_id)
        for person in (friend, squatter):
            body = await person.ask(room, "!hub cohort list")
            assert "moderators only" in body, (person.user_id, body)
        # A listed moderator still works there.
        assert "moderators only" not in await lead.ask(room, "!hub cohort list")


async def test_power_in_the_hubs_own_control_room_makes_a_moderator(
        synapse: Any, register: Any, participant: Any, tmp_path: Any) -> None:
    bot = await register("hub")
    lead, friend = await participant("lead"), await participant("friend")
    settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub",
                            moderators=[lead.user_id])
    async with running_hub(settings) as hub:
        room = hub.control_room_id
        assert room is not None
        await lead.client.join(room)
        await lead.wait_until(lambda: room in lead.client.rooms, 10)
        power = await lead.client.room_get_state_event(room, "m.room.power_levels", "")
        content: dict[str, Any] = dict(power.content)  # type: ignore[union-attr]
        content["users"] = {**content["users"], friend.user_id: 50}
        # Power levels need power 100 in the hub's control room: the hub's own client sets them.
        put = await hub.client.room_put_state(room, "m.room.power_levels", content)  # type: ignore[union-attr]
        assert isinstance(put, RoomPutStateResponse), put
        invite = await hub.client.room_invite(room, friend.user_id)  # type: ignore[union-attr]
        assert invite is not None
        await friend.client.join(room)
        await friend.wait_until(lambda: room in friend.client.rooms, 10)
        body = await friend.ask(room, "!hub cohort list")
        assert "moderators only" not in body, body
