"""Answers by reaction on a real Synapse, with E2EE clients, in an encrypted pair room and direct room.

The participants are real nio clients. Their reactions go both ways clients send
them in encrypted rooms: encrypted (an `m.reaction` inside `m.room.encrypted`, as
Element X does) and in clear (as Element Web and nio do). They read the hub's
options and acknowledgements by syncing and decrypting, as Element would. The
hub's own options go in clear, as Element Web's do: encrypted, each would notify
the person in a direct room (their push rules, read from Synapse, say so). The moderators'
report shows what was recorded; the private check-in is not in any report, so
only for it the test counts the anonymous scores in the hub's database.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nio import ReactionEvent, RoomMessageNotice, RoomRedactResponse, RoomSendResponse
from sqlalchemy import select

from hub.devserver.synapse import SynapseServer
from hub.features.prompts import OPTIONS
from hub.service import Hub
from hub.storage.models import PrivateCheckin

from tests.live.test_prompts_notify_live import push_rules, room_state
from tests.support.cohorts import pair_in_new_cohort, room_of
from tests.support.live_hub import hub_settings, running_hub
from tests.support.matrix_user import Participant
from tests.support.push_rules import evaluate

pytestmark = pytest.mark.synapse

MET_KEYS = [k for k, _ in OPTIONS["met"]]
SCORE_KEYS = [k for k, _ in OPTIONS["checkin"]]


def _options(who: Participant, room: str, prompt: str, hub: str) -> list[ReactionEvent]:
    return [e for e in who.in_room(room) if isinstance(e, ReactionEvent) and e.reacts_to == prompt
            and e.sender == hub]


async def _report(mod: Participant, control: str) -> str:
    return next(line for line in (await mod.ask(control, "!hub report spring")).splitlines()
                if "Check-in answers" in line)


async def _scores(hub: Hub) -> list[int]:
    assert hub.db is not None
    async with hub.db.session() as s:
        return sorted(r.score for r in (await s.execute(select(PrivateCheckin))).scalars())


async def _reply(who: Participant, room: str, target: str, body: str) -> str:
    """A Matrix reply to `target` holding `body`, as a client sends it (without a fallback quote)."""
    resp = await who.client.room_send(room, "m.room.message", {
        "msgtype": "m.text", "body": body, "m.relates_to": {"m.in_reply_to": {"event_id": target}}},
        ignore_unverified_devices=True)
    assert isinstance(resp, RoomSendResponse), resp
    return str(resp.event_id)


async def _acknowledged(who: Participant, room: str, target: str, seen: set[str]) -> str:
    def fresh() -> list[RoomMessageNotice]:
        return [e for e in who.notices_replying(room, target) if e.event_id not in seen]

    await who.wait_until(lambda: bool(fresh()), 30)
    found = fresh()[0]
    seen.add(found.event_id)
    assert "Traceback" not in found.body
    return str(found.body)


async def test_answers_by_reaction_in_encrypted_rooms(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any], tmp_path: Path
) -> None:
    bot = await register("hub")
    mod, mentor, mentee = await participant("mod"), await participant("mentor"), await participant("mentee")
    stranger = await participant("stranger")
    settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub",
                            moderators=[mod.user_id])
    async with running_hub(settings) as hub:
        control = hub.control_room_id
        assert control
        pair = await pair_in_new_cohort(hub, mod, mentor, mentee)
        await mentor.wait_joined(pair, mentee.user_id, timeout=30)
        await mentee.wait_joined(pair, mentor.user_id, timeout=30)
        assert mentee.client.rooms[pair].encrypted

        # The check-in prompt comes with the four options as the hub's own (encrypted) reactions.
        assert "1 pair room" in await mod.ask(control, "!hub send checkin spring")
        await mentee.wait_until(lambda: mentee.offered(pair, MET_KEYS[-1]) is not None, 30)
        prompt = mentee.offered(pair, MET_KEYS[0])
        assert prompt is not None
        options = _options(mentee, pair, prompt, bot.user_id)
        assert [e.key for e in options] == MET_KEYS and not any(e.decrypted for e in options)
        assert "video 0, voice 0, text 0, notyet 0" in await _report(mod, control)  # its own do not count

        # 🎥: recorded as a video meeting, acknowledged as `!hub met video` is.
        seen: set[str] = set()
        tapped = time.monotonic()
        video = await mentee.react(pair, prompt, "🎥")
        by_reaction = await _acknowledged(mentee, pair, prompt, seen)
        print(f"\nreaction to acknowledgement (encrypted both ways): {time.monotonic() - tapped:.2f} s")
        # It went encrypted (an m.reaction inside m.room.encrypted), as Element sends it.
        await mentor.wait_until(lambda: any(isinstance(e, ReactionEvent) and e.event_id == video
                                            and e.decrypted for e in mentor.in_room(pair)), 20)
        assert by_reaction == await mentor.ask(pair, "!hub met video")
        assert "video 1," in await _report(mod, control)

        # ⏳ (in clear this time, as Element Web sends it) replaces it; redacting ⏳ withdraws it.
        notyet = await mentee.react(pair, prompt, "⏳", encrypted=False)
        assert "20-minute slot" in await _acknowledged(mentee, pair, prompt, seen)
        assert "video 0, voice 0, text 0, notyet 1" in await _report(mod, control)
        redacted = await mentee.client.room_redact(pair, notyet)
        assert isinstance(redacted, RoomRedactResponse), redacted
        assert "Withdrawn" in await _acknowledged(mentee, pair, prompt, seen)
        assert "video 0, voice 0, text 0, notyet 0" in await _report(mod, control)

        # A Matrix reply holding just the option counts too, acknowledged under the reply.
        said = await _reply(mentor, pair, prompt, "voice")
        assert "you met by voice" in await _acknowledged(mentor, pair, said, set())
        assert "video 0, voice 1, text 0, notyet 0" in await _report(mod, control)

        # Bad input: someone not in the pair (let in behind the hub's back), an unknown key, a
        # reaction to a message that is not a prompt. Nothing changes and nothing is said; the
        # `!hub ping` after them is answered, and it is the only new notice in the room.
        # (History is visible from the invite on, so the stranger is told the prompt's id.)
        assert hub.client is not None
        await hub.client.room_invite(pair, stranger.user_id)
        await stranger.wait_until(lambda: stranger.joined(pair), 30)
        notices_before = {e.event_id for e in mentee.in_room(pair) if isinstance(e, RoomMessageNotice)}
        await stranger.react(pair, prompt, "🎥")
        await mentee.react(pair, prompt, "👍")
        await mentee.react(pair, said, "🎥")
        assert await mentee.ask(pair, "!hub ping") == "pong"
        new = [e for e in mentee.in_room(pair)
               if isinstance(e, RoomMessageNotice) and e.event_id not in notices_before]
        assert [e.body for e in new] == ["pong"]
        assert "video 0, voice 1, text 0, notyet 0" in await _report(mod, control)

        # The private check-in in the (encrypted) direct room: 1️⃣-5️⃣, replace, withdraw, reply.
        assert "private check-ins" in await mod.ask(control, "!hub send reflection spring")
        direct = await room_of(hub, f"direct:{mentee.user_id}")
        await mentee.wait_until(lambda: mentee.offered(direct, SCORE_KEYS[-1]) is not None, 30)
        assert mentee.client.rooms[direct].encrypted
        checkin = mentee.offered(direct, SCORE_KEYS[0])
        assert checkin is not None
        scores = _options(mentee, direct, checkin, bot.user_id)
        assert [e.key for e in scores] == SCORE_KEYS
        # The options do not buzz the person's phone: in clear, no default rule notifies for an
        # m.reaction; encrypted, the server would see an m.room.encrypted in a two-person room.
        rules = await push_rules(synapse.url, mentee)
        where = await room_state(synapse.url, mentee, direct)
        assert where.member_count == 2
        as_sent = evaluate(rules, scores[0].source, mentee.user_id, where)
        assert not as_sent.notify, as_sent
        if_encrypted = evaluate(rules, {**scores[0].source, "type": "m.room.encrypted", "content": {
            "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "...", "m.relates_to": {
                "rel_type": "m.annotation", "event_id": checkin}}}, mentee.user_id, where)
        assert if_encrypted.notify and if_encrypted.rule_id == ".m.rule.encrypted_room_one_to_one"
        control_before = len(mod.in_room(control))
        mine: set[str] = set()
        await mentee.react(direct, checkin, "4️⃣")
        assert "noted privately" in await _acknowledged(mentee, direct, checkin, mine)
        assert await _scores(hub) == [4]
        low = await mentee.react(direct, checkin, "2️⃣")
        assert "private guide" in await _acknowledged(mentee, direct, checkin, mine)
        assert await _scores(hub) == [2]
        assert isinstance(await mentee.client.room_redact(direct, low), RoomRedactResponse)
        assert "Withdrawn" in await _acknowledged(mentee, direct, checkin, mine)
        assert await _scores(hub) == []
        five = await _reply(mentee, direct, checkin, "5")
        assert "noted privately" in await _acknowledged(mentee, direct, five, set())
        assert await _scores(hub) == [5]
        assert len(mod.in_room(control)) == control_before  # nothing of it reached the moderators
