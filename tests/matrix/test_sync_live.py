"""The sync loop against a real Synapse (issue 17): the filter it uploads, what its timeline
leaves out, a saved position the server cannot read, and what nio still knows without the
hub's own events and without full state."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinResponse,
    MatrixRoom,
    RoomCreateResponse,
    RoomSendResponse,
    SyncResponse,
)

from hub.clock import SystemClock
from hub.core.cohorts import pair_spec
from hub.delivery.ratelimit import SharedPause
from hub.devserver.proxy import RecordingProxy
from hub.devserver.synapse import RegisteredUser, SynapseServer
from hub.matrix.provision import Provision
from hub.matrix.sync import STATE_TYPES, SyncLoop
from hub.storage.db import Database, open_database

pytestmark = pytest.mark.synapse

Seen = list[tuple[SyncResponse, bool]]


def plain_client(homeserver: str, user: RegisteredUser, store: Path | None = None) -> AsyncClient:
    """The user's registration device; with end-to-end encryption (and nio's store) given a folder."""
    if store is not None:
        store.mkdir(parents=True, exist_ok=True)
    client = AsyncClient(homeserver, user.user_id, device_id=user.device_id,
                         store_path=str(store) if store is not None else "",
                         config=AsyncClientConfig(encryption_enabled=store is not None,
                                                  store_sync_tokens=False, max_timeouts=0))
    client.restore_login(user.user_id, user.device_id, user.access_token)
    return client


@asynccontextmanager
async def syncing(client: AsyncClient, db: Database) -> AsyncIterator[tuple[SyncLoop, Seen]]:
    """A running `SyncLoop` (1 s long-polls) and every response it handled, with its `first`."""
    seen: Seen = []

    async def handler(resp: SyncResponse, first: bool) -> None:
        seen.append((resp, first))

    loop = SyncLoop(client, db, SystemClock(), handler, timeout_ms=1000, probe_seconds=0.5)
    task = asyncio.create_task(loop.run())
    try:
        yield loop, seen
    finally:
        loop.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until(check: Callable[[], bool], timeout: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def timeline(seen: Seen, room_id: str) -> list[dict[str, Any]]:
    return [e.source for resp, _ in seen if room_id in resp.rooms.join
            for e in resp.rooms.join[room_id].timeline.events]


async def test_the_filter_keeps_the_hubs_own_events_out_and_lists_the_state_it_reads(
    synapse: SynapseServer, register: Callable[..., Any], tmp_path: Path
) -> None:
    hub_user, guest_user = await register("hub"), await register("guest")
    hub, guest = plain_client(synapse.url, hub_user), plain_client(synapse.url, guest_user)
    db = await open_database(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        async with syncing(hub, db) as (loop, seen):
            await asyncio.wait_for(loop.first_done.wait(), 15)
            # The filter as Synapse keeps it, read back.
            async with aiohttp.ClientSession() as http, http.get(
                    f"{synapse.url}/_matrix/client/v3/user/{hub_user.user_id}/filter/{loop._filter_id}",
                    headers={"Authorization": f"Bearer {hub_user.access_token}"}) as resp:
                assert resp.status == 200
                stored = await resp.json()
            assert stored["room"]["timeline"]["not_senders"] == [hub_user.user_id]
            assert sorted(stored["room"]["state"]["types"]) == sorted(STATE_TYPES)
            assert {"m.room.encryption", "m.room.member", "m.room.create", "m.room.power_levels",
                    "m.room.tombstone"} <= set(STATE_TYPES)
            assert stored["room"]["state"]["lazy_load_members"] is True

            # The hub's message and the guest's, in one room: only the guest's comes back.
            created = await hub.room_create(name="mixed", invite=[guest_user.user_id])
            room = created.room_id
            await guest.join(room)
            mine = await hub.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "from the hub"})
            assert isinstance(mine, RoomSendResponse), mine
            theirs = await guest.room_send(room, "m.room.message",
                                           {"msgtype": "m.text", "body": "from a person"})
            assert isinstance(theirs, RoomSendResponse), theirs
            await until(lambda: any(e["event_id"] == theirs.event_id for e in timeline(seen, room)))
            senders = {e["sender"] for e in timeline(seen, room)}
            assert senders == {guest_user.user_id}, senders  # the guest's join and message only

            # A room the hub joins still arrives whole: someone else's, with its state.
            other = (await guest.room_create(name="theirs", invite=[hub_user.user_id])).room_id
            await hub.join(other)
            await until(lambda: any(other in resp.rooms.join for resp, _ in seen))
            state = [e.source for resp, _ in seen if other in resp.rooms.join
                     for e in [*resp.rooms.join[other].state, *resp.rooms.join[other].timeline.events]]
            assert {"m.room.create", "m.room.member"} <= {e["type"] for e in state}
    finally:
        await hub.close()
        await guest.close()
        await db.close()


async def test_a_saved_position_the_server_cannot_read_starts_over_with_an_initial_sync(
    synapse: SynapseServer, register: Callable[..., Any], tmp_path: Path
) -> None:
    hub_user = await register("hub")
    db = await open_database(f"sqlite:///{tmp_path / 'hub.db'}")
    await db.set_state("sync.next_batch", "s0_not-a-position")  # e.g. a homeserver reset under the hub
    async with RecordingProxy(synapse.url) as proxy:
        hub = plain_client(proxy.url, hub_user)
        try:
            async with syncing(hub, db) as (loop, seen):
                await asyncio.wait_for(loop.first_done.wait(), 15)
        finally:
            await hub.close()
    syncs = proxy.matching("GET", "/_matrix/client/v3/sync")
    assert syncs[0].query.get("since") == "s0_not-a-position" and syncs[0].status == 400
    assert "since" not in syncs[1].query and syncs[1].status == 200
    assert seen[0][1] is True  # handled as a first sync: history it may have answered is not replayed
    assert await db.get_state("sync.next_batch") not in (None, "", "s0_not-a-position")
    await db.close()


def events_of(seen: Seen, room_id: str) -> list[dict[str, Any]]:
    """Everything the syncs in `seen` showed of the room, state and timeline."""
    return [e.source for resp, _ in seen if room_id in resp.rooms.join
            for e in [*resp.rooms.join[room_id].state, *resp.rooms.join[room_id].timeline.events]]


async def test_what_the_hub_does_itself_reaches_nio_at_once_though_its_sync_never_shows_it(
    synapse: SynapseServer, register: Callable[..., Any], tmp_path: Path
) -> None:
    hub_user, guest_user = await register("hub"), await register("guest")
    db = await open_database(f"sqlite:///{tmp_path / 'hub.db'}")
    hub = plain_client(synapse.url, hub_user, tmp_path / "crypto")
    guest = plain_client(synapse.url, guest_user)
    try:
        async with syncing(hub, db) as (loop, seen):
            await asyncio.wait_for(loop.first_done.wait(), 15)
            provision = Provision(hub, SharedPause(SystemClock(), "test"))
            made = await provision.create(pair_spec("pair:1", "A", "B", "https://v/x", encrypted=True,
                                                    tag={"key": "pair:1"}, prefix="!hub"), "12")
            assert hub.rooms[made].encrypted
            # A room made plain, and encrypted later by the hub (a room fix puts encryption
            # back): Synapse shows the room newly joined, then never the hub's encryption event.
            plain = await provision.create(pair_spec("pair:2", "A", "B", "https://v/x", encrypted=False,
                                                     tag={"key": "pair:2"}, prefix="!hub"), "12")
            await provision.invite(plain, guest_user.user_id)
            await until(lambda: any(plain in resp.rooms.join for resp, _ in seen))
            await provision.put_state(plain, "m.room.encryption", "", {"algorithm": "m.megolm.v1.aes-sha2"})
            assert hub.rooms[plain].encrypted
            handled = len(seen)
            await until(lambda: len(seen) > handled + 1)
            assert not any(e["type"] == "m.room.encryption" for e in events_of(seen, plain))
            assert timeline(seen, made) == [] and timeline(seen, plain) == []  # all the hub's own
        await hub.close()

        hub = plain_client(synapse.url, hub_user, tmp_path / "crypto")  # the next run
        assert {made, plain} <= hub.encrypted_rooms and plain not in hub.rooms  # from nio's store
        await guest.join(plain)
        said = await guest.room_send(plain, "m.room.message", {"msgtype": "m.text", "body": "hi"})
        assert isinstance(said, RoomSendResponse), said
        async with syncing(hub, db) as (loop, seen):
            # Resumed without full state: the room comes back with the guest's events only...
            await until(lambda: any(e["event_id"] == said.event_id for e in timeline(seen, plain)))
            assert not any(e["type"] == "m.room.encryption" for e in events_of(seen, plain))
            assert hub.rooms[plain].encrypted  # ...and the hub's next message there is encrypted

            # The hub's kick: nio's member list drops the guest at once, and the next message
            # gets a new room key, which the guest's devices are not sent.
            provision = Provision(hub, SharedPause(SystemClock(), "test"))
            assert guest_user.user_id in hub.rooms[plain].users
            await provision.kick(plain, guest_user.user_id, "test")
            assert guest_user.user_id not in hub.rooms[plain].users
    finally:
        await hub.close()
        await guest.close()
        await db.close()


async def shared_room(guest: AsyncClient, hub: AsyncClient) -> str:
    """A room the guest made and the hub (its sync loop running) joined, known to the hub's nio."""
    made = await guest.room_create(invite=[str(hub.user_id)])
    assert isinstance(made, RoomCreateResponse), made
    await until(lambda: made.room_id in hub.invited_rooms)
    joined = await hub.join(made.room_id)
    assert isinstance(joined, JoinResponse), joined
    await until(lambda: made.room_id in hub.rooms)
    return str(made.room_id)


