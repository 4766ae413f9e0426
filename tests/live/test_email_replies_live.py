"""Replies by email (issue 13) on a real Synapse, with real SMTP conversations with the hub's listener.

An email-only mentee (Eve) is paired with a Matrix mentor whose E2EE client reads the pair room:

- the mentor's `!hub dropped` mails Eve the backup plan with `Reply-To: reply+TOKEN@domain`
  and the VERP envelope sender `bounce+TOKEN@domain`; Eve's reply appears once in the
  encrypted pair room, without the quoted text or signature, notifying the mentor; the
  same Message-ID again is not posted twice;
- an announcement's reply address is the lounge's; the digest has none;
- an auto-reply and a stranger's mail to the same address are accepted (250) and not
  posted; a tampered token is refused with 550 and an oversized mail with 552;
- three messages of the mentor reach Eve as one email, each with its time, and her reply
  to it lands in the pair room;
- a delivery status notification to the bounce address suppresses Eve's address: the next
  digest skips her, `!hub report` counts it and the moderators are told.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from nio import RoomMessageText
from sqlalchemy import select

from hub.devserver.smtp import ReceivedMail, SmtpSink
from hub.devserver.synapse import SynapseServer
from hub.features.roster import import_file
from hub.service import Hub
from hub.storage.models import email_suppression_table, inbound_mail_table

from tests.support.cohorts import room_of
from tests.support.live_hub import hub_settings, running_hub, sink_email

pytestmark = pytest.mark.synapse

DOMAIN = "hub.example.test"
EVE = "eve@example.org"


def reply_mail(to: str, *, sender: str = EVE, text: str, message_id: str | None = None,
               headers: dict[str, str] | None = None, size: int = 0) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Eve <{sender}>"
    msg["To"] = to
    msg["Subject"] = "Re: your backup plan"
    msg["Message-ID"] = message_id or make_msgid(domain="example.org")
    for k, v in (headers or {}).items():
        msg[k] = v
    msg.set_content(text + ("x" * 70 + "\n") * (size // 71))
    return msg


def dsn(bounce_to: str, failed: str) -> bytes:
    """An RFC 3464 delivery status notification, as Postfix writes one."""
    return (
        "From: MAILER-DAEMON@mx.example.org (Mail Delivery System)\r\n"
        f"To: {bounce_to}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Auto-Submitted: auto-replied\r\n"
        f"Message-ID: {make_msgid(domain='mx.example.org')}\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="BB"\r\n\r\n'
        "--BB\r\nContent-Type: text/plain\r\n\r\n"
        "I'm sorry to have to inform you that your message could not be delivered.\r\n\r\n"
        "--BB\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.org\r\n\r\n"
        f"Final-Recipient: rfc822; {failed}\r\nOriginal-Recipient: rfc822; {failed}\r\n"
        "Action: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 User unknown\r\n\r\n"
        "--BB--\r\n"
    ).encode("ascii")


async def smtp_send(hub: Hub, msg: EmailMessage | bytes, rcpt: str, *,
                    mail_from: str = EVE) -> tuple[int, str]:
    """One SMTP transaction with the hub's listener: (code, text) of the answer that ended it."""
    assert hub.inbound is not None
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=hub.inbound.bound_port, start_tls=False)
    await smtp.connect()
    try:
        await smtp.mail(mail_from)
        try:
            await smtp.rcpt(rcpt)
        except aiosmtplib.SMTPRecipientRefused as e:
            return e.code, e.message
        try:
            resp = await smtp.data(msg if isinstance(msg, bytes) else msg.as_bytes())
        except aiosmtplib.SMTPDataError as e:
            return e.code, e.message
        except aiosmtplib.SMTPResponseException as e:
            return e.code, e.message
        return resp.code, resp.message
    finally:
        try:
            await smtp.quit()
        except aiosmtplib.SMTPException:
            pass


def by_email(p: Any, room: str) -> list[RoomMessageText]:
    return [e for e in p.in_room(room) if isinstance(e, RoomMessageText) and "(by email)" in e.body]


