"""Chat fan-out: one message to each of 500 rooms through the hub's outbox vs a plain nio loop.

Same Synapse (a local one with rate limits loosened), same account, same
concurrency (the dispatcher's 16 sends in flight) and the same rooms, in the
same run. The raw side is `AsyncClient.room_send` from 16 workers; the hub side
is a running `Hub` (sync loop and all) whose outbox gets one row per room, timed
from the enqueue's commit until every row is recorded as sent. Rounds
alternate which side goes first, so neither gets a warmer Synapse. Synapse's CPU is
the ceiling (about 50 messages/s on 2 cores). Run: `python bench/chat_fanout.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    backend_name,
    hub_settings,
    matrix_client,
    running_hub,
    runs,
    scratch_database,
    synapse_at,
)
from nio import AsyncClient, RoomCreateResponse, RoomSendResponse

from hub.service import Hub

__all__ = ["main"]


async def make_rooms(client: AsyncClient, n: int) -> list[str]:
    gate = asyncio.Semaphore(8)

    async def one(i: int) -> str:
        async with gate:
            resp = await client.room_create(name=f"bench {i}")
            assert isinstance(resp, RoomCreateResponse), resp
            return str(resp.room_id)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def content(tag: str, i: int) -> dict[str, Any]:
    return {"msgtype": "m.notice", "body": f"{tag} {i}: this week's icebreaker is up in your pair room"}


async def raw(client: AsyncClient, rooms: list[str], concurrency: int) -> float:
    tag = secrets.token_hex(3)
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for i, room in enumerate(rooms):
        queue.put_nowait((i, room))

    async def worker() -> None:
        while not queue.empty():
            i, room = queue.get_nowait()
            resp = await client.room_send(room, "m.room.message", content(tag, i))
            assert isinstance(resp, RoomSendResponse), resp

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - began


async def through_hub(hub: Hub, rooms: list[str]) -> tuple[float, float]:
    assert hub.db is not None and hub.outbox is not None and hub.dispatcher is not None
    tag = secrets.token_hex(3)
    rows = [dict(channel="matrix", kind="bench", lane=room, dedupe_key=f"bench:{tag}:{room}",
                 payload={"op": "message", "room_id": room, "type": "m.room.message",
                          "content": content(tag, i)})
            for i, room in enumerate(rooms)]
    start_count = hub.dispatcher.sent_count
    began = time.perf_counter()
    async with hub.db.transaction() as s:
        await hub.outbox.enqueue_many(s, rows)
    enqueued = time.perf_counter()
    # Polling at 10 ms is precise enough for a ~10 s run and adds no hook to the hub.
    while hub.dispatcher.sent_count - start_count < len(rows):  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    await hub.dispatcher.flush()  # counted once recorded in the database
    return enqueued - began, time.perf_counter() - enqueued


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        async with synapse_at(base) as synapse:
            bot = await synapse.register("benchhub", secrets.token_urlsafe(12))
            client = matrix_client(synapse.url, bot)
            t = time.perf_counter()
            rooms = await make_rooms(client, args.rooms)
            print(f"created {len(rooms)} rooms in {time.perf_counter() - t:.1f} s")
            raws: list[float] = []
            hubs: list[float] = []
            enqueues: list[float] = []
            async with scratch_database(base, args.database_url) as url, \
                    running_hub(hub_settings(base, synapse.url, bot, url)) as hub:
                for i in range(args.rounds):
                    # Alternate which goes first: Synapse speeds up as its caches warm.
                    if i % 2:
                        enqueue, dispatch = await through_hub(hub, rooms)
                        raws.append(await raw(client, rooms, args.concurrency))
                    else:
                        raws.append(await raw(client, rooms, args.concurrency))
                        enqueue, dispatch = await through_hub(hub, rooms)
                    enqueues.append(enqueue)
                    hubs.append(dispatch)
            await client.close()
    n = len(rooms)
    r, h = min(raws), min(hubs)
    backend = backend_name(args.database_url)
    print(f"chat fan-out: 1 message to each of {n} rooms, {args.concurrency} in flight, "
          f"outbox on {backend}, best of {args.rounds}")
    print(f"  raw nio room_send loop:  {r:.2f} s  {n / r:6.1f} msg/s   runs {runs(raws)}")
    print(f"  hub outbox (dispatch):   {h:.2f} s  {n / h:6.1f} msg/s   runs {runs(hubs)}")
    print(f"  hub enqueue (one transaction for all rows): {min(enqueues):.2f} s")
    print(f"  ratio hub/raw: {h / r:.2f} (target <= 1.15)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rooms", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
