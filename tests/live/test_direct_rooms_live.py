"""Direct chats either side opens (PRODUCT.md "On Matrix"), on a real Synapse with E2EE clients.

A participant starts a direct chat with the hub the way clients do (createRoom with
`is_direct`, the trusted-private-chat preset, encrypted, the hub invited) and types a
command at once, before the hub has even joined. The hub joins and adopts the chat as
their direct room: the direct-room commands work there, the support text reaches the
moderators and the check-in does not, the private check-in goes there, and the older
direct room the hub had made is said goodbye to and left. A stranger's invite is
declined; a "direct" chat with a third person is not adopted; an adopted one stops
counting (the hub says so and leaves) when the person brings someone in.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nio import RoomCreateResponse, RoomGetStateEventResponse, RoomPreset
from sqlalchemy import select

from hub.devserver.synapse import RegisteredUser, SynapseServer
from hub.storage.models import HubRoom, hub_room_table

from tests.support.cohorts import quiet, room_of
from tests.support.delivery import wait_for
from tests.support.live_hub import hub_settings, running_hub
from tests.support.matrix_user import Participant

pytestmark = pytest.mark.synapse


async def _open_dm(user: Participant, hub: str, *, others: Sequence[str] = (), encrypted: bool = True) -> str:
    """A direct chat as Element starts one: is_direct, trusted private chat, encrypted."""
    state = [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]
    resp = await user.client.room_create(
        is_direct=True, preset=RoomPreset.trusted_private_chat, invite=[hub, *others],
        initial_state=state if encrypted else [],
    )
    assert isinstance(resp, RoomCreateResponse), resp
    await user.wait_until(lambda: resp.room_id in user.client.rooms, 10)
    return str(resp.room_id)


def _in_room(user: Participant, room: str, who: str) -> bool:
    r = user.client.rooms.get(room)
    return r is not None and who in r.users


def _hub_messages(user: Participant, room: str, hub: str) -> list[Any]:
    return [e for e in user.in_room(room)
            if e.sender == hub and e.source.get("type") in ("m.room.message", "m.room.encrypted")]


async def _setup(mod: Participant, hub: Any, people: list[tuple[str, Participant]], pair: bool) -> str:
    control = hub.control_room_id
    assert control
    await mod.wait_joined(control, mod.user_id, timeout=20)
    await mod.ask(control, '!hub cohort create spring "Spring 2027"')
    for role, person in people:
        await mod.ask(control, f"!hub add spring {role} {person.user_id}")
    if pair:
        await mod.ask(control, f"!hub pair spring {people[0][1].user_id} {people[1][1].user_id}")
    return str(control)


async def test_a_direct_chat_the_participant_opens_takes_their_private_commands(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any], tmp_path: Path
) -> None:
    bot: RegisteredUser = await register("hub")
    mod, ada, bo = await participant("mod"), await participant("ada"), await participant("bo")
    settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub",
                            moderators=[mod.user_id])
    async with running_hub(settings) as hub:
        control = await _setup(mod, hub, [("mentor", ada), ("mentee", bo)], pair=True)
        # The first private check-in makes the hub's own direct room with Ada.
        assert "2 private check-ins" in await mod.ask(control, "!hub send reflection spring")
        old = await room_of(hub, f"direct:{ada.user_id}")
        await ada.wait_until(lambda: len(_hub_messages(ada, old, bot.user_id)) >= 1, 30)
        await quiet(hub)

        dm = await _open_dm(ada, bot.user_id)
        # Once the hub is in: nio (this client) shares an encrypted room's key only with
        # joined members. Typing before the hub joins is the unencrypted case in the next test.
        await ada.wait_joined(dm, bot.user_id, 20)
        low = await ada.ask(dm, "!hub checkin 1")
        assert "works in" not in low and "support" in low, low
        sent = await ada.ask(dm, "!hub support I would like to talk about my pairing")
        assert "Sent to the moderators" in sent
        assert ada.client.rooms[dm].encrypted

        # The support text reaches the control room; the check-in does not.
        await mod.wait_until(lambda: bool(mod.notices(control, "I would like to talk about my pairing")), 20)
        assert not [e for e in mod.in_room(control) if "checkin" in str(getattr(e, "body", "")).lower()]

        # The older room the hub made is said goodbye to and left: the chat Ada opened is hers now.
        await ada.wait_until(lambda: not _in_room(ada, old, bot.user_id), 30)
        assert any("new" in str(getattr(e, "body", "")) for e in _hub_messages(ada, old, bot.user_id))

        # The next private check-in goes to the chat Ada opened, not to the old room.
        before_old = len(_hub_messages(ada, old, bot.user_id))
        prompts = [e for e in _hub_messages(ada, dm, bot.user_id)
                   if not (e.source.get("content", {}).get("m.relates_to") or {}).get("m.in_reply_to")]
        await mod.ask(control, "!hub send reflection spring")

        def new_prompt() -> bool:
            return len([e for e in _hub_messages(ada, dm, bot.user_id)
                        if not (e.source.get("content", {}).get("m.relates_to") or {}).get("m.in_reply_to")
                        ]) > len(prompts)

        await ada.wait_until(new_prompt, 30)
        assert len(_hub_messages(ada, old, bot.user_id)) == before_old

        # The hub's m.direct account data lists the chat with Ada.
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{synapse.url}/_matrix/client/v3/user/{bot.user_id}/account_data/m.direct",
                                headers={"Authorization": f"Bearer {bot.access_token}"}) as resp:
                direct = await resp.json()
        assert dm in direct.get(ada.user_id, []), direct


async def test_strangers_are_declined_and_a_chat_with_a_third_person_is_not_a_direct_room(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any], tmp_path: Path
) -> None:
    bot: RegisteredUser = await register("hub")
    mod, ada, bo = await participant("mod"), await participant("ada"), await participant("bo")
    stranger = await participant("stranger")
    settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub",
                            moderators=[mod.user_id])

    async def hub_membership(user: Participant, room: str) -> str | None:
        got = await user.client.room_get_state_event(room, "m.room.member", bot.user_id)
        return str(got.content.get("membership")) if isinstance(got, RoomGetStateEventResponse) else None

    async with running_hub(settings) as hub:
        control = await _setup(mod, hub, [("mentor", ada), ("mentee", bo)], pair=True)

        # A stranger's direct chat: the invite is declined.
        theirs = await _open_dm(stranger, bot.user_id)
        await wait_for(lambda: _is(hub_membership(stranger, theirs), "leave"), 20, interval=0.2)

        # A "direct" chat with a third person in it: joined (a participant asked), not adopted.
        three = await _open_dm(ada, bot.user_id, others=[bo.user_id])
        await ada.wait_joined(three, bot.user_id, 20)
        await ada.wait_joined(three, bo.user_id, 20)
        refused = await ada.ask(three, "!hub checkin 1")
        assert "works in: direct room" in refused, refused
        await ada.wait_until(lambda: any("isn't a private chat" in str(getattr(e, "body", ""))
                                         for e in _hub_messages(ada, three, bot.user_id)), 20)

        # An adopted chat stops being a direct room when the person brings someone in:
        # the hub says so and leaves, so nothing private is sent there again.
        dm = await _open_dm(ada, bot.user_id)
        await ada.wait_joined(dm, bot.user_id, 20)
        assert "noted privately" in await ada.ask(dm, "!hub checkin 4")
        await ada.client.room_invite(dm, bo.user_id)
        await ada.wait_until(lambda: not _in_room(ada, dm, bot.user_id), 30)
        assert any("no longer private" in str(getattr(e, "body", ""))
                   for e in _hub_messages(ada, dm, bot.user_id))
        assert hub.db is not None
        async with hub.db.session() as s:
            row = (await s.execute(select(HubRoom).where(hub_room_table.c.key == f"direct:{ada.user_id}"))
                   ).scalar_one()
        assert row.room_id == dm and row.status == "closed"
        # The next private check-in comes in a direct room of the hub's own, made anew.
        assert "2 private check-ins" in await mod.ask(control, "!hub send reflection spring")
        fresh = await room_of(hub, f"direct:{ada.user_id}")
        assert fresh not in (dm, three)
        await ada.wait_until(lambda: len(_hub_messages(ada, fresh, bot.user_id)) >= 1, 30)

        # A command typed the moment the chat is opened, before the hub has joined, is
        # answered as a direct-room command (unencrypted: see the first test).
        started = time.monotonic()
        bos = await _open_dm(bo, bot.user_id, encrypted=False)
        assert "noted privately" in await bo.ask(bos, "!hub checkin 5", timeout=40)
        print(f"\ndirect chat opened to its first command answered: {time.monotonic() - started:.2f} s")


async def _is(value: Awaitable[str | None], wanted: str) -> bool:
    return await value == wanted
