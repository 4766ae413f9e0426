"""Email through the outbox to a real SMTP server: retries, suppression, an outage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from hub.clock import SystemClock
from hub.config import EmailSettings
from hub.delivery.dispatcher import Dispatcher
from hub.delivery.outbox import EMAIL, MATRIX, Outbox
from hub.devserver.smtp import SmtpSink
from hub.email.payload import email_payload, enqueue_email
from hub.email.pool import SmtpPool
from hub.email.sender import EmailSender, Suppressed
from hub.storage.db import Database, open_database
from hub.storage.models import EmailSuppression
from hub.storage.models import outbox_table as T

from conftest import backends

FROM = "Mentoring Hub <hub@example.org>"


@dataclass
class Rig:
    db: Database
    outbox: Outbox
    sink: SmtpSink
    pool: SmtpPool
    dispatcher: Dispatcher
    alerts: list[Suppressed]


@pytest.fixture
async def rig(database_urls: dict[str, str], request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    backend = getattr(request, "param", "sqlite")
    db = await open_database(database_urls[backend])
    outbox = Outbox(db, SystemClock())
    sink = SmtpSink()
    sink.start()
    settings = EmailSettings(enabled=True, sender=FROM, smtp_host=sink.hostname, smtp_port=sink.port,
                             security="none", connections=2)
    pool = SmtpPool(settings, SystemClock())
    alerts: list[Suppressed] = []

    async def alert(session, event: Suppressed) -> None:  # type: ignore[no-untyped-def]
        alerts.append(event)
        await outbox.enqueue(session, channel=MATRIX, kind="alert", lane="!control",
                             payload={"text": event.reason}, dedupe_key=f"alert:{event.txn_id}")

    sender = EmailSender(db, pool, SystemClock(), from_header=FROM, on_suppressed=alert)
    dispatcher = Dispatcher(db, outbox, SystemClock(), {EMAIL: sender}, poll_seconds=0.2)
    await dispatcher.open()
    task = asyncio.create_task(dispatcher.run())
    yield Rig(db, outbox, sink, pool, dispatcher, alerts)
    await dispatcher.stop(grace=2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await pool.close()
    sink.stop()
    await db.close()


async def _queue(rig: Rig, to: str, key: str) -> None:
    async with rig.db.transaction() as s:
        await enqueue_email(rig.outbox, s, email_payload(to=to, subject=f"about {key}", text="hi\n"),
                            kind="announcement", dedupe_key=key)


async def _row(rig: Rig, key: str) -> tuple[str, int, str | None]:
    async with rig.db.session() as s:
        r = (await s.execute(select(T.c.status, T.c.attempts, T.c.last_error)
                             .where(T.c.dedupe_key == key))).one()
    return r.status, r.attempts, r.last_error


async def _until_status(rig: Rig, key: str, status: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while (await _row(rig, key))[0] != status:
        assert time.monotonic() < deadline, f"{key} is {(await _row(rig, key))[0]}, not {status}"
        await asyncio.sleep(0.05)


async def test_451_then_delivered_on_retry(rig: Rig) -> None:
    rig.sink.fault = lambda rcpt, attempt: "451 4.7.1 greylisted, come back" if attempt == 0 else None
    await _queue(rig, "grey@example.org", "k1")
    await _until_status(rig, "k1", "sent")
    _, attempts, last_error = await _row(rig, "k1")
    assert attempts == 2 and last_error is not None and "451" in last_error
    assert [m.rcpt_tos for m in rig.sink.messages] == [("grey@example.org",)]
    assert rig.sink.attempts("grey@example.org") == 2


@pytest.mark.parametrize("rig", backends(), indirect=True)
async def test_550_suppresses_alerts_once_and_stops_mail(rig: Rig) -> None:
    rig.sink.fault = lambda rcpt, attempt: (
        "550 5.1.1 no such user" if rcpt.lower().startswith("gone") else None)
    await _queue(rig, "Gone@Example.org", "first")
    await _queue(rig, "ok@example.org", "other")
    await _until_status(rig, "first", "failed")
    await _until_status(rig, "other", "sent")
    async with rig.db.session() as s:
        sup = await s.get(EmailSuppression, "gone@example.org")
        alert_rows = (await s.execute(select(T.c.lane, T.c.kind).where(T.c.channel == MATRIX))).all()
    assert sup is not None and sup.code == 550 and "no such user" in sup.reason
    assert [(a.address, a.code) for a in rig.alerts] == [("gone@example.org", 550)]
    assert [(r.lane, r.kind) for r in alert_rows] == [("!control", "alert")]
    # Later mail to the address fails at send time, without touching the SMTP server.
    tried = rig.sink.attempts("gone@example.org")
    await _queue(rig, "gone@example.org", "second")
    await _until_status(rig, "second", "failed")
    assert rig.sink.attempts("gone@example.org") == tried
    assert "suppressed" in ((await _row(rig, "second"))[2] or "")
    assert len(rig.alerts) == 1  # moderators are told once, when it was suppressed
    assert [m.rcpt_tos for m in rig.sink.messages] == [("ok@example.org",)]


@pytest.mark.slow
async def test_smtp_down_30s_then_everything_delivered(rig: Rig) -> None:
    rig.sink.stop()
    for i in range(20):
        await _queue(rig, f"m{i}@example.org", f"down{i}")
    await asyncio.sleep(30)
    assert rig.sink.count == 0
    back = time.monotonic()
    rig.sink.start()
    await rig.sink.wait_for(20, timeout=20)
    recovered = time.monotonic() - back
    print(f"\nSMTP down 30 s: all 20 delivered {recovered:.1f} s after it came back")
    for i in range(20):
        await _until_status(rig, f"down{i}", "sent")
    assert sorted(m.rcpt_tos[0] for m in rig.sink.messages) == sorted(f"m{i}@example.org" for i in range(20))
    assert (await _row(rig, "down0"))[1] > 1  # it was tried during the outage
    assert recovered < 12  # the outage pause is capped, so delivery resumes promptly
