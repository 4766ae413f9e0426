"""The program wired to the database, without servers: SQL targets, the real emitter and content,
the commands through the real CommandRunner, all on a FakeClock.

What a participant sees in a real client is in test_participants_live.py; here
the outbox rows are the observable output.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import sqlite3
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import icalendar
import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from hub.clock import FakeClock
from hub.config import Settings, settings_from_dict
from hub.core.calendar import build_calendar
from hub.core.cohorts import Who
from hub.core.commands import RoomKind
from hub.core.content import Library
from hub.core.content_library import load_library
from hub.core.limits import CommandRateLimiter
from hub.delivery.outbox import Outbox
from hub.errors import PermanentDeliveryError
from hub.features.cohort_setup import get_cohort
from hub.features.config_sync import sync_config
from hub.features.digest_mail import TEMPLATE as DIGEST
from hub.features.digest_mail import DigestMail
from hub.features.direct_rooms import ensure_direct_room
from hub.features.members import add_member
from hub.features.pairs import make_pair
from hub.features.participants import load_cohort_view
from hub.features.program import ProgramService
from hub.features.program_commands import build_report
from hub.features.room_queue import load_env
from hub.inbound import CommandRunner, Services
from hub.matrix.events import IncomingMessage
from hub.service import build_registry
from hub.storage.db import Database, open_database
from hub.storage.models import (
    EmailSuppression,
    HubRoom,
    Pair,
    content_use_table,
    hub_room_table,
    outbox_table,
    room_member_table,
)

from tests.support.databases import backends

BERLIN = ZoneInfo("Europe/Berlin")
MOD = "@lead:example.org"
CONTROL = "!control:example.org"
_LIBRARY: Library | None = None
PEOPLE = [(f"@mentor{i}:example.org", f"@mentee{i}:example.org") for i in range(3)]


def make_settings(tmp_path: Path, url: str) -> Settings:
    return settings_from_dict({
        "hub": {"data_dir": str(tmp_path / "hub")},
        "database": {"url": url},
        "matrix": {"homeserver": "https://example.org", "user_id": "@hub:example.org", "password": "x",
                   "moderators": [MOD]},
        "email": {"enabled": True, "from": "Hub <hub@example.org>", "smtp_host": "127.0.0.1"},
        "web": {"secret": "test-secret", "public_url": "https://hub.example.org"},
        "cohort": [{"slug": "winter", "name": "Winter 2027", "timezone": "Europe/Berlin",
                    "start": "2027-01-11", "weeks": 12,
                    "webinar": {"at": "2027-01-11T17:00", "title": "Kick-off",
                                "url": "https://meet.example.org/kickoff"}}],
    }, base=tmp_path, env={})


@dataclass
class World:
    db: Database
    clock: FakeClock
    outbox: Outbox
    settings: Settings
    program: ProgramService
    runner: CommandRunner
    seq: itertools.count[int]

    async def rows(self, *, kind_prefix: str = "", rendered: bool = True) -> list[dict[str, Any]]:
        """The outbox rows in order. An email rendered when it is sent (the digest's) is shown
        `rendered` as the email sender renders it; `rendered=False` shows the row as stored."""
        async with self.db.session() as s:
            got = (await s.execute(select(outbox_table.c.kind, outbox_table.c.lane, outbox_table.c.channel,
                                          outbox_table.c.payload, outbox_table.c.dedupe_key,
                                          outbox_table.c.created_at, outbox_table.c.priority)
                                   .order_by(outbox_table.c.seq))).all()
        out = [{"kind": k, "lane": lane, "channel": ch, "payload": json.loads(p), "key": key, "at": at,
                "priority": prio} for k, lane, ch, p, key, at, prio in got if k.startswith(kind_prefix)]
        if rendered:
            for row in out:
                if row["payload"].get("template") == DIGEST:
                    with contextlib.suppress(PermanentDeliveryError):  # it fails when sent: shown as stored
                        row["payload"] = dict(await self.digest_mail(row["payload"]))
        return out

    @functools.cached_property
    def digest_mail(self) -> DigestMail:
        return DigestMail(self.db)

    async def room(self, key: str) -> HubRoom:
        async with self.db.session() as s:
            room = (await s.execute(select(HubRoom).where(hub_room_table.c.key == key))).scalar_one()
        return room

    async def command(self, sender: str, room_id: str, body: str) -> dict[str, Any]:
        """Run a command as the sync loop would; returns the reply row's content."""
        event_id = f"$ev{next(self.seq)}"
        handled = await self.runner.handle(IncomingMessage(room_id, event_id, sender, body, "m.text", None,
                                                           0, True))
        assert handled
        reply = [r for r in await self.rows() if r["key"] == f"reply:{event_id}"]
        return dict(reply[0]["payload"]["content"])


async def _room_kind(db: Database, room_id: str) -> RoomKind:
    if room_id == CONTROL:
        return RoomKind.CONTROL
    async with db.session() as s:
        kind = (await s.execute(select(hub_room_table.c.kind).where(hub_room_table.c.room_id == room_id)))
        value = kind.scalar_one_or_none()
    return {"pair": RoomKind.PAIR, "lounge": RoomKind.LOUNGE, "direct": RoomKind.DIRECT}.get(
        value or "", RoomKind.OTHER)


async def make_world(tmp_path: Path, url: str, start: datetime) -> World:
    db = await open_database(url)
    clock = FakeClock(start)
    outbox = Outbox(db, clock)
    settings = make_settings(tmp_path, url)
    async with db.transaction() as s:
        env = await load_env(s, outbox, clock, settings)
        await sync_config(s, env)
        cohort = await get_cohort(s, "winter")
        assert cohort is not None
        for i, (mentor, mentee) in enumerate(PEOPLE):
            await add_member(s, env, cohort, "mentor", Who(matrix_id=mentor), name=f"Mentor {i}",
                                email=f"mentor{i}@example.org")
            await add_member(s, env, cohort, "mentee", Who(matrix_id=mentee), name=f"Mentee {i}",
                                email=f"mentee{i}@example.org")
            await make_pair(s, env, cohort, Who(matrix_id=mentor), Who(matrix_id=mentee))
    global _LIBRARY
    _LIBRARY = _LIBRARY or load_library()  # loading and checking it is most of a test's set-up
    program = ProgramService(db=db, outbox=outbox, clock=clock, settings=lambda: settings, library=_LIBRARY,
                             control_room=lambda: CONTROL)

    async def is_mod(user: str) -> bool:
        return user == MOD

    async def kind(room_id: str) -> RoomKind:
        return await _room_kind(db, room_id)

    # The world's people run many commands while its clock stands still: no per-person
    # rate limit here (tests/core/test_limits.py and test_stranger_live.py cover it).
    unlimited = CommandRateLimiter(clock, per_minute=1.0, burst=10**9)
    runner = CommandRunner(db, outbox, clock, build_registry("!hub"), room_kind=kind, is_moderator=is_mod,
                           control_room=lambda: CONTROL, rate_limiter=unlimited,
                           services=Services(settings=lambda: settings, program=program))
    return World(db, clock, outbox, settings, program, runner, itertools.count())


async def give_rooms_ids(w: World) -> dict[str, str]:
    """As if the homeserver had created every room: key -> room id."""
    ids: dict[str, str] = {}
    async with w.db.transaction() as s:
        for room in (await s.execute(select(HubRoom))).scalars().all():
            room.room_id = f"!{room.key.replace(':', '-').replace('@', '')}:example.org"
            room.status = "ready"
            ids[room.key] = room.room_id
    return ids


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = await make_world(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}",
                         datetime(2027, 1, 12, 12, 0, tzinfo=BERLIN))
    yield w
    await w.db.close()


