"""Participant commands against a real Synapse and a real SMTP server, as people's clients see them.

One cohort, one encrypted pair room, real nio E2EE clients for the mentor,
the mentee and the moderator; nothing is read from the hub's database except
to learn which room is which.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nio import RoomGetStateEventResponse, RoomMessageText

from hub.devserver.smtp import SmtpSink
from hub.devserver.synapse import SynapseServer

from tests.support.cohorts import room_of
from tests.support.live_hub import hub_settings, running_hub, sink_email

pytestmark = pytest.mark.synapse


async def test_participant_commands_in_real_rooms(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any], tmp_path: Path
) -> None:
    bot = await register("hub")
    mod, mentor, mentee = await participant("mod"), await participant("mentor"), await participant("mentee")
    with SmtpSink() as sink:
        settings = hub_settings(
            homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub", moderators=[mod.user_id],
            extra={"email": sink_email(sink)})
        async with running_hub(settings) as hub:
            control = hub.control_room_id
            assert control
            await mod.wait_joined(control, mod.user_id, timeout=20)
            for command in ['!hub cohort create spring "Spring 2027"',
                            f"!hub add spring mentor {mentor.user_id} Ada email=ada@example.org",
                            f"!hub add spring mentee {mentee.user_id} Bo email=bo@example.org",
                            f"!hub pair spring {mentor.user_id} {mentee.user_id}"]:
                await mod.ask(control, command)
            pair = await room_of(hub, "pair:1")
            await mentor.wait_joined(pair, mentee.user_id, timeout=30)
            await mentee.wait_joined(pair, mentor.user_id, timeout=30)

            # plan set: stored, posted, and that very message is the pinned event.
            reply = await mentor.ask(pair, "!hub plan set If the call drops, Ada phones Bo on +49 30 1234")
            assert "pinned" in reply
            await mentor.wait_until(lambda: bool(mentor.notices(pair, "Our backup plan")), 20)
            plan_event = mentor.notices(pair, "Our backup plan")[0].event_id
            pinned: list[str] = []
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not pinned:
                resp = await mentor.client.room_get_state_event(pair, "m.room.pinned_events")
                if isinstance(resp, RoomGetStateEventResponse):
                    pinned = list(resp.content.get("pinned", []))
                await asyncio.sleep(0.3)
            assert pinned == [plan_event]
            assert "Ada phones Bo" in await mentee.ask(pair, "!hub plan")

            # dropped: the plan and tips in the room, and a mail to both people.
            dropped = await mentee.ask(pair, "!hub dropped")
            assert "Ada phones Bo" in dropped and "Quick fixes" in dropped
            mails = await sink.wait_for(2, timeout=20)
            plan_mails = [m for m in mails if "Ada phones Bo" in (m.text or "")]
            assert sorted(a for m in plan_mails for a in m.rcpt_tos) == ["ada@example.org", "bo@example.org"]

            # icebreaker: three a day, then a friendly refusal; never the same one twice.
            bodies = [await mentor.ask(pair, "!hub icebreaker") for _ in range(3)]
            assert len(set(bodies)) == 3
            assert "daily limit" in await mentee.ask(pair, "!hub icebreaker")

            # met text: a nudge towards video, with the pair's own link.
            nudge = await mentee.ask(pair, "!hub met text")
            assert "try video" in nudge and settings.video.base_url in nudge

            # A private check-in in the direct room: a low score gets the guide, moderators see nothing.
            assert "private check-ins" in await mod.ask(control, "!hub send reflection spring")
            direct = await room_of(hub, f"direct:{mentee.user_id}")
            # The private check-in is a prompt: an m.text that notifies the person it is for.
            def asked() -> bool:
                return any(isinstance(e, RoomMessageText) and "private check-in" in e.body
                           for e in mentee.in_room(direct))

            await mentee.wait_until(asked, 30)
            control_before = len(mod.in_room(control))
            low = await mentee.ask(direct, "!hub checkin 2")
            assert "private guide" in low and "!hub support" in low
            await asyncio.sleep(2)  # anything the check-in caused would have reached the control room by now
            assert len(mod.in_room(control)) == control_before

            # support: the one way something private reaches the moderators.
            sent = await mentee.ask(direct, "!hub support I'd like to talk about my pairing")
            assert "Sent to the moderators" in sent
            await mod.wait_until(lambda: bool(mod.notices(control, "talk about my pairing")), 20)
            assert "Support request" in mod.notices(control, "talk about my pairing")[0].body
