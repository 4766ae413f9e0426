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
from hub.email.sender import EmailSender, Rejected, Suppressed, lift_suppression
from hub.features.digest_mail import TEMPLATE as DIGEST
from hub.features.digest_mail import DigestMail, person_payload, store_edition
from hub.storage.db import Database, open_database
from hub.storage.models import EmailSuppression, email_suppression_table
from hub.storage.models import outbox_table as T

from tests.support.databases import backends

FROM = "Mentoring Hub <hub@example.org>"


@dataclass
class Rig:
    db: Database
    outbox: Outbox
    sink: SmtpSink
    pool: SmtpPool
    dispatcher: Dispatcher
    alerts: list[Suppressed | Rejected]


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
    alerts: list[Suppressed | Rejected] = []

    async def alert(session, event: Suppressed | Rejected) -> None:  # type: ignore[no-untyped-def]
        alerts.append(event)
        # Keyed as the hub keys them (hub.mailer.DeliveryAlerts.suppressed): one per message refused.
        key = f"alert:rejected:{event.group}" if isinstance(event, Rejected) else f"alert:{event.txn_id}"
        await outbox.enqueue(session, channel=MATRIX, kind="alert", lane="!control",
                             payload={"text": event.reason}, dedupe_key=key)

    sender = EmailSender(db, pool, SystemClock(), from_header=FROM, on_suppressed=alert,
                         templates={DIGEST: DigestMail(db)})
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


async def _queue(rig: Rig, to: str, key: str, subject: str | None = None) -> None:
    async with rig.db.transaction() as s:
        await enqueue_email(rig.outbox, s, email_payload(to=to, subject=subject or f"about {key}",
                                                         text="hi\n"),
                            kind="announcement", dedupe_key=key)


async def _alert_rows(rig: Rig) -> int:
    async with rig.db.session() as s:
        return len((await s.execute(select(T.c.seq).where(T.c.channel == MATRIX))).all())


async def _suppressed(rig: Rig) -> list[str]:
    async with rig.db.session() as s:
        return sorted((await s.execute(select(email_suppression_table.c.address))).scalars().all())


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
    async with rig.db.session() as s:
        suppressed = (await s.execute(select(email_suppression_table.c.address))).scalars().all()
        assert suppressed == ["gone@example.org"]
    assert [(r.lane, r.kind) for r in alert_rows] == [("!control", "alert")]
    # Later mail to the address fails at send time, without touching the SMTP server.
    tried = rig.sink.attempts("gone@example.org")
    await _queue(rig, "gone@example.org", "second")
    await _until_status(rig, "second", "failed")
    assert rig.sink.attempts("gone@example.org") == tried
    assert "suppressed" in ((await _row(rig, "second"))[2] or "")
    assert len(rig.alerts) == 1  # moderators are told once, when it was suppressed
    assert [m.rcpt_tos for m in rig.sink.messages] == [("ok@example.org",)]


@pytest.mark.parametrize("rig", backends(), indirect=True)
async def test_spam_at_data_fails_the_message_suppresses_nobody_and_alerts_once(rig: Rig) -> None:
    """Issue 18 item 9: one `554 5.7.1 spam` for an announcement suppressed all 8 recipients."""
    rig.sink.data_fault = lambda rcpts: "554 5.7.1 message rejected as spam"
    people = [f"p{i}@example.org" for i in range(8)]
    for i, to in enumerate(people):
        await _queue(rig, to, f"spam{i}", subject="Kick-off on Thursday")
    for i in range(8):
        await _until_status(rig, f"spam{i}", "failed")
    assert await _suppressed(rig) == []
    _, _, error = await _row(rig, "spam0")
    assert error is not None and "5.7.1 message rejected as spam" in error and "not suppressed" in error
    # Each refusal reached the hook, all as the same message: the outbox keeps one alert.
    assert len(rig.alerts) == 8 and all(isinstance(a, Rejected) for a in rig.alerts)
    assert len({a.group for a in rig.alerts if isinstance(a, Rejected)}) == 1
    assert await _alert_rows(rig) == 1
    # The addresses still get the next (acceptable) message.
    rig.sink.data_fault = None
    await _queue(rig, people[0], "after-spam")
    await _until_status(rig, "after-spam", "sent")
    assert [m.rcpt_tos for m in rig.sink.messages] == [(people[0],)]
    # A different message refused the same way is a new alert.
    rig.sink.data_fault = lambda rcpts: "554 5.7.1 message rejected as spam"
    await _queue(rig, people[1], "other-spam", subject="Week 2 digest")
    await _until_status(rig, "other-spam", "failed")
    assert await _alert_rows(rig) == 2