async def run_calendar(program: ProgramService, clock: FakeClock, until: datetime) -> int:
    """Tick at every due instant (a few seconds late, as the scheduler is) until `until`."""
    ticks = 0
    while True:
        report = await program.runner.tick()
        ticks += 1
        if report.next_due is None or report.next_due > until:
            return ticks
        clock.set(report.next_due + timedelta(seconds=3))


# -- the whole calendar ---------------------------------------------------------------------------


async def test_twelve_weeks_through_the_real_emitter(tmp_path: Path) -> None:
    w = await make_world(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}",
                         datetime(2027, 1, 10, 12, 0, tzinfo=BERLIN))
    try:
        end = datetime(2027, 4, 10, tzinfo=BERLIN)
        ticks = await run_calendar(w.program, w.clock, end)
        rows = await w.rows(kind_prefix="program-")
        by_kind = Counter((r["kind"], r["channel"]) for r in rows)
        assert by_kind == {
            ("program-launch", "matrix"): 1 + 3,  # lounge + pair rooms
            ("program-plan-prompt", "matrix"): 3,  # no pair has a plan yet
            ("program-icebreaker", "matrix"): 12 * (3 + 1),  # pair rooms + lounge, every week
            ("program-checkin", "matrix"): 4 * 3,  # checkin_weeks 1, 2, 4, 8
            ("program-reflection", "matrix"): 3 * 3,  # reflection_weeks 3, 6, 9
            ("program-private-checkin", "matrix"): 3 * 6,  # each paired person, reflection weeks
            ("program-webinar-announce", "matrix"): 1,
            ("program-webinar-announce", "email"): 6,
            # The kick-off is on launch day: its 24-h reminder would precede the announcement.
            ("program-webinar-1h", "matrix"): 1 + 3,  # lounge + pair rooms (nobody is unpaired)
            ("program-webinar-1h", "email"): 6,
            ("program-webinar-followup", "matrix"): 1,
        }
        # Keys are unique and derived from the calendar's: exactly once per target.
        assert len({r["key"] for r in rows}) == len(rows)
        # DST: the icebreaker is at 10:00 Berlin time in winter and in summer (after 28 March).
        local = {datetime.fromtimestamp(r["at"], UTC).astimezone(BERLIN).strftime("%H:%M")
                 for r in rows if r["kind"] == "program-icebreaker"}
        assert local == {"10:00"}
        # Rotation: no pair room (nor the lounge) got the same icebreaker twice.
        async with w.db.session() as s:
            uses = (await s.execute(select(content_use_table.c.scope, content_use_table.c.item_id)
                                    .where(content_use_table.c.kind == "icebreaker"))).all()
        per_scope: dict[str, list[str]] = defaultdict(list)
        for scope, item in uses:
            per_scope[scope].append(item)
        assert len(per_scope) == 4
        for scope, got in per_scope.items():
            audience = "cohort" if scope.startswith("lounge") else "pair"
            pool = len(w.program.library.select("icebreaker", audience))
            # No repeat while an unused one remains (the lounge has fewer than 12, so it cycles).
            assert len(got) == 12 and len(set(got)) == min(12, pool), scope
            assert len(set(got[:pool])) == min(12, pool)
        # The invite carries an .ics with the right UTC start.
        invite = next(r for r in rows if r["kind"] == "program-webinar-announce" and r["channel"] == "email")
        ics = icalendar.Calendar.from_ical(invite["payload"]["attachments"][0]["text"])
        event = next(iter(ics.walk("VEVENT")))
        assert event.decoded("dtstart") == datetime(2027, 1, 11, 16, 0, tzinfo=UTC)
        # A restart (a new service on the same database) re-runs nothing.
        again = ProgramService(db=w.db, outbox=w.outbox, clock=w.clock, settings=lambda: w.settings)
        w.clock.advance(3600)
        await again.runner.tick()
        assert len(await w.rows(kind_prefix="program-")) == len(rows)
        assert ticks < 120
    finally:
        await w.db.close()


