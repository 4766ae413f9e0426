"""Prompts notify the people they are for, decided the way their own clients decide (issue 12, item 1).

A real Synapse and the hub; the mentor, the mentee and the moderator are nio
clients with end-to-end encryption. Pair rooms are encrypted, so the homeserver
only sees ``m.room.encrypted`` and the notification is the client's call: each
member's push rules are read from Synapse with their own token
(``GET /_matrix/client/v3/pushrules/``) and evaluated (tests/support/push_rules.py) on
the event as their client decrypted it, in the room as their client sees it.
A second test checks the evaluator itself against Synapse's verdicts on the same
user's rules, in a room the server can read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from nio import Event, RoomMessageNotice, RoomMessageText, RoomSendResponse

from hub.core.cohorts import CREATOR_POWER_VERSIONS
from hub.delivery.outbox import MATRIX
from hub.devserver.synapse import SynapseServer
from hub.matrix.events import user_link

from tests.support.cohorts import pair_in_new_cohort, room_of
from tests.support.live_hub import hub_settings, running_hub
from tests.support.matrix_user import Participant
from tests.support.push_rules import RoomState, Verdict, evaluate

pytestmark = pytest.mark.synapse


async def _get(base: str, token: str, path: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(
        base + path, headers={"Authorization": f"Bearer {token}"}
    ) as r:
        assert r.status == 200, (path, r.status, await r.text())
        return await r.json()


async def push_rules(base: str, user: Participant) -> dict[str, Any]:
    """The user's own rules, as their client fetches them."""
    data = await _get(base, user.user.access_token, "/_matrix/client/v3/pushrules/")
    rules: dict[str, Any] = data["global"]
    return rules


async def room_state(base: str, user: Participant, room_id: str) -> RoomState:
    """What the rules may ask about the room (members, the user's name in it, power levels)."""
    events = await _get(base, user.user.access_token, f"/_matrix/client/v3/rooms/{quote(room_id)}/state")
    members = {e["state_key"]: e["content"] for e in events if e["type"] == "m.room.member"}
    levels: dict[str, Any] = next((e["content"] for e in events if e["type"] == "m.room.power_levels"), {})
    joined = sum(1 for c in members.values() if c.get("membership") == "join")
    create = next(e for e in events if e["type"] == "m.room.create")
    creators = (frozenset([create["sender"], *create["content"].get("additional_creators", [])])
                if str(create["content"].get("room_version", "1")) in CREATOR_POWER_VERSIONS else frozenset())
    return RoomState(member_count=joined, display_name=members.get(user.user_id, {}).get("displayname"),
                     power_levels=levels, creators=creators)


def as_event(ev: Event, room_id: str) -> dict[str, Any]:
    """The event as the client holds it after decrypting (the plaintext's type and content)."""
    return {"type": ev.source.get("type", "m.room.message"), "content": ev.source["content"],
            "sender": ev.sender, "room_id": room_id, "event_id": ev.event_id}


async def verdict(base: str, user: Participant, room_id: str, event: dict[str, Any]) -> Verdict:
    return evaluate(await push_rules(base, user), event, user.user_id, await room_state(base, user, room_id))


def from_hub(user: Participant, room_id: str, bot: str, text: str) -> list[Event]:
    return [e for e in user.in_room(room_id)
            if isinstance(e, (RoomMessageText, RoomMessageNotice)) and e.sender == bot and text in e.body]


