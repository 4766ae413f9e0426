"""Issue 18, item 1: a participant cannot get the hub to adopt a room they made (real Synapse).

The attack: a participant copies the hub's room tag (`org.cohorthub.room`: install id,
key, generation) from the lounge's state, creates rooms carrying it for the next pair
keys, and invites the hub, which joins (the inviter is a participant). When the next
pair's room creation fails for a moment (the homeserver is down), the retry looks for
an already-made room by its tag. It must find only rooms the hub itself created.
Uses its own Synapse, since it is stopped mid-test.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from hub.core.cohorts import ROOM_TAG, Who
from hub.devserver.synapse import RegisteredUser, SynapseServer
from hub.features.cohort_setup import create_cohort, require_cohort
from hub.features.members import add_member
from hub.features.pairs import make_pair
from hub.features.room_queue import load_env
from hub.storage.models import HubRoom, hub_room_table
from hub.storage.models import outbox_table as T

from tests.support.cohorts import quiet, room_of
from tests.support.live_hub import hub_settings, running_hub
from tests.support.matrix_user import Participant

pytestmark = [pytest.mark.synapse, pytest.mark.slow]


@pytest.fixture(scope="module")
async def own_synapse(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SynapseServer]:
    server = SynapseServer(tmp_path_factory.mktemp("synapse-takeover"))
    await server.start()
    yield server
    await server.stop()


async def call(base: str, user: RegisteredUser, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """A raw client-server call as `user`: what any client (or attacker) can do."""
    async with aiohttp.ClientSession() as http, http.request(
        method, base + path, json=body, headers={"Authorization": f"Bearer {user.access_token}"}
    ) as r:
        return r.status, await r.json()


async def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{what} not within {timeout}s")


async def test_forged_tags_are_not_adopted_when_a_pair_room_is_retried_after_an_outage(
    own_synapse: SynapseServer, tmp_path: Path
) -> None:
    base, t = own_synapse.url, secrets.token_hex(3)
    users = {name: await own_synapse.register(f"{name}{t}", secrets.token_urlsafe(12))
             for name in ("hub", "forger", "mentor", "mentor2", "mentee2")}
    bot = users["hub"]
    people: dict[str, Participant] = {}
    for name in ("forger", "mentor", "mentor2", "mentee2"):
        people[name] = Participant(base, users[name], tmp_path / f"store-{name}")
        await people[name].start()
    forger, mentor2, mentee2 = people["forger"], people["mentor2"], people["mentee2"]
    settings = hub_settings(homeserver=base, bot=bot, data_dir=tmp_path / "hub", moderators=[])
    try:
        async with running_hub(settings) as hub:
            assert hub.db is not None and hub.outbox is not None
            async with hub.db.transaction() as s:
                env = await load_env(s, hub.outbox, hub.clock, hub.settings)
                cohort = await create_cohort(s, env, slug="take", name="Take", timezone="UTC",
                                                start=None, weeks=12, source="command")
                for role, name in (("mentor", "mentor"), ("mentee", "forger"), ("mentor", "mentor2"),
                                   ("mentee", "mentee2")):
                    await add_member(s, env, cohort, role, Who(matrix_id=users[name].user_id), name=name)
                await make_pair(s, env, cohort, Who(matrix_id=users["mentor"].user_id),
                                   Who(matrix_id=forger.user_id))
            lounge = await room_of(hub, "lounge:1")
            await room_of(hub, "pair:1")
            await forger.wait_joined(lounge, forger.user_id, timeout=20)

            # The forger reads the hub's tag from the lounge, as any member can...
            status, tag = await call(base, users["forger"], "GET",
                                     f"/_matrix/client/v3/rooms/{lounge}/state/{ROOM_TAG}/")
            assert status == 200 and tag["key"] == "lounge:1", tag
            # ...and makes rooms tagged for the next pair keys (ids are sequential), inviting the hub.
            forged: dict[str, str] = {}
            for n in (2, 3, 4):
                for generation in (1, 2):
                    forgery = {**tag, "key": f"pair:{n}", "generation": generation}
                    status, made = await call(
                        base, users["forger"], "POST", "/_matrix/client/v3/createRoom",
                        {"name": "Forged", "invite": [bot.user_id],
                         "initial_state": [{"type": ROOM_TAG, "state_key": "", "content": forgery}]})
                    assert status == 200, made
                    forged[made["room_id"]] = f"pair:{n}"

            async def hub_joined_all() -> bool:
                for room in forged:
                    _, member = await call(base, users["forger"], "GET",
                                           f"/_matrix/client/v3/rooms/{room}/state/m.room.member/{bot.user_id}")
                    if member.get("membership") != "join":
                        return False
                return True

            await wait_until(hub_joined_all, 30, "the hub joining the forged rooms")
            await quiet(hub)

            # The homeserver goes down just as the next pair is made: its room creation fails.
            own_synapse.kill()
            async with hub.db.transaction() as s:
                env = await load_env(s, hub.outbox, hub.clock, hub.settings)
                cohort = await require_cohort(s, env, "take")
                pair, _ = await make_pair(s, env, cohort, Who(matrix_id=mentor2.user_id),
                                             Who(matrix_id=mentee2.user_id))
                key = f"pair:{pair.id}"
            assert key in forged.values(), f"{key} was not forged: the test proves nothing"

            async def creation_failed() -> bool:
                assert hub.db is not None
                async with hub.db.session() as s:
                    room = (await s.execute(select(HubRoom).where(hub_room_table.c.key == key))).scalar_one()
                    attempts = (await s.execute(select(T.c.attempts).where(
                        T.c.dedupe_key == f"create:{key}:{room.generation}"))).scalar_one_or_none()
                return room.status == "creating" and bool(attempts)

            await wait_until(creation_failed, 30, f"a failed creation of {key}")
            await own_synapse.start()
            room_id = await room_of(hub, key, timeout=90)
            await mentor2.wait_joined(room_id, mentee2.user_id, timeout=60)
            await quiet(hub)

        # The new pair's room is one the hub created...
        assert room_id not in forged
        status, create = await call(base, users["mentor2"], "GET",
                                    f"/_matrix/client/v3/rooms/{room_id}/state/m.room.create/")
        assert status == 200 and create.get("additional_creators", []) == [], create
        status, events = await call(base, users["mentor2"], "GET",
                                    f"/_matrix/client/v3/rooms/{room_id}/state")
        assert [e["sender"] for e in events if e["type"] == "m.room.create"] == [bot.user_id]
        # ...and the forger's rooms got nothing: no invites for the pair, no welcome, no link.
        for room in forged:
            status, events = await call(base, users["forger"], "GET",
                                        f"/_matrix/client/v3/rooms/{room}/state")
            assert status == 200, events
            members = {e["state_key"] for e in events if e["type"] == "m.room.member"}
            assert members == {forger.user_id, bot.user_id}, (room, members)
            status, history = await call(base, users["forger"], "GET",
                                         f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100")
            assert status == 200, history
            posted = [e for e in history["chunk"] if e["sender"] == bot.user_id
                      and e["type"] in ("m.room.message", "m.room.encrypted")]
            assert posted == [], (room, posted)
    finally:
        for p in people.values():
            await p.stop()
