"""Twelve weeks through the real emitter (FakeClock, SQLite): each prompt notifies exactly its people.

The world of tests/test_program_wiring.py: one cohort, three pairs on Matrix. Every Matrix
message the calendar queues is judged by the spec's default push rules
(tests/test_push_rules.py `spec_rules`) for every participant, as their client would: the
prompts (the backup-plan prompt at launch, icebreakers, check-ins and reflection prompts in
pair rooms, the private check-ins in direct rooms) match ``.m.rule.is_user_mention`` for
the people they name and nobody else; the launch welcome, lounge posts and webinar posts
are notices that ping nobody.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path

from push_rules import RoomState, evaluate
from test_program_wiring import BERLIN, PEOPLE, make_world, run_calendar
from test_push_rules import spec_rules

HUB = "@hub:example.org"
PROMPTS = {"program-plan-prompt", "program-icebreaker", "program-checkin", "program-reflection",
           "program-private-checkin"}
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
            # What answers need to know about the sent event (hub.features.program.prompt_row).
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
                       "program-reflection": 3 * 3, "program-private-checkin": 3 * 6}
