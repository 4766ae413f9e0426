"""A running hub tells a refused message from a bad mailbox, and moderators can lift a suppression.

Issue 18 item 9: one `554 5.7.1 spam` for an announcement suppressed all its
recipients for good, with no way back. Read as the moderators see it: notices
in the control room, replies to their commands; mail as the SMTP server got it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from hub.devserver.smtp import SmtpSink
from hub.devserver.synapse import SynapseServer
from hub.email.payload import email_payload, enqueue_email
from hub.service import Hub
from hub.storage.models import EmailSuppression, audit_table
from hub.storage.models import outbox_table as T

from tests.support.live_hub import hub_settings, running_hub, sink_email

pytestmark = pytest.mark.synapse


async def _queue(hub: Hub, to: str, subject: str, key: str) -> None:
    assert hub.db is not None and hub.outbox is not None
    async with hub.db.transaction() as s:
        await enqueue_email(hub.outbox, s, email_payload(to=to, subject=subject, text="hello\n"),
                            kind="announcement", dedupe_key=key)


async def _failed(hub: Hub, prefix: str) -> int:
    assert hub.db is not None
    async with hub.db.session() as s:
        return int((await s.execute(select(func.count()).select_from(T).where(
            T.c.dedupe_key.startswith(prefix) & (T.c.status == "failed")))).scalar() or 0)


async def _wait(check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_spam_refusal_alerts_once_and_unsuppress_lets_mail_through(
    synapse: SynapseServer, participant: Any, register: Any, tmp_path: Path,
) -> None:
    bot = await register("refusehub")
    moderator = await participant("mod")
    with SmtpSink() as sink:
        settings = hub_settings(
            homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub", moderators=[moderator.user_id],
            extra={"email": sink_email(sink, connections=2)},
        )
        async with running_hub(settings) as hub:
            assert hub.db is not None and hub.control_room_id
            control = hub.control_room_id
            await moderator.wait_joined(control, moderator.user_id, timeout=20)

            # 1. The server calls one announcement spam, for each of its 5 recipients.
            sink.data_fault = lambda rcpts: "554 5.7.1 message rejected as spam"
            people = [f"p{i}@example.org" for i in range(5)]
            for i, to in enumerate(people):
                await _queue(hub, to, "Kick-off on Thursday", f"spam:{i}")

            async def all_failed() -> bool:
                return await _failed(hub, "spam:") == len(people)

            await _wait(all_failed)

            def refused() -> list[str]:
                return [ev.body for ev in moderator.in_room(control)
                        if "refused" in getattr(ev, "body", "")]

            await moderator.wait_until(lambda: bool(refused()), timeout=30)
            await asyncio.sleep(2)  # any second alert would be on its way by now
            assert len(refused()) == 1, refused()
            assert "5.7.1 message rejected as spam" in refused()[0] and "not the address" in refused()[0]
            async with hub.db.session() as s:
                assert (await s.execute(select(func.count()).select_from(EmailSuppression))).scalar() == 0
            sink.data_fault = None

            # 2. A bad mailbox is suppressed, and a moderator lifts it.
            sink.fault = lambda rcpt, attempt: (
                "550 5.1.1 no such user" if rcpt == "gone@example.org" else None)
            await _queue(hub, "gone@example.org", "Week 1", "gone:1")

            def bounced() -> bool:
                return any("gone@example.org" in getattr(ev, "body", "") and "suppressed" in ev.body
                           for ev in moderator.in_room(control))

            await moderator.wait_until(bounced, timeout=30)
            sink.fault = None
            reply = await moderator.ask(control, "!hub email unsuppress not-an-address")
            assert "not an email address" in reply and "nothing changed" in reply
            reply = await moderator.ask(control, "!hub email unsuppress Gone@Example.org")
            assert "Lifted the suppression of gone@example.org" in reply and "550" in reply, reply
            reply = await moderator.ask(control, "!hub email unsuppress gone@example.org")
            assert "is not suppressed; nothing changed" in reply, reply
            await _queue(hub, "gone@example.org", "Week 2", "gone:2")
            mails = await sink.wait_for(1, timeout=30)
            assert [(m.rcpt_tos, m.subject) for m in mails] == [(("gone@example.org",), "Week 2")]
            async with hub.db.session() as s:
                audited = (await s.execute(select(audit_table.c.command, audit_table.c.outcome)
                                           .where(audit_table.c.actor == moderator.user_id))).all()
            assert ("!hub email unsuppress Gone@Example.org", "ok") in [tuple(a) for a in audited]
