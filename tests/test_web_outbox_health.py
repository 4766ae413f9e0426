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
from hub.web import HealthSource, WebServer

from conftest import backends


async def _ok() -> bool:
    return True


@pytest.mark.parametrize("backend", backends())
async def test_healthz_turns_503_when_the_oldest_row_waits_too_long(database_urls, backend) -> None:
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
