"""Room provisioning calls against a real Synapse: versions, tags, invites, state, nio's room list."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
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
