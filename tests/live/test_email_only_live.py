"""Email-only participants, as their mail program and browser see it (issue 12, item 5).

A real hub on a real Synapse mails a real SMTP server (aiosmtpd); every assertion on mail is on
the received MIME, and the answer links are followed over HTTP as a browser would:

- a mentee added and paired in one roster import gets exactly one welcome: the content
  library's, in the digest's design, with her pairing and a clickable video link, the plain
  part without Markdown, a hostile name shown as text; a mentee added first and paired by a
  later command gets one welcome and then a pairing notice (a different message);
- the "did you meet?" and private check-in questions reach them by email with one-click
  answer links: `GET` records nothing, `POST` records what `!hub met video` / `!hub checkin 4`
  record; tampered, other-purpose, other-pair and repeated links change nothing;
- no email of theirs names a command; every list email shows the unsubscribe link in both
  parts (announcements, webinar invites, digest, welcome, questions).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select

from hub.devserver.smtp import ReceivedMail, SmtpSink
from hub.devserver.synapse import SynapseServer
from hub.features.roster import import_file
from hub.service import Hub
from hub.storage.models import checkin_answer_table, pair_table, private_checkin_table

from tests.support.cohorts import room_of
from tests.support.live_hub import hub_settings, running_hub, sink_email

pytestmark = pytest.mark.synapse

PUBLIC = "https://hub.example.test"
EVE = "eve@example.org"
ZED = "zed@example.org"
HOSTILE = "[Eve](https://evil.example/x)"  # a name that would be a link if it were Markdown


def _everything(mail: ReceivedMail) -> str:
    """Every decoded part, so a string cannot hide in quoted-printable or base64."""
    parts = [str(mail.message)]
    for part in mail.message.walk():
        if not part.is_multipart():
            content = part.get_content()
            parts.append(content if isinstance(content, str) else content.decode("utf-8", "replace"))
    return "\n".join(parts)


def _to(sink: SmtpSink, address: str) -> list[ReceivedMail]:
    return [m for m in sink.messages if m.rcpt_tos == (address,)]


def _links(mail: ReceivedMail, hub: Hub) -> dict[str, str]:
    """Answer label -> the link, rewritten to the hub's own port (public_url is not served)."""
    assert hub.web is not None
    text = mail.text or ""
    found = dict(re.findall(r"\* (.+)\n  (" + re.escape(PUBLIC) + r"/answer/[A-Za-z0-9_-]+)", text))
    html = mail.html or ""
    for url in found.values():
        assert f'href="{url}"' in html  # the same links, clickable, in the HTML part
    local = f"http://127.0.0.1:{hub.web.bound_port}"
    return {label: url.replace(PUBLIC, local) for label, url in found.items()}


async def _count(hub: Hub, table: Any, *where: Any) -> int:
    assert hub.db is not None
    async with hub.db.session() as s:
        return int((await s.execute(select(func.count()).select_from(table).where(*where))).scalar() or 0)


async def _modes(hub: Hub) -> dict[int, str]:
    assert hub.db is not None
    async with hub.db.session() as s:
        return dict((await s.execute(select(checkin_answer_table.c.pair_id,
                                            checkin_answer_table.c.mode))).all())


async def _pair_of(hub: Hub, address: str) -> int:
    assert hub.db is not None
    from hub.storage.models import member_table

    async with hub.db.session() as s:
        return int((await s.execute(select(pair_table.c.id).join(
            member_table, member_table.c.id == pair_table.c.mentee_id).where(
            member_table.c.email == address))).scalar_one())


async def _drain(hub: Hub) -> None:
    assert hub.outbox is not None
    await asyncio.wait_for(hub.outbox.wait_until_drained(due_only=True, settle=2), 30)


