"""Pair-room activity as the digest reports it, from what a real Synapse's sync delivered (issue 16).

Every pair member's digest in the demo said "Your pair room was active today" in both weeks.
The recorder kept each message's *server* timestamp while "days since active" is measured on
the hub's clock: when the two disagree (the demo plays a program in the past on a shifted clock
while Synapse stamps real time; a homeserver clock running ahead does the same), every message
looked as if it were sent "today" or later. Here the hub runs ten days behind Synapse's clock,
as in the demo, and the answer is read from the digest emails the SMTP server received.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nio import RoomMessage
from sqlalchemy import select

from hub.demo import ShiftedClock
from hub.devserver.smtp import ReceivedMail, SmtpSink
from hub.devserver.synapse import SynapseServer
from hub.service import Hub
from hub.storage.models import room_activity_table

from tests.support.cohorts import room_of
from tests.support.live_hub import hub_settings, running_hub, sink_email

pytestmark = pytest.mark.synapse


async def _last_active(hub: Hub, room_id: str) -> float | None:
    """Only to wait until the hub has seen a message; the assertions read the received emails."""
    assert hub.db is not None
    async with hub.db.session() as s:
        at = (await s.execute(select(room_activity_table.c.last_active_at).where(
            room_activity_table.c.room_id == room_id))).scalar_one_or_none()
    return float(at) if at is not None else None


async def _until_changed(hub: Hub, room_id: str, old: float | None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while await _last_active(hub, room_id) == old:
        if time.monotonic() > deadline:
            raise TimeoutError("the hub did not record the pair room's message")
        await asyncio.sleep(0.2)


def _pair_lines(mail: ReceivedMail) -> list[str]:
    """The "your pair" sentence(s) of a digest email's plain text, as its reader sees them."""
    return re.findall(r"Your pair room was [^.]*\.|No messages in your pair room yet\.", mail.text or "")


async def _digests(sink: SmtpSink, week: int, timeout: float = 30) -> list[ReceivedMail]:
    """Both people's digest emails for `week`, once the SMTP server has received them."""
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in sink.messages if f"week {week} of" in m.subject]
        if len(found) >= 2 or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


async def test_days_since_active_counts_the_pairs_messages_on_the_hubs_clock(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any], tmp_path: Path,
) -> None:
    bot = await register("hub")
    mod, mentor, mentee = await participant("mod"), await participant("mentor"), await participant("mentee")
    clock = ShiftedClock(datetime.now(UTC) - timedelta(days=10))
    with SmtpSink() as sink:
        settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub",
                                moderators=[mod.user_id], extra={"email": sink_email(sink)})
        async with running_hub(settings, clock=clock) as hub:
            assert hub.program is not None
            await hub.program.stop()  # the test moves the clock: no calendar items of its own meanwhile
            control = hub.control_room_id
            assert control
            await mod.wait_joined(control, mod.user_id, timeout=20)
            start = clock.now().date().isoformat()
            for command in [f'!hub cohort create spring "Spring" start={start} tz=UTC',
                            f"!hub add spring mentor {mentor.user_id} Ada email=ada@example.org",
                            f"!hub add spring mentee {mentee.user_id} Bo email=bo@example.org",
                            f"!hub pair spring {mentor.user_id} {mentee.user_id}"]:
                await mod.ask(control, command)
            pair = await room_of(hub, "pair:1")
            for user in (mentor, mentee):
                await user.wait_joined(pair, user.user_id, timeout=30)

            # Day 0: the mentor writes in the pair room.
            before = await _last_active(hub, pair)
            await mentor.send(pair, "Hello Bo! Tuesday at six?")
            await _until_changed(hub, pair, before)

            # Day 3: only the hub speaks there (an icebreaker), which is not the pair's activity.
            clock.jump_to(clock.now() + timedelta(days=3))
            def from_hub() -> int:
                # Any message the hub posts there (an icebreaker is a notice, or a prompt that notifies).
                return sum(1 for e in mentee.in_room(pair)
                           if isinstance(e, RoomMessage) and e.sender == bot.user_id)

            said = from_hub()
            await mod.ask(control, "!hub send icebreaker spring")
            await mentee.wait_until(lambda: from_hub() > said, 30)
            assert "2 people by email" in await mod.ask(control, "!hub digest spring send")
            week1 = await _digests(sink, 1)
            assert sorted(a for m in week1 for a in m.rcpt_tos) == ["ada@example.org", "bo@example.org"]
            for mail in week1:
                assert _pair_lines(mail) == ["Your pair room was last active 3 days ago."], mail.text

            # Still day 3: the mentee answers. A week later, that message is the last activity.
            before = await _last_active(hub, pair)
            await mentee.send(pair, "Tuesday works, see you then")
            await _until_changed(hub, pair, before)
            clock.jump_to(clock.now() + timedelta(days=7))
            assert "2 people by email" in await mod.ask(control, "!hub digest spring send")
            week2 = await _digests(sink, 2)
            assert sorted(a for m in week2 for a in m.rcpt_tos) == ["ada@example.org", "bo@example.org"]
            for mail in week2:
                assert _pair_lines(mail) == ["Your pair room was last active 7 days ago."], mail.text
