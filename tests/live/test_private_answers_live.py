"""Moderators' answers stay among moderators (PRODUCT.md "On Matrix"), read as a participant's client.

A moderator who types `!hub report` or `!hub cohort show` in the lounge gets the
command carried out; the lounge only sees a ✅ on the command (or, when it failed, a
short pointer), and the answer, naming who asked and where, is in the control room.
A participant in the lounge, reading every event after the commands, finds no Matrix
id, address, room id or number in anything the hub posted there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nio import RoomMessageNotice

from hub.devserver.synapse import SynapseServer
from hub.service import build_registry

from tests.support.cohorts import pair_in_new_cohort, quiet, room_of
from tests.support.live_hub import hub_settings, running_hub

pytestmark = pytest.mark.synapse

ANSWERED = "Answered in the moderators' room."


def test_every_moderator_command_declares_its_answer_private() -> None:
    """Each moderator command answers with people, addresses, room ids or counts: none may
    answer in a room participants read, so each declares it (a new one must too)."""
    registry = build_registry("!hub")
    missing = [s.name for s in registry.specs if s.moderator_only and not s.private_answer]
    assert missing == []
    assert [s.name for s in registry.specs if s.private_answer and not s.moderator_only] == []


async def test_report_and_cohort_show_in_the_lounge_leak_nothing_to_participants(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any], tmp_path: Path
) -> None:
    bot = await register("hub")
    mod, ada, bo = await participant("mod"), await participant("ada"), await participant("bo")
    settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub",
                            moderators=[mod.user_id])
    async with running_hub(settings) as hub:
        control = hub.control_room_id
        assert control
        pair = await pair_in_new_cohort(hub, mod, ada, bo, emails=True)
        lounge = await room_of(hub, "lounge:1")
        await ada.wait_joined(lounge, ada.user_id, 20)
        await mod.wait_joined(lounge, mod.user_id, 20)
        await quiet(hub)  # the launch post and welcomes are out: what follows is the commands'
        seen_before = len(ada.in_room(lounge))

        asked = {}
        for command in ("!hub report spring", "!hub cohort show spring", "!hub cohort list", "!hub audit"):
            asked[command] = await mod.send(lounge, command)

        def done(event_id: str) -> Callable[[], bool]:
            return lambda: any(e.source.get("type") == "m.reaction" and e.sender == bot.user_id
                               and e.source["content"]["m.relates_to"] == {
                                   "rel_type": "m.annotation", "event_id": event_id, "key": "✅"}
                               for e in ada.in_room(lounge))

        for event_id in asked.values():
            await ada.wait_until(done(event_id), 30)
        # A failed one gets a pointer; a usage error is shown in place (it repeats only what was typed).
        failed = await mod.send(lounge, "!hub cohort show autumn")
        await ada.wait_until(lambda: ada.reply_to(lounge, failed) is not None, 20)
        usage = await mod.send(lounge, "!hub report")
        await ada.wait_until(lambda: ada.reply_to(lounge, usage) is not None, 20)
        assert "Usage" in str(getattr(ada.reply_to(lounge, usage), "body", ""))
        assert (await ada.ask(lounge, "!hub ping")) == "pong"  # everything before it is handled

        # Everything the hub posted in the lounge since, as Ada's client has it.
        secrets = [ada.user_id, bo.user_id, "ada@example.org", "bo@example.org", control, lounge, pair]
        from_hub = [e for e in ada.in_room(lounge)[seen_before:] if e.sender == bot.user_id]
        assert from_hub
        for event in from_hub:
            raw = json.dumps(event.source.get("content", {}), ensure_ascii=False)
            assert not [s for s in secrets if s in raw], raw
            if event.source.get("type") == "m.reaction":
                continue
            body = str(getattr(event, "body", ""))
            assert body in (ANSWERED, "pong") or body.startswith("slug is missing. Usage"), body
            assert not re.search(r"\d", body), body
        assert isinstance(ada.reply_to(lounge, failed), RoomMessageNotice)
        assert ada.reply_to(lounge, failed).body == ANSWERED  # type: ignore[union-attr]

        # The control room has the answers, each saying who asked, where and what.
        def answer(command: str) -> str:
            for e in mod.notices(control, f"asked in the Spring 2027 lounge ({lounge}): `{command}`"):
                return str(e.body)
            return ""

        for command in (*asked, "!hub cohort show autumn"):
            await mod.wait_until(lambda c=command: bool(answer(c)), 20)  # type: ignore[misc]
        assert mod.user_id in answer("!hub report spring")
        assert "pairs" in answer("!hub report spring").lower()
        assert lounge in answer("!hub cohort show spring") and "1 mentors, 1 mentees" in answer(
            "!hub cohort show spring")
        assert "spring" in answer("!hub cohort list")
        assert "There is no cohort" in answer("!hub cohort show autumn")
        assert "(not done)" in answer("!hub cohort show autumn")
        # The routed answer is the audit notice too: one message per command, not two.
        assert not mod.notices(control, f"{mod.user_id} ran `!hub report spring`")
