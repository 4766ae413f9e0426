"""Calendar bookkeeping on a real database (hub.program_store): SQLite, and PostgreSQL when configured."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData

from hub.clock import FakeClock
from hub.core.calendar import CalendarItem, Target, build_calendar, dedupe_key
from hub.program import ProgramRunner
from hub.program_store import SqlProgramState
from hub.storage.db import open_database
from hub.storage.models import metadata, program_skipped_table, program_tick_table

from tests.program.test_program import START, FakeTargets, example
from tests.support.databases import backends

CAL = build_calendar(example())


@pytest.mark.parametrize("backend", backends())
async def test_tick_moves_forward_only_and_skips_are_recorded_once(
    backend: str, database_urls: dict[str, str]
) -> None:
    db = await open_database(database_urls[backend])
    clock = FakeClock(datetime(2027, 2, 1, tzinfo=UTC))
    state = SqlProgramState(db, clock)
    try:
        assert await state.last_tick("winter-2027") is None
        t1 = datetime(2027, 1, 20, 12, 0, 30, 250000, tzinfo=UTC)
        late = [i for i in CAL.items if i.due < t1][:3]
        await state.advance("winter-2027", t1, late)
        assert await state.last_tick("winter-2027") == t1
        # A lagging process cannot pull the tick back; the same skips again are a no-op.
        await state.advance("winter-2027", t1 - timedelta(hours=1), late)
        assert await state.last_tick("winter-2027") == t1
        t2 = t1 + timedelta(seconds=30)
        await state.advance("winter-2027", t2, [*late, CAL.items[3]])
        assert await state.last_tick("winter-2027") == t2
        listed = await state.skipped("winter-2027")
        assert [s.key for s in listed] == [i.key for i in CAL.items[:4]]
        assert listed[0].kind == "launch" and listed[0].week == 1
        assert listed[0].due == CAL.items[0].due and listed[0].skipped_at == clock.now()
        assert await state.skipped("spring-2027") == []
        assert await state.last_tick("spring-2027") is None
        # Several processes advancing at once: no error, the latest tick wins.
        ticks = [t2 + timedelta(seconds=s) for s in (5, 40, 20, 10)]
        await asyncio.gather(*(state.advance("winter-2027", t, late) for t in ticks))
        assert await state.last_tick("winter-2027") == max(ticks)
    finally:
        await db.close()


@pytest.mark.parametrize("backend", backends())
async def test_runner_on_the_database_outage_of_30h_is_skipped_and_reported(
    backend: str, database_urls: dict[str, str]
) -> None:
    db = await open_database(database_urls[backend])
    clock = FakeClock(START)
    targets = FakeTargets(pairs={"winter-2027": ["p1", "p2", "p3"]},
                          people={"winter-2027": ["a", "b"]})
    rows: list[str] = []

    async def emit(item: CalendarItem, to: Sequence[Target]) -> None:
        rows.extend(dedupe_key(item, t) for t in to)

    async def specs() -> Sequence[object]:
        return [example()]

    def runner() -> ProgramRunner:
        return ProgramRunner(specs=specs, targets=targets, emit=emit,  # type: ignore[arg-type]
                             state=SqlProgramState(db, clock), clock=clock,
                             catch_up=timedelta(hours=12))

    try:
        await runner().tick()
        ice = CAL.get("icebreaker:winter-2027:w1")
        assert ice is not None
        for item in CAL.between(None, ice.due - timedelta(minutes=1)):
            clock.set(item.due)
            await runner().tick()
        clock.set(ice.due - timedelta(minutes=1))
        await runner().tick()
        clock.advance(30 * 3600)  # down for 30 h, then a new process starts
        report = await runner().tick()
        assert ice in report.skipped
        assert not [r for r in rows if r.startswith(ice.key)]
        # Everything from launch day was sent on time before the outage.
        assert "launch:winter-2027:pair:p1" in rows
        listed = await SqlProgramState(db, clock).skipped("winter-2027")
        assert [s.key for s in listed] == [ice.key]
    finally:
        await db.close()


@pytest.mark.parametrize("backend", backends())
async def test_calendar_tables_match_migration_0004(backend: str, database_urls: dict[str, str]) -> None:
    db = await open_database(database_urls[backend])
    try:
        mine = MetaData()
        for table in (program_tick_table, program_skipped_table):
            table.to_metadata(mine)
        ours = {"program_tick", "program_skipped"}

        def only_ours(name: str | None, type_: str, parent: object) -> bool:
            # Other engineers' tables live in the same migrations; compare just these two.
            return type_ != "table" or name in ours

        async with db.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda c: compare_metadata(
                    MigrationContext.configure(c, opts={"include_name": only_ours}), mine)
            )
        assert diff == []
        assert ours <= set(metadata.tables)
    finally:
        await db.close()

