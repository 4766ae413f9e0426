"""Delivery through a running hub, read back as users see it: order, bounce alerts, health."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select

from hub.devserver.smtp import SmtpSink
from hub.devserver.synapse import SynapseServer
from hub.email.payload import email_payload, enqueue_email
from hub.service import Hub
from hub.storage.models import outbox_table as T

from tests.support.delivery import make_rooms, raw_client, read_room
from tests.support.live_hub import hub_settings, running_hub, sink_email

pytestmark = pytest.mark.synapse


async def _all_sent(hub: Hub, kind: str, n: int, timeout: float = 60) -> None:
    assert hub.db is not None
    deadline = time.monotonic() + timeout
    while True:
        async with hub.db.session() as s:
            sent = (await s.execute(select(func.count()).select_from(T).where(
                (T.c.kind == kind) & (T.c.status == "sent")))).scalar()
        if sent == n:
            return
        assert time.monotonic() < deadline, f"{sent}/{n} {kind} rows sent"
        await asyncio.sleep(0.1)


async def test_100_messages_to_one_room_arrive_in_queue_order(synapse: SynapseServer, tmp_path: Path) -> None:
    tag = secrets.token_hex(3)
    bot = await synapse.register(f"orderhub{tag}", secrets.token_urlsafe(12))
    reader = await synapse.register(f"orderreader{tag}", secrets.token_urlsafe(12))
    (room,) = await make_rooms(synapse.url, bot, reader, 1)
    settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub", moderators=[])
    async with running_hub(settings) as hub:
        assert hub.db is not None and hub.outbox is not None
        rows: list[dict[str, Any]] = [
            dict(channel="matrix", kind="order", lane=room, dedupe_key=f"order:{i}",
                 payload={"op": "message", "room_id": room, "type": "m.room.message",
                          "content": {"msgtype": "m.notice", "body": f"order {i}"}})
            for i in range(100)
        ]
        async with hub.db.transaction() as s:
            assert await hub.outbox.enqueue_many(s, rows) == 100
        await _all_sent(hub, "order", 100)
    client = raw_client(synapse.url, reader)
    try:
        bodies = await read_room(client, room, bot.user_id)
    finally:
        await client.close()
    assert bodies == [f"order {i}" for i in range(100)]


async def test_550_alerts_moderators_in_control_room_and_healthz_follows_smtp(
    synapse: SynapseServer, participant: Any, register: Any, tmp_path: Path,
) -> None:
    bot = await register("bouncehub")
    moderator = await participant("mod")
    with SmtpSink() as sink:
        sink.fault = lambda rcpt, attempt: "550 5.1.1 mailbox unknown" if rcpt.startswith("gone") else None
        settings = hub_settings(
            homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub", moderators=[moderator.user_id],
            extra={"email": sink_email(sink, connections=2)},
        )
        async with running_hub(settings) as hub:
            assert hub.db is not None and hub.outbox is not None and hub.control_room_id
            control = hub.control_room_id
            await moderator.wait_joined(control, moderator.user_id, timeout=20)
            async with hub.db.transaction() as s:
                for to in ("gone@example.org", "fine@example.org"):
                    await enqueue_email(hub.outbox, s, email_payload(
                        to=to, subject="Week 1 digest", text="hello\n"),
                        kind="digest", dedupe_key=f"digest:1:{to}")

            def alerted() -> bool:
                return any("gone@example.org" in getattr(ev, "body", "")
                           for ev in moderator.in_room(control))

            await moderator.wait_until(alerted, timeout=30)
            alert = next(ev for ev in moderator.in_room(control)
                         if "gone@example.org" in getattr(ev, "body", ""))
            assert "bounced permanently" in alert.body and "550" in alert.body
            assert alert.source["content"]["msgtype"] == "m.notice"
            assert [m.rcpt_tos for m in await sink.wait_for(1)] == [("fine@example.org",)]

            # /healthz reports the SMTP server truthfully, both ways.
            assert hub.web is not None and hub.smtp_pool is not None
            url = f"http://127.0.0.1:{hub.web.bound_port}"
            async with aiohttp.ClientSession() as http:
                async with http.get(url + "/healthz") as r:
                    assert r.status == 200, await r.text()
                    assert json.loads(await r.text())["checks"]["smtp"] == "ok"
                sink.stop()
                assert await hub.smtp_pool.probe() is False
                async with http.get(url + "/healthz") as r:
                    assert r.status == 503
                    assert json.loads(await r.text())["checks"]["smtp"] == "failing"
                async with http.get(url + "/metrics") as r:
                    metrics = await r.text()
                sink.start()
                assert await hub.smtp_pool.probe() is True
                async with http.get(url + "/healthz") as r:
                    assert r.status == 200
    assert 'hub_outbox_rows{channel="email",status="failed"} 1' in metrics
    assert 'hub_outbox_rows{channel="email",status="sent"} 1' in metrics
    assert "hub_smtp_up 0" in metrics


async def test_forbidden_is_failed_with_reason_and_reported_to_moderators(
    synapse: SynapseServer, participant: Any, register: Any, tmp_path: Path,
) -> None:
    bot = await register("forbidhub")
    moderator = await participant("mod")
    settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub",
                            moderators=[moderator.user_id])
    async with running_hub(settings) as hub:
        assert hub.db is not None and hub.outbox is not None and hub.control_room_id
        control = hub.control_room_id
        await moderator.wait_joined(control, moderator.user_id, timeout=20)
        # A room where the hub is a plain member: changing the topic needs power 50.
        room = await moderator.create_room(invite=[bot.user_id], name="not the hub's")
        await moderator.wait_joined(room, bot.user_id)
        async with hub.db.transaction() as s:
            await hub.outbox.enqueue(s, channel="matrix", kind="topic", lane=room, dedupe_key="topic:1",
                                     payload={"op": "state", "room_id": room, "type": "m.room.topic",
                                              "content": {"topic": "set by the hub"}})

        def reported() -> bool:
            return any("Delivery failed for good" in getattr(ev, "body", "")
                       for ev in moderator.in_room(control))

        await moderator.wait_until(reported, timeout=30)
        async with hub.db.session() as s:
            row = (await s.execute(select(T.c.status, T.c.attempts, T.c.last_error)
                                   .where(T.c.dedupe_key == "topic:1"))).one()
    alert = next(ev.body for ev in moderator.in_room(control)
                 if "Delivery failed for good" in getattr(ev, "body", ""))
    assert row.status == "failed" and row.attempts == 1  # permanent: not retried
    assert "M_FORBIDDEN" in (row.last_error or "") and "M_FORBIDDEN" in alert and "topic" in alert
