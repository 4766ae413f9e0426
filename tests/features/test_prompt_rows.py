"""Twelve weeks through the real emitter (FakeClock, SQLite): each prompt notifies exactly its people.

The world of tests/features/test_program_wiring.py: one cohort, three pairs on Matrix. Every Matrix
message the calendar queues is judged by the spec's default push rules
(tests/core/test_push_rules.py `spec_rules`) for every participant, as their client would: the
prompts (the backup-plan prompt at launch, icebreakers, check-ins, reflection prompts and
webinar reminders in pair rooms, the private check-ins and the reminders of people in no active
pair in direct rooms) match ``.m.rule.is_user_mention`` for
the people they name and nobody else; the launch welcome, lounge posts and webinar posts
are notices that ping nobody.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from hub.core.calendar import DIRECT_FOR_UNPAIRED, build_calendar
from hub.core.cohorts import Who
from hub.features.cohort_setup import get_cohort
from hub.features.members import add_member
from hub.features.program import ProgramService
from hub.features.room_queue import load_env
from hub.storage.models import Pair

from tests.core.test_push_rules import spec_rules
from tests.features.test_program_wiring import (
    BERLIN,
    CONTROL,
    MOD,
    PEOPLE,
    give_rooms_ids,
    make_world,
    run_calendar,
)
from tests.support.push_rules import RoomState, evaluate

HUB = "@hub:example.org"
PROMPTS = {"program-plan-prompt", "program-icebreaker", "program-checkin", "program-reflection",
           "program-private-checkin", "program-webinar-24h", "program-webinar-1h"}
NAMES = {user: f"{role} {i}" for i, pair in enumerate(PEOPLE)
         for user, role in zip(pair, ("Mentor", "Mentee"), strict=True)}


def people_of(room_key: str) -> set[str]:
    """Who a room's prompts are for: a pair room's two (pair ids follow PEOPLE), a direct room's one."""
    kind, _, rest = room_key.partition(":")
    if kind == "pair":
        return set(PEOPLE[int(rest) - 1])
    return {rest} if kind == "direct" else set()


async def test_every_scheduled_prompt_notifies_its_people_and_nothing_else_pings(tmp_path: Path) -> None:
    start = datetime(2027, 1, 10, 12, 0, tzinfo=BERLIN)
    w = await make_world(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}", start)
    try:
        await run_calendar(w.program, w.clock, datetime(2027, 4, 10, tzinfo=BERLIN))
        rows = [r for r in await w.rows(kind_prefix="program-") if r["channel"] == "matrix"]
    finally:
        await w.db.close()
    prompts: Counter[str] = Counter()
    for row in rows:
        payload = row["payload"]
        content, key = payload["content"], str(payload["room_key"])
        named = people_of(key) if row["kind"] in PROMPTS else set()
        if named:
            prompts[row["kind"]] += 1
            assert content["msgtype"] == "m.text", row["kind"]
            assert set(content["m.mentions"]["user_ids"]) == named
            # What answers need to know about the sent event (hub.features.program_rows.prompt_row).
            assert payload["prompt"]["kind"] == row["kind"]
            assert payload["prompt"]["for"] == content["m.mentions"]["user_ids"]
            assert payload["prompt"]["week"] is None or 1 <= payload["prompt"]["week"] <= 12
        else:
            assert (content["msgtype"], content["m.mentions"]) == ("m.notice", {}), (row["kind"], key)
            assert "prompt" not in payload
        event = {"type": "m.room.message", "content": content, "sender": HUB, "room_id": key}
        for user, name in NAMES.items():
            room = RoomState(member_count=2 if key.startswith("direct") else 3, display_name=name,
                             power_levels={"users": {HUB: 100}})
            v = evaluate(spec_rules(user), event, user, room)
            mentioned = user in named
            assert (v.rule_id == ".m.rule.is_user_mention") is mentioned, (row["kind"], key, user, v)
            assert v.highlight is mentioned
    assert prompts == {"program-plan-prompt": 3, "program-icebreaker": 12 * 3, "program-checkin": 4 * 3,
                       "program-reflection": 3 * 3, "program-private-checkin": 3 * 6,
                       # The kick-off is on launch day (no 24-h reminder); everyone is paired.
                       "program-webinar-1h": 3}


