"""What the digest shows people, through the real wiring (SQLite, no servers): issue 6, acceptance 4 and 5.

4. A display name like `<img src=x onerror=alert(1)>` is shown as text in the queued email HTML and
   in the lounge post's Matrix HTML: escaped, never a tag.
5. Recipients in Asia/Tokyo and America/Los_Angeles see the same webinar at their own local times.

The rows checked are the outbox rows the calendar's digest slot queued, exactly as the dispatcher
would send them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hub.activity import ActivityRecorder
from hub.core.cohorts import Who
from hub.features.cohort_setup import get_cohort
from hub.features.members import add_member
from hub.features.room_queue import load_env

from tests.features.test_digest_wiring import HUB, _event, _sync, _text, digest_world
from tests.features.test_program_wiring import BERLIN, CONTROL, MOD, World, give_rooms_ids, run_calendar

HOSTILE = "<img src=x onerror=alert(1)>"
HOSTILE_ESCAPED = "&lt;img src=x onerror=alert(1)&gt;"
HOSTILE_MXID = "@hostile:example.org"
HOSTILE_POST = "hostile-post-9k2q"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = await digest_world(tmp_path)
    async with w.db.transaction() as s:
        env = await load_env(s, w.outbox, w.clock, w.settings)
        cohort = await get_cohort(s, "winter")
        assert cohort is not None
        await add_member(s, env, cohort, "mentee", Who(matrix_id=HOSTILE_MXID), name=HOSTILE,
                            email="hostile@example.org")
        await add_member(s, env, cohort, "mentee", Who(email="tokyo@example.org"), name="Haruki",
                            timezone="Asia/Tokyo")
        await add_member(s, env, cohort, "mentor", Who(email="la@example.org"), name="Lupe",
                            timezone="America/Los_Angeles")
    yield w
    await w.db.close()


async def _digest_slot(w: World) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Run the calendar through week 2's digest slot: the lounge row and the email rows by address."""
    await run_calendar(w.program, w.clock, datetime(2027, 1, 18, 10, 0, tzinfo=BERLIN))
    digest = [r for r in await w.rows() if r["kind"] == "digest"]
    lounge = [r for r in digest if r["channel"] == "matrix"]
    assert len(lounge) == 1
    return lounge[0], {r["lane"]: r for r in digest if r["channel"] == "email"}


async def test_hostile_display_name_is_inert_text_in_email_and_matrix_html(world: World) -> None:
    ids = await give_rooms_ids(world)
    lounge_room = ids["lounge:1"]
    now = world.clock.now()
    # The homeserver's display name is hostile too; the roster name (also hostile) wins in the digest.
    rec = ActivityRecorder(world.db, HUB, display_name=lambda room, user: HOSTILE, clock=world.clock)
    await rec.on_sync(_sync({lounge_room: [
        _event("$hostile", HOSTILE_MXID, now - timedelta(hours=5), "m.room.message",
               _text(f"{HOSTILE} says hi {HOSTILE_POST}")),
        *[_event(f"$r{i}", f"@mentor{i}:example.org", now - timedelta(hours=4), "m.reaction",
                 {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$hostile", "key": "👍"}})
          for i in range(2)],
    ]}))

    lounge, emails = await _digest_slot(world)

    content = lounge["payload"]["content"]
    assert content["format"] == "org.matrix.custom.html"
    html = content["formatted_body"]
    assert HOSTILE_POST in html  # the post is in the pulse, with its sender's name
    assert "<img" not in html.lower() and "onerror=alert" not in html.replace(HOSTILE_ESCAPED, "")
    assert HOSTILE_ESCAPED in html
    assert HOSTILE in content["body"]  # the plain body shows the name as the text it is

    mail = emails["hostile@example.org"]["payload"]
    assert f"Hi {HOSTILE_ESCAPED}," in mail["html"]  # the greeting, escaped
    assert f"Hi {HOSTILE}," in mail["text"]
    for address, row in emails.items():  # the pulse names the sender in everyone's mail
        body = row["payload"]["html"]
        assert HOSTILE_POST in body, address
        assert "<img" not in body.lower(), address
        assert HOSTILE_ESCAPED in body, address
        assert HOSTILE_ESCAPED not in row["payload"]["subject"] and "<" not in row["payload"]["subject"]


async def test_webinar_times_in_each_recipients_own_zone(world: World) -> None:
    await give_rooms_ids(world)
    # 17:00 Berlin (CET, UTC+1) on Monday 1 February 2027 = 16:00 UTC.
    reply = await world.command(MOD, CONTROL, '!hub webinar winter 2027-02-01T17:00 "Midpoint"')
    assert "Midpoint" in reply["body"]

    lounge, emails = await _digest_slot(world)

    tokyo = emails["tokyo@example.org"]["payload"]
    la = emails["la@example.org"]["payload"]
    berlin = emails["mentor0@example.org"]["payload"]  # no zone of their own: the cohort's
    for part in ("text", "html"):
        assert "Tue 2 Feb, 01:00 JST" in tokyo[part], part
        assert "Mon 1 Feb, 08:00 PST" in la[part], part
        assert "Mon 1 Feb, 17:00 CET" in berlin[part], part
        assert "Midpoint" in tokyo[part] and "Midpoint" in la[part]
        # Each sees only their own local time.
        assert "08:00 PST" not in tokyo[part] and "17:00 CET" not in tokyo[part]
        assert "01:00 JST" not in la[part] and "17:00 CET" not in la[part]
    # The lounge post, for everyone, uses the cohort's zone.
    assert "Mon 1 Feb, 17:00 CET" in lounge["payload"]["content"]["body"]
    assert "JST" not in lounge["payload"]["content"]["body"]