async def test_reemitting_an_item_neither_duplicates_nor_advances_rotation(world: World) -> None:
    w = world
    await run_calendar(w.program, w.clock, w.clock.now())  # launch and week 1 so far
    spec = (await w.program.specs())[0]
    from hub.core.calendar import build_calendar

    item = next(i for i in build_calendar(spec).items if i.kind.value == "icebreaker" and i.week == 1)
    targets = await w.program.targets_of(item, w.clock.now())
    await w.program.emit(item, targets)
    await w.program.emit(item, targets)
    async with w.db.session() as s:
        uses = (await s.execute(select(content_use_table.c.scope).where(
            content_use_table.c.kind == "icebreaker"))).scalars().all()
    assert sorted(Counter(uses).values()) == [1, 1, 1, 1]


async def test_an_item_that_cannot_be_made_is_skipped_and_reported_once_a_database_hiccup_is_retried(
        tmp_path: Path) -> None:
    """Retrying cannot cure an item that fails on its data: it is skipped, the moderators are told
    once, and the calendar goes on. A locked database can be cured: that tick fails and the next
    one sends the item."""
    w = await make_world(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}",
                         datetime(2027, 1, 17, 12, 0, tzinfo=BERLIN))
    try:
        await give_rooms_ids(w)
        fault: list[Exception] = []

        async def digest(s: Any, item: Any, targets: Any) -> list[dict[str, Any]]:
            # The digest hook is the program's port to another feature; here it breaks as a bug would.
            if fault:
                raise fault[0]
            return [{"channel": "matrix", "kind": "digest", "lane": CONTROL, "dedupe_key": f"{item.key}:x",
                     "payload": {"op": "message", "room_id": CONTROL, "type": "m.room.message",
                                 "content": {"msgtype": "m.notice", "body": "digest"}}}]

        w.program.digest = digest
        fault.append(OperationalError("INSERT INTO outbox", {}, Exception("database is locked")))
        w.clock.set(datetime(2027, 1, 18, 9, 0, 5, tzinfo=BERLIN))
        assert (await w.program.runner.tick()).failed == ("winter",)
        assert not await w.rows(kind_prefix="alert") and not await w.rows(kind_prefix="digest")
        fault.clear()
        w.clock.advance(30)
        assert (await w.program.runner.tick()).failed == ()
        assert len(await w.rows(kind_prefix="digest")) == 1  # the retry sent it

        fault.append(KeyError("week"))
        await run_calendar(w.program, w.clock, datetime(2027, 1, 26, 12, 0, tzinfo=BERLIN))
        assert len(await w.rows(kind_prefix="digest")) == 1  # week 3's digest was not made...
        icebreakers = [r for r in await w.rows(kind_prefix="program-icebreaker") if ":w3:" in r["key"]]
        assert len(icebreakers) == 3 + 1  # ...and the rest of the week went on after it
        alerts = await w.rows(kind_prefix="alert")
        assert len(alerts) == 1 and alerts[0]["lane"] == CONTROL
        body = alerts[0]["payload"]["content"]["body"]
        assert "the week 3 digest of `winter` could not be made, so nobody got it" in body
        assert "internal error (KeyError)" in body and "Traceback" not in body
        # A later tick (or a `send` of the same item) meeting the same failure says nothing new.
        spec = (await w.program.specs())[0]
        item = next(i for i in build_calendar(spec).items if i.key == "digest:winter:w3")
        await w.program.emit(item, await w.program.targets_of(item, w.clock.now()))
        w.clock.advance(60)
        await w.program.runner.tick()
        assert len(await w.rows(kind_prefix="alert")) == 1
    finally:
        await w.db.close()


