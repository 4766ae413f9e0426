"""Acceptance 3: the homeserver is down for 20 s in the middle of a fan-out; everything
arrives once, in order, after it returns. Uses its own Synapse, since it is stopped."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nio import RoomSendResponse
from sqlalchemy import func, select

from hub.devserver import free_port
from hub.devserver.synapse import SynapseServer
from hub.storage.models import outbox_table as T

from tests.live.test_run_process import HubProcess
from tests.live.test_run_process import _config as process_config
from tests.support.delivery import make_rooms, raw_client, read_room, wait_for
from tests.support.live_hub import hub_settings, running_hub

pytestmark = [pytest.mark.synapse, pytest.mark.slow]

ROOMS = 20
PER_ROOM = 3


@pytest.fixture(scope="module")
async def own_synapse(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SynapseServer]:
    server = SynapseServer(tmp_path_factory.mktemp("synapse-down"))
    await server.start()
    yield server
    await server.stop()


async def test_homeserver_down_20s_during_fan_out(own_synapse: SynapseServer, tmp_path: Path) -> None:
    tag = secrets.token_hex(3)
    bot = await own_synapse.register(f"downhub{tag}", secrets.token_urlsafe(12))
    reader = await own_synapse.register(f"downreader{tag}", secrets.token_urlsafe(12))
    rooms = await make_rooms(own_synapse.url, bot, reader, ROOMS)
    settings = hub_settings(homeserver=own_synapse.url, bot=bot, data_dir=tmp_path / "hub", moderators=[])
    async with running_hub(settings) as hub:
        assert hub.db is not None and hub.outbox is not None
        rows: list[dict[str, Any]] = [
            dict(channel="matrix", kind="fanout", lane=room, dedupe_key=f"fanout:{room}:{i}",
                 payload={"op": "message", "room_id": room, "type": "m.room.message",
                          "content": {"msgtype": "m.notice", "body": f"fan-out {i}"}})
            for i in range(PER_ROOM) for room in rooms
        ]

        async def sent() -> int:
            assert hub.db is not None
            async with hub.db.session() as s:
                return int((await s.execute(select(func.count()).select_from(T).where(
                    (T.c.kind == "fanout") & (T.c.status == "sent")))).scalar() or 0)

        async with hub.db.transaction() as s:
            await hub.outbox.enqueue_many(s, rows)
        async def started() -> bool:
            return await sent() >= 5

        await wait_for(started, timeout=60)
        own_synapse.kill()  # mid fan-out, like a crashed homeserver
        await asyncio.sleep(2)
        # Sends that completed just before the kill are recorded within a moment.
        at_outage = await sent()
        await asyncio.sleep(18)
        during = await sent()
        await own_synapse.start()
        back = time.monotonic()  # answering again
        deadline = back + 60
        while await sent() < len(rows):
            assert time.monotonic() < deadline, f"{await sent()}/{len(rows)} sent after the return"
            await asyncio.sleep(0.1)
        recovered = time.monotonic() - back
        async with hub.db.session() as s:
            failed = (await s.execute(select(func.count()).select_from(T).where(
                T.c.status == "failed"))).scalar()
    print(f"\nhomeserver down 20 s: {at_outage}/{len(rows)} sent before, {during} during, "
          f"the rest within {recovered:.1f} s of its return")
    assert at_outage < len(rows) and during == at_outage
    assert failed == 0
    client = raw_client(own_synapse.url, reader)
    try:
        for room in rooms:
            assert await read_room(client, room, bot.user_id) == [f"fan-out {i}" for i in range(PER_ROOM)]
    finally:
        await client.close()
    # The outage pause is capped at 10 s, so sending resumes within that of the return.
    assert recovered < 15


async def test_commands_are_answered_soon_after_a_long_outage(
        own_synapse: SynapseServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 18 item 11: after an outage the sync had backed off up to 60 s, and a command sent
    the moment the homeserver was back waited for that backoff to run out."""
    tag = secrets.token_hex(3)
    bot = await own_synapse.register(f"backoffhub{tag}", secrets.token_urlsafe(12))
    reader = await own_synapse.register(f"backoffreader{tag}", secrets.token_urlsafe(12))
    (room,) = await make_rooms(own_synapse.url, bot, reader, 1)
    settings = hub_settings(homeserver=own_synapse.url, bot=bot, data_dir=tmp_path / "hub", moderators=[])
    caplog.set_level(logging.WARNING, logger="hub.matrix.sync")
    async with running_hub(settings) as hub:
        assert hub.sync is not None
        own_synapse.kill()

        delays: list[float] = []

        async def long_backoff() -> bool:
            # The sync has just begun a wait of 16 s or more (the 6th failure, 16-32 s after the kill).
            delays[:] = [float(m.group(1)) for r in caplog.records
                         if (m := re.search(r"retrying in ([0-9.]+)s", r.getMessage()))]
            return bool(delays) and delays[-1] >= 16

        await wait_for(long_backoff, timeout=90, interval=0.1)
        await own_synapse.start()  # 3-5 s: the old sync would still wait 10 s or more after this
        back = time.monotonic()  # answering again
        client = raw_client(own_synapse.url, reader)
        try:
            sent = await client.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "!hub ping"})
            assert isinstance(sent, RoomSendResponse), sent

            async def answered() -> bool:
                return "pong" in await read_room(client, room, bot.user_id)

            await wait_for(answered, timeout=90, interval=0.25)
            waited = time.monotonic() - back
        finally:
            await client.close()
    print(f"\nhomeserver back during a {delays[-1]:.1f} s backoff: `!hub ping` answered {waited:.1f} s "
          "after its return")
    # The sync probes every 2 s once it has failed, and resumes at the first answer.
    assert waited < 6, f"answered {waited:.1f} s after the homeserver's return"


