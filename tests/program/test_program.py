"""The program runner (hub.program) with in-memory fakes of its own ports and a FakeClock.

The fakes stand in for our interfaces only: `Targets` (to be backed by the
rooms storage), `ProgramState` (backed by hub.program_store, tested against a
real database in test_program_store.py) and `emit` (which enqueues outbox
rows; `FakeOutbox` refuses a dedupe key twice, as the outbox table does).
"""

from __future__ import annotations

import asyncio
import random
import time as wall
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.clock import FakeClock
from hub.core.calendar import (
    DIRECT_FOR_UNPAIRED,
    CalendarItem,
    ItemKind,
    ProgramSpec,
    Target,
    TargetKind,
    Webinar,
    build_calendar,
    dedupe_key,
)
from hub.core.schedule import parse_weekly_slot
from hub.program import ProgramRunner, SkippedItem

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
PAIRS = ("pair-a", "pair-b", "pair-c")
PEOPLE = ("ana", "ben", "cat", "dan", "eve", "fay")
UNPAIRED = ("gus",)


def example(slug: str = "winter-2027", tz: ZoneInfo = BERLIN) -> ProgramSpec:
    return ProgramSpec(
        slug=slug, timezone=tz, start=date(2027, 1, 11), weeks=12,
        digest=parse_weekly_slot("mon 09:00"), icebreaker=parse_weekly_slot("tue 10:00"),
        checkin=parse_weekly_slot("fri 15:00"), checkin_weeks=(1, 2, 4, 8),
        reflection=parse_weekly_slot("wed 10:00"), reflection_weeks=(3, 6, 9),
        webinars=(
            Webinar(datetime(2027, 1, 11, 17, 0, tzinfo=tz), "Kick-off"),
            Webinar(datetime(2027, 3, 28, 17, 0, tzinfo=tz), "Mid-program"),
        ),
    )


@dataclass
class FakeTargets:
    """Targets per cohort; pauses and snoozes are instants so they follow the FakeClock."""

    pairs: dict[str, list[str]] = field(default_factory=dict)
    people: dict[str, list[str]] = field(default_factory=dict)
    paused: set[str] = field(default_factory=set)
    snoozed_until: dict[str, datetime] = field(default_factory=dict)
    unpaired: dict[str, list[str]] = field(default_factory=dict)  # people in no active pair room
    calls: int = 0

    async def lounge(self, cohort: str) -> str | None:
        self.calls += 1
        return f"lounge-{cohort}" if cohort in self.pairs else None

    async def active_pair_rooms(self, cohort: str, now: datetime) -> Sequence[str]:
        self.calls += 1
        return [p for p in self.pairs.get(cohort, []) if p not in self.paused]

    async def direct_rooms(self, cohort: str, now: datetime) -> Sequence[str]:
        self.calls += 1
        return [p for p in self.people.get(cohort, [])
                if self.snoozed_until.get(p, now) <= now]

    async def unpaired_direct_rooms(self, cohort: str, now: datetime) -> Sequence[str]:
        self.calls += 1
        return [p for p in self.unpaired.get(cohort, []) if self.snoozed_until.get(p, now) <= now]

    async def members(self, cohort: str, now: datetime) -> Sequence[str]:
        self.calls += 1
        return list(self.people.get(cohort, [])) + list(self.unpaired.get(cohort, []))


@dataclass
class FakeOutbox:
    """`emit`: records every call, and like the outbox table refuses a dedupe key twice."""

    clock: FakeClock
    rows: dict[str, datetime] = field(default_factory=dict)  # dedupe key -> enqueued at
    calls: Counter[str] = field(default_factory=Counter)  # dedupe key -> emit calls
    items: dict[str, CalendarItem] = field(default_factory=dict)
    fail: set[str] = field(default_factory=set)  # cohorts whose emits raise

    async def emit(self, item: CalendarItem, targets: Sequence[Target]) -> None:
        if item.cohort in self.fail:
            raise RuntimeError("database is locked")
        for target in targets:
            key = dedupe_key(item, target)
            self.calls[key] += 1
            self.items[key] = item
            self.rows.setdefault(key, self.clock.now())