# -- targets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", backends())
async def test_targets_skip_paused_snoozed_opted_out_and_bounced(
    backend: str, database_urls: dict[str, str], tmp_path: Path
) -> None:
    w = await make_world(tmp_path, database_urls[backend], datetime(2027, 1, 12, 12, 0, tzinfo=BERLIN))
    try:
        t = w.program.targets
        now = w.clock.now()
        assert len(await t.active_pair_rooms("winter", now)) == 3
        assert len(await t.direct_rooms("winter", now)) == 6
        assert len(await t.members("winter", now)) == 6
        assert await t.lounge("winter") is not None
        async with w.db.transaction() as s:
            pair = (await s.execute(select(Pair).order_by(Pair.id))).scalars().first()  # type: ignore[arg-type]
            assert pair is not None
            pair.status = "paused"
            s.add(EmailSuppression(address="mentor1@example.org", code=550, reason="gone", created_at=0.0))
        ids = await give_rooms_ids(w)
        mentee2 = PEOPLE[2][1]
        await w.command(mentee2, ids[f"lounge:{1}"], "!hub snooze 3")
        await w.command(PEOPLE[1][1], ids["lounge:1"], "!hub email off")
        assert len(await t.active_pair_rooms("winter", now)) == 2
        # Mentor 0 and mentee 0 are paused; mentee 2 is snoozed.
        expected = sorted([PEOPLE[1][0], PEOPLE[1][1], PEOPLE[2][0]])
        assert sorted(await t.direct_rooms("winter", now)) == expected
        assert len(await t.members("winter", now)) == 4  # one bounced, one opted out
        w.clock.advance(4 * 86400)
        assert mentee2 in await t.direct_rooms("winter", w.clock.now())
    finally:
        await w.db.close()