async def test_email_only_participants_get_one_welcome_answer_links_and_no_commands(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any], tmp_path: Path,
) -> None:
    bot = await register("hub")
    mod, mentor = await participant("mod"), await participant("mentor")
    with SmtpSink() as sink:
        settings = hub_settings(
            homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub", moderators=[mod.user_id],
            extra={"email": sink_email(sink), "web": {"public_url": PUBLIC}})
        async with running_hub(settings) as hub:
            assert hub.db is not None and hub.web is not None
            control = hub.control_room_id
            assert control
            await mod.wait_joined(control, mod.user_id, timeout=20)
            await mod.ask(control, '!hub cohort create spring "Spring 2027"')
            # One import adds Eve (email only) and pairs her with the Matrix mentor.
            (tmp_path / "roster.csv").write_text(
                "cohort,role,name,email,matrix_id,timezone,mentor\n"
                f"spring,mentor,Ada,ada@example.org,{mentor.user_id},Europe/Berlin,\n"
                f'spring,mentee,"{HOSTILE}",{EVE},,Europe/Lisbon,{mentor.user_id}\n', encoding="utf-8")
            await import_file(hub.settings, tmp_path / "roster.csv")
            # Zed is added by one command and paired by a later one.
            await mod.ask(control, f"!hub add spring mentee {ZED} Zed")
            await _drain(hub)
            await mod.ask(control, f"!hub pair spring {mentor.user_id} {ZED}")
            await room_of(hub, "pair:1")
            await _drain(hub)

            # -- the welcome: once, from the library, styled like the digest -----------------------
            eve_welcomes = [m for m in _to(sink, EVE) if m.subject.startswith("Welcome to Spring 2027")]
            assert len(eve_welcomes) == 1, [m.subject for m in _to(sink, EVE)]
            assert len(_to(sink, EVE)) == 1  # and nothing else: no second, paired "welcome"
            welcome = eve_welcomes[0]
            text, html = welcome.text or "", welcome.html or ""
            # The library's email branch (content/welcome/direct.md), with her pairing.
            assert "You're taking part by email" in text and "Your mentor is Ada" in text
            assert "**" not in text and "Spring 2027" in text  # plain text, not Markdown
            video = re.search(r"https://meet\.jit\.si/CohortHub-[a-z2-7]{26}", text)
            assert video is not None
            assert f'href="{video.group(0)}"' in html  # the video link is a link
            assert "background-color: #1e3a5f" in html and 'class="card"' in html  # the digest's design
            assert "evil.example" not in html.replace("https://evil.example/x)", "")  # the name is text
            assert 'href="https://evil.example' not in html and HOSTILE in text
            unsubscribe = welcome.message["List-Unsubscribe"].strip("<>")
            assert unsubscribe.startswith(f"{PUBLIC}/unsubscribe/") and unsubscribe in text
            assert f'href="{unsubscribe}"' in html
            zed = _to(sink, ZED)
            assert [m.subject for m in zed] == ["Welcome to Spring 2027, Zed",
                                                "Spring 2027: your mentor is Ada"]
            assert "Your mentor is" not in (zed[0].text or "")  # not paired yet when welcomed
            assert "your mentor is now Ada" in (zed[1].text or "")
            assert "meet.jit.si/CohortHub-" in (zed[1].html or "")

            # -- "did you meet?" by email, answered by link --------------------------------------
            before = sink.count
            await mod.ask(control, "!hub send checkin spring")
            await sink.wait_for(before + 2, timeout=30)
            await _drain(hub)
            questions = {m.rcpt_tos[0]: m for m in sink.messages[before:]}
            assert set(questions) == {EVE, ZED}
            eve_links, zed_links = _links(questions[EVE], hub), _links(questions[ZED], hub)
            assert list(eve_links) == ["We met on video", "We had a voice or phone call",
                                       "We were in touch in writing only", "Not yet this week"]
            eve_pair, zed_pair = await _pair_of(hub, EVE), await _pair_of(hub, ZED)
            video_link = eve_links["We met on video"]
            token = video_link.rsplit("/", 1)[1]
            async with aiohttp.ClientSession() as http:
                async with http.get(video_link) as resp:
                    assert resp.status == 200
                    page = await resp.text()
                    assert "Record my answer" in page and "We met on video" in page and "<form" in page
                assert await _modes(hub) == {}  # GET alone records nothing
                for bad in (video_link[:-1] + ("A" if token[-1] != "A" else "B"),  # tampered
                            video_link.replace(token, unsubscribe.rsplit("/", 1)[1]),  # an unsubscribe token
                            video_link + "x", video_link.rsplit("/", 1)[0] + "/"):
                    async with http.post(bad) as resp:
                        assert resp.status in (400, 404), bad
                        assert "Traceback" not in await resp.text()
                assert await _modes(hub) == {}  # forged links change nothing
                # An answer link is no unsubscribe link either.
                async with http.post(f"http://127.0.0.1:{hub.web.bound_port}/unsubscribe/{token}") as resp:
                    assert resp.status == 400
                async with http.post(video_link) as resp:
                    assert resp.status == 200 and "you met on video" in await resp.text()
                assert await _modes(hub) == {eve_pair: "video"}  # what `!hub met video` records
                # Zed's link records for Zed's pair only; a later answer replaces (the latest wins).
                async with http.post(zed_links["We had a voice or phone call"]) as resp:
                    assert resp.status == 200
                async with http.post(eve_links["Not yet this week"]) as resp:
                    assert resp.status == 200
                assert await _modes(hub) == {eve_pair: "notyet", zed_pair: "voice"}
            report = await mod.ask(control, "!hub report spring")
            assert "video 0, voice 1, text 0, notyet 1" in report, report

            # -- the private check-in by email, in reflection weeks --------------------------------
            before = sink.count
            await mod.ask(control, "!hub send reflection spring")
            await sink.wait_for(before + 2, timeout=30)
            await _drain(hub)
            private = {m.rcpt_tos[0]: m for m in sink.messages[before:] if "private check-in" in m.subject}
            assert set(private) == {EVE, ZED}
            links = _links(private[EVE], hub)
            assert list(links) == ["5: it's going really well", "4: good", "3: OK, could be better",
                                   "2: it's not really working", "1: I'm struggling with it"]
            scores = await _count(hub, private_checkin_table)
            async with aiohttp.ClientSession() as http:
                async with http.get(links["4: good"]) as resp:
                    assert resp.status == 200 and "stays private" in await resp.text()
                assert await _count(hub, private_checkin_table) == scores
                async with http.post(links["4: good"]) as resp:
                    assert resp.status == 200 and "noted privately" in await resp.text()
                assert await _count(hub, private_checkin_table, private_checkin_table.c.score == 4) == 1
                async with http.post(links["2: it's not really working"]) as resp:  # a second press
                    assert resp.status == 200 and "already answered" in await resp.text()
            assert await _count(hub, private_checkin_table) == scores + 1

            # -- the digest, announcements and webinar mail -----------------------------------------
            await mod.ask(control, "!hub digest spring send")
            await mod.ask(control, "!hub announce spring Hello **everyone**, see you at the kick-off.")
            await mod.ask(control, '!hub webinar spring 2031-02-01T16:00 "Kick-off"')
            await asyncio.sleep(12)  # the webinar announcement goes out 10 s after the command
            await mod.ask(control, "!hub ping")
            await _drain(hub)
            for kind in ("digest", "Hello", "Kick-off"):
                got = [m for m in sink.messages if kind in m.subject and m.rcpt_tos == ("ada@example.org",)]
                assert got, (kind, [m.subject for m in sink.messages])
                for mail in got:  # list mail: the unsubscribe link in the header and both bodies
                    link = mail.message["List-Unsubscribe"].strip("<>")
                    assert link in (mail.text or "") and f'href="{link}"' in (mail.html or ""), kind

            # -- nothing Eve or Zed received names a command ----------------------------------------
            for address in (EVE, ZED):
                mails = _to(sink, address)
                assert any("digest" in m.subject for m in mails)
                for mail in mails:
                    assert "!hub" not in _everything(mail), (address, mail.subject)
                    link = mail.message["List-Unsubscribe"].strip("<>")
                    assert link in (mail.text or "") and f'href="{link}"' in (mail.html or "")