@dataclass
class MemoryState:
    ticks: dict[str, datetime] = field(default_factory=dict)
    skips: dict[str, SkippedItem] = field(default_factory=dict)

    async def last_tick(self, cohort: str) -> datetime | None:
        return self.ticks.get(cohort)

    async def advance(self, cohort: str, tick: datetime, skipped: Sequence[CalendarItem]) -> None:
        for item in skipped:
            self.skips.setdefault(item.key, SkippedItem(item.key, item.kind.value, item.week,
                                                        item.due, tick))
        if cohort not in self.ticks or self.ticks[cohort] < tick:
            self.ticks[cohort] = tick

    async def skipped(self, cohort: str) -> Sequence[SkippedItem]:
        return sorted((s for s in self.skips.values() if s.key.split(":")[1] == cohort),
                      key=lambda s: (s.due, s.key))


class World:
    def __init__(self, *specs: ProgramSpec, start: datetime, catch_up_hours: int = 12) -> None:
        self.specs = list(specs)
        self.clock = FakeClock(start)
        self.targets = FakeTargets(
            pairs={s.slug: list(PAIRS) for s in specs},
            people={s.slug: list(PEOPLE) for s in specs},
            unpaired={s.slug: list(UNPAIRED) for s in specs},
        )
        self.outbox = FakeOutbox(self.clock)
        self.state = MemoryState()
        self.catch_up = timedelta(hours=catch_up_hours)
        self.runner = self.restart()

    def restart(self) -> ProgramRunner:
        """A new process: nothing survives but the state and the outbox (the database)."""
        async def specs() -> Sequence[ProgramSpec]:
            return self.specs

        self.runner = ProgramRunner(specs=specs, targets=self.targets, emit=self.outbox.emit,
                                    state=self.state, clock=self.clock, catch_up=self.catch_up)
        return self.runner

    async def run_until(self, end: datetime, *, every: timedelta = timedelta(hours=1)) -> int:
        """Tick like TickScheduler: periodically and at each next due instant."""
        ticks = 0
        next_due = (await self.runner.tick()).next_due
        while self.clock.now() < end:
            periodic = self.clock.now() + every
            at = min(periodic, next_due) if next_due else periodic
            self.clock.set(min(at, end))
            next_due = (await self.runner.tick()).next_due
            ticks += 1
        return ticks

    def expected(self, spec: ProgramSpec) -> dict[str, CalendarItem]:
        """Every (item, target) of the whole program, with all pairs active and nobody snoozed."""
        lounge = [Target(TargetKind.LOUNGE, f"lounge-{spec.slug}")]
        groups = {
            TargetKind.LOUNGE: lounge,
            TargetKind.PAIR: [Target(TargetKind.PAIR, p) for p in PAIRS],
            TargetKind.DIRECT: [Target(TargetKind.DIRECT, p) for p in PEOPLE],
            TargetKind.MEMBER: [Target(TargetKind.MEMBER, p) for p in PEOPLE + UNPAIRED],
        }
        unpaired = [Target(TargetKind.DIRECT, p) for p in UNPAIRED]
        return {dedupe_key(i, t): i for i in build_calendar(spec).items for a in i.audiences
                for t in (unpaired if a is TargetKind.DIRECT and i.kind in DIRECT_FOR_UNPAIRED
                          else groups[a])}


START = datetime(2027, 1, 10, 12, 0, tzinfo=BERLIN)  # the day before launch
END = datetime(2027, 4, 6, 0, 0, tzinfo=BERLIN)  # after week 12