async def test_prompts_notify_both_pair_members_and_command_replies_ping_nobody(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any], tmp_path: Path
) -> None:
    bot = await register("hub")
    mod, mentor, mentee = await participant("mod"), await participant("mentor"), await participant("mentee")
    settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub",
                            moderators=[mod.user_id])
    async with running_hub(settings) as hub:
        control = hub.control_room_id
        assert control and hub.outbox is not None and hub.db is not None
        pair = await pair_in_new_cohort(hub, mod, mentor, mentee)
        lounge = await room_of(hub, "lounge:1")
        await mentor.wait_joined(pair, mentee.user_id, timeout=30)
        await mentee.wait_joined(pair, mentor.user_id, timeout=30)

        # A moderator's command: its reply is a notice, silent for the moderator too.
        sent = await mod.ask(control, "!hub send icebreaker spring")
        assert "1 pair room" in sent
        reply = from_hub(mod, control, bot.user_id, "Sent the icebreaker")[-1]
        mod_verdict = await verdict(synapse.url, mod, control, as_event(reply, control))
        assert (mod_verdict.rule_id, mod_verdict.notify) == (".m.rule.suppress_notices", False)
        await mod.ask(control, "!hub send checkin spring")

        observed: dict[tuple[str, str], str | None] = {}
        for person in (mentor, mentee):
            for label, text in (("icebreaker", "Icebreaker"), ("check-in", "did you meet this week")):
                await person.wait_until(lambda p=person, t=text: bool(from_hub(p, pair, bot.user_id, t)), 30)
                ev = from_hub(person, pair, bot.user_id, text)[-1]
                assert getattr(ev, "decrypted", False), "pair rooms are encrypted: the client decides"
                event = as_event(ev, pair)
                content = event["content"]
                assert content["msgtype"] == "m.text"
                assert sorted(content["m.mentions"]["user_ids"]) == sorted([mentor.user_id, mentee.user_id])
                # The names lead the message, each a pill to the person.
                assert content["body"].startswith("Ada and Bo: ")
                for who in (mentor, mentee):
                    assert f'href="{user_link(who.user_id)}"' in content["formatted_body"]
                v = await verdict(synapse.url, person, pair, event)
                observed[(person.user_id, label)] = v.rule_id
                assert (v.rule_id, v.notify, v.highlight) == (".m.rule.is_user_mention", True, True), label
                # The same prompt sent as an m.notice (what the hub did before) notifies nobody.
                as_notice = {**event, "content": {**content, "msgtype": "m.notice"}}
                before = await verdict(synapse.url, person, pair, as_notice)
                assert (before.rule_id, before.notify) == (".m.rule.suppress_notices", False)
        assert len(observed) == 4

        # Reflection weeks: the pair's reflection prompt notifies both, each private check-in its person.
        await mod.ask(control, "!hub send reflection spring")
        for person in (mentor, mentee):
            direct = await room_of(hub, f"direct:{person.user_id}")
            for room, text, named in ((pair, "Reflection", {mentor.user_id, mentee.user_id}),
                                      (direct, "private check-in", {person.user_id})):
                await person.wait_until(
                    lambda p=person, r=room, t=text: bool(from_hub(p, r, bot.user_id, t)), 30)
                ev = from_hub(person, room, bot.user_id, text)[-1]
                assert set(ev.source["content"]["m.mentions"]["user_ids"]) == named, text
                v = await verdict(synapse.url, person, room, as_event(ev, room))
                observed[(person.user_id, text)] = v.rule_id
                assert (v.rule_id, v.highlight) == (".m.rule.is_user_mention", True), text
        print("verdicts:", observed)

        # The backup plan after `!hub dropped` is for the partner: it notifies the mentor, whom the
        # mentee's call dropped on, and is no mention for the mentee, who typed it.
        typed = await mentee.send(pair, "!hub dropped")
        plan: dict[str, Verdict] = {}
        for person in (mentor, mentee):
            await person.wait_until(
                lambda p=person: any(e.sender == bot.user_id for e in p.replies_to(pair, typed)), 20)
            ev = next(e for e in person.replies_to(pair, typed) if e.sender == bot.user_id)
            assert isinstance(ev, RoomMessageText) and "Quick fixes" in ev.body
            assert ev.source["content"]["m.mentions"] == {"user_ids": [mentor.user_id]}
            plan[person.user_id] = await verdict(synapse.url, person, pair, as_event(ev, pair))
        partner, typist = plan[mentor.user_id], plan[mentee.user_id]
        assert (partner.rule_id, partner.highlight) == (".m.rule.is_user_mention", True)
        assert typist.rule_id != ".m.rule.is_user_mention" and not typist.highlight
        print("dropped plan:", {u: v.rule_id for u, v in plan.items()})

        # A command reply in the pair room pings neither member, the one who asked included.
        asked = await mentee.send(pair, "!hub met video")
        answer = await mentee.wait_for_reply(pair, asked, timeout=20)
        assert isinstance(answer, RoomMessageNotice) and "video" in answer.body
        await mentor.wait_until(lambda: bool(mentor.replies_to(pair, asked)), 20)
        for person in (mentor, mentee):
            ev = next(e for e in person.replies_to(pair, asked) if e.sender == bot.user_id)
            v = await verdict(synapse.url, person, pair, as_event(ev, pair))
            assert (v.rule_id, v.notify) == (".m.rule.suppress_notices", False)

        # What informs the whole cohort pings nobody: the lounge icebreaker, then the digest.
        await mentor.wait_until(lambda: bool(from_hub(mentor, lounge, bot.user_id, "Lounge icebreaker")), 30)
        lounge_posts = from_hub(mentor, lounge, bot.user_id, "Lounge icebreaker")
        seen = len(from_hub(mentor, lounge, bot.user_id, ""))
        await mod.ask(control, "!hub digest spring send")
        await mentor.wait_until(lambda: len(from_hub(mentor, lounge, bot.user_id, "")) > seen, 30)
        lounge_posts += from_hub(mentor, lounge, bot.user_id, "")[seen:]
        for ev in lounge_posts:
            assert ev.source["content"]["m.mentions"] == {}, ev.body[:80]
            v = await verdict(synapse.url, mentor, lounge, as_event(ev, lounge))
            assert v.rule_id != ".m.rule.is_user_mention" and not v.highlight, (ev.body[:80], v)
        assert any("digest" in ev.body for ev in lounge_posts[1:]), [e.body[:80] for e in lounge_posts]

        # Loop guard: an m.notice command is never answered, nor the hub's own m.text "!hub ping";
        # an m.text `!hub ping` sent after both is, so both were seen and left alone by then.
        notice = await mentee.client.room_send(pair, "m.room.message",
                                               {"msgtype": "m.notice", "body": "!hub ping"},
                                               ignore_unverified_devices=True)
        async with hub.db.transaction() as s:
            await hub.outbox.enqueue(s, channel=MATRIX, kind="test", lane=pair, dedupe_key="own-ping",
                                     payload={"op": "message", "room_id": pair, "type": "m.room.message",
                                              "content": {"msgtype": "m.text", "body": "!hub ping"}})
        await mentee.wait_until(lambda: any(e.body == "!hub ping" for e in from_hub(mentee, pair, bot.user_id,
                                                                                      "!hub ping")), 20)
        own = next(e for e in from_hub(mentee, pair, bot.user_id, "!hub ping") if e.body == "!hub ping")
        later = await mentee.send(pair, "!hub ping")
        await mentee.wait_for_reply(pair, later, timeout=20)
        await asyncio.sleep(1)
        assert mentee.replies_to(pair, notice.event_id) == []
        assert mentee.replies_to(pair, own.event_id) == []


