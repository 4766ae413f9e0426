"""TickScheduler (hub.scheduling): real APScheduler AsyncIOScheduler, waits of a fraction of a second."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from hub.clock import FakeClock, SystemClock
from hub.core.calendar import CalendarItem, ProgramSpec, build_calendar
from hub.program import ProgramRunner
from hub.scheduling import TickScheduler

from tests.program.test_program import FakeOutbox, FakeTargets, MemoryState, example


class ShiftedClock(SystemClock):
    """Real time moved to another instant: it runs, so a calendar instant actually arrives."""

    def __init__(self, now: datetime) -> None:
        self.offset = now - datetime.now(UTC)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


async def wait_for(predicate: object, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def test_first_tick_at_start_then_periodic() -> None:
    ticks: list[float] = []

    async def tick() -> datetime | None:
        ticks.append(time.monotonic())
        return None

    sched = TickScheduler(tick, clock=FakeClock(datetime(2027, 1, 1, tzinfo=UTC)), interval=0.1)
    began = time.monotonic()
    sched.start()
    try:
        await wait_for(lambda: len(ticks) >= 3)
        assert ticks[0] - began < 0.2  # the catch-up tick on start is immediate
        with pytest.raises(RuntimeError):
            sched.start()
    finally:
        await sched.stop()
    assert not sched.running


async def test_exact_tick_at_the_next_due_instant_by_the_injected_clock() -> None:
    # The clock says 2027; APScheduler runs on real time. The next-due instant is
    # 0.3 s ahead by the clock, so the wake-up is 0.3 s ahead in real time.
    clock = FakeClock(datetime(2027, 1, 11, 7, 59, 59, tzinfo=UTC))
    ticks: list[float] = []

    async def tick() -> datetime | None:
        ticks.append(time.monotonic())
        return clock.now() + timedelta(seconds=0.3) if len(ticks) == 1 else None

    sched = TickScheduler(tick, clock=clock, interval=60)
    sched.start()
    try:
        await wait_for(lambda: len(ticks) >= 2)
        assert 0.25 <= ticks[1] - ticks[0] < 1.0
        await asyncio.sleep(0.3)
        assert len(ticks) == 2  # nothing more due, and the periodic tick is 60 s away
        sched.poke()
        await wait_for(lambda: len(ticks) >= 3, timeout=0.5)
    finally:
        await sched.stop()
    assert sched.ticks == 3


async def test_a_failing_tick_does_not_stop_the_ticks() -> None:
    calls = 0

    async def tick() -> datetime | None:
        nonlocal calls
        calls += 1
        raise RuntimeError("database is locked")

    sched = TickScheduler(tick, clock=SystemClock(), interval=0.05)
    sched.start()
    try:
        await wait_for(lambda: calls >= 3)
    finally:
        await sched.stop()


async def test_stop_lets_the_tick_in_flight_finish_and_then_nothing_fires() -> None:
    started = asyncio.Event()
    finished: list[bool] = []
    calls = 0

    async def tick() -> datetime | None:
        nonlocal calls
        calls += 1
        started.set()
        await asyncio.sleep(0.2)
        finished.append(True)
        return datetime.now(UTC)  # "due right away": would re-arm if not stopping

    sched = TickScheduler(tick, clock=SystemClock(), interval=0.05)
    sched.start()
    await asyncio.wait_for(started.wait(), 1)
    await sched.stop(grace=2)
    assert finished == [True]
    await asyncio.sleep(0.2)
    assert calls == 1
    sched.poke()  # harmless after stop
    await sched.stop()


async def test_tick_now_waits_for_the_tick_in_flight_then_runs_its_own() -> None:
    # What the tests' quiet() relies on: when tick_now returns, a whole tick began after the call.
    started = asyncio.Event()
    log: list[str] = []

    async def tick() -> datetime | None:
        log.append("begin")
        started.set()
        await asyncio.sleep(0.2)
        log.append("end")
        return None

    sched = TickScheduler(tick, clock=SystemClock(), interval=60)
    sched.start()
    try:
        await asyncio.wait_for(started.wait(), 1)  # the start-up tick is in flight
        await sched.tick_now()
        assert log == ["begin", "end", "begin", "end"]
    finally:
        await sched.stop()


async def test_program_runner_driven_by_the_scheduler_sends_launch_on_time() -> None:
    spec = example()
    launch = build_calendar(spec).launch
    clock = ShiftedClock(launch.due - timedelta(seconds=0.3))
    targets = FakeTargets(pairs={spec.slug: ["p1"]}, people={spec.slug: ["a"]})
    outbox = FakeOutbox(FakeClock(launch.due))  # its clock only stamps rows
    state = MemoryState()
    emitted_at: dict[str, datetime] = {}

    async def emit(item: CalendarItem, to: Sequence[object]) -> None:
        emitted_at.setdefault(item.key, clock.now())
        await outbox.emit(item, to)  # type: ignore[arg-type]

    async def specs() -> Sequence[ProgramSpec]:
        return [spec]

    runner = ProgramRunner(specs=specs, targets=targets, emit=emit, state=state, clock=clock,
                           catch_up=timedelta(hours=12))
    sched = TickScheduler(runner.on_tick, clock=clock, interval=60)
    sched.start()
    try:
        await wait_for(lambda: launch.key in emitted_at)
    finally:
        await sched.stop()
    # Sent at its instant (not up to a periodic interval later), to the lounge and the pair.
    assert timedelta(0) <= emitted_at[launch.key] - launch.due < timedelta(seconds=0.5)
    assert {"launch:winter-2027:lounge:lounge-winter-2027",
            "launch:winter-2027:pair:p1"} <= set(outbox.rows)


async def test_back_to_back_due_instants_chain_through_the_exact_wake_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Each tick says the next item is due immediately; the exact wake-up re-arms itself
    # from inside its own run, which APScheduler must not refuse as "already running".
    clock = SystemClock()
    calls = 0

    async def tick() -> datetime | None:
        nonlocal calls
        calls += 1
        return clock.now() if calls < 5 else None

    sched = TickScheduler(tick, clock=clock, interval=60)
    sched.start()
    try:
        await wait_for(lambda: calls >= 5, timeout=1.0)
    finally:
        await sched.stop()
    assert "maximum number of running instances" not in caplog.text
