"""Provisioning pair rooms: 200 pairs (room + 2 invites + encrypted welcome), hub vs plain nio.

Same local Synapse (rate limits loosened), the same 400 registered people, the
same concurrency (the dispatcher's 16 sends in flight; 16 pairs at a time on
the raw side) and the same calls: createRoom with the pair room's initial state
(tag, encryption, join rule, history visibility, power levels), the two invites,
then the welcome, encrypted, with nio told about the new room at once (nio
#279) exactly as the hub does. The hub side is a running `Hub` (sync loop and
all): `make_pair` x 200 in one transaction, timed from its commit until every
welcome is recorded as sent. Each round uses a new cohort whose space and lounge
invitations are done before the clock starts, so only the pairs are timed.
Rounds alternate raw and hub. Run: `python bench/provision_pairs.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _common import (
    backend_name,
    cpu_seconds,
    hub_settings,
    matrix_client,
    running_hub,
    scratch_database,
    synapse_at,
)
from nio import (
    AsyncClient,
    MatrixRoom,
    RoomCreateResponse,
    RoomInviteResponse,
    RoomSendResponse,
)
from sqlalchemy import func, select

from hub.core.cohorts import Who, pair_welcome
from hub.core.markup import markdown_to_matrix
from hub.devserver.synapse import SynapseServer
from hub.features.cohort_setup import cohort_rooms, create_cohort, get_cohort
from hub.features.members import add_member
from hub.features.pairs import make_pair
from hub.features.room_queue import load_env, queue_pending_invites
from hub.matrix.events import notice_content
from hub.service import Hub
from hub.storage.models import outbox_table as T

__all__ = ["main"]


async def register_people(synapse: SynapseServer, n: int) -> list[str]:
    gate = asyncio.Semaphore(8)
    tag = secrets.token_hex(2)

    async def one(i: int) -> str:
        async with gate:
            return (await synapse.register(f"p{tag}-{i}", secrets.token_urlsafe(10))).user_id

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def raw(client: AsyncClient, people: list[str], concurrency: int, round_no: int) -> float:
    """The same calls with plain nio: createRoom, two invites, the encrypted welcome."""
    gate = asyncio.Semaphore(concurrency)
    me = client.user_id

    async def one(i: int) -> None:
        mentor, mentee = people[2 * i], people[2 * i + 1]
        link = f"https://meet.jit.si/CohortHub-{secrets.token_hex(13)}"
        async with gate:
            created = await client.room_create(
                name=f"Mentor {i} & Mentee {i}", topic=f"Your video call: {link}", room_version="12",
                initial_state=[
                    {"type": "org.cohorthub.room", "state_key": "",
                     "content": {"install": "raw", "key": f"pair:{round_no}:{i}", "generation": 1}},
                    {"type": "m.room.history_visibility", "state_key": "",
                     "content": {"history_visibility": "invited"}},
                    {"type": "m.room.guest_access", "state_key": "",
                     "content": {"guest_access": "forbidden"}},
                    {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "invite"}},
                    {"type": "m.room.encryption", "state_key": "",
                     "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
                ],
                power_level_override={"users": {}, "invite": 100, "events_default": 0},
            )
            assert isinstance(created, RoomCreateResponse), created
            room_id = created.room_id
            room = MatrixRoom(room_id, me, True)
            room.add_member(me, None, None)
            client.rooms[room_id] = room
            client.encrypted_rooms.add(room_id)
            for resp in await asyncio.gather(client.room_invite(room_id, mentor),
                                             client.room_invite(room_id, mentee)):
                assert isinstance(resp, RoomInviteResponse), resp
            for user in (mentor, mentee):
                room.add_member(user, None, None, invited=True)
            assert client.olm is not None
            client.olm.update_tracked_users(room)
            body, html = markdown_to_matrix(pair_welcome(mentor=f"Mentor {i}", mentee=f"Mentee {i}",
                                                         cohort="Bench", link=link, prefix="!hub"))
            sent = await client.room_send(room_id, "m.room.message", notice_content(body, html),
                                          ignore_unverified_devices=True)
            assert isinstance(sent, RoomSendResponse), sent

    began = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(len(people) // 2)))
    return time.perf_counter() - began


async def quiet(hub: Hub, timeout: float = 600) -> None:
    assert hub.outbox is not None
    try:
        await asyncio.wait_for(hub.outbox.wait_until_drained(), timeout)
    except TimeoutError:
        raise TimeoutError("the hub's outbox did not drain") from None


async def through_hub(
    hub: Hub, people: list[str], round_no: int, pid: int | None
) -> tuple[float, float, float, float]:
    assert hub.db is not None and hub.outbox is not None
    slug = f"bench-{round_no}"
    # Untimed: the cohort, its space and lounge, and everyone invited there.
    async with hub.db.transaction() as s:
        env = await load_env(s, hub.outbox, hub.clock, hub.settings)
        # Starting in a month: the program's launch-day messages are not part of provisioning.
        start = (datetime.now(UTC) + timedelta(days=30)).date()
        cohort = await create_cohort(s, env, slug=slug, name=f"Bench {round_no}", timezone="UTC",
                                        start=start, weeks=12, source="command")
        for i, user in enumerate(people):
            await add_member(s, env, cohort, "mentor" if i % 2 == 0 else "mentee", Who(matrix_id=user),
                                name=f"{'Mentor' if i % 2 == 0 else 'Mentee'} {i // 2}", queue_invites=False)
        for room in await cohort_rooms(s, env, cohort.id or 0):
            if room is not None:
                await queue_pending_invites(s, env, room)
    await quiet(hub)
    assert hub.dispatcher is not None
    sent_before = hub.dispatcher.sent_count
    cpu_synapse, cpu_hub = cpu_seconds(pid), time.process_time()
    began = time.perf_counter()
    async with hub.db.transaction() as s:
        env = await load_env(s, hub.outbox, hub.clock, hub.settings)
        cohort2 = await get_cohort(s, slug)
        assert cohort2 is not None
        for i in range(len(people) // 2):
            mentor, mentee = Who(matrix_id=people[2 * i]), Who(matrix_id=people[2 * i + 1])
            await make_pair(s, env, cohort2, mentor, mentee)
    enqueued = time.perf_counter()
    want = len(people) // 2
    assert hub.dispatcher is not None
    # Each pair is two rows: its creation (with the invites) and its welcome. Waiting on
    # the dispatcher's counter costs nothing; the database confirms at the end.
    while hub.dispatcher.sent_count - sent_before < 2 * want:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    await hub.dispatcher.flush()
    async with hub.db.session() as s:
        welcomed = (await s.execute(select(func.count()).select_from(T).where(
            (T.c.kind == "pair-welcome") & (T.c.status == "sent")))).scalar_one()
        failed = (await s.execute(select(func.count()).select_from(T).where(
            T.c.status == "failed"))).scalar_one()
    if failed or welcomed != want * (round_no + 1):
        raise RuntimeError(f"{failed} rows failed, {welcomed} welcomes sent")
    return enqueued - began, time.perf_counter() - enqueued, cpu_synapse, cpu_hub


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        async with synapse_at(base) as synapse:
            hub_bot = await synapse.register("benchhub", secrets.token_urlsafe(12))
            raw_bot = await synapse.register("benchraw", secrets.token_urlsafe(12))
            t = time.perf_counter()
            people = await register_people(synapse, 2 * args.pairs)
            print(f"registered {len(people)} people in {time.perf_counter() - t:.1f} s")
            client = matrix_client(synapse.url, raw_bot, store=base / "raw-store")
            await client.keys_upload()
            raws: list[float] = []
            hubs: list[float] = []
            enqueues: list[float] = []
            process = getattr(synapse, "_process", None)  # the devserver's child; bench-only peek
            pid = process.pid if process is not None else None
            async with scratch_database(base, args.database_url) as url, \
                    running_hub(hub_settings(base, synapse.url, hub_bot, url)) as hub:
                assert hub.dispatcher is not None
                concurrency = hub.dispatcher.concurrency
                for r in range(args.rounds):
                    c0, p0 = cpu_seconds(pid), time.process_time()
                    raws.append(await raw(client, people, concurrency, r))
                    c1, p1 = cpu_seconds(pid), time.process_time()
                    enqueue, dispatch, c_setup, p_setup = await through_hub(hub, people, r, pid)
                    c2, p2 = cpu_seconds(pid), time.process_time()
                    enqueues.append(enqueue)
                    hubs.append(dispatch)
                    print(f"round {r + 1}: raw {raws[-1]:.2f} s (CPU: synapse {c1 - c0:.1f} s, "
                          f"client {p1 - p0:.1f} s); hub {hubs[-1]:.2f} s + {enqueue:.2f} s to queue "
                          f"(CPU: synapse {c2 - c_setup:.1f} s, hub {p2 - p_setup:.1f} s)")
            await client.close()
    n = args.pairs
    rw, hb = min(raws), min(hubs)
    backend = backend_name(args.database_url)
    print(f"provisioning {n} pair rooms (room + 2 invites + encrypted welcome), {concurrency} in flight, "
          f"outbox on {backend}, best of {args.rounds}")
    print(f"  plain nio:   {rw:.2f} s  {n / rw:5.1f} rooms/s   runs {[round(x, 2) for x in raws]}")
    print(f"  hub:         {hb:.2f} s  {n / hb:5.1f} rooms/s   runs {[round(x, 2) for x in hubs]}")
    print(f"  hub queueing the {n} pairs (one transaction): {min(enqueues):.2f} s")
    print(f"  ratio hub/raw: {hb / rw:.2f} (target <= 1.3)")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