async def test_refused_sender_fails_the_row_without_suppressing(rig: Rig) -> None:
    rig.sink.mail_fault = lambda sender: "553 5.1.8 sender address domain does not exist"
    await _queue(rig, "ada@example.org", "sender")
    await _until_status(rig, "sender", "failed")
    assert await _suppressed(rig) == [] and await _alert_rows(rig) == 1


async def test_lifted_suppression_lets_the_next_email_through(rig: Rig) -> None:
    rig.sink.fault = lambda rcpt, attempt: "550 5.1.1 no such user" if attempt == 0 else None
    await _queue(rig, "back@example.org", "bounce")
    await _until_status(rig, "bounce", "failed")
    assert await _suppressed(rig) == ["back@example.org"]
    await _queue(rig, "back@example.org", "while-suppressed")
    await _until_status(rig, "while-suppressed", "failed")
    async with rig.db.transaction() as s:
        lifted = await lift_suppression(s, "Back@Example.org")
    assert lifted is not None and lifted.code == 550
    async with rig.db.transaction() as s:
        assert await lift_suppression(s, "back@example.org") is None
    await _queue(rig, "back@example.org", "lifted")
    await _until_status(rig, "lifted", "sent")
    assert [m.rcpt_tos for m in rig.sink.messages] == [("back@example.org",)]


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


def test_one_refused_message_is_one_group_per_day() -> None:
    same = Rejected.group_of("announcement", "Kick-off", 554, "5.7.1", "2027-03-01")
    assert same == Rejected.group_of("announcement", "Kick-off", 554, "5.7.1", "2027-03-01")
    assert same != Rejected.group_of("announcement", "Kick-off", 554, "5.7.1", "2027-03-02")
    assert same != Rejected.group_of("announcement", "Week 2", 554, "5.7.1", "2027-03-01")
    assert same != Rejected.group_of("digest", "Kick-off", 554, "5.7.1", "2027-03-01")


async def test_a_digest_row_is_rendered_when_sent_and_one_an_older_hub_queued_whole_goes_as_it_is(
        rig: Rig) -> None:
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from hub.core import digest as dg
    from hub.core.tokens import TokenSigner

    now = datetime.now(UTC)
    issue = dg.DigestIssue(cohort=dg.CohortInfo("w", "Winter", ZoneInfo("UTC"), ""), week=2, weeks=12,
                           generated_at=now)
    builder = dg.DigestBuilder(public_url="https://hub.example.org", signer=TokenSigner("s" * 32))
    people = {"new@example.org": "New", "bad@example.org": "Line\nBreak"}
    async with rig.db.transaction() as s:
        edition = await store_edition(s, builder, issue, "Winter <w.hub.example.org>", now.timestamp())
        for address, name in people.items():
            r = dg.Recipient(handle="h1", name=name, timezone=ZoneInfo("Asia/Tokyo"))
            token = builder.unsubscribe_token(issue, r)
            await rig.outbox.enqueue(s, channel=EMAIL, kind="digest", lane=address, dedupe_key=address,
                                     payload=person_payload(edition, address, r, token))
        # Queued by a hub from before digests were rendered when sent: the whole email is in the row.
        await enqueue_email(rig.outbox, s, email_payload(
            to="old@example.org", subject="Winter · week 1 of 12 digest", text="the old digest\n",
            headers={"List-Id": "Winter <w.hub.example.org>"}), kind="digest", dedupe_key="old")
    await _until_status(rig, "new@example.org", "sent")
    await _until_status(rig, "old", "sent")
    await _until_status(rig, "bad@example.org", "failed")
    mails = {m.rcpt_tos[0]: m for m in rig.sink.messages}
    assert sorted(mails) == ["new@example.org", "old@example.org"]
    assert mails["new@example.org"].subject == "Winter · week 2 of 12 digest"
    assert "Hi New," in (mails["new@example.org"].text or "")
    assert mails["new@example.org"].message["List-Id"] == "Winter <w.hub.example.org>"
    assert mails["new@example.org"].message["List-Unsubscribe"].startswith("<https://hub.example.org/unsubscribe/")
    assert mails["old@example.org"].text == "the old digest\n"
    _, _, reason = await _row(rig, "bad@example.org")
    assert reason is not None and "name contains a line break" in reason