@pytest.mark.serial  # times a CPU-bound run: alone, not beside another worker
async def test_whole_12_week_program_tick_by_tick_on_time_once_per_target() -> None:
    world = World(example(), example("fall-ny", NEW_YORK), start=START)
    began = wall.perf_counter()
    ticks = await world.run_until(END)
    elapsed = wall.perf_counter() - began
    assert elapsed < 1.0, f"12 weeks took {elapsed:.2f}s"
    assert ticks > 12 * 7 * 24  # hourly, plus each due instant

    for spec in world.specs:
        expected = world.expected(spec)
        got = {k: v for k, v in world.outbox.rows.items() if world.outbox.items[k].cohort == spec.slug}
        assert set(got) == set(expected)
        for key, sent_at in got.items():
            # Sent at its due instant exactly: the exact-instant tick, not the hourly one.
            assert sent_at == expected[key].due, key
    # Each (item, target) was emitted once, not merely deduplicated once.
    assert set(world.outbox.calls.values()) == {1}
    assert not world.state.skips
    # Local wall times held across both DST changes (New York on 03-14, Berlin on 03-28).
    for key, item in world.outbox.items.items():
        tz = BERLIN if item.cohort == "winter-2027" else NEW_YORK
        local = item.due.astimezone(tz)
        if item.kind is ItemKind.ICEBREAKER:
            assert (local.weekday(), local.hour, local.minute) == (1, 10, 0), key
        if item.kind is ItemKind.DIGEST:
            assert (local.weekday(), local.hour, local.minute) == (0, 9, 0), key


async def test_restarts_at_random_points_change_nothing() -> None:
    baseline = World(example(), start=START)
    await baseline.run_until(END)
    rng = random.Random(20270111)
    for _ in range(3):
        world = World(example(), start=START)
        stops = sorted(START + timedelta(minutes=rng.randrange(0, 12 * 7 * 24 * 60))
                       for _ in range(8))
        for stop in [*stops, END]:
            await world.run_until(stop)
            world.restart()
        assert world.outbox.rows == baseline.outbox.rows
        assert set(world.outbox.calls.values()) == {1}


async def test_two_processes_ticking_together_enqueue_each_row_once() -> None:
    world = World(example(), start=START)
    other = World(example(), start=START)  # a second process...
    other.clock, other.outbox, other.state, other.targets = (
        world.clock, world.outbox, world.state, world.targets)  # ...on the same database
    other.restart()
    while world.clock.now() < END:
        world.clock.advance(3600)
        await asyncio.gather(world.runner.tick(), other.runner.tick())
    assert set(world.outbox.rows) == set(world.expected(world.specs[0]))
    # Both processes may emit the same item; the outbox keeps one row per key.
    assert max(world.outbox.calls.values()) <= 2


@pytest.mark.parametrize(("down_hours", "sent"), [(6, True), (10, True), (13, False), (30, False)])
async def test_outage_catches_up_or_skips_and_reports(down_hours: int, sent: bool) -> None:
    world = World(example(), start=START)
    ice = build_calendar(example()).get("icebreaker:winter-2027:w2")
    assert ice is not None
    await world.run_until(ice.due - timedelta(minutes=1))
    # The hub goes down a minute before the icebreaker and comes back `down_hours` later.
    world.clock.set(ice.due - timedelta(minutes=1) + timedelta(hours=down_hours))
    world.restart()
    report = await world.runner.tick()
    keys = {k for k in world.outbox.rows if k.startswith(ice.key + ":")}
    if sent:
        assert len(keys) == len(PAIRS) + 1  # each pair room and the lounge
        assert ice in [i for i, _ in report.emitted]
        assert not await world.state.skipped("winter-2027")
    else:
        assert not keys
        assert ice in report.skipped
        listed = await world.state.skipped("winter-2027")
        assert ice.key in [s.key for s in listed]
        assert all(s.due <= world.clock.now() - timedelta(hours=12) for s in listed)
        # A later tick neither sends it nor lists it twice.
        world.clock.advance(60)
        await world.runner.tick()
        assert len(await world.state.skipped("winter-2027")) == len(listed)
    # Either way the rest of the program runs normally.
    await world.run_until(END)
    later = build_calendar(example()).get("icebreaker:winter-2027:w3")
    assert later is not None and f"{later.key}:pair:pair-a" in world.outbox.rows