async def test_the_evaluator_agrees_with_synapse_where_the_server_can_read_the_event(
    synapse: SynapseServer, participant: Callable[..., Any]
) -> None:
    """Synapse evaluates unencrypted events itself: /notifications lists what it notified, and how."""
    sender, reader = await participant("sender"), await participant("reader")
    room = await sender.create_room(invite=[reader.user_id], name="plain room")
    await reader.wait_joined(room, reader.user_id, timeout=20)
    await sender.wait_joined(room, reader.user_id, timeout=20)
    state = await room_state(synapse.url, reader, room)
    name = state.display_name or reader.user_id
    me = reader.user_id
    contents: list[dict[str, Any]] = [
        {"msgtype": "m.text", "body": f"{name}: a prompt", "m.mentions": {"user_ids": [me]}},
        {"msgtype": "m.notice", "body": f"{name}: a prompt", "m.mentions": {"user_ids": [me]}},
        {"msgtype": "m.notice", "body": "a reply", "m.mentions": {}},
        {"msgtype": "m.text", "body": f"hello {name}"},
        {"msgtype": "m.text", "body": f"hello {name}", "m.mentions": {}},
        {"msgtype": "m.text", "body": "all of you, @room"},
        {"msgtype": "m.text", "body": "all of you", "m.mentions": {"room": True}},
        {"msgtype": "m.text", "body": "* typo", "m.mentions": {},
         "m.relates_to": {"rel_type": "m.replace", "event_id": "FIRST"}},
        {"msgtype": "m.text", "body": "for someone else", "m.mentions": {"user_ids": [sender.user_id]}},
    ]
    sent: list[str] = []
    for content in contents:
        if content.get("m.relates_to", {}).get("event_id") == "FIRST":  # an edit of the first one
            content["m.relates_to"]["event_id"] = sent[0]
        resp = await sender.client.room_send(room, "m.room.message", content)
        assert isinstance(resp, RoomSendResponse), resp
        sent.append(str(resp.event_id))
    rules = await push_rules(synapse.url, reader)
    mine = {eid: evaluate(rules, {"type": "m.room.message", "content": c, "sender": sender.user_id,
                                  "room_id": room, "event_id": eid}, me, state)
            for eid, c in zip(sent, contents, strict=True)}
    expected = {eid for eid, v in mine.items() if v.notify}
    deadline = time.monotonic() + 20
    while True:
        data = await _get(synapse.url, reader.user.access_token, "/_matrix/client/v3/notifications?limit=50")
        server = {n["event"]["event_id"]: n for n in data["notifications"] if n["room_id"] == room}
        if set(server) >= expected or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    differ = [(c["body"], mine[e].rule_id, server.get(e, {}).get("actions"))
              for e, c in zip(sent, contents, strict=True) if (e in server) != (e in expected)]
    assert not differ, differ
    for eid in expected:
        highlight = any(isinstance(a, dict) and a.get("set_tweak") == "highlight" and a.get("value", True)
                        for a in server[eid]["actions"])
        assert highlight == mine[eid].highlight, (mine[eid].rule_id, server[eid]["actions"])
    # And the cases this is about came out as the spec says.
    assert [mine[e].rule_id for e in sent[:3]] == [".m.rule.is_user_mention", ".m.rule.suppress_notices",
                                                   ".m.rule.suppress_notices"]
