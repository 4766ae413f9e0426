"""`hub roster import FILE.csv [--dry-run]`: people and pairs from a CSV, all or nothing.

The file is parsed and checked whole (hub.core.roster), then applied in one
transaction: members first, then pairs. Any row the database refuses (an
unknown cohort, a mentor who is not one, a role conflict) fails the import
with its line, and nothing is applied. One run reports every bad row of every
kind: the rows the file check passed still go through the database's checks
(in the transaction that is then rolled back), so fixing one mistake never
reveals the next. Importing the same file again finds
everything in place and queues nothing. A running hub picks the changes up
from the outbox within seconds: the import queues the room work itself.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from hub.clock import Clock, SystemClock
from hub.config import Settings
from hub.core.cohorts import Who
from hub.core.digest import plural
from hub.core.roster import Roster, RosterProblems, RosterRow, check_roster, decode_roster
from hub.delivery.outbox import Outbox
from hub.errors import CommandError, RosterError
from hub.features import membership_batch
from hub.features.cohort_setup import cohort_rooms, get_cohort
from hub.features.config_sync import sync_config
from hub.features.members import add_member
from hub.features.pairs import make_pairs
from hub.features.people import find_member
from hub.features.room_queue import Env, load_env, queue_pending_invites
from hub.storage.db import SQLITE_BUSY_MS, Database, open_database
from hub.storage.models import Cohort, Member, cohort_table

__all__ = ["ImportReport", "apply_roster", "import_file", "set_matching"]


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
        return (f"{head} {plural(self.rows, 'row')} for {', '.join(self.cohorts) or 'no cohorts'}: "
                f"{plural(self.added, 'person', 'people')} added, {self.updated} updated, "
                f"{self.unchanged} unchanged; {plural(self.pairs_new, 'new pair')}, "
                f"{self.pairs_existing} already paired.")


class _Rollback(Exception):
    """Raised inside the transaction to undo a dry run."""


async def apply_roster(db: Database, settings: Settings, roster: Roster, *, dry_run: bool = False,
                       clock: Clock | None = None, problems: RosterProblems | None = None) -> ImportReport:
    """Apply a parsed roster in one transaction; RosterError (with lines) and nothing applied on a problem.

    `problems` are the file's (`check_roster`): the rows in `roster` are still checked against
    the database, so the error lists theirs too, then nothing is applied.
    """
    clock = clock or SystemClock()
    problems = problems if problems is not None else RosterProblems()
    outbox = Outbox(db, clock)
    report = ImportReport(dry_run=dry_run, rows=len(roster.rows), cohorts=roster.cohorts)
    try:
        async with db.transaction() as s:
            env = await load_env(s, outbox, clock, settings)
            # Cohorts from the config exist for the import even if the hub never ran.
            await sync_config(s, env)
            cohorts = await _cohorts(s, settings, roster, problems)
            # On SQLite the import holds the write lock throughout, so it must be quick: the
            # cohorts' people, pairs and rooms are read once, and what is new is written with
            # a few bulk INSERTs, instead of dozens of round trips per row (membership_batch.Batch).
            ids = [c.id for c in cohorts.values() if c.id is not None]
            async with membership_batch.batch(s, env, ids) as batch_env:
                await _apply_rows(s, batch_env, roster, cohorts, report, problems)
            # Raised inside the transaction, so everything the checks above wrote is rolled back.
            problems.raise_if_any()
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


async def _cohorts(s: AsyncSession, settings: Settings, roster: Roster,
                   problems: RosterProblems) -> dict[str, Cohort]:
    """The cohorts the rows name; each unknown one is a problem at its first row (its rows fail)."""
    found: dict[str, Cohort] = {}
    missing: dict[str, list[RosterRow]] = {}
    for row in roster.rows:
        if row.cohort in found or row.cohort in missing:
            missing.get(row.cohort, []).append(row)
            continue
        cohort = await get_cohort(s, row.cohort)
        if cohort is None:
            missing[row.cohort] = [row]
        else:
            found[row.cohort] = cohort
    known: list[str] = []
    if missing:
        known = [str(slug) for slug in (await s.execute(select(cohort_table.c.slug))).scalars()]
    for slug, rows in missing.items():
        close = difflib.get_close_matches(slug, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? Or add" if close else "add"
        others = f" (and {plural(len(rows) - 1, 'more row')} naming it)" if len(rows) > 1 else ""
        problems.add(rows[0].line, f"there is no cohort {slug!r}{others}; {hint} it as [[cohort]] in the "
                                   f"config, or with `{settings.matrix.command_prefix} cohort create` in "
                                   "the control room")
        for row in rows:
            problems.fail(row.cohort, row.matrix_id, row.email)
    return found


async def _apply_rows(s: AsyncSession, env: Env, roster: Roster, cohorts: dict[str, Cohort],
                      report: ImportReport, problems: RosterProblems) -> None:
    """Members first, then pairs, then one invite row per cohort room; problems are added, not raised.

    A row whose person, cohort or mentor already has a problem is not checked further: a
    second message about the same row ("no such mentor" when the mentor's row was refused)
    would only mislead.
    """
    added: list[RosterRow] = []
    avoiding: list[tuple[RosterRow, Member]] = []
    for row in roster.rows:
        cohort = cohorts.get(row.cohort)
        if cohort is None:
            continue
        try:
            member, outcome = await add_member(
                s, env, cohort, row.role, row.who, name=row.name, timezone=row.timezone,
                queue_invites=False)
        except CommandError as e:
            problems.add(row.line, str(e))
            problems.fail(row.cohort, row.matrix_id, row.email)
            continue
        if set_matching(member, row) and outcome == "unchanged":
            outcome = "updated"
        added.append(row)
        avoiding.append((row, member))
        setattr(report, outcome, getattr(report, outcome) + 1)
    # After every row's person exists: an avoid may name someone further down the file.
    for row, member in avoiding:
        cohort = cohorts[row.cohort]
        assert cohort.id is not None
        for who in row.avoid or ():
            other = await find_member(s, env, cohort.id, who)
            if other is None:
                problems.add(row.line, f"avoid: {who} is nobody in cohort {cohort.slug} (add them, or "
                                       "check the spelling)")
            elif other is member:
                problems.add(row.line, "avoid: a person cannot avoid themselves")
    paired = [row for row in added if row.mentor is not None
              and not problems.has_failed(row.cohort, row.matrix_id or row.email)
              and not problems.has_failed(row.cohort, row.mentor.matrix_id or row.mentor.email)]
    requests: list[tuple[Cohort, Who, Who]] = []
    for row in paired:
        assert row.mentor is not None
        requests.append((cohorts[row.cohort], row.mentor, row.who))
    # All pairs in one call: a few INSERTs for all of them rather than a few per pair.
    for row, result in zip(paired, await make_pairs(s, env, requests), strict=True):
        if isinstance(result, CommandError):
            problems.add(row.line, str(result))
        elif result[1]:
            report.pairs_new += 1
        else:
            report.pairs_existing += 1
    if problems:
        return  # nothing will be applied: no invites to queue
    # One invite row per cohort room for everyone new, rather than one per person.
    for cohort in cohorts.values():
        assert cohort.id is not None
        for room in await cohort_rooms(s, env, cohort.id):
            if room is not None:
                await queue_pending_invites(s, env, room)


def set_matching(member: Member, row: RosterRow) -> bool:
    """Copy the row's matching columns present in the file onto the member; True if any changed."""
    values: dict[str, str | int | None] = {}
    if row.languages is not None:
        values["languages"] = ";".join(row.languages) or None
    if row.topics is not None:
        values["topics"] = ";".join(row.topics) or None
    if row.capacity is not None:
        values["capacity"] = row.capacity
    if row.avoid is not None:
        values["avoid"] = ";".join(str(w.matrix_id or w.email) for w in row.avoid) or None
    changed = False
    for attr, value in values.items():
        if getattr(member, attr) != value:
            setattr(member, attr, value)
            changed = True
    return changed


async def import_file(settings: Settings, path: Path, *, dry_run: bool = False) -> ImportReport:
    """The CLI's import: read, check, apply. Raises RosterError or HubError with a clear message."""
    try:
        # A roster is small; reading it blocks for less time than a context switch would.
        data = path.read_bytes()  # noqa: ASYNC240
    except OSError as e:
        raise RosterError([f"{path}: cannot read: {e.strerror or e}"]) from None
    roster, problems = check_roster(decode_roster(data))
    db = await open_database(settings.database.url)
    try:
        return await apply_roster(db, settings, roster, dry_run=dry_run, problems=problems)
    finally:
        await db.close()