def judge(content: dict[str, Any], room_key: str, users: dict[str, str]) -> set[str]:
    """Whom a message pings (a highlight, as a mention does), under each user's default push rules."""
    event = {"type": "m.room.message", "content": content, "sender": HUB, "room_id": room_key}
    notified: set[str] = set()
    for user, name in users.items():
        room = RoomState(member_count=2 if room_key.startswith("direct") else 3, display_name=name,
                         power_levels={"users": {HUB: 100}})
        v = evaluate(spec_rules(user), event, user, room)
        if v.highlight or v.rule_id == ".m.rule.is_user_mention":
            assert (v.rule_id, v.highlight, v.notify) == (".m.rule.is_user_mention", True, True), (user, v)
            notified.add(user)
    return notified


async def test_webinar_reminders_reach_everyone_once_in_their_pair_or_direct_room(tmp_path: Path) -> None:
    """Each webinar reminder notifies every participant on Matrix exactly once.

    Pairs 1 and 2 are active: both members in their pair room. Pair 0 is paused: its two
    people get it in their direct rooms, as does an unpaired mentee. Nobody twice; a
    snoozed unpaired mentee not at all (snooze pauses nudges to you), while a snoozed
    paired mentee still gets it in the pair room (pair-room items go on); an email-only
    mentee only by email. A restart and a re-emit of the same items add no row.
    """
    start = datetime(2027, 1, 10, 12, 0, tzinfo=BERLIN)
    w = await make_world(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}", start)
    lone, dozing, mail_only = "@lone:example.org", "@dozing:example.org", "paper@example.org"
    try:
        async with w.db.transaction() as s:
            env = await load_env(s, w.outbox, w.clock, w.settings)
            cohort = await get_cohort(s, "winter")
            assert cohort is not None
            for user, name in ((lone, "Lone"), (dozing, "Dozing")):
                await add_member(s, env, cohort, "mentee", Who(matrix_id=user), name=name)
            await add_member(s, env, cohort, "mentee", Who(email=mail_only), name="Paper",
                                email=mail_only)
            first = (await s.execute(select(Pair).order_by(Pair.id))).scalars().first()  # type: ignore[arg-type]
            assert first is not None
            first.status = "paused"
        ids = await give_rooms_ids(w)
        await w.command(dozing, ids["lounge:1"], "!hub snooze 30")
        await w.command(PEOPLE[1][1], ids["lounge:1"], "!hub snooze 30")
        # The title names @room and a participant: still only the people each copy is for are pinged.
        reply = await w.command(MOD, CONTROL,
                                '!hub webinar winter 2027-01-20T18:00 "Mid-program @room with Lone"')
        assert "Scheduled" in reply["body"]
        await run_calendar(w.program, w.clock, datetime(2027, 1, 21, tzinfo=BERLIN))
        items = [i for i in build_calendar((await w.program.specs())[0]).items
                 if i.kind in DIRECT_FOR_UNPAIRED and i.webinar is not None
                 and i.webinar.title.startswith("Mid-program")]
        assert {i.kind for i in items} == DIRECT_FOR_UNPAIRED
        before = await w.rows()
        # A restart (a new service on the same database) ticks again; each item is emitted again.
        again = ProgramService(db=w.db, outbox=w.outbox, clock=w.clock, settings=lambda: w.settings,
                               library=w.program.library, control_room=lambda: CONTROL)
        await again.runner.tick()
        for item in items:
            await again.emit(item, await again.targets_of(item, w.clock.now()))
        after = await w.rows()
    finally:
        await w.db.close()
    assert after == before
    everyone = {**NAMES, lone: "Lone", dozing: "Dozing"}
    expected = {u for pair in PEOPLE[1:] for u in pair} | {*PEOPLE[0], lone}
    for item in items:
        rows = [r for r in before if r["key"].startswith(f"{item.key}:") and r["channel"] == "matrix"]
        got: Counter[str] = Counter()
        for row in rows:
            content, room_key = row["payload"]["content"], str(row["payload"]["room_key"])
            assert row["kind"] == f"program-{item.kind.value}"
            assert "Mid-program @room with Lone" in content["body"]
            notified = judge(content, room_key, everyone)
            if room_key.startswith("lounge"):
                assert (content["msgtype"], content["m.mentions"], notified) == ("m.notice", {}, set())
                continue
            assert content["msgtype"] == "m.text"
            assert notified == set(content["m.mentions"]["user_ids"]) == people_of(room_key)
            got.update(notified)
        pair_rooms = {k for k in (str(r["payload"]["room_key"]) for r in rows) if k.startswith("pair")}
        assert pair_rooms == {"pair:2", "pair:3"}, item.key
        assert set(got) == expected and set(got.values()) == {1}, (item.key, got)
        emails = [r for r in before if r["key"].startswith(f"{item.key}:") and r["channel"] == "email"]
        assert mail_only in {r["lane"] for r in emails}
