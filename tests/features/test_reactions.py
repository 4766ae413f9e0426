"""Answers by reaction without servers: the real CommandRunner, emitter and database on a FakeClock.

The Matrix sender's part is played by calling the prompt recorder with an event
id, as `MatrixSender` does once the homeserver took the prompt; reactions,
replies and redactions arrive as the sync would hand them over. What a client
sees on a real Synapse is in test_reactions_live.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from nio import SyncResponse
from sqlalchemy import func, select

from hub.delivery.dispatcher import Claimed
from hub.features.prompts import OPTIONS, PromptRecorder, option_for_key, option_for_text, week_in_key
from hub.features.reactions import Answers
from hub.matrix.events import AnswerEvent, answer_events
from hub.storage.models import (
    CheckinAnswer,
    HandledEvent,
    HubRoom,
    PrivateCheckin,
    hub_room_table,
    outbox_table,
    prompt_answer_table,
    prompt_table,
)

from tests.features.test_program_wiring import BERLIN, CONTROL, MOD, PEOPLE, World, give_rooms_ids, make_world

HUB = "@hub:example.org"
(MENTOR0, MENTEE0), (MENTOR1, MENTEE1), _ = PEOPLE


@dataclass
class Harness:
    w: World
    answers: Answers
    recorder: PromptRecorder
    seq: int = 0
    done: set[int] = field(default_factory=set)
    lanes: dict[str, str] = field(default_factory=dict)  # prompt event id -> its outbox lane

    async def send(self, what: str) -> dict[str, str]:
        """`!hub send WHAT winter`, then each prompt "sent": room key -> the prompt's event id."""
        await self.w.command(MOD, CONTROL, f"!hub send {what} winter")
        ids = await give_rooms_ids(self.w)
        async with self.w.db.session() as s:
            rows = (await s.execute(select(outbox_table).where(outbox_table.c.kind.in_(
                ("program-checkin", "program-private-checkin"))).order_by(outbox_table.c.seq))).all()
        sent: dict[str, str] = {}
        for r in rows:
            payload = json.loads(r.payload)
            key = str(payload["room_key"])
            if r.seq in self.done:
                continue
            self.done.add(r.seq)
            payload = {**payload, "room_id": ids[key]}
            claimed = Claimed(r.seq, r.txn_id, r.channel, r.kind, r.lane, payload, 0, r.created_at)
            event_id = f"$prompt-{r.seq}"
            await self.recorder.sent(claimed, payload, event_id)
            sent[key], self.lanes[event_id] = event_id, r.lane
        return sent

    async def event(self, kind: str, room: str, sender: str, target: str, key: str = "") -> str:
        self.seq += 1
        event_id = f"${kind}{self.seq}"
        await self.answers.handle(AnswerEvent(room, event_id, sender, kind, target, key, 0, True))
        return event_id

    async def reply_to(self, event_id: str) -> dict[str, Any] | None:
        rows = [r for r in await self.w.rows() if r["key"] == f"reply:{event_id}"]
        return dict(rows[0]["payload"]["content"]) if rows else None

    async def answers_by_mode(self) -> dict[str, int]:
        async with self.w.db.session() as s:
            rows = (await s.execute(select(CheckinAnswer))).scalars().all()
        out: dict[str, int] = {}
        for a in rows:
            out[a.mode] = out.get(a.mode, 0) + 1
        return out

    async def scores(self) -> list[tuple[int, int]]:
        async with self.w.db.session() as s:
            rows = (await s.execute(select(PrivateCheckin))).scalars().all()
        return sorted((r.week, r.score) for r in rows)

    async def snapshot(self) -> tuple[int, int, dict[str, int], list[tuple[int, int]]]:
        async with self.w.db.session() as s:
            outbox = (await s.execute(select(func.count()).select_from(outbox_table))).scalar()
            handled = (await s.execute(select(func.count()).select_from(HandledEvent))).scalar()
        return int(outbox or 0), int(handled or 0), await self.answers_by_mode(), await self.scores()


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    # Tuesday of week 1 (the cohort starts Monday 11 January 2027).
    w = await make_world(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}",
                         datetime(2027, 1, 12, 12, 0, tzinfo=BERLIN))
    try:
        yield Harness(w, Answers(w.db, w.outbox, w.clock, w.runner, HUB),
                      PromptRecorder(w.db, w.outbox, w.clock))
    finally:
        await w.db.close()


