"""/healthz and /metrics over a real outbox: a stale queue turns the hub unhealthy."""

from __future__ import annotations

import json

import aiohttp
import pytest
from sqlalchemy import update

from hub.clock import SystemClock
from hub.delivery.outbox import EMAIL, MATRIX, Outbox
from hub.storage.db import open_database
from hub.storage.models import outbox_table as T
from hub.web import ControlRoomFailures, HealthSource, WebServer

from tests.support.databases import backends


async def _ok() -> bool:
    return True


@pytest.mark.parametrize("backend", backends())
async def test_healthz_turns_503_when_the_oldest_row_waits_too_long(
    database_urls: dict[str, str], backend: str
) -> None:
    db = await open_database(database_urls[backend])
    outbox = Outbox(db, SystemClock())
    smtp = {"up": True}
    web = WebServer("127.0.0.1", 0, HealthSource(sync_ok=lambda: True, database_ok=_ok,
                                                 smtp_ok=lambda: smtp["up"], outbox=outbox,
                                                 max_queue_age=600))
    await web.start()
    url = f"http://127.0.0.1:{web.bound_port}"
    try:
        async with db.transaction() as s:
            await outbox.enqueue(s, channel=MATRIX, kind="t", lane="!r", payload={}, dedupe_key="a")
            await outbox.enqueue(s, channel=EMAIL, kind="t", lane="x@example.org", payload={},
                                 dedupe_key="b")
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/healthz") as r:
                assert r.status == 200
                assert json.loads(await r.text())["checks"]["outbox"] == "ok"
            now = SystemClock().now().timestamp()
            async with db.transaction() as s:
                await s.execute(update(T).where(T.c.dedupe_key == "a")
                                .values(created_at=now - 3600, not_before=now - 3600))
            async with http.get(url + "/healthz") as r:
                body = json.loads(await r.text())
                assert r.status == 503
                assert body["checks"]["outbox"] == "stale" and body["oldest_queued_seconds"] >= 3600
            smtp["up"] = False
            async with http.get(url + "/metrics") as r:
                metrics = await r.text()
    finally:
        await web.stop()
        await db.close()
    assert 'hub_outbox_rows{channel="matrix",status="queued"} 1' in metrics
    assert 'hub_outbox_rows{channel="email",status="queued"} 1' in metrics
    assert "hub_smtp_up 0" in metrics
    oldest = next(line for line in metrics.splitlines()
                  if line.startswith("hub_outbox_oldest_queued_seconds"))
    assert float(oldest.split()[1]) >= 3600


async def test_control_room_failures_show_on_healthz_and_metrics_without_a_503(
    database_urls: dict[str, str],
) -> None:
    """Nobody in the control room can be told that a message to it failed: /healthz and /metrics say it."""
    db = await open_database(database_urls["sqlite"])
    failures = ControlRoomFailures(recent=86400)
    now = {"t": 1000.0}
    web = WebServer("127.0.0.1", 0, HealthSource(sync_ok=lambda: True, database_ok=_ok,
                                                 smtp_ok=lambda: True, outbox=Outbox(db, SystemClock()),
                                                 control_room=failures, monotonic=lambda: now["t"]))
    await web.start()
    url = f"http://127.0.0.1:{web.bound_port}"
    seen: list[tuple[int, dict[str, object], str]] = []
    try:
        async with aiohttp.ClientSession() as http:
            for step in ("before", "failed", "a day later"):
                if step == "failed":
                    failures.record(now["t"])
                    failures.record(now["t"])
                if step == "a day later":
                    now["t"] += 86400
                async with http.get(url + "/healthz") as r:
                    status, body = r.status, json.loads(await r.text())
                async with http.get(url + "/metrics") as r:
                    metrics = await r.text()
                seen.append((status, body, metrics))
    finally:
        await web.stop()
        await db.close()
    assert [(s, b["control_room"], b["control_room_failed"]) for s, b, _ in seen] == [
        (200, "ok", 0), (200, "undelivered", 2), (200, "ok", 2)]
    assert "hub_control_room_failed_total 0" in seen[0][2]
    assert "hub_control_room_failed_total 2" in seen[1][2]