async def handled(hub: Hub, n: int, timeout: float = 20) -> list[tuple[str, str]]:
    """Wait until `n` inbound rows are handled; their (status, outcome)."""
    assert hub.db is not None
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with hub.db.session() as s:
            rows = (await s.execute(select(inbound_mail_table.c.status, inbound_mail_table.c.outcome)
                                    .order_by(inbound_mail_table.c.id))).all()
        done = [(r.status, r.outcome or "") for r in rows if r.status != "new"]
        if len(done) >= n:
            return done
        assert asyncio.get_running_loop().time() < deadline, rows
        await asyncio.sleep(0.1)


def to_eve(sink: SmtpSink) -> list[ReceivedMail]:
    return [m for m in sink.messages if m.rcpt_tos == (EVE,)]


async def mails_to(sink: SmtpSink, address: str, n: int, timeout: float = 40) -> list[ReceivedMail]:
    """Wait until `address` has received `n` messages; all of them."""
    deadline = asyncio.get_running_loop().time() + timeout
    while len(got := [m for m in sink.messages if m.rcpt_tos == (address,)]) < n:
        assert asyncio.get_running_loop().time() < deadline, [m.subject for m in got]
        await asyncio.sleep(0.1)
    return got


async def test_email_only_mentee_replies_by_email_and_bounces_suppress(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any], tmp_path: Path,
) -> None:
    bot = await register("hub")
    mod, mentor = await participant("mod"), await participant("mentor")
    with SmtpSink() as sink:
        settings = hub_settings(
            homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub", moderators=[mod.user_id],
            extra={"email": sink_email(sink, inbound={"listen": "127.0.0.1:0", "domain": DOMAIN,
                                                      "max_size_kb": 32}),
                   "web": {"public_url": "https://hub.example.test"}})
        async with running_hub(settings) as hub:
            assert hub.inbound is not None and hub.pair_mail is not None and hub.db is not None
            control = hub.control_room_id
            assert control
            await mod.wait_joined(control, mod.user_id, timeout=20)
            await mod.ask(control, '!hub cohort create spring "Spring 2027"')
            (tmp_path / "roster.csv").write_text(
                "cohort,role,name,email,matrix_id,timezone,mentor\n"
                f"spring,mentor,Ada,ada@example.org,{mentor.user_id},Europe/Berlin,\n"
                f"spring,mentee,Eve,{EVE},,Europe/Lisbon,{mentor.user_id}\n", encoding="utf-8")
            await import_file(hub.settings, tmp_path / "roster.csv")
            pair = await room_of(hub, "pair:1")
            await mentor.wait_joined(pair, mentor.user_id, timeout=30)
            await mentor.ask(pair, '!hub plan set "Ada phones Eve"')

            # -- the backup plan mail carries the reply and bounce addresses -----------------------
            before = len(to_eve(sink))
            await mentor.ask(pair, "!hub dropped")
            plan_mail = (await mails_to(sink, EVE, before + 1))[before]
            reply_to = plan_mail.message["Reply-To"]
            assert reply_to.startswith("reply+") and reply_to.endswith(f"@{DOMAIN}"), reply_to
            assert plan_mail.mail_from.startswith("bounce+") and plan_mail.mail_from.endswith(f"@{DOMAIN}")
            mentor_mail = next(m for m in sink.messages if m.rcpt_tos == ("ada@example.org",)
                               and m.message["Reply-To"])
            assert mentor_mail.message["Reply-To"] != reply_to  # each token names its person

            # -- Eve's reply: posted once, without quote and signature, notifying the mentor -------
            mid = make_msgid(domain="example.org")
            text = ("Thanks Ada, I'll switch to my phone.\n\n-- \nEve Example\nSent from my phone\n\n"
                    "On Mon, 7 Dec 2026 at 10:00, Hub <hub@example.org> wrote:\n> Ada phones Eve\n")
            assert (await smtp_send(hub, reply_mail(reply_to, text=text, message_id=mid), reply_to))[0] == 250
            await mentor.wait_until(lambda: len(by_email(mentor, pair)) == 1, timeout=30)
            posted = by_email(mentor, pair)[0]
            assert posted.body == "**Eve** (by email): Thanks Ada, I'll switch to my phone.", posted.body
            assert posted.source["content"]["m.mentions"] == {"user_ids": [mentor.user_id]}
            assert posted.decrypted  # the pair room is encrypted: the mentor's client decrypted it
            # The same Message-ID again (the MTA retried, or Eve pressed send twice): not posted again.
            assert (await smtp_send(hub, reply_mail(reply_to, text=text, message_id=mid), reply_to))[0] == 250
            assert [s for s, _ in await handled(hub, 2)] == ["posted", "dropped"]

            # -- what is kept out ---------------------------------------------------------------
            auto = reply_mail(reply_to, text="I am out of the office until Monday.",
                              headers={"Auto-Submitted": "auto-replied"})
            assert (await smtp_send(hub, auto, reply_to))[0] == 250
            stranger = reply_mail(reply_to, sender="mallory@example.net", text="Buy now")
            assert (await smtp_send(hub, stranger, reply_to, mail_from="mallory@example.net"))[0] == 250
            token = reply_to.split("+", 1)[1].split("@")[0]
            tampered = reply_to.replace(token, token[:-1] + ("a" if token[-1] != "a" else "b"))
            code, _ = await smtp_send(hub, reply_mail(tampered, text="forged"), tampered)
            assert code == 550
            code, _ = await smtp_send(hub, reply_mail(reply_to, text="big", size=40 * 1024), reply_to)
            assert code == 552
            outcomes = await handled(hub, 4)
            assert [s for s, _ in outcomes] == ["posted", "dropped", "dropped", "dropped"], outcomes
            assert "automatic" in outcomes[2][1] and "not the person" in outcomes[3][1]
            await asyncio.sleep(2)
            assert len(by_email(mentor, pair)) == 1  # nothing else reached the room

            # -- an announcement's reply address is the lounge's, not the pair room's ------------
            before = len(to_eve(sink))
            await mod.ask(control, "!hub announce spring Welcome to week one")
            announced = (await mails_to(sink, EVE, before + 1))[before]
            lounge_reply_to = announced.message["Reply-To"]
            assert lounge_reply_to.startswith("reply+") and lounge_reply_to != reply_to

            # -- three messages of the mentor: one email; her reply lands in the room ------------
            hub.pair_mail.window = 4.0
            before = len(to_eve(sink))
            for words in ("First: are you free Thursday?", "Second: 18:00 works for me.",
                          "Third: bring your CV."):
                await mentor.send(pair, words)
            await mails_to(sink, EVE, before + 1)
            await asyncio.sleep(3)  # nothing more follows
            batch = to_eve(sink)[before:]
            assert len(batch) == 1, [m.subject for m in batch]
            body = batch[0].text or ""
            assert body.index("First") < body.index("Second") < body.index("Third")
            assert body.count("Ada, ") == 3  # each message with its writer and time
            assert batch[0].subject == "Ada wrote 3 messages in your pair room"
            batch_reply_to = batch[0].message["Reply-To"]
            assert batch_reply_to.startswith("reply+")
            answer = reply_mail(batch_reply_to, text="Thursday 18:00 is fine!\n\nOn Thu, Ada wrote:\n> First")
            assert (await smtp_send(hub, answer, batch_reply_to))[0] == 250
            await mentor.wait_until(lambda: len(by_email(mentor, pair)) == 2, timeout=30)
            assert by_email(mentor, pair)[1].body == "**Eve** (by email): Thursday 18:00 is fine!"

            # -- a DSN to the bounce address suppresses Eve's address -----------------------------
            bounce_to = plan_mail.mail_from
            code, _ = await smtp_send(hub, dsn(bounce_to, EVE), bounce_to, mail_from="")
            assert code == 250
            await handled(hub, 6)
            async with hub.db.session() as s:
                suppressed = (await s.execute(select(email_suppression_table.c.address))).scalars().all()
            assert list(suppressed) == [EVE]
            await mod.wait_until(lambda: bool(mod.notices(control, f"Email to {EVE} bounced")), timeout=30)
            before = len(to_eve(sink))
            ada_before = len([m for m in sink.messages if m.rcpt_tos == ("ada@example.org",)])
            await mod.ask(control, "!hub digest spring send")
            digest = (await mails_to(sink, "ada@example.org", ada_before + 1))[ada_before]
            assert digest.message["Reply-To"] is None  # the digest has no reply address
            assert digest.mail_from.startswith("bounce+")  # but its bounces come back too
            await asyncio.sleep(3)
            assert len(to_eve(sink)) == before  # the digest skipped her
            report = await mod.ask(control, "!hub report spring")
            assert "1 bounced (suppressed)" in report, report
