"""Issue 17: the hub keeps no copy of its own room keys, and encryption works as before.

nio stored a copy of every room key the hub's device made and loaded them all at each start;
a new key per room after each restart made that grow without end at 5,000 rooms
(`hub.matrix.crypto_store`). Judged as a pair meets it, across a restart: the hub still reads
what the mentor writes with the key the mentor's client already gave it (no new key), the
mentor still reads what the hub posts after the restart, and the hub's store on disk holds the
mentor's key and none of its own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nio import AsyncClient, LoginResponse, RoomMessageNotice

from hub.config import Settings
from hub.devserver.synapse import RegisteredUser, SynapseServer

from tests.support.cohorts import pair_in_new_cohort, post_in_pair_room, quiet
from tests.support.live_hub import hub_settings, running_hub
from tests.support.matrix_user import Participant

pytestmark = pytest.mark.synapse

TEXT = "This week's question, after the restart"


def _stored_senders(store: Path) -> list[str]:
    (db,) = store.glob("*.db")
    with sqlite3.connect(db) as conn:
        return [k for (k,) in conn.execute("SELECT sender_key FROM megolminboundsessions")]


async def _pair_asked(synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any],
                      tmp_path: Path) -> tuple[Settings, Any, Any, str, str]:
    """A first run: the pair made, the mentor's `!hub ping` answered in the pair room (the hub
    got and used the mentor's room key); the hub's identity key."""
    bot = await register("hub")
    mod, mentor, mentee = await participant("lead"), await participant("mentor"), await participant("mentee")
    settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub",
                            moderators=[mod.user_id])
    async with running_hub(settings) as hub:
        pair = await pair_in_new_cohort(hub, mod, mentor, mentee)
        await mentor.wait_joined(pair, mentor.user_id, timeout=30)
        assert await mentor.ask(pair, "!hub ping") == "pong"
        await quiet(hub)
        assert hub.client is not None
        return settings, mentor, mentee, pair, str(hub.client.olm.account.identity_keys["curve25519"])


async def test_across_a_restart_the_pair_and_the_hub_read_each_other_and_the_hub_keeps_only_theirs(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any], tmp_path: Path,
) -> None:
    settings, mentor, mentee, pair, hub_key = await _pair_asked(synapse, register, participant, tmp_path)
    mentor_session = mentor.client.olm.outbound_group_sessions[pair].id
    mentor_key = mentor.client.olm.account.identity_keys["curve25519"]
    store = tmp_path / "hub" / "crypto"
    # The hub posted its welcome encrypted (a key of its own) and read the mentor's: only
    # the mentor's is on disk.
    assert mentor_key in _stored_senders(store)
    assert hub_key not in _stored_senders(store)

    async with running_hub(settings) as hub:
        assert hub.db is not None and hub.outbox is not None
        # The mentor's client still uses the key it gave the hub before the restart ...
        assert await mentor.ask(pair, "!hub ping") == "pong"
        assert mentor.client.olm.outbound_group_sessions[pair].id == mentor_session
        # ... and the hub's first message after the restart, under a new key, reaches the pair.
        await post_in_pair_room(hub, TEXT, "after-restart")
        for person in (mentor, mentee):
            await person.wait_until(lambda p=person: any(isinstance(e, RoomMessageNotice) and e.body == TEXT
                                                         for e in p.in_room(pair)), 30)
        assert hub.client is not None
        assert hub.client.olm.outbound_group_sessions[pair].id  # a key of its own, in memory only
        await quiet(hub)
    assert hub_key not in _stored_senders(store)
    assert mentor_key in _stored_senders(store)


async def test_a_device_added_while_the_hub_was_down_gets_the_room_key_of_its_next_message(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any], tmp_path: Path,
) -> None:
    """The hub keeps following the mentor's device list across the restart (no new key query of
    its own), and still learns of the phone the mentor logged in meanwhile, from the resumed
    sync's `device_lists.changed`: the new device reads the hub's next message."""
    settings, mentor, _, pair, _ = await _pair_asked(synapse, register, participant, tmp_path)

    login = AsyncClient(synapse.url, mentor.user_id)
    resp = await login.login(mentor.user.password, device_name="Ada's phone")
    await login.close()
    assert isinstance(resp, LoginResponse), resp
    phone = Participant(synapse.url, RegisteredUser(mentor.user_id, mentor.user.password, resp.access_token,
                                                    resp.device_id), tmp_path / "store-phone")
    await phone.start()  # uploads the phone's keys
    try:
        async with running_hub(settings) as hub:
            assert hub.db is not None and hub.outbox is not None and hub.client is not None
            assert mentor.user_id in hub.client.olm.tracked_users  # followed from the last run
            await post_in_pair_room(hub, TEXT, "to-the-phone")
            await phone.wait_until(lambda: any(isinstance(e, RoomMessageNotice) and e.body == TEXT
                                               for e in phone.in_room(pair)), 30)
    finally:
        await phone.stop()