async def test_hub_run_waits_for_a_homeserver_that_is_down_at_start(
        own_synapse: SynapseServer, tmp_path: Path) -> None:
    """Issue 16 item 1: `hub run` started before its homeserver waits, one line per try naming
    the URL and the reason, no traceback, no restart, and answers `!hub ping` once it is up."""
    tag = secrets.token_hex(3)
    bot = await own_synapse.register(f"latehub{tag}", secrets.token_urlsafe(12))
    reader = await own_synapse.register(f"latereader{tag}", secrets.token_urlsafe(12))
    (room,) = await make_rooms(own_synapse.url, bot, reader, 1)
    config = process_config(tmp_path, own_synapse.url, bot.user_id, reader.user_id, free_port())
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HUB_MATRIX_PASSWORD": bot.password,
           "HUB_SMTP_PASSWORD": "unused-smtp-pw", "HUB_SECRET": "unused-web-secret"}
    hub = HubProcess(config, env, tmp_path / "hub.log")
    await own_synapse.stop()
    try:
        hub.start()
        # Tries at 0, 1 and 3 s: waiting, not exiting.
        await hub.wait_for_log("cannot reach the homeserver", times=3, timeout=30)
        await own_synapse.start()
        back = time.monotonic()
        hub.starts = 1
        await hub.wait_ready(timeout=90)
        ready = time.monotonic() - back
        client = raw_client(own_synapse.url, reader)
        try:
            sent = await client.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "!hub ping"})
            assert isinstance(sent, RoomSendResponse), sent

            async def answered() -> bool:
                return "pong" in await read_room(client, room, bot.user_id)

            await wait_for(answered, timeout=60, interval=0.25)
        finally:
            await client.close()
        assert await hub.terminate() == 0
    finally:
        if hub.proc is not None and hub.proc.poll() is None:
            hub.proc.kill()
        if not own_synapse.running:
            await own_synapse.start()  # the module's other tests share it
    text = hub.text()
    waits = re.findall(r"cannot reach the homeserver at (\S+) \((.+?)\); trying again in (\d+) s", text)
    print(f"\nhomeserver started late: {len(waits)} tries logged, ready {ready:.1f} s after it answered")
    assert {(url, reason) for url, reason, _ in waits} == {(own_synapse.url, "connection refused")}
    assert [int(d) for *_, d in waits] == [1, 2, 4, 8, 16, 32, 60][:len(waits)]
    assert f"the homeserver at {own_synapse.url} answers (after {len(waits)} failed tries)" in text
    assert "Traceback" not in text and "Unclosed client session" not in text, text[-3000:]
