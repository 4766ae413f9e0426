"""The program runner: at each tick, send what the calendar says is due, to everyone it is for.

It is deliberately small and stateless between ticks. Per cohort it keeps one
instant in storage (the previous tick's "now"); each tick handles the items
due since then, so an item is looked at by exactly one successful tick, and a
tick that fails is retried whole by the next one. Correctness does not rest on
that bookkeeping, though: `emit` enqueues outbox rows whose dedupe keys are
`dedupe_key(item, target)`, and the outbox refuses a key twice. A crash
between emitting and recording the tick, a restart, or two processes ticking
at once therefore re-emit at worst, and re-emitting is a no-op.

Who receives an item is decided at the tick, from the `Targets` port: a pair
paused at that moment, or a person snoozed then, is simply not returned, and a
pair made later never receives an earlier week's items.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from hub.clock import Clock
from hub.core.calendar import (
    DIRECT_FOR_UNPAIRED,
    CalendarItem,
    ProgramSpec,
    Target,
    TargetKind,
    build_calendar,
    due_items,
)

__all__ = [
    "Emit",
    "ProgramRunner",
    "ProgramState",
    "SkippedItem",
    "SpecSource",
    "Targets",
    "TickReport",
    "target_set",
]

log = logging.getLogger(__name__)


class Targets(Protocol):
    """Who is in a cohort right now. Ids must be stable for the life of the target."""

    async def lounge(self, cohort: str) -> str | None:
        """The lounge's id, or None while it does not exist yet."""
        ...

    async def active_pair_rooms(self, cohort: str, now: datetime) -> Sequence[str]:
        """Pairs whose room exists (joined or not) and that are neither closed nor paused."""
        ...

    async def direct_rooms(self, cohort: str, now: datetime) -> Sequence[str]:
        """People reachable in a direct room (a Matrix id) and not snoozed at `now`."""
        ...

    async def unpaired_direct_rooms(self, cohort: str, now: datetime) -> Sequence[str]:
        """Participants with a Matrix id, not snoozed at `now`, in no room `active_pair_rooms` returns."""
        ...

    async def members(self, cohort: str, now: datetime) -> Sequence[str]:
        """Everyone in the cohort, for email; opt-outs and suppressions are delivery's job."""
        ...


class ProgramState(Protocol):
    """Calendar bookkeeping that outlives the process (see `hub.program_store`)."""

    async def last_tick(self, cohort: str) -> datetime | None: ...

    async def advance(
        self, cohort: str, tick: datetime, skipped: Sequence[CalendarItem]
    ) -> None:
        """Record `skipped` and move the cohort's last tick forward to `tick`, atomically.

        Must be idempotent and never move the tick backwards (several processes).
        """
        ...

    async def skipped(self, cohort: str) -> Sequence[SkippedItem]: ...


@dataclass(frozen=True)
class SkippedItem:
    """An item not sent because the hub was down for too long; listed in `!hub report`."""

    key: str
    kind: str
    week: int | None
    due: datetime
    skipped_at: datetime


# Called once per due item with every target that should get it, so one
# transaction can enqueue the whole fan-out (Outbox.enqueue_many). Each outbox
# row's dedupe key must be derived from `dedupe_key(item, target)`. An emitter
# raises only for what a retry can cure (the database away): a target or item it
# cannot make because of its data is left out and reported by the emitter
# (hub.features.program_unsent), or one bad name would fail every tick and hold
# back everything due after it.
Emit = Callable[[CalendarItem, Sequence[Target]], Awaitable[None]]
# The cohorts as they are now (config reloads, `!hub cohort create`, `!hub webinar`).
SpecSource = Callable[[], Awaitable[Sequence[ProgramSpec]]]


@dataclass(frozen=True)
class TickReport:
    at: datetime
    emitted: tuple[tuple[CalendarItem, int], ...]  # item, number of targets
    skipped: tuple[CalendarItem, ...]
    failed: tuple[str, ...]  # cohorts whose tick failed; retried by the next tick
    next_due: datetime | None  # the earliest item due after `at`, to arm the next tick