@pytest.mark.parametrize("backend", backends())
async def test_unpaired_direct_rooms_are_exactly_the_participants_no_pair_room_reaches(
    backend: str, database_urls: dict[str, str], tmp_path: Path
) -> None:
    """Webinar reminders go to the pair rooms and to these direct rooms: each person in one set."""
    w = await make_world(tmp_path, database_urls[backend], datetime(2027, 1, 12, 12, 0, tzinfo=BERLIN))
    lone, dozing, left = "@lone:example.org", "@dozing:example.org", "@left:example.org"
    try:
        t = w.program.targets
        async with w.db.transaction() as s:
            env = await load_env(s, w.outbox, w.clock, w.settings)
            cohort = await get_cohort(s, "winter")
            assert cohort is not None
            for user in (lone, dozing, left):
                await add_member(s, env, cohort, "mentee", Who(matrix_id=user), name=user[1:5])
            await add_member(s, env, cohort, "mentee", Who(email="paper@example.org"), name="Paper",
                                email="paper@example.org")
            await add_member(s, env, cohort, "moderator", Who(matrix_id=MOD), name="Lead")
        now = w.clock.now()
        assert sorted(await t.unpaired_direct_rooms("winter", now)) == sorted([lone, dozing, left])
        async with w.db.transaction() as s:
            pairs = (await s.execute(select(Pair).order_by(Pair.id))).scalars().all()  # type: ignore[arg-type]
            pairs[0].status = "paused"
        ids = await give_rooms_ids(w)
        async with w.db.transaction() as s:
            # Pair 1's room is being closed: it gets nothing, so its people count as unpaired.
            await s.execute(update(hub_room_table).where(hub_room_table.c.key == "pair:2").values(
                status="closing"))
        await w.command(dozing, ids["lounge:1"], "!hub snooze 3")
        await w.command(PEOPLE[2][1], ids["lounge:1"], "!hub snooze 3")  # paired: the pair room goes on
        await w.command(MOD, CONTROL, f"!hub remove winter {left}")
        in_rooms = {u for pv in (await _pair_people(w, await t.active_pair_rooms("winter", now))) for u in pv}
        unpaired = set(await t.unpaired_direct_rooms("winter", now))
        assert in_rooms == set(PEOPLE[2])
        assert unpaired == {*PEOPLE[0], *PEOPLE[1], lone}
        assert not in_rooms & unpaired
        w.clock.advance(4 * 86400)
        assert dozing in await t.unpaired_direct_rooms("winter", w.clock.now())
    finally:
        await w.db.close()


async def _pair_people(w: World, room_keys: Sequence[str]) -> list[tuple[str, str]]:
    async with w.db.session() as s:
        view = await load_cohort_view(s, "winter")
    assert view is not None
    return [(str(view.pairs[k].mentor.matrix_id), str(view.pairs[k].mentee.matrix_id)) for k in room_keys]


# -- commands --------------------------------------------------------------------------------------


async def test_icebreaker_three_a_day_per_room_without_repeats(world: World) -> None:
    w = world
    ids = await give_rooms_ids(w)
    pair_room = ids["pair:1"]
    seen = []
    for _ in range(3):
        reply = await w.command(PEOPLE[0][0], pair_room, "!hub icebreaker")
        seen.append(reply["body"])
    assert len(set(seen)) == 3
    refused = await w.command(PEOPLE[0][1], pair_room, "!hub icebreaker")
    assert "3 extra icebreakers today" in refused["body"]
    # The lounge has its own allowance, and another room is unaffected.
    assert "limit" not in (await w.command(PEOPLE[1][0], ids["pair:2"], "!hub icebreaker"))["body"]
    assert "limit" not in (await w.command(PEOPLE[1][0], ids["lounge:1"], "!hub icebreaker"))["body"]
    w.clock.advance(86400)
    fourth = await w.command(PEOPLE[0][1], pair_room, "!hub icebreaker")
    assert "limit" not in fourth["body"] and fourth["body"] not in seen


