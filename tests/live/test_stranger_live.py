"""Who may make the hub act, and how often: real Synapse, real SMTP, read as people's clients see it.

A participant invites the hub into a room of their own where a stranger
also is (PRODUCT.md: commands other than help and ping are for participants
and moderators; anyone else gets one polite refusal). `!hub email ADDRESS`
mails a code to any address, so it is limited per person and per address a
day, and the limit survives a restart. A flood of commands from one person
gets one "slow down", not a flood of answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nio import RoomMessageNotice

from hub.devserver.smtp import SmtpSink
from hub.devserver.synapse import SynapseServer

from tests.support.live_hub import hub_settings, running_hub, sink_email

pytestmark = pytest.mark.synapse


async def _settle(user: Any, room: str) -> None:
    """Every earlier command in `room` has been handled once a later ping is answered (one sync, in order)."""
    assert (await user.ask(room, "!hub ping")) == "pong"


async def test_strangers_get_one_refusal_and_confirmation_mails_are_limited(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any], tmp_path: Path
) -> None:
    bot = await register("hub")
    mod, ada, bo = await participant("mod"), await participant("ada"), await participant("bo")
    stranger, flooder = await participant("stranger"), await participant("flooder")
    with SmtpSink() as sink:
        settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub",
                                moderators=[mod.user_id], extra={"email": sink_email(sink)})
        async with running_hub(settings) as hub:
            control = hub.control_room_id
            assert control
            await mod.wait_joined(control, mod.user_id, timeout=20)
            for command in ['!hub cohort create spring "Spring 2027"',
                            f"!hub add spring mentor {ada.user_id} Ada",
                            f"!hub add spring mentee {bo.user_id} Bo"]:
                await mod.ask(control, command)
            # A participant's own (public) room with the hub and two strangers in it.
            room = await ada.create_room(invite=[bot.user_id, bo.user_id, stranger.user_id, flooder.user_id])
            await ada.wait_joined(room, bot.user_id, timeout=20)
            for person in (bo, stranger, flooder):
                await person.client.join(room)
                await ada.wait_joined(room, person.user_id)

            # The stranger: one polite refusal, then silence for the same request; help and ping work.
            first = await stranger.ask(room, "!hub email victim@example.org")
            assert "participants and moderators" in first and "nothing was done" in first
            later = [await stranger.send(room, cmd) for cmd in
                     ("!hub email victim@example.org", "!hub email victim@example.org", "!hub snooze 3",
                      "!hub audit", "!hub nonsense")]
            assert "Commands you can use" in await stranger.ask(room, "!hub help")
            await _settle(stranger, room)
            assert [stranger.replies_to(room, e) for e in later] == [[]] * len(later)
            assert sink.count == 0

            # A participant: three confirmation mails a day, the fourth is refused and says so.
            for n in range(3):
                reply = await ada.ask(room, f"!hub email ada{n}@example.org")
                assert "emailed a code" in reply and "At most 3" in reply
            fourth = await ada.ask(room, "!hub email ada3@example.org")
            assert "at most 3 confirmation emails a day" in fourth and "nothing was sent" in fourth
            # Per address too: Bo has asked twice, but his third would be ada0's fourth mail today.
            assert "emailed a code" in await bo.ask(room, "!hub email ada0@example.org")
            assert "emailed a code" in await bo.ask(room, "!hub email ada0@example.org")
            assert "at most 3 confirmation emails" in await bo.ask(room, "!hub email ada0@example.org")
            mails = await sink.wait_for(5, timeout=20)
            await asyncio.sleep(1)
            assert sorted(a for m in sink.messages for a in m.rcpt_tos) == [
                "ada0@example.org", "ada0@example.org", "ada0@example.org",
                "ada1@example.org", "ada2@example.org"]
            assert all("confirm" in (m.text or "") for m in mails)

            # A flood from one person: `burst` answers, one "slow down", then nothing.
            started = time.monotonic()
            flood = [await flooder.send(room, "!hub ping") for _ in range(16)]
            elapsed = time.monotonic() - started
            await _settle(ada, room)  # all of it handled; and Ada is not slowed down by someone else

            def answers() -> list[str]:
                return [r.body for e in flood for r in flooder.replies_to(room, e)
                        if isinstance(r, RoomMessageNotice)]

            await flooder.wait_until(lambda: len(answers()) >= 11, 20)
            await asyncio.sleep(1)  # anything more would have arrived with the rest
            pongs = answers().count("pong")
            slow = [a for a in answers() if a.startswith("Slow down")]
            assert 10 <= pongs <= 10 + int(elapsed / 6) + 1, (pongs, elapsed)
            assert len(slow) == 1 and "at most 10 commands a minute" in slow[0]
            assert len(answers()) == pongs + 1 < len(flood)

        # After a restart Ada's limit still holds: it is counted in the database.
        async with running_hub(settings) as hub:
            fifth = await ada.ask(room, "!hub email ada4@example.org", timeout=30)
            assert "at most 3 confirmation emails a day" in fifth
            await asyncio.sleep(1)
            assert sink.count == 5
