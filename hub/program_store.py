"""`ProgramState` on the database: the last tick per cohort and the skipped-items list.

Both writes are upserts that are safe to repeat and to race: the tick only
ever moves forward (two processes ticking at once, or a process whose clock
lags, cannot pull it back and make the other re-handle a window), and a
skipped item is recorded once however many ticks see it late.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from hub.clock import Clock
from hub.core.calendar import KIND_ORDER, CalendarItem
from hub.program import SkippedItem
from hub.storage.db import Database
from hub.storage.models import program_skipped_table, program_tick_table

__all__ = ["SqlProgramState"]

TICK = program_tick_table
SKIPPED = program_skipped_table


class SqlProgramState:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    async def last_tick(self, cohort: str) -> datetime | None:
        async with self.db.session() as s:
            value = (
                await s.execute(select(TICK.c.last_tick).where(TICK.c.cohort == cohort))
            ).scalar()
        return None if value is None else datetime.fromtimestamp(float(value), UTC)

    async def advance(
        self, cohort: str, tick: datetime, skipped: Sequence[CalendarItem]
    ) -> None:
        now = self.clock.now().timestamp()
        async with self.db.transaction() as s:
            if skipped:
                rows = [
                    dict(
                        item_key=item.key,
                        cohort=item.cohort,
                        kind=item.kind.value,
                        week=item.week,
                        due_at=item.due.timestamp(),
                        skipped_at=now,
                    )
                    for item in skipped
                ]
                ins = _insert(s, SKIPPED).values(rows)
                await s.execute(ins.on_conflict_do_nothing(index_elements=["item_key"]))
            ins = _insert(s, TICK).values(cohort=cohort, last_tick=tick.timestamp())
            await s.execute(
                ins.on_conflict_do_update(
                    index_elements=["cohort"],
                    set_={"last_tick": ins.excluded.last_tick},
                    where=TICK.c.last_tick < ins.excluded.last_tick,
                )
            )

    async def skipped(self, cohort: str) -> list[SkippedItem]:
        async with self.db.session() as s:
            rows = (
                await s.execute(
                    select(SKIPPED).where(SKIPPED.c.cohort == cohort)
                )
            ).all()
        # In calendar order: by due instant, then launch before the rest at the same instant.
        order = {kind.value: i for kind, i in KIND_ORDER.items()}
        rows = sorted(rows, key=lambda r: (r.due_at, order.get(r.kind, len(order)), r.item_key))
        return [
            SkippedItem(
                key=r.item_key,
                kind=r.kind,
                week=r.week,
                due=datetime.fromtimestamp(r.due_at, UTC),
                skipped_at=datetime.fromtimestamp(r.skipped_at, UTC),
            )
            for r in rows
        ]


def _insert(session: AsyncSession, table: Any) -> Any:
    """The dialect's INSERT, which has ON CONFLICT (both SQLite and PostgreSQL spell it alike)."""
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