async def test_met_answers_nudge_towards_video_and_feed_the_report(world: World) -> None:
    w = world
    ids = await give_rooms_ids(w)
    text = await w.command(PEOPLE[0][0], ids["pair:1"], "!hub met text")
    assert "https://meet.jit.si/" in text["body"] and "try video" in text["body"]
    await w.command(PEOPLE[1][1], ids["pair:2"], "!hub met video")
    await w.command(PEOPLE[2][1], ids["pair:3"], "!hub met voice")
    await w.command(PEOPLE[2][0], ids["pair:3"], "!hub met video")  # same pair, same week: replaces
    bad = await w.command(PEOPLE[0][0], ids["pair:1"], "!hub met maybe")
    assert "Usage: `!hub met video|voice|text|notyet`" in bad["body"]
    elsewhere = await w.command(PEOPLE[0][0], ids["lounge:1"], "!hub met video")
    assert "works in: pair room" in elsewhere["body"]
    async with w.db.transaction() as s:
        view = await load_cohort_view(s, "winter")
        assert view is not None
        report = await build_report(s, view, w.program.state, w.clock.now())
    assert report.answers == {"text": 1, "video": 2}
    assert report.pairs["active"] == 3 and report.pairs["quiet"] == 0
    w.clock.advance(15 * 86400)
    async with w.db.transaction() as s:
        view = await load_cohort_view(s, "winter")
        assert view is not None
        later = await build_report(s, view, w.program.state, w.clock.now())
    assert later.pairs["quiet"] == 3
    moderator = await w.command(MOD, CONTROL, "!hub report winter")
    assert "video 2" in moderator["body"] and "text 1" in moderator["body"]
    refused = await w.command(PEOPLE[0][0], ids["lounge:1"], "!hub report winter")
    assert "moderators only" in refused["body"]


async def test_low_checkin_gets_the_guide_and_nothing_reaches_moderators(world: World) -> None:
    w = world
    ids = await give_rooms_ids(w)
    async with w.db.transaction() as s:
        env = await load_env(s, w.outbox, w.clock, w.settings)
        direct = await ensure_direct_room(s, env, PEOPLE[0][1])
        direct.room_id, direct.status = "!direct-mentee0:example.org", "ready"
    before = len(await w.rows())
    low = await w.command(PEOPLE[0][1], "!direct-mentee0:example.org", "!hub checkin 2")
    assert "private guide" in low["body"] and "!hub support" in low["body"]
    new = (await w.rows())[before:]
    assert [r["lane"] for r in new] == ["!direct-mentee0:example.org"]  # the reply, nothing else
    high = await w.command(PEOPLE[0][1], "!direct-mentee0:example.org", "!hub checkin 5")
    assert "noted privately" in high["body"]
    assert "works in: direct room" in (await w.command(PEOPLE[0][1], ids["pair:1"], "!hub checkin 1"))["body"]
    await w.command(PEOPLE[0][1], "!direct-mentee0:example.org", "!hub support my mentor <b>never</b> shows")
    control = [r for r in await w.rows() if r["lane"] == CONTROL]
    assert len(control) == 1
    content = control[0]["payload"]["content"]
    assert "my mentor <b>never</b> shows" in content["body"]
    assert "<b>never</b>" not in content["formatted_body"]  # the words are shown, not interpreted


