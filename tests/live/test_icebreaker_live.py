"""Issue 5, acceptance 2, on a real Synapse: the week-1 icebreaker reaches each pair room once,
and two pairs never see a repeat within 16 weeks.

A running hub (in process), a 16-week cohort starting this week's Monday, two pairs whose
mentors are real nio E2EE clients. The program calendar is driven by a `ProgramRunner` over the
hub's own specs, targets and emitter (`hub.program`) on a `FakeClock` that jumps from due instant
to due instant; only icebreaker items are handed to the real emitter (the digest, check-ins and
reflections are other acceptances and would only add traffic). Every message goes through the
outbox, the dispatcher and Synapse; assertions are on what the mentors' clients decrypted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nio import RoomMessageText

from hub.clock import FakeClock
from hub.core.calendar import CalendarItem, ItemKind, Target, TargetKind, build_calendar
from hub.devserver.synapse import SynapseServer
from hub.program import ProgramRunner
from hub.program_store import SqlProgramState

from tests.support.cohorts import room_of
from tests.support.live_hub import hub_settings, running_hub

pytestmark = pytest.mark.synapse

WEEKS = 16
SLUG = "ice"




def _icebreakers(user: Any, room: str) -> list[str]:
    """Titles of the pair icebreakers `user`'s client decrypted in `room`, in order.

    A scheduled icebreaker is a prompt (an m.text that opens with the pair's names).
    """
    titles = []
    for ev in user.in_room(room):
        if not isinstance(ev, RoomMessageText):
            continue
        first = next((line for line in ev.body.splitlines() if line.strip()), "")
        title = first[first.find("Icebreaker:"):].strip().strip("*").strip()
        if "Icebreaker:" in first:
            titles.append(title)
    return titles


async def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(what)


async def test_icebreakers_reach_each_pair_room_once_without_repeats(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any], tmp_path: Path
) -> None:
    started = time.monotonic()
    bot = await register("hub")
    mod, mentor1, mentor2 = await participant("mod"), await participant("ada"), await participant("cy")
    mentee1, mentee2 = await register("bo"), await register("di")
    settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub",
                            moderators=[mod.user_id])
    today = datetime.now(UTC).date()
    monday = today - timedelta(days=today.weekday())
    async with running_hub(settings) as hub:
        assert hub.db is not None and hub.program is not None and hub.client is not None
        program = hub.program
        # The test owns the calendar's clock: the hub's wall-clock scheduler must not tick too.
        await program.stop()
        control = hub.control_room_id
        assert control
        await mod.wait_joined(control, mod.user_id, timeout=20)
        for command in [f'!hub cohort create {SLUG} "Icebreaker cohort" tz=UTC start={monday} weeks={WEEKS}',
                        f"!hub add {SLUG} mentor {mentor1.user_id} Ada",
                        f"!hub add {SLUG} mentee {mentee1.user_id} Bo",
                        f"!hub add {SLUG} mentor {mentor2.user_id} Cy",
                        f"!hub add {SLUG} mentee {mentee2.user_id} Di",
                        f"!hub pair {SLUG} {mentor1.user_id} {mentee1.user_id}",
                        f"!hub pair {SLUG} {mentor2.user_id} {mentee2.user_id}"]:
            await mod.ask(control, command)
        rooms = {mentor1.user_id: await room_of(hub, "pair:1"), mentor2.user_id: await room_of(hub, "pair:2")}
        assert len(set(rooms.values())) == 2
        mentors = [mentor1, mentor2]
        for m in mentors:
            room = rooms[m.user_id]
            await m.wait_joined(room, m.user_id, timeout=30)

            def hub_sees_join(room: str = room, user: str = m.user_id) -> bool:
                r = hub.client.rooms.get(room) if hub.client else None
                return r is not None and user in r.users and user not in r.invited_users

            # Megolm keys go to the members the hub knows of when it sends.
            await _until(hub_sees_join, 20, f"the hub did not see {m.user_id} join {room}")

        specs = [s for s in await program.specs() if s.slug == SLUG]
        assert len(specs) == 1 and specs[0].weeks == WEEKS
        icebreaker_items = [i for i in build_calendar(specs[0]).items if i.kind is ItemKind.ICEBREAKER]
        assert [i.week for i in icebreaker_items] == list(range(1, WEEKS + 1))
        week1 = icebreaker_items[0]

        emitted: list[tuple[CalendarItem, list[Target]]] = []

        async def icebreakers_only(item: CalendarItem, targets: Sequence[Target]) -> None:
            if item.kind is ItemKind.ICEBREAKER and item.cohort == SLUG:
                emitted.append((item, list(targets)))
                await program.emit(item, targets)

        clock = FakeClock(week1.due + timedelta(seconds=3))
        runner = ProgramRunner(specs=program.specs, targets=program.targets, emit=icebreakers_only,
                               state=SqlProgramState(hub.db, clock), clock=clock,
                               catch_up=timedelta(hours=settings.hub.catch_up_hours))

        # -- week 1: one tick at the icebreaker's instant; each pair room gets it once ---------
        report = await runner.tick()
        assert [(i.key, len(t)) for i, t in emitted] == [(week1.key, 3)]  # two pair rooms + the lounge
        assert sorted(t.id for t in emitted[0][1] if t.audience is TargetKind.PAIR) == ["pair:1", "pair:2"]
        for m in mentors:
            await m.wait_until(lambda m=m: bool(_icebreakers(m, rooms[m.user_id])), 30)
        # Ticking again at the same instant and re-emitting the item directly both change nothing.
        await runner.tick()
        await program.emit(week1, emitted[0][1])
        await asyncio.sleep(2)  # a duplicate, had one been queued, would have arrived by now
        first_titles = {}
        for m in mentors:
            got = _icebreakers(m, rooms[m.user_id])
            assert len(got) == 1, f"{m.user_id} got {got}"
            first_titles[m.user_id] = got[0]
        # Week 1 has its own icebreaker in the library ("three questions for a first call").
        assert all("first call" in t for t in first_titles.values()), first_titles

        # -- weeks 2..16: tick at every due instant of the real calendar ------------------------
        last = icebreaker_items[-1]
        next_due = report.next_due
        while next_due is not None and next_due <= last.due:
            clock.set(next_due + timedelta(seconds=3))
            next_due = (await runner.tick()).next_due
        assert [i.week for i, _ in emitted] == list(range(1, WEEKS + 1))

        for m in mentors:
            await m.wait_until(lambda m=m: len(_icebreakers(m, rooms[m.user_id])) >= WEEKS, 40)
        await asyncio.sleep(1)  # anything extra would have arrived by now
        for m in mentors:
            got = _icebreakers(m, rooms[m.user_id])
            assert len(got) == WEEKS, f"{m.user_id}: {len(got)} icebreakers: {got}"
            assert len(set(got)) == WEEKS, f"{m.user_id} saw a repeat within {WEEKS} weeks: {got}"
            assert got[0] == first_titles[m.user_id]
    print(f"\nicebreaker live test took {time.monotonic() - started:.1f}s")
