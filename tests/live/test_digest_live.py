"""The digest against a real Synapse and a real SMTP server (aiosmtpd), as readers receive it.

Acceptance for issue 6:
1. `!hub digest SLUG send` reaches every opted-in address once and the lounge once; the received
   MIME is parsed: multipart/alternative, inlined CSS, stable Message-ID, List-Id, https one-click
   List-Unsubscribe + List-Unsubscribe-Post, Auto-Submitted.
2. POSTing the one-click URL from the received header unsubscribes (the next digest skips that
   person); a tampered token and a GET change nothing.
3. Privacy: a unique string said in a pair room and in a direct room appears in no email, no
   lounge post and no report, while the most-reacted lounge post's string does.
4. A member named `<img src=x onerror=alert(1)>` who writes a liked lounge post is shown as text
   in every received email (both parts) and in the lounge post's Matrix HTML.
5. Recipients in Asia/Tokyo and America/Los_Angeles (from a roster import) each receive the
   same webinar at their own local time, and only that.

The hub's database is read only to wait for the hub to have seen something, and to learn which
room is which; every assertion is on what Matrix clients and the SMTP server received.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nio import RoomMessageNotice, RoomSendResponse
from sqlalchemy import func, select

from hub.core.calendar import CalendarItem, ItemKind
from hub.devserver.smtp import ReceivedMail, SmtpSink
from hub.devserver.synapse import SynapseServer
from hub.email.message import message_id
from hub.features.roster import import_file
from hub.storage.models import (
    PersonPref,
    lounge_reaction_table,
    outbox_table,
    room_activity_table,
)

from tests.support.cohorts import room_of
from tests.support.live_hub import hub_settings, running_hub, sink_email

pytestmark = pytest.mark.synapse

PUBLIC = "https://hub.example.test"
PAIR_SECRET = "pairsecret-q81zv"
DIRECT_SECRET = "directsecret-k27wm"
LOUNGE_TOP = "loungetop-m55xr"
HOSTILE = "<img src=x onerror=alert(1)>"
HOSTILE_ESCAPED = "&lt;img src=x onerror=alert(1)&gt;"
HOSTILE_POST = "hostilepost-v3n8d"
# 16:00 UTC (the cohort's zone) on Monday 1 February 2027, as each recipient reads it.
WEBINAR = "2027-02-01T16:00"
TOKYO_TIME, LA_TIME, UTC_TIME = "Tue 2 Feb, 01:00 JST", "Mon 1 Feb, 08:00 PST", "Mon 1 Feb, 16:00 UTC"
ROSTER = (
    "cohort,role,name,email,matrix_id,timezone,mentor\n"
    "spring,mentee,Haruki,haruki@example.org,,Asia/Tokyo,\n"
    "spring,mentee,Lupe,lupe@example.org,,America/Los_Angeles,\n"
)
EVERYONE = ["ada@example.org", "bo@example.org", "carol@example.org", "haruki@example.org",
            "hostile@example.org", "lupe@example.org"]




async def _until(check: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(what)






def _everything(mail: ReceivedMail) -> str:
    """Every decoded part of a message, so a string cannot hide in quoted-printable or base64."""
    parts = [str(mail.message)]
    for part in mail.message.walk():
        if not part.is_multipart():
            content = part.get_content()
            parts.append(content if isinstance(content, str) else content.decode("utf-8", "replace"))
    return "\n".join(parts)


async def _react(user: Any, room: str, event_id: str) -> None:
    resp = await user.client.room_send(room, "m.reaction", {"m.relates_to": {
        "rel_type": "m.annotation", "event_id": event_id, "key": "👍"}}, ignore_unverified_devices=True)
    assert isinstance(resp, RoomSendResponse), resp


async def test_digest_send_unsubscribe_and_privacy(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any], tmp_path: Path,
    database_urls: dict[str, str],
) -> None:
    bot = await register("hub")
    mod, mentor, mentee = await participant("mod"), await participant("mentor"), await participant("mentee")
    hostile = await participant("hostile")
    with SmtpSink() as sink:
        settings = hub_settings(
            homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub", moderators=[mod.user_id],
            database_url=database_urls.get("postgresql"),
            extra={"email": sink_email(sink),
                   "web": {"public_url": PUBLIC}})
        async with running_hub(settings) as hub:
            assert hub.db is not None and hub.web is not None and hub.program is not None
            control = hub.control_room_id
            assert control
            await mod.wait_joined(control, mod.user_id, timeout=20)
            for command in ['!hub cohort create spring "Spring 2027"',
                            f"!hub add spring mentor {mentor.user_id} Ada email=ada@example.org",
                            f"!hub add spring mentee {mentee.user_id} Bo email=bo@example.org",
                            "!hub add spring mentee carol@example.org Carol",
                            f'!hub add spring mentee {hostile.user_id} "{HOSTILE}" email=hostile@example.org',
                            f"!hub pair spring {mentor.user_id} {mentee.user_id}",
                            f'!hub webinar spring {WEBINAR} "Midpoint"']:
                await mod.ask(control, command)
            (tmp_path / "zones.csv").write_text(ROSTER, encoding="utf-8")
            await import_file(hub.settings, tmp_path / "zones.csv")  # time zones come from the roster
            lounge, pair = await room_of(hub, "lounge:1"), await room_of(hub, "pair:1")
            await mod.ask(control, "!hub send reflection spring")  # makes the mentee's direct room
            direct = await room_of(hub, f"direct:{mentee.user_id}")
            for user, room in ((mentor, lounge), (mentee, lounge), (mod, lounge), (hostile, lounge),
                               (mentor, pair), (mentee, pair), (mentee, direct)):
                await user.wait_joined(room, user.user_id, timeout=30)

            # Private words in the pair room and the direct room (both end-to-end encrypted).
            await mentor.send(pair, f"Between us: {PAIR_SECRET}")
            await mentee.send(direct, f"Only for the hub: {DIRECT_SECRET}")
            # The lounge: one post everyone likes, one nobody reacts to.
            top = await mentor.send(lounge, f"Loved the first call, {LOUNGE_TOP} was my favourite question")
            await mentee.send(lounge, "hello from Bo")
            await _react(mentee, lounge, top)
            await _react(mod, lounge, top)
            liked = await hostile.send(lounge, f"Hi all, {HOSTILE_POST}")
            await _react(mentor, lounge, liked)

            async def seen() -> bool:
                assert hub.db is not None
                async with hub.db.session() as s:
                    kinds = set((await s.execute(select(room_activity_table.c.kind))).scalars().all())
                    reactions = (await s.execute(select(func.count()).select_from(lounge_reaction_table)))
                return kinds >= {"lounge", "pair", "direct"} and reactions.scalar() == 3

            await _until(seen, 20, "the hub did not see the lounge, pair and direct activity")
            # Welcomes and the webinar's announcement go first (its reminders wait for January).
            assert hub.outbox is not None
            await asyncio.wait_for(hub.outbox.wait_until_drained(due_only=True, settle=2), 30)
            before = sink.count

            # 1. One send: the lounge once, each opted-in address once.
            reply = await mod.ask(control, "!hub digest spring send")
            assert "to the lounge and 6 people by email" in reply, reply
            await sink.wait_for(before + 6, timeout=30)
            await mentor.wait_until(lambda: bool(mentor.notices(lounge, "week 1 of 12")), 20)
            await mod.wait_until(lambda: bool(mod.notices(control, "Weekly report for `spring`")), 20)
            assert "already gone to everyone" in await mod.ask(control, "!hub digest spring send")
            await asyncio.sleep(1.5)  # a duplicate, if any, would have arrived by now
            digests = [m for m in sink.messages[before:] if "week 1 of 12" in m.subject]
            assert sorted(a for m in digests for a in m.rcpt_tos) == EVERYONE
            assert len(mentor.notices(lounge, "week 1 of 12")) == 1
            lounge_post = mentor.notices(lounge, "week 1 of 12")[0]

            async with hub.db.session() as s:
                txn = dict((await s.execute(select(outbox_table.c.lane, outbox_table.c.txn_id).where(
                    outbox_table.c.kind == "digest"))).all())
            for mail in digests:
                msg = email.message_from_bytes(mail.raw, policy=email.policy.default)
                assert isinstance(msg, EmailMessage)
                assert msg.get_content_type() == "multipart/alternative"
                assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
                assert msg["Message-ID"] == message_id(txn[mail.rcpt_tos[0]], "Hub <hub@example.org>")
                assert msg["List-Id"] == "Spring 2027 <spring.hub.example.test>"
                one_click = rf"<{re.escape(PUBLIC)}/unsubscribe/[A-Za-z0-9_-]+>"
                assert re.fullmatch(one_click, msg["List-Unsubscribe"])
                assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
                assert msg["Auto-Submitted"] == "auto-generated"
                html = mail.html or ""
                assert 'style="' in html and "<link" not in html  # CSS inlined, nothing remote
                assert LOUNGE_TOP in (mail.text or "") and LOUNGE_TOP in html
                # 4. The hostile name, as its sender in the pulse: text, never a tag.
                assert HOSTILE_POST in html and HOSTILE_ESCAPED in html
                assert "<img" not in html.lower() and "onerror=alert" not in html.replace(HOSTILE_ESCAPED, "")
                assert HOSTILE in (mail.text or "")
                # 5. The webinar at the recipient's own local time, and only that one.
                own = {"haruki@example.org": TOKYO_TIME, "lupe@example.org": LA_TIME}.get(
                    mail.rcpt_tos[0], UTC_TIME)
                for part in (mail.text or "", html):
                    assert "Midpoint" in part
                    assert [t for t in (TOKYO_TIME, LA_TIME, UTC_TIME) if t in part] == [own], mail.rcpt_tos
            hostile_mail = next(m for m in digests if m.rcpt_tos == ("hostile@example.org",))
            assert f"Hi {HOSTILE_ESCAPED}," in (hostile_mail.html or "")
            assert f"Hi {HOSTILE}," in (hostile_mail.text or "")

            # 3. Privacy, over everything received: mail, the lounge, the control room.
            report = await mod.ask(control, "!hub report spring")
            control_text = "\n".join(str(e.source) for e in mod.in_room(control))
            lounge_text = "\n".join(str(e.source) for e in mentor.in_room(lounge)
                                    if isinstance(e, RoomMessageNotice))
            mail_text = "\n".join(_everything(m) for m in sink.messages)
            for secret in (PAIR_SECRET, DIRECT_SECRET):
                for where, text in (("email", mail_text), ("lounge", lounge_text),
                                    ("control room", control_text), ("report", report)):
                    assert secret not in text, f"{secret} leaked into the {where}"
            assert LOUNGE_TOP in lounge_post.body and "hello from Bo" not in lounge_post.body
            # 4. The lounge post as a Matrix client receives it: the name escaped in its HTML.
            formatted = lounge_post.source["content"]["formatted_body"]
            assert HOSTILE_POST in formatted and HOSTILE_ESCAPED in formatted
            assert "<img" not in formatted.lower()
            assert HOSTILE in lounge_post.body

            # 2. Unsubscribe with the link from Bo's received header.
            bo = next(m for m in digests if m.rcpt_tos == ("bo@example.org",))
            link = bo.message["List-Unsubscribe"].strip("<>")
            local = f"http://127.0.0.1:{hub.web.bound_port}" + link.removeprefix(PUBLIC)
            token = local.rsplit("/", 1)[1]
            tampered = local[:-1] + ("A" if token[-1] != "A" else "B")

            async def bo_mode() -> str:
                assert hub.db is not None
                async with hub.db.session() as s:
                    pref = await s.get(PersonPref, mentee.user_id)
                return pref.email_mode if pref is not None else "all"

            async with aiohttp.ClientSession() as http:
                async with http.get(local) as resp:
                    assert resp.status == 200 and "Unsubscribe" in await resp.text()
                assert await bo_mode() == "all"  # GET alone changes nothing
                async with http.post(tampered, data={"List-Unsubscribe": "One-Click"}) as resp:
                    assert resp.status == 400
                assert await bo_mode() == "all"  # a tampered token changes nothing
                async with http.post(local, data={"List-Unsubscribe": "One-Click"}) as resp:
                    assert resp.status == 200
                assert await bo_mode() == "off"

            # The next digest (week 2, through the real emitter and SMTP) skips Bo.
            now = hub.clock.now()
            item = CalendarItem(key="digest:spring:w2", kind=ItemKind.DIGEST, cohort="spring", week=2,
                                due=now)
            before = sink.count
            await hub.program.emit(item, await hub.program.targets_of(item, now))
            await sink.wait_for(before + 5, timeout=30)
            await asyncio.sleep(1.5)
            week2 = [a for m in sink.messages[before:] if "week 2 of 12" in m.subject for a in m.rcpt_tos]
            assert sorted(week2) == [a for a in EVERYONE if a != "bo@example.org"]