async def test_plan_set_queues_message_then_pin_and_hostile_text_is_inert(world: World) -> None:
    w = world
    ids = await give_rooms_ids(w)
    room = ids["pair:1"]
    hostile = '<script>alert(1)</script> <img src=x onerror=alert(2)> [call](javascript:alert(3))'
    reply = await w.command(PEOPLE[0][0], room, f"!hub plan set {hostile}")
    assert "pinned" in reply["body"]
    rows = [r for r in await w.rows() if r["lane"] == room and r["kind"] in ("plan", "plan-pin")]
    assert [r["kind"] for r in rows] == ["plan", "plan-pin"]
    html = rows[0]["payload"]["content"]["formatted_body"]
    assert "<script" not in html and "<img" not in html and 'href="javascript' not in html
    assert rows[1]["payload"]["message_key"] == rows[0]["key"]
    shown = await w.command(PEOPLE[0][1], room, "!hub plan")
    assert "<script" not in shown["formatted_body"] and "<script>" in shown["body"]
    dropped = await w.command(PEOPLE[0][1], room, "!hub dropped")
    assert "emailed to you both" in dropped["body"]
    mails = await w.rows(kind_prefix="plan-dropped")
    assert sorted(m["payload"]["to"] for m in mails) == ["mentee0@example.org", "mentor0@example.org"]
    for m in mails:
        page = m["payload"]["html"]
        assert "<script" not in page and "<img" not in page and 'href="javascript' not in page
    await w.command(PEOPLE[0][1], room, '!hub plan set Don\'t panic: it\'s "Plan B" -- phones')
    verbatim = await w.command(PEOPLE[0][1], room, "!hub plan")
    assert 'Don\'t panic: it\'s "Plan B" -- phones' in verbatim["body"]
    await w.command(PEOPLE[0][1], room, "!hub plan clear")
    assert "No backup plan yet" in (await w.command(PEOPLE[0][1], room, "!hub plan"))["body"]


async def test_email_address_change_needs_the_mailed_code(world: World) -> None:
    w = world
    ids = await give_rooms_ids(w)
    user, lounge = PEOPLE[0][0], ids["lounge:1"]
    reply = await w.command(user, lounge, "!hub email new.me@example.org")
    assert "emailed a code" in reply["body"]
    mail = (await w.rows(kind_prefix="email-confirm"))[0]["payload"]
    code = mail["text"].split("email confirm ")[1].split()[0]
    assert "doesn't match" in (await w.command(user, lounge, "!hub email confirm WRONG"))["body"]
    assert (await w.program.targets.members("winter", w.clock.now()))  # still the old address
    ok = await w.command(user, lounge, f"!hub email confirm {code}")
    assert "new.me@example.org" in ok["body"]
    async with w.db.session() as s:
        view = await load_cohort_view(s, "winter")
        assert view is not None
        member = view.member_by_matrix(user)
        assert member is not None and view.address(member) == "new.me@example.org"
    assert "not off, weekly" in (await w.command(user, lounge, "!hub email sometimes"))["body"]


async def test_webinar_command_announces_with_ics_and_reminds(world: World) -> None:
    w = world
    ids = await give_rooms_ids(w)
    await run_calendar(w.program, w.clock, w.clock.now())
    reply = await w.command(MOD, CONTROL, '!hub webinar winter 2027-03-30T18:00 "Mid-program" '
                                          "https://meet.example.org/mid")
    assert "Scheduled" in reply["body"]
    bad = await w.command(MOD, CONTROL, '!hub webinar winter 2027-02-30T18:00 "X"')
    assert "not a real date" in bad["body"]
    past = await w.command(MOD, CONTROL, '!hub webinar winter 2020-01-01T10:00 "X"')
    assert "in the past" in past["body"]
    await run_calendar(w.program, w.clock, datetime(2027, 3, 31, tzinfo=BERLIN))
    rows = [r for r in await w.rows(kind_prefix="program-webinar") if "20270330" in r["key"]]
    kinds = Counter((r["kind"], r["channel"]) for r in rows)
    assert kinds[("program-webinar-announce", "matrix")] == 1
    assert kinds[("program-webinar-announce", "email")] == 6
    assert kinds[("program-webinar-24h", "email")] == 6 and kinds[("program-webinar-1h", "email")] == 6
    invite = next(r for r in rows if r["kind"] == "program-webinar-announce" and r["channel"] == "email")
    ics = icalendar.Calendar.from_ical(invite["payload"]["attachments"][0]["text"])
    event = next(iter(ics.walk("VEVENT")))
    assert event.decoded("dtstart") == datetime(2027, 3, 30, 16, 0, tzinfo=UTC)  # 18:00 CEST
    for kind, before in (("program-webinar-24h", 24), ("program-webinar-1h", 1)):
        sent = min(r["at"] for r in rows if r["kind"] == kind)
        due = datetime(2027, 3, 30, 16, 0, tzinfo=UTC) - timedelta(hours=before)
        assert 0 <= sent - due.timestamp() < 60
    assert ids  # rooms existed throughout