@asynccontextmanager
async def hub_beside_guest(
    synapse: SynapseServer, register: Callable[..., Any], tmp_path: Path, handler: Any, *,
    crypto: bool, **options: Any,
) -> AsyncIterator[tuple[AsyncClient, AsyncClient, str, RecordingProxy]]:
    """A hub's `SyncLoop` (30 s long polls, `options` added) through a recording proxy, synced
    once, and a room it shares with a guest: (hub, guest, room id, proxy)."""
    hub_user, guest_user = await register("hub"), await register("guest")
    db = await open_database(f"sqlite:///{tmp_path / 'hub.db'}")
    guest = plain_client(synapse.url, guest_user)
    async with RecordingProxy(synapse.url) as proxy:
        hub = plain_client(proxy.url, hub_user, tmp_path / "crypto" if crypto else None)
        loop = SyncLoop(hub, db, SystemClock(), handler, timeout_ms=30_000, probe_seconds=0.5, **options)
        task = asyncio.create_task(loop.run())
        try:
            await asyncio.wait_for(loop.first_done.wait(), 15)
            yield hub, guest, await shared_room(guest, hub), proxy
        finally:
            loop.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await hub.close()
            await guest.close()
            await db.close()


async def test_a_batch_is_handled_before_the_key_query_it_calls_for(
    synapse: SynapseServer, register: Callable[..., Any], tmp_path: Path
) -> None:
    # The room check teaches nio new members every few seconds, and nio then wants their keys:
    # a key query before the batch was handled held every command in it (the hub's `!hub ping`
    # p95 at 5,000 rooms). Held 3 s at the proxy here: the message is handled first.
    handled: dict[str, float] = {}

    async def handler(resp: SyncResponse, first: bool) -> None:
        for room in resp.rooms.join.values():
            for e in room.timeline.events:
                handled.setdefault(e.event_id, time.monotonic())

    # Long polls of 30 s: the one open when nio starts wanting keys returns with the message.
    async with hub_beside_guest(synapse, register, tmp_path, handler,
                                crypto=True) as (hub, guest, made, proxy):
        await until(lambda: not hub.should_query_keys)
        await asyncio.sleep(1)  # the batch with the join handled: the loop is in a long poll
        proxy.delay("POST", "/_matrix/client/v3/keys/query", 3.0)
        room = MatrixRoom(made, str(hub.user_id), True)
        room.add_member(str(guest.user_id), None, None)
        assert hub.olm is not None
        hub.olm.update_tracked_users(room)  # as a fed room does: nio wants the guest's keys
        assert hub.should_query_keys
        said = await guest.room_send(made, "m.room.message", {"msgtype": "m.text", "body": "hi"})
        assert isinstance(said, RoomSendResponse), said
        await until(lambda: said.event_id in handled and bool(proxy.matching("POST", ".*/keys/query")))
    query = proxy.matching("POST", "/_matrix/client/v3/keys/query")[0]
    assert handled[said.event_id] < query.ended - 2.0  # handled, then the held query ended


