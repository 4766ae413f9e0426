"""The digest on the real tables, without servers: activity from sync batches, the digest hook at the
calendar's slot, `!hub digest`, one-click unsubscribe through the SQL store, list headers on every
bulk email, and the privacy rule checked over the whole database and every queued row.

What a participant's mail client and Matrix client receive is in test_digest_live.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select, text

from hub.activity import ActivityRecorder
from hub.core.cohorts import Who
from hub.core.ports import Priority
from hub.core.tokens import Purpose, TokenSigner
from hub.delivery.dispatcher import Claimed
from hub.errors import PermanentDeliveryError
from hub.features.cohort_setup import get_cohort
from hub.features.digest import DigestService
from hub.features.digest_commands import preview
from hub.features.members import add_member
from hub.features.room_queue import load_env
from hub.features.subscribers import SqlSubscriptionStore, signing_secret
from hub.mailer import DeliveryAlerts
from hub.storage.models import PersonPref, metadata, room_activity_table, subscriber_table

from tests.features.test_program_wiring import (
    BERLIN,
    CONTROL,
    MOD,
    PEOPLE,
    World,
    give_rooms_ids,
    make_world,
    run_calendar,
)

HUB = "@hub:example.org"
PAIR_SECRET = "pair-secret-7f3a9"
DIRECT_SECRET = "direct-secret-2b8c1"
LOUNGE_TOP = "lounge-top-post-4d2e"


def _event(event_id: str, sender: str, ts: datetime, etype: str, content: dict[str, Any],
           **extra: Any) -> SimpleNamespace:
    source = {"type": etype, "event_id": event_id, "sender": sender, "content": content, **extra}
    return SimpleNamespace(event_id=event_id, sender=sender, source=source,
                           server_timestamp=int(ts.timestamp() * 1000))


def _sync(batches: dict[str, list[SimpleNamespace]]) -> Any:
    join = {room: SimpleNamespace(timeline=SimpleNamespace(events=evs)) for room, evs in batches.items()}
    return SimpleNamespace(rooms=SimpleNamespace(join=join))


def _text(body: str) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body}


async def digest_world(tmp_path: Path) -> World:
    """The program's world with the digest wired as `hub.service` wires it, the Sunday before
    week 2's digest (the cohort's digest slot is Monday 09:00 Berlin)."""
    w = await make_world(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}",
                         datetime(2027, 1, 17, 12, 0, tzinfo=BERLIN))
    service = DigestService(w.program, control_room=lambda: CONTROL)
    w.program.digest = service.rows
    w.runner.services.digest = service
    return w


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = await digest_world(tmp_path)
    async with w.db.transaction() as s:  # an email-only mentee, to prove `mailto:` preferences work
        env = await load_env(s, w.outbox, w.clock, w.settings)
        cohort = await get_cohort(s, "winter")
        assert cohort is not None
        await add_member(s, env, cohort, "mentee", Who(email="eve@example.org"), name="Eve")
    yield w
    await w.db.close()


async def _chat(w: World) -> dict[str, str]:
    """Lounge posts with reactions, and private words in a pair room and a direct room."""
    ids = await give_rooms_ids(w)
    lounge, pair, direct = ids["lounge:1"], ids["pair:1"], f"!direct-{PEOPLE[0][1][1:]}:example.org"
    async with w.db.transaction() as s:
        await s.execute(text("INSERT INTO hub_room (key, kind, generation, room_id, status, user_id, "
                             "created_at) VALUES (:k, 'direct', 1, :r, 'ready', :u, 0)"),
                        {"k": f"direct:{PEOPLE[0][1]}", "r": direct, "u": PEOPLE[0][1]})
    now = w.clock.now()
    rec = ActivityRecorder(w.db, HUB, display_name=lambda room, user: "Someone <b>else</b>", clock=w.clock)
    mentor, mentee = PEOPLE[0]
    batch = _sync({
        lounge: [
            _event("$top", mentor, now - timedelta(hours=5), "m.room.message",
                   _text(f"Hello all {LOUNGE_TOP}")),
            _event("$low", mentee, now - timedelta(hours=4), "m.room.message", _text("second post")),
            _event("$none", mentee, now - timedelta(hours=4), "m.room.message", _text("no reactions here")),
            _event("$cmd", mentee, now - timedelta(hours=4), "m.room.message", _text("!hub icebreaker")),
            *[_event(f"$r{i}", PEOPLE[i][1], now - timedelta(hours=3), "m.reaction",
                     {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$top", "key": "👍"}})
              for i in range(3)],
            _event("$r9", mentor, now - timedelta(hours=3), "m.reaction",
                   {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$low", "key": "🎉"}}),
        ],
        pair: [_event("$p1", mentor, now - timedelta(days=3), "m.room.message", _text(PAIR_SECRET)),
               _event("$p2", HUB, now - timedelta(days=1), "m.room.message", _text("the hub itself"))],
        direct: [_event("$d1", mentee, now - timedelta(days=2), "m.room.message", _text(DIRECT_SECRET))],
    })
    await rec.on_sync(batch)
    await rec.on_sync(batch)  # a replayed batch after a crash: no double counts
    return {"lounge": lounge, "pair": pair, "direct": direct}


async def _dump_database(w: World) -> str:
    out: list[str] = []
    async with w.db.session() as s:
        for name in metadata.tables:
            out += [repr(tuple(r)) for r in (await s.execute(text(f'SELECT * FROM "{name}"'))).all()]
    return "\n".join(out)


async def test_activity_keeps_counts_for_private_rooms_and_excerpts_for_the_lounge_only(world: World) -> None:
    rooms = await _chat(world)
    async with world.db.session() as s:
        rows = (await s.execute(select(room_activity_table))).all()
    counts = {r.room_id: (r.kind, r.messages) for r in rows}
    # Replayed batch counted once; the hub's own message is not activity; a command in the lounge is.
    assert counts == {rooms["lounge"]: ("lounge", 4), rooms["pair"]: ("pair", 1),
                      rooms["direct"]: ("direct", 1)}
    stored = await _dump_database(world)
    assert LOUNGE_TOP in stored
    assert PAIR_SECRET not in stored and DIRECT_SECRET not in stored
    assert "!hub icebreaker" not in stored  # a command is not a post


async def test_digest_slot_sends_lounge_once_emails_once_and_the_report(world: World) -> None:
    await _chat(world)
    await run_calendar(world.program, world.clock, datetime(2027, 1, 18, 10, 0, tzinfo=BERLIN))
    rows = await world.rows()
    digest = [r for r in rows if r["kind"] == "digest"]
    lounge = [r for r in digest if r["channel"] == "matrix"]
    emails = [r for r in digest if r["channel"] == "email"]
    assert len(lounge) == 1 and "week 2 of 12" in lounge[0]["payload"]["content"]["body"]
    assert sorted(r["lane"] for r in emails) == sorted(
        ["eve@example.org"] + [f"{who}{i}@example.org" for i in range(3) for who in ("mentor", "mentee")])
    for r in emails:
        headers = r["payload"]["headers"]
        assert headers["List-Unsubscribe"].startswith("<https://hub.example.org/unsubscribe/")
        assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert headers["List-Id"] == "Winter 2027 <winter.hub.example.org>"
    report = [r for r in rows if r["kind"] == "digest-report"]
    assert len(report) == 1 and report[0]["lane"] == CONTROL
    # The report is interactive (a moderator's reply queues behind it); the fan-out is bulk.
    assert report[0]["priority"] == Priority.INTERACTIVE
    assert {r["priority"] for r in digest} == {Priority.BULK}
    assert "Weekly report for `winter`" in report[0]["payload"]["content"]["body"]

    # Privacy over everything queued: private words nowhere, the most-reacted lounge post present.
    everything = json.dumps([r["payload"] for r in rows], ensure_ascii=False)
    assert PAIR_SECRET not in everything and DIRECT_SECRET not in everything
    assert LOUNGE_TOP in lounge[0]["payload"]["content"]["body"]
    assert all(LOUNGE_TOP in r["payload"]["text"] for r in emails)
    assert "no reactions here" not in everything  # only reacted-to posts are shown
    assert "Mentor 0" in lounge[0]["payload"]["content"]["body"]  # the roster's name, not the display name
    mentor_mail = next(r for r in emails if r["lane"] == "mentor0@example.org")["payload"]["text"]
    assert "3 days ago" in mentor_mail  # "your pair": a count from the pair room's last activity

    # `!hub digest send` for the same week: everyone has had it, nothing is queued again.
    reply = await world.command(MOD, CONTROL, "!hub digest winter send")
    assert "already gone to everyone" in reply["body"]
    assert len([r for r in await world.rows() if r["kind"].startswith("digest")]) == len(digest) + 1


async def test_one_click_store_unsubscribes_like_email_off_and_the_next_digest_skips(world: World) -> None:
    await give_rooms_ids(world)
    world.clock.set(datetime(2027, 1, 18, 9, 0, 5, tzinfo=BERLIN))
    assert "Sent week 2" in (await world.command(MOD, CONTROL, "!hub digest winter send"))["body"]
    async with world.db.session() as s:
        handles = dict((await s.execute(select(subscriber_table.c.person, subscriber_table.c.handle))).all())
        secret = await signing_secret(s, world.settings)
    store = SqlSubscriptionStore(world.db, world.clock)
    mentee, eve = handles[PEOPLE[0][1]], handles["mailto:eve@example.org"]
    assert TokenSigner(secret).verify(TokenSigner(secret).sign(eve, Purpose.UNSUBSCRIBE,
                                                                issued_at=world.clock.now()),
                                      Purpose.UNSUBSCRIBE).handle == eve
    assert await store.is_subscribed(mentee) and await store.is_subscribed(eve)
    assert await store.unsubscribe(mentee) and await store.unsubscribe(eve)
    assert await store.unsubscribe(eve)  # idempotent
    assert not await store.unsubscribe("unknown-handle")
    assert not await store.is_subscribed(mentee)
    async with world.db.session() as s:
        pref = await s.get(PersonPref, PEOPLE[0][1])
    assert pref is not None and pref.email_mode == "off"  # the very row `!hub email off` writes

    world.clock.set(datetime(2027, 1, 25, 9, 0, 5, tzinfo=BERLIN))  # week 3
    await world.command(MOD, CONTROL, "!hub digest winter send")
    week3 = [r["lane"] for r in await world.rows() if r["kind"] == "digest" and r["key"].startswith(
        "digest:winter:w3") and r["channel"] == "email"]
    assert len(week3) == 5 and "mentee0@example.org" not in week3 and "eve@example.org" not in week3


async def test_announce_and_webinar_mail_carry_the_same_list_headers(world: World) -> None:
    await give_rooms_ids(world)
    await world.command(MOD, CONTROL, "!hub announce winter Hello **everyone**")
    await world.command(MOD, CONTROL, '!hub webinar winter 2027-02-01T17:00 "Midpoint"')
    world.clock.advance(60)
    await world.program.runner.tick()
    # Bulk mail only: a welcome or an address confirmation is one person's own business.
    mails = [r for r in await world.rows() if r["channel"] == "email"
             and r["kind"].startswith(("announce", "program-webinar", "digest"))]
    kinds = {r["kind"] for r in mails}
    assert {"announce", "program-webinar-announce"} <= kinds
    for r in mails:
        h = r["payload"]["headers"]
        assert h["List-Unsubscribe"].startswith("<https://hub.example.org/unsubscribe/"), r["kind"]
        assert h["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click" and "List-Id" in h


async def test_preview_command_and_cli_change_nothing(world: World, tmp_path: Path) -> None:
    await _chat(world)
    reply = await world.command(MOD, CONTROL, "!hub digest winter preview")
    assert "week 1 of 12" in reply["body"] and LOUNGE_TOP in reply["body"]  # Sunday of week 1
    assert "Icebreaker: Icebreaker" not in reply["body"]
    # The label is cut from a title that repeats it, and what is left starts with a capital.
    assert re.search(r"ICEBREAKER|Icebreaker", reply["body"])
    assert not re.search(r"Icebreaker\W+[a-z]", reply["body"]), reply["body"]
    refused = await world.command(PEOPLE[0][0], CONTROL, "!hub digest winter send")
    assert "moderator" in refused["body"].lower()
    before = await _dump_database(world)
    lounge = await preview(world.settings, "winter", week=3)
    assert "week 3 of 12" in lounge.subject and "<html>" not in lounge.text
    mail = await preview(world.settings, "winter", week=2, who="mentor0@example.org")
    assert "Mentor 0" in mail.text and "/unsubscribe/" in mail.text and "<style" in mail.html
    by_mxid = await preview(world.settings, "winter", who=PEOPLE[0][1])
    assert "Mentee 0" in by_mxid.text
    assert await _dump_database(world) == before  # no handle, no secret, no row kept


async def test_a_name_with_a_line_break_from_an_older_hub_fails_one_mail_when_sent_and_is_reported(
        world: World) -> None:
    """A name the hub now refuses can still be in the database (an older hub took it). The digest is
    rendered when each email is sent: that one person's row fails for good then, with the reason, and
    is reported like any row that failed for good; the digest, the icebreakers and the tick go on."""
    await give_rooms_ids(world)
    async with world.db.transaction() as s:
        await s.execute(text("UPDATE member SET name = :n WHERE matrix_id = :m"),
                        {"n": "Line\nBreak", "m": PEOPLE[1][1]})
    ticks = await run_calendar(world.program, world.clock, datetime(2027, 1, 19, 12, 0, tzinfo=BERLIN))
    assert ticks >= 2
    rows = await world.rows(rendered=False)
    emails = {r["lane"]: r for r in rows if r["kind"] == "digest" and r["channel"] == "email"}
    everyone = ["eve@example.org"] + [f"{who}{i}@example.org" for i in range(3)
                                      for who in ("mentor", "mentee")]
    assert sorted(emails) == sorted(everyone)  # queued for everyone: nothing is rendered at the slot
    assert len([r for r in rows if r["kind"] == "digest" and r["channel"] == "matrix"]) == 1
    week2 = [r for r in rows if r["kind"] == "program-icebreaker" and ":w2:" in r["key"]]
    assert len(week2) == 3 + 1  # every pair room and the lounge
    assert not [r for r in rows if r["kind"] == "alert"]
    async with world.db.session() as s:
        last = (await s.execute(text("SELECT last_tick FROM program_tick WHERE cohort = 'winter'"))).scalar()
    assert last is not None and last >= datetime(2027, 1, 19, 10, 0, tzinfo=BERLIN).timestamp()

    # Sending: everyone else's email renders; theirs fails for good with the reason.
    for address, row in emails.items():
        if address != "mentee1@example.org":
            assert "week 2 of 12" in (await world.digest_mail(row["payload"]))["subject"]
    with pytest.raises(PermanentDeliveryError) as failed:
        await world.digest_mail(emails["mentee1@example.org"]["payload"])
    reason = failed.value.reason
    assert "name contains a line break" in reason and "older version" in reason and "Traceback" not in reason
    assert not failed.value.reported  # the dispatcher reports it (on_failed), like any failed row

    # As `hub run` and `hub worker` report a row that failed for good: one control-room notice.
    alerts = DeliveryAlerts(world.clock, control_room=lambda: CONTROL, command_prefix=lambda: "!hub")
    alerts.outbox = world.outbox
    claimed = Claimed(1, "txn", "email", "digest", "mentee1@example.org",
                      emails["mentee1@example.org"]["payload"], 0, 0.0)
    await alerts.report_failure(claimed, reason)
    notices = [r for r in await world.rows(rendered=False) if r["kind"] == "alert"]
    assert len(notices) == 1 and notices[0]["lane"] == CONTROL
    body = notices[0]["payload"]["content"]["body"]
    assert "mentee1@example.org" in body and "name contains a line break" in body and "digest" in body

    # More ticks and `!hub digest send` for the same week queue nothing again.
    world.clock.advance(3600)
    await world.program.runner.tick()
    await world.command(MOD, CONTROL, "!hub digest winter send")
    assert len([r for r in await world.rows(rendered=False) if r["kind"] == "digest"]) == len(emails) + 1


async def test_a_cohort_name_with_a_line_break_from_an_older_hub_still_gets_its_mail(world: World) -> None:
    """The cohort's name goes into every bulk email's List-Id header; one with a line break (an older
    hub took it) is flattened there rather than costing the whole cohort its digest and webinar mail."""
    await give_rooms_ids(world)
    async with world.db.transaction() as s:
        await s.execute(text("UPDATE cohort SET name = :n WHERE slug = 'winter'"), {"n": "Winter\r\n2027"})
    await run_calendar(world.program, world.clock, datetime(2027, 1, 18, 12, 0, tzinfo=BERLIN))
    rows = await world.rows()
    emails = [r for r in rows if r["kind"] == "digest" and r["channel"] == "email"]
    assert len(emails) == 7
    assert {r["payload"]["headers"]["List-Id"] for r in emails} == {"Winter 2027 <winter.hub.example.org>"}
    assert not [r for r in rows if r["kind"] == "alert"]
