"""Digest emails rendered when they are sent (hub.features.digest_mail): the same message, byte for
byte, as rendering at fan-out made, from an edition stored once and loaded once per process.

The reference is the path the hub took before: `DigestBuilder.email` for the person (their token
signed from their handle) through the effect writer's `email_payload`. Through SMTP, and rows an
older hub queued with the whole email in them, see tests/email/test_email_sender.py.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from hub.core import digest as dg
from hub.core.calendar import Webinar
from hub.core.effects import Email
from hub.core.tokens import TokenSigner, new_handle
from hub.delivery.effect_writer import email_row_payload
from hub.email.message import build_message
from hub.email.payload import EmailPayload
from hub.errors import PermanentDeliveryError
from hub.features.digest_mail import DigestMail, issue_data, issue_from, person_payload, store_edition
from hub.storage.db import open_database

from tests.features.test_digest_wiring import world  # noqa: F401  (the fixture)
from tests.features.test_program_wiring import BERLIN, World, give_rooms_ids, run_calendar

FROM = "Mentoring Hub <hub@example.org>"
LIST_ID = "Winter 2027 <winter.hub.example.org>"
LOUNGE = "!lounge:example.org"
ZONES = ("Europe/Berlin", "Asia/Tokyo", "America/Los_Angeles", "Asia/Kolkata", "UTC")


def _issue(now: datetime) -> dg.DigestIssue:
    """A full week: prompts (one with an email-only variant), webinars (one past), reacted posts,
    a tip that names a command and one for email-only readers."""
    summary = "Each of you names one thing that went well.\n\nThen `!hub met video` when you met."
    return dg.DigestIssue(
        cohort=dg.CohortInfo("winter", "Winter 2027 · Ünïcode", ZoneInfo("Europe/Berlin"), LOUNGE),
        week=3, weeks=12, generated_at=now,
        prompts=(dg.Prompt("Icebreaker", "Three questions", summary),
                 dg.Prompt("Check-in", "Did you meet?", summary, by_email="The question comes by email.")),
        webinars=(Webinar(now - timedelta(days=1), "Over already", None),
                  Webinar(now + timedelta(days=3, hours=8), "Midpoint", "https://meet.example.org/mid",
                          announce_at=now - timedelta(days=2)),
                  Webinar(now + timedelta(days=10), "Careers <Q&A>", "https://meet.example.org/careers")),
        pulse=dg.CohortPulse(new_members=4, lounge_messages=87, posts=tuple(
            dg.LoungePost(LOUNGE, f"$post{i}", f"Member {i} <b>", f"Post {i}: " + "words " * 40, 9 - i)
            for i in range(5))),
        tip=dg.Tip("Keep an agenda", "Pin it.\n\nType `!hub plan` to see yours."),
        email_tip=dg.Tip("Reply by email", "Your partner reads it in your pair room."))


def _people(n: int) -> list[tuple[str, dg.Recipient]]:
    return [(f"p{i}@example.org", dg.Recipient(
        handle=new_handle(), name=f"Participant {i} Ünï", timezone=ZoneInfo(ZONES[i % len(ZONES)]),
        pairs=tuple(dg.PairCounts(days_since_active=(i % 20) or None, backup_plan_set=bool(i % 3))
                    for _ in range(i % 3)),  # none, one or two pairs
        on_matrix=bool(i % 2))) for i in range(n)]


def _eager(builder: dg.DigestBuilder, issue: dg.DigestIssue, address: str, r: dg.Recipient) -> EmailPayload:
    """The payload the hub queued when it rendered every email at fan-out."""
    mail = builder.email(issue, r)
    return email_row_payload(Email(to=address, subject=mail.subject, text=mail.text, html=mail.html,
                                   to_name=r.name, headers={"List-Id": LIST_ID, **mail.headers}))


def _mime(payload: EmailPayload | dict[str, Any], txn: str, now: datetime) -> bytes:
    return build_message(payload, txn_id=txn, from_header=FROM, date=now).data  # type: ignore[arg-type]


def test_an_edition_reads_back_as_the_issue_it_was() -> None:
    issue = _issue(datetime(2027, 1, 25, 8, 0, tzinfo=BERLIN))
    back = issue_from(issue_data(issue))
    # Times come back with a fixed offset instead of the zone: the same instants.
    assert back.generated_at == issue.generated_at and back.webinars == issue.webinars
    assert (back.cohort, back.prompts, back.pulse, back.tip, back.email_tip, back.week, back.weeks) == (
        issue.cohort, issue.prompts, issue.pulse, issue.tip, issue.email_tip, issue.week, issue.weeks)


async def test_rendered_at_send_time_is_the_message_rendered_at_fan_out(tmp_path: Path) -> None:
    now = datetime(2027, 1, 25, 8, 0, tzinfo=BERLIN)
    issue, people = _issue(now), _people(40)
    builder = dg.DigestBuilder(public_url="https://hub.example.org/", hub_user_id="@hub:example.org",
                               signer=TokenSigner(secrets.token_hex(16)), command_prefix="!hub")
    db = await open_database(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        async with db.transaction() as s:
            edition = await store_edition(s, builder, issue, LIST_ID, now.timestamp())
        rows = [person_payload(edition, address, r, builder.unsubscribe_token(issue, r))
                for address, r in people]
        assert max(len(str(r)) for r in rows) < 600  # a reference, not a 20 KB email
        mail = DigestMail(db)  # a fresh process: no builder, no secret, no cache
        sent = datetime.now(UTC)
        for (address, r), row in zip(people, rows, strict=True):
            txn = secrets.token_hex(16)
            expected = _mime(_eager(builder, issue, address, r), txn, sent)
            assert _mime(await mail(row), txn, sent) == expected, address
        assert mail.loads == 1  # the edition once for all 40

        # A name an older hub stored with a line break: that row fails for good, with the reason.
        address, r = people[0]
        bad = person_payload(edition, address, dg.Recipient(r.handle, "Line\nBreak", r.timezone), "tok")
        with pytest.raises(PermanentDeliveryError, match="name contains a line break"):
            await mail(bad)
        with pytest.raises(PermanentDeliveryError, match="edition 999 is not in the database"):
            await mail({**rows[1], "edition": 999})
    finally:
        await db.close()


async def test_the_hub_fan_out_queues_references_that_render_to_what_preview_shows(world: World) -> None:  # noqa: F811
    """Through `DigestService` at the calendar's slot: each person's row renders to the email
    `hub digest preview --for` shows for them (the same builder call, made at fan-out before)."""
    from hub.features.digest_commands import preview

    await give_rooms_ids(world)
    await run_calendar(world.program, world.clock, datetime(2027, 1, 18, 10, 0, tzinfo=BERLIN))
    stored = {r["lane"]: r for r in await world.rows(rendered=False)
              if r["kind"] == "digest" and r["channel"] == "email"}
    assert len(stored) == 7 and all(r["payload"]["template"] == "digest" for r in stored.values())
    rendered = {r["lane"]: r for r in await world.rows() if r["kind"] == "digest" and r["channel"] == "email"}
    for address in ("mentor0@example.org", "mentee2@example.org", "eve@example.org"):  # eve: email only
        mail = rendered[address]["payload"]
        shown = await preview(world.settings, "winter", week=2, who=address)
        # The preview renders "now" (a later time than the slot): the same but for the token's time.
        assert mail["subject"] == shown.subject
        assert mail["text"].split("/unsubscribe/")[0] == shown.text.split("/unsubscribe/")[0]
        assert mail["headers"]["List-Id"] == LIST_ID
    assert world.digest_mail.loads == 1