async def test_while_a_fan_out_is_sent_the_loop_polls_instead_of_holding_a_long_poll(
    synapse: SynapseServer, register: Callable[..., Any], tmp_path: Path
) -> None:
    # An open long poll is computed again by Synapse for every event in any of the account's
    # rooms, the hub's own sends included: one sync per icebreaker in a 5,000-room fan-out.
    # While busy, a poll every `busy_poll` seconds instead, and messages are still all handled.
    busy = False
    handled: list[str] = []

    async def handler(resp: SyncResponse, first: bool) -> None:
        handled.extend(e.event_id for room in resp.rooms.join.values() for e in room.timeline.events)

    async with hub_beside_guest(synapse, register, tmp_path, handler, crypto=False,
                                busy=lambda: busy, busy_poll=0.3) as (_, guest, made, proxy):
        busy = True
        proxy.clear()
        said = []
        for i in range(10):
            sent = await guest.room_send(made, "m.room.message", {"msgtype": "m.text", "body": f"{i}"})
            assert isinstance(sent, RoomSendResponse), sent
            said.append(sent.event_id)
            await asyncio.sleep(0.2)
        await until(lambda: set(said) <= set(handled))
        busy_syncs = proxy.matching("GET", "/_matrix/client/v3/sync")
        busy = False
        await asyncio.sleep(2)
    # The long poll open when the fan-out began, then polls of timeout 0, 0.3 s or more apart.
    # (nio leaves a timeout of 0 out of the query: the server's default, no wait.)
    polls = sorted((e for e in busy_syncs if e.query.get("timeout", "0") == "0"), key=lambda e: e.began)
    assert len(polls) >= 3 and all(e.query.get("timeout", "0") in ("0", "30000") for e in busy_syncs)
    assert sum(1 for e in busy_syncs if e.query.get("timeout") == "30000") <= 1
    assert all(b.began - a.ended >= 0.25 for a, b in itertools.pairwise(polls))
    # Not busy: back to a long poll, still open 2 s later (polls would have ended six times).
    after = [e for e in proxy.matching("GET", "/_matrix/client/v3/sync") if e not in busy_syncs]
    assert len(after) <= 1, [dict(e.query) for e in after]
