"""Room provisioning calls against a real Synapse: versions, tags, invites, state, nio's room list."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from nio import AsyncClient, AsyncClientConfig, RoomGetStateResponse

from hub.clock import SystemClock
from hub.core.cohorts import ROOM_TAG, pair_spec, space_spec
from hub.delivery.ratelimit import SharedPause
from hub.devserver.synapse import RegisteredUser, SynapseServer
from hub.errors import PermanentDeliveryError
from hub.matrix.provision import Provision

pytestmark = pytest.mark.synapse


def client_for(synapse: SynapseServer, user: RegisteredUser) -> AsyncClient:
    client = AsyncClient(synapse.url, user.user_id, device_id=user.device_id,
                         config=AsyncClientConfig(encryption_enabled=False))
    client.restore_login(user.user_id, user.device_id, user.access_token)
    return client


@pytest.fixture
async def bot(
    synapse: SynapseServer, register: Callable[..., Any]
) -> AsyncIterator[tuple[Provision, AsyncClient]]:
    user = await register("hub")
    client = client_for(synapse, user)
    yield Provision(client, SharedPause(SystemClock(), "test")), client
    await client.close()


async def state(client: AsyncClient, room_id: str) -> dict[tuple[str, str], dict[str, Any]]:
    resp = await client.room_get_state(room_id)
    assert isinstance(resp, RoomGetStateResponse), resp
    return {(e["type"], e.get("state_key", "")): e["content"] for e in resp.events}


@pytest.mark.parametrize("version", ["12", "10"])
async def test_power_levels_follow_the_room_version(bot: tuple[Provision, AsyncClient], version: str) -> None:
    provision, client = bot
    spec = space_spec("space:1", "Winter", {"@mod:localhost": 50}, {"install": "t", "key": "space:1"})
    room_id = await provision.create(spec, version)
    st = await state(client, room_id)
    assert st[("m.room.create", "")]["room_version"] == version
    users = st[("m.room.power_levels", "")]["users"]
    assert users["@mod:localhost"] == 50
    if version == "12":
        assert client.user_id not in users  # the creator has unlimited power and is not listed
    else:
        assert users[client.user_id] == 100
    assert st[(ROOM_TAG, "")] == {"install": "t", "key": "space:1"}
    assert room_id in client.rooms  # nio knows it at once, before any sync


async def test_find_tagged_finds_only_this_installs_room(
    synapse: SynapseServer, bot: tuple[Provision, AsyncClient]
) -> None:
    provision, client = bot
    mine = {"install": "me", "key": "pair:1", "generation": 1}
    theirs = {"install": "other", "key": "pair:1", "generation": 1}
    spec = pair_spec("pair:1", "A", "B", "https://v/x", encrypted=True, tag=mine, prefix="!hub")
    other = pair_spec("pair:1", "A", "B", "https://v/x", encrypted=True, tag=theirs, prefix="!hub")
    decoy = await provision.create(other, "12")
    room = await provision.create(spec, "12")
    # A new process knows nothing: it scans the joined rooms' tags.
    fresh = Provision(client, SharedPause(SystemClock(), "test"))
    assert await fresh.find_tagged(mine, skip=set()) == room
    assert await fresh.find_tagged(theirs, skip=set()) == decoy
    assert await fresh.find_tagged(mine, skip={room}) is None  # a room already recorded
    assert await fresh.find_tagged({**mine, "generation": 2}, skip=set()) is None


async def test_invites_kicks_and_leaves_are_idempotent(
    synapse: SynapseServer, register: Callable[..., Any], bot: tuple[Provision, AsyncClient]
) -> None:
    provision, client = bot
    guest = await register("guest")
    room = await provision.create(space_spec("space:9", "S", {}, {"key": "space:9"}), "12")
    assert await provision.invite(room, guest.user_id) == "ok"
    assert await provision.invite(room, guest.user_id) in ("ok", "already")
    with pytest.raises(PermanentDeliveryError):
        await provision.invite(room, "@someone:unreachable.invalid")
    await provision.kick(room, guest.user_id, "test")
    await provision.kick(room, guest.user_id, "again")  # not in the room any more: fine
    await provision.leave(room)
    await provision.leave(room)
    assert room not in client.rooms
    gone = await provision.snapshot(room)  # a former member may still read the state as they left it
    assert gone is None or gone.members[client.user_id] == "leave"


async def test_snapshot_and_load_room_teach_a_fresh_client(
    synapse: SynapseServer, register: Callable[..., Any], bot: tuple[Provision, AsyncClient]
) -> None:
    provision, client = bot
    guest = await register("guest")
    spec = pair_spec("pair:5", "A", "B", "https://v/x", encrypted=True, tag={"key": "pair:5"}, prefix="!hub")
    room = await provision.create(spec, "12")
    await provision.invite(room, guest.user_id)
    snap = await provision.snapshot(room)
    assert snap is not None and snap.room_version == "12"
    assert snap.members == {client.user_id: "join", guest.user_id: "invite"}
    assert snap.creators == frozenset({client.user_id})
    assert await provision.snapshot("!missing:localhost") is None

    # After a restart nio knows no rooms; loading one makes it sendable (nio #279).
    again = AsyncClient(synapse.url, client.user_id, device_id=client.device_id)
    again.restore_login(client.user_id, client.device_id, client.access_token)
    try:
        loader = Provision(again, SharedPause(SystemClock(), "test"))
        assert room not in again.rooms
        assert await loader.load_room(room)
        known = again.rooms[room]
        assert known.encrypted and guest.user_id in known.invited_users
        assert not await loader.load_room("!missing:localhost")
    finally:
        await again.close()


async def test_direct_chats_are_recorded_in_account_data(
    synapse: SynapseServer, bot: tuple[Provision, AsyncClient]
) -> None:
    provision, client = bot
    await provision.set_direct("@a:localhost", "!one:localhost")
    await provision.set_direct("@a:localhost", "!two:localhost")
    await provision.set_direct("@b:localhost", "!three:localhost")
    await provision.set_direct("@a:localhost", "!one:localhost")  # once only
    resp = await client.send("GET", f"/_matrix/client/v3/user/{client.user_id}/account_data/m.direct",
                             headers={"Authorization": f"Bearer {client.access_token}"})
    assert await resp.json() == {"@a:localhost": ["!one:localhost", "!two:localhost"],
                                 "@b:localhost": ["!three:localhost"]}


async def test_find_tagged_ignores_tags_the_hub_did_not_write(
    synapse: SynapseServer, register: Callable[..., Any], bot: tuple[Provision, AsyncClient]
) -> None:
    provision, client = bot
    mod_user, forger_user = await register("mod"), await register("forger")
    mod, forger = client_for(synapse, mod_user), client_for(synapse, forger_user)
    try:
        tag = {"install": "me", "generation": 1}
        mine = await provision.create(pair_spec("pair:1", "A", "B", "https://v/x", encrypted=False,
                                                tag={**tag, "key": "pair:1"}, prefix="!hub"), "12")
        # A room the hub made, where a power-50 moderator relabels it as another pair's room.
        lounge = await provision.create(
            space_spec("lounge:1", "L", {mod_user.user_id: 50}, {**tag, "key": "lounge:1"}), "12")
        await provision.invite(lounge, mod_user.user_id)
        assert type(await mod.join(lounge)).__name__ == "JoinResponse"
        relabel = await mod.room_put_state(lounge, ROOM_TAG, {**tag, "key": "pair:2"})
        assert type(relabel).__name__ == "RoomPutStateResponse", relabel
        # Rooms a participant made with a copied tag, the hub invited and joined: one where
        # the forger alone is creator, one naming the hub as an additional creator too.
        forged: list[str] = []
        for extra in ([], [client.user_id]):
            body: dict[str, Any] = {
                "room_version": "12", "invite": [client.user_id],
                "initial_state": [{"type": ROOM_TAG, "state_key": "", "content": {**tag, "key": "pair:3"}}],
            }
            if extra:
                body["creation_content"] = {"additional_creators": extra}
            resp = await forger.send("POST", "/_matrix/client/v3/createRoom", json.dumps(body),
                                     headers={"Authorization": f"Bearer {forger.access_token}"})
            made = await resp.json()
            assert resp.status == 200, made
            assert type(await client.join(made["room_id"])).__name__ == "JoinResponse"
            forged.append(made["room_id"])

        fresh = Provision(client, SharedPause(SystemClock(), "test"))  # a restart: nothing cached
        assert await fresh.find_tagged({**tag, "key": "pair:1"}, skip=set()) == mine
        assert await fresh.find_tagged({**tag, "key": "pair:2"}, skip=set()) is None
        assert await fresh.find_tagged({**tag, "key": "pair:3"}, skip=set()) is None

        # The snapshot tells a room the hub owns from one it was only let into.
        own, theirs = await provision.snapshot(mine), await provision.snapshot(forged[0])
        assert own is not None and own.owned_by(client.user_id)
        assert theirs is not None and not theirs.owned_by(client.user_id)
        assert theirs.outranks(forger_user.user_id, client.user_id)
        assert not own.outranks(forger_user.user_id, client.user_id)
    finally:
        await mod.close()
        await forger.close()


async def test_an_encrypted_room_is_saved_to_nios_store_once(
    synapse: SynapseServer, register: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The room check feeds every encrypted room on each pass; each feed once wrote the room to
    # nio's SQLite store on the event loop (40 % of the hub's time during a pass).
    user = await register("hub")
    client = AsyncClient(synapse.url, user.user_id, device_id=user.device_id, store_path=str(tmp_path),
                         config=AsyncClientConfig(encryption_enabled=True))
    client.restore_login(user.user_id, user.device_id, user.access_token)
    try:
        provision = Provision(client, SharedPause(SystemClock(), "test"))
        spec = pair_spec("pair:6", "A", "B", "https://v/x", encrypted=True, tag={"key": "pair:6"},
                         prefix="!hub")
        room = await provision.create(spec, "12")
        assert client.store is not None and room in client.store.load_encrypted_rooms()
        saves: list[list[str]] = []
        save = client.store.save_encrypted_rooms

        def counted(rooms: list[str]) -> None:
            saves.append(list(rooms))
            save(rooms)

        monkeypatch.setattr(client.store, "save_encrypted_rooms", counted)
        snap = await provision.snapshot(room)
        assert snap is not None
        for _ in range(3):
            provision.forget(room)
            provision.feed(room, snap.events)
            assert client.rooms[room].encrypted
        assert saves == []
    finally:
        await client.close()