class ProgramRunner:
    def __init__(
        self,
        *,
        specs: SpecSource,
        targets: Targets,
        emit: Emit,
        state: ProgramState,
        clock: Clock,
        catch_up: timedelta,
    ) -> None:
        self.specs = specs
        self.targets = targets
        self.emit = emit
        self.state = state
        self.clock = clock
        self.catch_up = catch_up
        # Ticks from the periodic and the exact-instant trigger must not interleave.
        self._lock = asyncio.Lock()

    async def tick(self) -> TickReport:
        async with self._lock:
            now = self.clock.now()
            emitted: list[tuple[CalendarItem, int]] = []
            skipped: list[CalendarItem] = []
            failed: list[str] = []
            next_due: datetime | None = None
            for spec in await self.specs():
                calendar = build_calendar(spec)
                upcoming = calendar.next_due_after(now)
                if upcoming is not None and (next_due is None or upcoming < next_due):
                    next_due = upcoming
                try:
                    sent, late = await self._tick_cohort(spec, now)
                except Exception:
                    # Not advancing the tick makes the next tick retry this cohort whole;
                    # what was already enqueued is deduplicated by the outbox.
                    log.exception("program tick failed for cohort %s; will retry", spec.slug)
                    failed.append(spec.slug)
                    continue
                emitted.extend(sent)
                skipped.extend(late)
            return TickReport(now, tuple(emitted), tuple(skipped), tuple(failed), next_due)

    async def on_tick(self) -> datetime | None:
        """`tick` shaped for `hub.scheduling.TickScheduler`: returns when to tick next."""
        return (await self.tick()).next_due

    async def _tick_cohort(
        self, spec: ProgramSpec, now: datetime
    ) -> tuple[list[tuple[CalendarItem, int]], tuple[CalendarItem, ...]]:
        since = await self.state.last_tick(spec.slug)
        work = due_items(build_calendar(spec), now, since, self.catch_up)
        # One read per target set per tick (a reflection and a webinar reminder due together
        # have different direct-room audiences, hence the flag in the key).
        cache: dict[tuple[TargetKind, bool], list[Target]] = {}
        sent: list[tuple[CalendarItem, int]] = []
        for item in work.due:
            targets: list[Target] = []
            for audience in item.audiences:
                which = (audience, item.kind in DIRECT_FOR_UNPAIRED)
                if which not in cache:
                    cache[which] = await target_set(self.targets, spec.slug, item, audience, now)
                targets.extend(cache[which])
            if targets:
                await self.emit(item, targets)
            sent.append((item, len(targets)))
        for item in work.late:
            log.warning(
                "skipping %s: due %s, %s late (catch_up_hours is %s)",
                item.key, item.due.isoformat(), now - item.due, self.catch_up,
            )
        await self.state.advance(spec.slug, now, work.late)
        return sent, work.late


async def target_set(targets: Targets, cohort: str, item: CalendarItem, audience: TargetKind,
                     now: datetime) -> list[Target]:
    """Who gets `item` in `audience` right now (the ticks' and `!hub send`'s one reading)."""
    ids: Sequence[str]
    if audience is TargetKind.LOUNGE:
        lounge = await targets.lounge(cohort)
        ids = [lounge] if lounge else []
    elif audience is TargetKind.PAIR:
        ids = await targets.active_pair_rooms(cohort, now)
    elif audience is TargetKind.DIRECT and item.kind in DIRECT_FOR_UNPAIRED:
        ids = await targets.unpaired_direct_rooms(cohort, now)
    elif audience is TargetKind.DIRECT:
        ids = await targets.direct_rooms(cohort, now)
    else:
        ids = await targets.members(cohort, now)
    # Duplicates from a sloppy source would only cost an outbox no-op, but keep order stable.
    return [Target(audience, i) for i in dict.fromkeys(ids)]
