"""Acceptance 2: against Synapse's default rate limits (10 burst, 0.2/s), 30 messages to one
room all arrive, in order, and the pause honours `retry_after_ms`. Its own Synapse, since
every other test runs with the limits loosened. Takes ~100 s: 20 messages at 0.2/s."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nio import MessageDirection, RoomMessagesResponse, SyncResponse
from sqlalchemy import func, select

from hub.devserver.synapse import SynapseServer
from hub.storage.models import outbox_table as T

from tests.support.delivery import fresh_filter, make_rooms, raw_client, wait_for
from tests.support.live_hub import hub_settings, running_hub

pytestmark = [pytest.mark.synapse, pytest.mark.slow]

N = 30
_PAUSE = re.compile(r"asked us to slow down: pausing all sends for (\d+) ms")


@pytest.fixture(scope="module")
async def limited_synapse(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SynapseServer]:
    server = SynapseServer(tmp_path_factory.mktemp("synapse-limited"), default_rate_limits=True)
    await server.start()
    yield server
    await server.stop()


async def _events(client: Any, room: str, sender: str) -> list[tuple[str, int]]:
    synced = await client.sync(timeout=0, sync_filter=fresh_filter())
    assert isinstance(synced, SyncResponse)
    resp = await client.room_messages(room, start=synced.next_batch, direction=MessageDirection.back,
                                      limit=200)
    assert isinstance(resp, RoomMessagesResponse)
    out = [(str(ev.source["content"].get("body")), int(ev.server_timestamp))
           for ev in resp.chunk if ev.sender == sender and ev.source.get("type") == "m.room.message"]
    return out[::-1]


async def test_30_messages_under_default_rate_limits_arrive_in_order(
    limited_synapse: SynapseServer, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hub")
    tag = secrets.token_hex(3)
    bot = await limited_synapse.register(f"ratehub{tag}", secrets.token_urlsafe(12))
    reader = await limited_synapse.register(f"ratereader{tag}", secrets.token_urlsafe(12))
    (room,) = await make_rooms(limited_synapse.url, bot, reader, 1)
    settings = hub_settings(homeserver=limited_synapse.url, bot=bot, data_dir=tmp_path / "hub",
                            moderators=[])
    async with running_hub(settings) as hub:
        assert hub.db is not None and hub.outbox is not None
        rows: list[dict[str, Any]] = [
            dict(channel="matrix", kind="burst", lane=room, dedupe_key=f"burst:{i}",
                 payload={"op": "message", "room_id": room, "type": "m.room.message",
                          "content": {"msgtype": "m.notice", "body": f"burst {i}"}})
            for i in range(N)
        ]
        async with hub.db.transaction() as s:
            await hub.outbox.enqueue_many(s, rows)

        async def done() -> bool:
            assert hub.db is not None
            async with hub.db.session() as s:
                counts: dict[str, int] = dict((await s.execute(select(T.c.status, func.count()).where(
                    T.c.kind == "burst").group_by(T.c.status))).all())
            assert not counts.get("failed"), counts  # nothing raised to the feature, nothing dropped
            return counts.get("sent") == N

        await wait_for(done, timeout=240, interval=0.5)
    client = raw_client(limited_synapse.url, reader)
    try:
        events = await _events(client, room, bot.user_id)
    finally:
        await client.close()
    assert [body for body, _ in events] == [f"burst {i}" for i in range(N)]

    pauses = [(r.created, int(m.group(1))) for r in caplog.records
              if r.name == "hub.delivery.ratelimit" and (m := _PAUSE.search(r.getMessage()))]
    print(f"\nrate limits: {len(pauses)} pauses, retry_after_ms {sorted({ms for _, ms in pauses})[:5]}..., "
          f"{N} messages over {(events[-1][1] - events[0][1]) / 1000:.1f} s")
    # Synapse refused some sends (the burst is 10) and the hub paused as told...
    assert pauses and all(ms > 0 for _, ms in pauses)
    # ...and waited the pause out: no message was accepted before a pause it was held by ended.
    stamps = [ts / 1000 for _, ts in events]
    for began, ms in pauses:
        after = [t for t in stamps if t > began]
        if after:
            assert after[0] >= began + ms / 1000 - 0.25, (began, ms, after[0])
    # Honoured, not hammered: about one refusal per rate-limited message, not a retry storm.
    assert len(pauses) <= 2 * (N - 10)