def test_options_read_as_clients_send_them() -> None:
    assert [option_for_key("met", k) for k, _ in OPTIONS["met"]] == ["video", "voice", "text", "notyet"]
    assert option_for_key("met", "\u23f3\ufe0f") == "notyet"  # with a variation selector
    assert option_for_key("checkin", "4\u20e3") == "4"  # a keycap without one
    assert option_for_key("checkin", "4\ufe0f\u20e3") == "4"
    assert [option_for_key("met", k) for k in ("👍", "4️⃣", "", "video")] == [None] * 4
    assert option_for_key("checkin", "🎥") is None
    assert option_for_text("met", " Video! ") == "video" and option_for_text("met", "not yet") == "notyet"
    assert option_for_text("checkin", "4") == "4" and option_for_text("checkin", "4️⃣") == "4"
    assert [option_for_text("met", t) for t in ("we met on video", "6", "", "maybe")] == [None] * 4
    assert option_for_text("checkin", "6") is None and option_for_text("checkin", "0") is None
    assert week_in_key("checkin:spring:w4:pair:17") == 4
    assert week_in_key("checkin:spring:send:$ev:pair:17") is None


def test_the_sync_shows_reactions_replies_and_redactions_but_not_the_hubs_own() -> None:
    def ev(event_id: str, sender: str, etype: str, content: dict[str, Any], **more: Any) -> dict[str, Any]:
        return {"event_id": event_id, "sender": sender, "type": etype, "origin_server_ts": 5,
                "content": content, **more}

    annotation = {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$p", "key": "🎥"}}
    timeline = [
        ev("$r1", "@a:x", "m.reaction", annotation),
        ev("$own", HUB, "m.reaction", annotation),
        ev("$m1", "@a:x", "m.room.message", {"msgtype": "m.text", "body": "> <@hub:x> did you meet?\n\nvideo",
                                             "m.relates_to": {"m.in_reply_to": {"event_id": "$p"}}}),
        ev("$m2", "@a:x", "m.room.message", {"msgtype": "m.text", "body": "just chatting"}),
        ev("$m3", "@a:x", "m.room.message", {"msgtype": "m.notice", "body": "video",
                                             "m.relates_to": {"m.in_reply_to": {"event_id": "$p"}}}),
        ev("$t1", "@a:x", "m.room.message", {"msgtype": "m.text", "body": "video", "m.relates_to": {
            "rel_type": "m.thread", "event_id": "$root", "is_falling_back": True,
            "m.in_reply_to": {"event_id": "$p"}}}),
        ev("$d1", "@a:x", "m.room.redaction", {"redacts": "$r1"}, redacts="$r1"),
        ev("$d2", "@a:x", "m.room.redaction", {"redacts": "$m1"}),  # room version 11+: in the content only
    ]
    resp = SyncResponse.from_dict({"next_batch": "s1", "rooms": {"join": {"!r:x": {
        "timeline": {"events": timeline, "limited": False, "prev_batch": "p"}}}}})
    assert isinstance(resp, SyncResponse)
    got = [(a.event_id, a.kind, a.target, a.key) for a in answer_events(resp, HUB)]
    assert got == [("$r1", "reaction", "$p", "🎥"), ("$m1", "reply", "$p", "video"),
                   ("$d1", "redaction", "$r1", ""), ("$d2", "redaction", "$m1", "")]


async def test_a_sent_prompt_is_recorded_once_with_its_options_queued_in_order(h: Harness) -> None:
    prompts = await h.send("checkin")
    assert len(prompts) == 3
    rows = await h.w.rows()
    options = [r for r in rows if r["kind"] == "prompt-option"]
    assert len(options) == 3 * 4
    pair1 = await h.w.room("pair:1")
    mine = [r for r in options if r["payload"]["room_id"] == pair1.room_id]
    assert [r["payload"]["content"]["m.relates_to"] for r in mine] == [
        {"rel_type": "m.annotation", "event_id": prompts["pair:1"], "key": k} for k, _ in OPTIONS["met"]]
    assert {r["lane"] for r in mine} == {h.lanes[prompts["pair:1"]]}  # behind the prompt, in its lane
    assert [r["payload"]["type"] for r in mine] == ["m.reaction"] * 4
    # The sender calls again after a crash (same event id from the homeserver): nothing new.
    before = len(rows)
    async with h.w.db.session() as s:
        r = (await s.execute(select(outbox_table).where(outbox_table.c.kind == "program-checkin")
                             .order_by(outbox_table.c.seq))).first()
    assert r is not None
    payload = {**json.loads(r.payload), "room_id": pair1.room_id}
    await h.recorder.sent(Claimed(r.seq, r.txn_id, r.channel, r.kind, r.lane, payload, 1, r.created_at),
                          payload, prompts["pair:1"])
    assert len(await h.w.rows()) == before
    async with h.w.db.session() as s:
        recorded = (await s.execute(select(prompt_table))).all()
    assert {(p.kind, p.week) for p in recorded} == {("met", 1)}
    # Other messages (an icebreaker, a reply) are not prompts.
    await h.send("icebreaker")
    assert len([r for r in await h.w.rows() if r["kind"] == "prompt-option"]) == 3 * 4


async def test_a_reaction_is_the_command_then_replaced_then_withdrawn(h: Harness) -> None:
    prompts = await h.send("checkin")
    pair1, pair2 = (await h.w.room("pair:1")).room_id, (await h.w.room("pair:2")).room_id
    assert pair1 and pair2
    video = await h.event("reaction", pair1, MENTEE0, prompts["pair:1"], "🎥")
    ack = await h.reply_to(video)
    typed = await h.w.command(MENTEE1, pair2, "!hub met video")
    assert ack is not None and ack["body"] == typed["body"] and ack["msgtype"] == "m.notice"
    # The acknowledgement is a reply to the prompt (a reply to a reaction shows as a reply to nothing).
    assert ack["m.relates_to"] == {"m.in_reply_to": {"event_id": prompts["pair:1"]}}
    assert await h.answers_by_mode() == {"video": 2}
    assert "video 2" in (await h.w.command(MOD, CONTROL, "!hub report winter"))["body"]

    later = await h.event("reaction", pair1, MENTOR0, prompts["pair:1"], "⏳")
    notyet = await h.reply_to(later)
    assert notyet is not None and "pick a 20-minute slot" in notyet["body"]
    assert await h.answers_by_mode() == {"video": 1, "notyet": 1}  # pair 1's answer replaced

    await h.event("redaction", pair1, MENTEE0, video)  # no longer the answer: nothing to withdraw
    assert await h.answers_by_mode() == {"video": 1, "notyet": 1}
    gone = await h.event("redaction", pair1, MENTOR0, later)
    withdrawn = await h.reply_to(gone)
    assert withdrawn is not None and "Withdrawn" in withdrawn["body"]
    assert withdrawn["m.relates_to"] == {"m.in_reply_to": {"event_id": prompts["pair:1"]}}
    assert await h.answers_by_mode() == {"video": 1}
    report = (await h.w.command(MOD, CONTROL, "!hub report winter"))["body"]
    assert "video 1" in report and "notyet 0" in report

    # The same events again (a sync replayed after a crash): nothing more happens.
    before = await h.snapshot()
    await h.answers.handle(AnswerEvent(pair1, video, MENTEE0, "reaction", prompts["pair:1"], "🎥", 0, True))
    await h.answers.handle(AnswerEvent(pair1, gone, MENTOR0, "redaction", later, "", 0, True))
    assert await h.snapshot() == before


async def test_a_reply_holding_just_the_option_counts_and_other_replies_do_not(h: Harness) -> None:
    prompts = await h.send("checkin")
    pair1 = (await h.w.room("pair:1")).room_id
    assert pair1
    chat = await h.event("reply", pair1, MENTEE0, prompts["pair:1"], "we met on Tuesday, it was great")
    assert await h.reply_to(chat) is None and await h.answers_by_mode() == {}
    voice = await h.event("reply", pair1, MENTEE0, prompts["pair:1"], "Voice")
    ack = await h.reply_to(voice)
    assert ack is not None and "you met by voice" in ack["body"]
    assert ack["m.relates_to"] == {"m.in_reply_to": {"event_id": voice}}  # a typed answer: under itself
    assert await h.answers_by_mode() == {"voice": 1}


async def test_a_reaction_records_the_week_of_its_prompt(h: Harness) -> None:
    prompts = await h.send("checkin")
    pair1 = (await h.w.room("pair:1")).room_id
    assert pair1
    h.w.clock.advance(8 * 86400)  # week 2 now; the prompt asked about week 1
    await h.event("reaction", pair1, MENTEE0, prompts["pair:1"], "📞")
    async with h.w.db.session() as s:
        answer = (await s.execute(select(CheckinAnswer))).scalar_one()
    assert (answer.week, answer.mode) == (1, "voice")
    h.w.clock.advance(14 * 86400)  # the prompt no longer takes answers
    before = await h.snapshot()
    await h.event("reaction", pair1, MENTEE0, prompts["pair:1"], "🎥")
    assert await h.snapshot() == before


async def test_bad_reactions_change_nothing_and_get_no_reply(h: Harness) -> None:
    prompts = await h.send("checkin")
    pair1, pair2 = (await h.w.room("pair:1")).room_id, (await h.w.room("pair:2")).room_id
    assert pair1 and pair2
    await h.w.command(MENTEE0, pair1, "!hub ping")  # a message that is not a prompt
    async with h.w.db.session() as s:
        not_a_prompt = (await s.execute(select(HandledEvent))).scalars().all()[-1].event_id
    before = await h.snapshot()
    await h.event("reaction", pair1, MENTEE0, str(not_a_prompt), "🎥")  # reaction to a non-prompt
    await h.event("reaction", pair1, MENTEE0, "$nothing", "🎥")  # to an event the hub never saw
    await h.event("reaction", pair1, MENTEE0, prompts["pair:1"], "👍")  # an unknown key
    await h.event("reaction", pair1, MENTEE0, prompts["pair:1"], "4️⃣")  # another prompt's key
    await h.event("reaction", pair1, MENTEE1, prompts["pair:1"], "🎥")  # someone not in this pair
    await h.event("reaction", pair1, MOD, prompts["pair:1"], "🎥")  # a moderator is not in it either
    await h.event("reaction", pair1, HUB, prompts["pair:1"], "🎥")  # the hub's own option
    await h.event("reaction", pair2, MENTEE1, prompts["pair:1"], "🎥")  # the prompt of another room
    await h.event("redaction", pair1, MENTEE0, "$nothing")
    assert await h.snapshot() == before


async def test_the_private_checkin_by_reaction_replaces_and_withdraws_without_the_person(
    h: Harness,
) -> None:
    prompts = await h.send("reflection")
    direct_key = f"direct:{MENTEE0}"
    assert direct_key in prompts
    async with h.w.db.session() as s:
        room = (await s.execute(select(HubRoom).where(hub_room_table.c.key == direct_key))).scalar_one()
    direct = room.room_id
    assert direct
    rows = [r for r in await h.w.rows() if r["kind"] == "prompt-option"
            and r["payload"]["room_id"] == direct]
    assert [r["payload"]["content"]["m.relates_to"]["key"] for r in rows] == [
        "1️⃣", "2️⃣", "3️⃣", "4️⃣", "5️⃣"]
    four = await h.event("reaction", direct, MENTEE0, prompts[direct_key], "4️⃣")
    ack = await h.reply_to(four)
    typed = await h.w.command(MENTEE1, str(await _direct(h, MENTEE1)), "!hub checkin 4")
    assert ack is not None and ack["body"] == typed["body"] and "noted privately" in ack["body"]
    assert await h.scores() == [(1, 4), (1, 4)]
    two = await h.event("reaction", direct, MENTEE0, prompts[direct_key], "2️⃣")
    low = await h.reply_to(two)
    assert low is not None and "private guide" in low["body"]  # the same reply as `!hub checkin 2`
    assert await h.scores() == [(1, 2), (1, 4)]  # replaced, not added
    # Someone else's reaction in this room (the partner is never here; played anyway): nothing.
    before = await h.snapshot()
    await h.event("reaction", direct, MENTOR0, prompts[direct_key], "5️⃣")
    assert await h.snapshot() == before
    gone = await h.event("redaction", direct, MENTEE0, two)
    withdrawn = await h.reply_to(gone)
    assert withdrawn is not None and "Withdrawn" in withdrawn["body"]
    assert await h.scores() == [(1, 4)]
    # The scores table still has no person in it; who answered what goes with the prompt.
    assert {c.name for c in PrivateCheckin.__table__.columns} == {"id", "cohort_id", "week", "score", "at"}  # type: ignore[attr-defined]
    # Who answered what goes with the prompt once it takes no answers any more, next time the
    # sync comes by (at most every 6 hours), even when no later prompt is recorded.
    await h.event("reaction", direct, MENTEE0, prompts[direct_key], "3️⃣")
    empty = SyncResponse.from_dict({"next_batch": "s1", "rooms": {}})
    assert isinstance(empty, SyncResponse)
    await h.answers.on_sync(answer_events(empty, HUB))
    async with h.w.db.session() as s:
        assert (await s.execute(select(func.count()).select_from(prompt_answer_table))).scalar() == 1
    h.w.clock.advance(15 * 86400)
    await h.answers.on_sync(answer_events(empty, HUB))
    async with h.w.db.session() as s:
        assert (await s.execute(select(func.count()).select_from(prompt_answer_table))).scalar() == 0
        assert (await s.execute(select(func.count()).select_from(prompt_table))).scalar() == 0
    assert await h.scores() == [(1, 3), (1, 4)]  # the anonymous scores stay


async def _direct(h: Harness, user: str) -> str | None:
    async with h.w.db.session() as s:
        room = (await s.execute(select(HubRoom).where(hub_room_table.c.key == f"direct:{user}"))).scalar_one()
    return room.room_id