async def test_paused_pairs_and_snoozed_people_are_skipped() -> None:
    world = World(example(), start=START)
    cal = build_calendar(example())
    reflection = cal.get("reflection:winter-2027:w3")
    ice = cal.get("icebreaker:winter-2027:w3")
    assert reflection is not None and ice is not None
    await world.run_until(reflection.due - timedelta(days=3))
    world.targets.paused.add("pair-b")
    world.targets.snoozed_until["ben"] = reflection.due + timedelta(days=1)
    await world.run_until(reflection.due + timedelta(days=2))
    rows = world.outbox.rows
    assert f"{ice.key}:pair:pair-a" in rows and f"{ice.key}:pair:pair-b" not in rows
    assert f"{reflection.key}:direct:ana" in rows and f"{reflection.key}:direct:ben" not in rows
    # Resuming does not deliver what was missed while paused; the next items do arrive.
    world.targets.paused.clear()
    await world.run_until(END)
    assert f"{ice.key}:pair:pair-b" not in world.outbox.rows
    assert "icebreaker:winter-2027:w4:pair:pair-b" in world.outbox.rows
    # Snooze is for nudges; the digest email still reaches a snoozed person.
    assert "digest:winter-2027:w4:member:ben" in world.outbox.rows


async def test_pair_made_later_gets_only_later_items() -> None:
    world = World(example(), start=START)
    await world.run_until(datetime(2027, 1, 27, 12, 0, tzinfo=BERLIN))  # week 3, Wednesday
    world.targets.pairs["winter-2027"].append("pair-late")
    await world.run_until(END)
    late = {k for k in world.outbox.rows if k.endswith(":pair:pair-late")}
    assert "icebreaker:winter-2027:w2:pair:pair-late" not in late
    assert "launch:winter-2027:pair:pair-late" not in late
    assert "icebreaker:winter-2027:w4:pair:pair-late" in late


async def test_a_failing_cohort_is_retried_and_does_not_hold_up_others() -> None:
    other = example("spring-2027")
    world = World(example(), other, start=START)
    launch = build_calendar(example()).launch
    await world.run_until(launch.due - timedelta(minutes=5))
    world.outbox.fail.add("winter-2027")
    world.clock.set(launch.due)
    report = await world.runner.tick()
    assert report.failed == ("winter-2027",)
    assert any(k.startswith("launch:spring-2027:") for k in world.outbox.rows)
    assert not any(k.startswith("launch:winter-2027:") for k in world.outbox.rows)
    # Fixed two hours later: the launch still goes out (within catch-up), once.
    world.outbox.fail.clear()
    world.clock.advance(2 * 3600)
    await world.runner.tick()
    assert "launch:winter-2027:pair:pair-a" in world.outbox.rows
    assert set(world.outbox.calls.values()) == {1}


async def test_first_tick_sends_recent_and_lists_old_items_once() -> None:
    # A cohort picked up in week 2 (first start, or added to the config late).
    world = World(example(), start=datetime(2027, 1, 19, 20, 0, tzinfo=BERLIN))
    report = await world.runner.tick()
    assert [i.key for i, _ in report.emitted] == ["icebreaker:winter-2027:w2"]
    assert report.skipped[0].kind is ItemKind.LAUNCH
    assert len(await world.state.skipped("winter-2027")) == len(report.skipped)
    assert report.next_due == build_calendar(example()).get(
        "checkin:winter-2027:w2").due  # type: ignore[union-attr]


async def test_targets_are_looked_up_once_per_audience_per_tick() -> None:
    world = World(example(), start=START)
    launch = build_calendar(example()).launch
    world.clock.set(launch.due - timedelta(minutes=1))
    await world.runner.tick()
    world.targets.calls = 0
    world.clock.set(launch.due)
    report = await world.runner.tick()
    # Launch, both webinars' announcements and the digest at 09:00, in that order;
    # lounge, pairs and members were each looked up once.
    assert [i.kind for i, _ in report.emitted] == [
        ItemKind.LAUNCH, ItemKind.WEBINAR_ANNOUNCE, ItemKind.WEBINAR_ANNOUNCE, ItemKind.DIGEST]
    assert world.targets.calls == 3
    assert [n for _, n in report.emitted] == [1 + 3, 1 + 7, 1 + 7, 1 + 7]


