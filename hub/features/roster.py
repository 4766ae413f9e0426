"""`hub roster import FILE.csv [--dry-run]`: people and pairs from a CSV, all or nothing.

The file is parsed and checked whole (hub.core.roster), then applied in one
transaction: members first, then pairs. Any row the database refuses (an
unknown cohort, a mentor who is not one, a role conflict) fails the import
with its line, and nothing is applied. Importing the same file again finds
everything in place and queues nothing. A running hub picks the changes up
from the outbox within seconds: the import queues the room work itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from hub.clock import Clock, SystemClock
from hub.config import Settings
from hub.core.cohorts import Who
from hub.core.roster import Roster, decode_roster, parse_roster
from hub.delivery.outbox import Outbox
from hub.errors import CommandError, RosterError
from hub.features import membership as ms
from hub.features import membership_batch
from hub.storage.db import SQLITE_BUSY_MS, Database, open_database
from hub.storage.models import Cohort

__all__ = ["ImportReport", "apply_roster", "import_file"]


@dataclass
class ImportReport:
    dry_run: bool = False
    rows: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    pairs_new: int = 0
    pairs_existing: int = 0
    cohorts: list[str] = field(default_factory=list)

    def summary(self) -> str:
        head = "Dry run, nothing was changed: would import" if self.dry_run else "Imported"
        return (f"{head} {self.rows} rows for {', '.join(self.cohorts) or 'no cohorts'}: "
                f"{self.added} people added, {self.updated} updated, {self.unchanged} unchanged; "
                f"{self.pairs_new} new pairs, {self.pairs_existing} already paired.")


class _Rollback(Exception):
    """Raised inside the transaction to undo a dry run."""


async def apply_roster(db: Database, settings: Settings, roster: Roster, *, dry_run: bool = False,
                       clock: Clock | None = None) -> ImportReport:
    """Apply a parsed roster in one transaction; RosterError (with lines) and nothing applied on a problem."""
    clock = clock or SystemClock()
    outbox = Outbox(db, clock)
    report = ImportReport(dry_run=dry_run, rows=len(roster.rows), cohorts=roster.cohorts)
    try:
        async with db.transaction() as s:
            env = await ms.load_env(s, outbox, clock, settings)
            # Cohorts from the config exist for the import even if the hub never ran.
            await ms.sync_config(s, env)
            problems: list[str] = []
            cohorts: dict[str, Cohort | None] = {}
            for row in roster.rows:
                if row.cohort in cohorts:
                    continue
                cohort = await ms.get_cohort(s, row.cohort)
                if cohort is None:
                    problems.append(f"line {row.line}: there is no cohort {row.cohort!r} (add it as "
                                    "[[cohort]] in the config or with `cohort create`)")
                cohorts[row.cohort] = cohort
            if problems:
                raise RosterError(problems)
            # On SQLite the import holds the write lock throughout, so it must be quick: the
            # cohorts' people, pairs and rooms are read once, and what is new is written with
            # a few bulk INSERTs, instead of dozens of round trips per row (membership_batch.Batch).
            ids = [c.id for c in cohorts.values() if c is not None and c.id is not None]
            async with membership_batch.batch(s, env, ids):
                await _apply_rows(s, env, roster, cohorts, report)
            if dry_run:
                raise _Rollback
    except _Rollback:
        pass
    except IntegrityError:
        # PostgreSQL only: someone added one of these people (`!hub add`) between the
        # import's read of the cohort and its write. Nothing was applied; a rerun sees them.
        raise RosterError(["the cohort changed while the import ran (someone was added at the same "
                           "moment), so nothing was imported; run the import again"]) from None
    except OperationalError as e:
        if "locked" not in str(e):
            raise
        raise RosterError([f"the database stayed locked for more than {SQLITE_BUSY_MS // 1000} s "
                           "(the running hub was writing), so nothing was imported; run the import "
                           "again"]) from None
    if not dry_run:
        outbox.notify()
    return report


async def _apply_rows(s: AsyncSession, env: ms.Env, roster: Roster, cohorts: dict[str, Cohort | None],
                      report: ImportReport) -> None:
    """Members first, then pairs, then one invite row per cohort room; RosterError on a problem."""
    problems: list[str] = []
    for row in roster.rows:
        cohort = cohorts[row.cohort]
        assert cohort is not None
        try:
            _, outcome = await ms.add_member(
                s, env, cohort, row.role, row.who, name=row.name, timezone=row.timezone,
                queue_invites=False)
        except CommandError as e:
            problems.append(f"line {row.line}: {e}")
            continue
        setattr(report, outcome, getattr(report, outcome) + 1)
    if problems:
        raise RosterError(problems)
    paired = [row for row in roster.rows if row.mentor is not None]
    requests: list[tuple[Cohort, Who, Who]] = []
    for row in paired:
        cohort = cohorts[row.cohort]
        assert cohort is not None and row.mentor is not None
        requests.append((cohort, row.mentor, row.who))
    # All pairs in one call: a few INSERTs for all of them rather than a few per pair.
    for row, result in zip(paired, await ms.make_pairs(s, env, requests), strict=True):
        if isinstance(result, CommandError):
            # The first refused pair fails the import (the rows after it are not reported).
            raise RosterError([f"line {row.line}: {result}"])
        if result[1]:
            report.pairs_new += 1
        else:
            report.pairs_existing += 1
    # One invite row per cohort room for everyone new, rather than one per person.
    for cohort in cohorts.values():
        assert cohort is not None and cohort.id is not None
        for room in await ms.cohort_rooms(s, cohort.id):
            if room is not None:
                await ms.queue_pending_invites(s, env, room)


async def import_file(settings: Settings, path: Path, *, dry_run: bool = False) -> ImportReport:
    """The CLI's import: read, check, apply. Raises RosterError or HubError with a clear message."""
    try:
        # A roster is small; reading it blocks for less time than a context switch would.
        data = path.read_bytes()  # noqa: ASYNC240
    except OSError as e:
        raise RosterError([f"{path}: cannot read: {e.strerror or e}"]) from None
    roster = parse_roster(decode_roster(data))
    db = await open_database(settings.database.url)
    try:
        return await apply_roster(db, settings, roster, dry_run=dry_run)
    finally:
        await db.close()