async def test_send_and_announce_reach_every_active_pair_and_opted_in_member(world: World) -> None:
    w = world
    ids = await give_rooms_ids(w)
    await w.command(PEOPLE[1][1], ids["lounge:1"], "!hub email weekly")
    sent = await w.command(MOD, CONTROL, "!hub send icebreaker winter")
    assert "3 pair rooms and the lounge" in sent["body"]
    reflection = await w.command(MOD, CONTROL, "!hub send reflection winter")
    assert "6 private check-ins" in reflection["body"]
    announced = await w.command(MOD, CONTROL, "!hub announce winter **Big news**: the <i>lounge</i> is open")
    assert "emailed to 5 people" in announced["body"]
    lounge_post = next(r for r in await w.rows(kind_prefix="announce") if r["channel"] == "matrix")
    assert "<strong>Big news</strong>" in lounge_post["payload"]["content"]["formatted_body"]
    assert "no cohort `nosuch`" in (await w.command(MOD, CONTROL, "!hub send checkin nosuch"))["body"]
    refused = await w.command(PEOPLE[0][0], ids["pair:1"], "!hub send checkin winter")
    assert "moderators only" in refused["body"]


async def test_a_moderator_change_ticks_the_calendar_after_its_commit(world: World, tmp_path: Path) -> None:
    # The runner's after_change is how a new cohort's launch post goes out at once rather
    # than at the next periodic tick; it must run after the commit, or the tick would not
    # see the cohort, and only for a command that succeeded.
    w = world
    seen: list[int] = []

    def after_change() -> None:
        with contextlib.closing(sqlite3.connect(tmp_path / "hub.db")) as c:
            seen.append(c.execute("SELECT count(*) FROM cohort WHERE slug = 'autumn'").fetchone()[0])

    w.runner.after_change = after_change
    assert "is not a cohort slug" in (await w.command(MOD, CONTROL, "!hub cohort create Bad_Slug X"))["body"]
    refused = await w.command("@someone:example.org", CONTROL, '!hub cohort create autumn "A"')
    assert "moderators only" in refused["body"]
    assert "There is no cohort" in (await w.command(MOD, CONTROL, "!hub cohort show nope"))["body"]
    assert seen == []
    assert "Created cohort" in (await w.command(MOD, CONTROL, '!hub cohort create autumn "Autumn"'))["body"]
    assert seen == [1]


async def test_report_gives_each_count_the_moderators_need(world: World) -> None:
    w = world
    ids = await give_rooms_ids(w)
    # The world's clock is a day after launch and catch_up_hours is 12: the launch is skipped.
    await w.program.runner.tick()
    async with w.db.transaction() as s:
        s.add(EmailSuppression(address="mentor1@example.org", code=550, reason="gone", created_at=0.0))
    await w.command(PEOPLE[1][1], ids["lounge:1"], "!hub email off")
    paused = await w.command(MOD, CONTROL, f"!hub pause winter {PEOPLE[2][0]} {PEOPLE[2][1]}")
    assert "Paused" in paused["body"]
    await w.command(PEOPLE[0][0], ids["pair:1"], "!hub met video")
    async with w.db.transaction() as s:  # both people of pair 1 accepted their invitation
        room = await w.room("pair:1")
        await s.execute(update(room_member_table).where(room_member_table.c.room_pk == room.id)
                        .values(state="joined"))
    body = (await w.command(MOD, CONTROL, "!hub report winter"))["body"]
    assert body.splitlines()[1:] == [
        "- Pairs: 2 active, 0 of them quiet for 14+ days, 1 paused",
        '- Check-in answers ("did you meet?"): video 1, voice 0, text 0, notyet 0',
        # Space and lounge: six people and the moderator each; three pair rooms of two; less pair 1.
        "- Invitations not accepted yet: 18",
        "- Email: 1 bounced (suppressed), 1 opted out, 0 without an address",
        "- Scheduled items skipped while the hub was down: digest 1, launch 1, webinar-1h 1, "
        "webinar-announce 1, webinar-followup 1",
        "- Rematch requests: 0 from participants; 0 pairs closed for a rematch",
    ]