async def test_on_tick_returns_the_next_due_instant() -> None:
    world = World(example(), start=START)
    assert await world.runner.on_tick() == build_calendar(example()).launch.due
    world.clock.set(END)
    assert await world.runner.on_tick() is None


# -- property: arbitrary tick sequences ------------------------------------------------

SPEC = example()
ALL = World(SPEC, start=START).expected(SPEC)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    gaps=st.lists(st.integers(1, 40 * 3600), min_size=1, max_size=60),
    restarts=st.sets(st.integers(0, 59)),
    failures=st.sets(st.integers(0, 59), max_size=5),
    catch_up_hours=st.integers(0, 36),
)
def test_property_each_item_at_most_once_per_target_over_any_ticks(
    gaps: list[int], restarts: set[int], failures: set[int], catch_up_hours: int
) -> None:
    async def run() -> World:
        world = World(SPEC, start=START, catch_up_hours=catch_up_hours)
        for i, gap in enumerate(gaps):
            world.clock.advance(gap)
            if i in restarts:
                world.restart()
            if i in failures:
                world.outbox.fail.add(SPEC.slug)
            await world.runner.tick()
            world.outbox.fail.clear()
        return world

    world = asyncio.run(run())
    now = world.clock.now()
    last = world.state.ticks.get(SPEC.slug)
    window = max(timedelta(hours=catch_up_hours), timedelta(minutes=5))
    # At most once per (item, target) in the outbox, and only ever on or after its instant
    # and less than the catch-up window after it.
    assert set(world.outbox.rows) <= set(ALL)
    for key, at in world.outbox.rows.items():
        item = ALL[key]
        assert item.due <= at < item.due + window, key
    # Without failures the runner itself never even re-emits.
    if not failures:
        assert set(world.outbox.calls.values()) <= {1}
    # Everything due up to the last successful tick was either sent or listed as skipped.
    skipped = set(world.state.skips)
    for key, item in ALL.items():
        if last is not None and item.due <= last:
            assert key in world.outbox.rows or item.key in skipped, key
        if item.due > now:
            assert key not in world.outbox.rows and item.key not in skipped


async def test_webinar_reminder_direct_rooms_are_the_unpaired_even_beside_a_reflection() -> None:
    """At one tick a reflection (private check-ins to the paired) and a 1-h reminder (to the unpaired).

    The targets cache is per (audience, which direct set): sharing one direct list would
    send the private check-in to the unpaired or the reminder to the paired a second time.
    """
    base = example()
    reflection = build_calendar(base).get("reflection:winter-2027:w3")
    assert reflection is not None
    webinar = Webinar(reflection.due + timedelta(hours=1), "Mid-program")
    spec = ProgramSpec(**{**base.__dict__, "webinars": (*base.webinars, webinar)})
    world = World(spec, start=START)
    world.targets.unpaired["winter-2027"].append("hal")
    await world.run_until(reflection.due - timedelta(hours=2))
    world.targets.snoozed_until["hal"] = reflection.due + timedelta(days=1)
    world.clock.set(reflection.due)
    report = await world.runner.tick()
    reminder = next(i for i, _ in report.emitted if i.kind is ItemKind.WEBINAR_REMINDER_1H)
    assert {i.kind for i, _ in report.emitted} == {ItemKind.REFLECTION, ItemKind.WEBINAR_REMINDER_1H}

    def ids(prefix: str) -> set[str]:
        return {k.rsplit(":", 1)[1] for k in world.outbox.rows if k.startswith(prefix)}

    assert ids(f"{reminder.key}:direct:") == {"gus"}  # hal is snoozed; the paired have their pair rooms
    assert ids(f"{reminder.key}:pair:") == set(PAIRS)
    assert ids(f"{reflection.key}:direct:") == set(PEOPLE)
