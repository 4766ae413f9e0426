"""A webinar reminder notifies each participant on their own client (issue 12 item 1, PRODUCT.md "On Matrix").

A real Synapse and the hub; the pair's mentor and mentee and an unpaired mentee are
nio clients with end-to-end encryption. `!hub webinar` schedules a webinar a little
over an hour ahead; the test then ticks the calendar at the 1-h reminder's instant
on a FakeClock (as tests/live/test_icebreaker_live.py does; the hub's own wall-clock
scheduler is stopped). Each person's push rules are read from Synapse and evaluated
on the reminder as their client decrypted it: the pair room's notifies both members,
the unpaired mentee's direct room notifies her, and nobody gets it twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hub.clock import FakeClock
from hub.core.calendar import CalendarItem, ItemKind, Target, build_calendar
from hub.devserver.synapse import SynapseServer
from hub.program import ProgramRunner
from hub.program_store import SqlProgramState
from hub.storage.models import hub_room_table

from tests.live.test_prompts_notify_live import as_event, from_hub, verdict
from tests.support.cohorts import room_of
from tests.support.live_hub import hub_settings, running_hub

pytestmark = pytest.mark.synapse

SLUG = "spring"


async def test_webinar_reminder_notifies_pair_members_and_the_unpaired_in_their_direct_room(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any], tmp_path: Path
) -> None:
    bot = await register("hub")
    mod, ada, bo, cy = (await participant("mod"), await participant("ada"), await participant("bo"),
                        await participant("cy"))
    settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub",
                            moderators=[mod.user_id])
    async with running_hub(settings) as hub:
        assert hub.db is not None and hub.program is not None
        program = hub.program
        # The test owns the calendar's clock: the hub's wall-clock scheduler must not tick too.
        await program.stop()
        control = hub.control_room_id
        assert control
        await mod.wait_joined(control, mod.user_id, timeout=20)
        for command in [f'!hub cohort create {SLUG} "Spring 2027" tz=UTC',
                        f"!hub add {SLUG} mentor {ada.user_id} Ada",
                        f"!hub add {SLUG} mentee {bo.user_id} Bo",
                        f"!hub add {SLUG} mentee {cy.user_id} Cy",
                        f"!hub pair {SLUG} {ada.user_id} {bo.user_id}"]:
            await mod.ask(control, command)
        pair = await room_of(hub, "pair:1")
        await ada.wait_joined(pair, bo.user_id, timeout=30)
        await bo.wait_joined(pair, ada.user_id, timeout=30)
        # Megolm keys go to the members the hub knows of when it sends.
        deadline = time.monotonic() + 20
        while not (hub.client and pair in hub.client.rooms
                   and {ada.user_id, bo.user_id} <= set(hub.client.rooms[pair].users)
                   and not hub.client.rooms[pair].invited_users):
            assert time.monotonic() < deadline, "the hub did not see both join the pair room"
            await asyncio.sleep(0.2)

        at = (hub.clock.now() + timedelta(hours=1, minutes=5)).replace(second=0, microsecond=0)
        answer = await mod.ask(control, f'!hub webinar {SLUG} {at:%Y-%m-%dT%H:%M} "Spring kick-off" '
                                         "https://meet.example.org/kick")
        assert "Scheduled" in answer and "1 h" in answer, answer
        spec = next(s for s in await program.specs() if s.slug == SLUG)
        reminder = next(i for i in build_calendar(spec).items if i.kind is ItemKind.WEBINAR_REMINDER_1H)

        emitted: list[tuple[CalendarItem, list[Target]]] = []

        async def reminders_only(item: CalendarItem, targets: Sequence[Target]) -> None:
            if item.kind is ItemKind.WEBINAR_REMINDER_1H and item.cohort == SLUG:
                emitted.append((item, list(targets)))
                await program.emit(item, targets)

        clock = FakeClock(reminder.due + timedelta(seconds=3))
        runner = ProgramRunner(specs=program.specs, targets=program.targets, emit=reminders_only,
                               state=SqlProgramState(hub.db, clock), clock=clock,
                               catch_up=timedelta(hours=settings.hub.catch_up_hours))
        ticked = time.monotonic()
        await runner.tick()
        assert [i.key for i, _ in emitted] == [reminder.key]
        assert sorted(t.key for t in emitted[0][1] if t.audience.value in ("pair", "direct")) == [
            f"direct:{cy.user_id}", "pair:pair:1"]
        direct = await room_of(hub, f"direct:{cy.user_id}")

        observed: dict[str, tuple[str | None, bool]] = {}
        both = {ada.user_id, bo.user_id}
        for person, room, named in ((ada, pair, both), (bo, pair, both), (cy, direct, {cy.user_id})):
            await person.wait_until(
                lambda p=person, r=room: bool(from_hub(p, r, bot.user_id, "Spring kick-off")), 30)
            ev = from_hub(person, room, bot.user_id, "Spring kick-off")[-1]
            event = as_event(ev, room)
            assert event["content"]["msgtype"] == "m.text"
            assert set(event["content"]["m.mentions"]["user_ids"]) == named
            assert "starts in 1 hour" in event["content"]["body"]
            v = await verdict(synapse.url, person, room, event)
            observed[person.user_id] = (v.rule_id, v.notify)
            assert (v.rule_id, v.notify, v.highlight) == (".m.rule.is_user_mention", True, True)
        print(f"\nreminder verdicts: {observed}; all three read {time.monotonic() - ticked:.2f}s "
              "after the tick")

        # Ticking again and re-emitting the item change nothing; the paired have no direct room for it.
        await runner.tick()
        await program.emit(reminder, emitted[0][1])
        await asyncio.sleep(2)  # a duplicate, had one been queued, would have arrived by now
        for person, room in ((ada, pair), (bo, pair), (cy, direct)):
            assert len(from_hub(person, room, bot.user_id, "Spring kick-off")) == 1, person.user_id
        async with hub.db.session() as s:
            directs = set((await s.execute(select(hub_room_table.c.key).where(
                hub_room_table.c.kind == "direct"))).scalars().all())
        assert directs == {f"direct:{cy.user_id}"}
