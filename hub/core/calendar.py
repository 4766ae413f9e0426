"""The program calendar: which item is due when, per cohort, in its time zone. Pure, no I/O.

A cohort's calendar is computed from its settings every time it is needed
(it is a few dozen items); nothing about *when* lives in a job store. What has
already been sent is not this module's business either: every (item, target)
has a natural dedupe key (`dedupe_key`) and the outbox refuses a key twice.

Decisions where PRODUCT.md is silent (the README repeats them):

* **Program weeks.** Week N is the seven local days starting on
  ``start + 7·(N-1)`` days. Each weekly slot falls exactly once in every week,
  on the slot's weekday inside that seven-day window. For a Monday start (the
  usual case) this is the calendar week; for a cohort starting on a Wednesday
  it means week 1's "mon 09:00" digest comes on the following Monday instead
  of being silently dropped for falling before launch. Nothing is ever
  scheduled before the start date.
* **Launch** is at 09:00 local on the start date (people see it at the start of
  their working day; it is also the default digest time), or earlier when a
  week-1 slot falls on the start date before 09:00: then at that slot's time,
  so the "program starts" message always comes first. At equal instants items
  are ordered by `KIND_ORDER`, launch first.
* **DST.** Slots keep their wall-clock time: "mon 09:00" is 09:00 local in
  winter and in summer, so its UTC instant moves. A local time that does not
  exist (skipped by a spring-forward, e.g. 02:30 on the last Sunday of March
  in Berlin) is shifted forward by the gap (03:30 CEST): the item is still
  sent that day, as soon after the intended time as the clock allows. A local
  time that occurs twice (fall-back) means its first occurrence. Both are
  Python's ``fold=0`` rule, the same one `WeeklySlot.in_week` and webinar
  times from the config use.
* **Webinars.** Reminders are exactly 24 h and 1 h of elapsed time before the
  start (so across a DST change the 24-h reminder is at a different wall time
  the day before); each recipient's copy shows the time in their own zone.
  A webinar from the config is announced at launch (or, if it takes place
  before launch, 7 days before it); one scheduled later is announced when it
  is scheduled (`Webinar.announce_at`). A reminder that would come before the
  announcement is dropped. A follow-up is due 2 h after the start. A reminder
  goes to each active pair room and to the direct room of each participant in
  none of them (`DIRECT_FOR_UNPAIRED`), so each person gets it in one room.
* **Keys** name the cohort, the kind and the week (or the webinar's UTC start),
  never a slot's time or the start date: moving the icebreaker from Tuesday to
  Thursday in week 3, after Tuesday's went out, does not send a second one.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from functools import lru_cache
from zoneinfo import ZoneInfo

from hub.core.schedule import WeeklySlot

__all__ = [
    "ANNOUNCE_BEFORE_EARLY_WEBINAR",
    "AUDIENCES",
    "DIRECT_FOR_UNPAIRED",
    "FOLLOWUP_AFTER",
    "KIND_ORDER",
    "LAUNCH_TIME",
    "ON_TIME_GRACE",
    "REMINDERS",
    "CalendarItem",
    "CohortProgram",
    "DueItems",
    "ItemKind",
    "ProgramCalendar",
    "ProgramSpec",
    "Target",
    "TargetKind",
    "Webinar",
    "build_calendar",
    "dedupe_key",
    "due_items",
    "program_week",
    "week_start",
]

LAUNCH_TIME = time(9, 0)
# A webinar that happens before launch still needs an announcement.
ANNOUNCE_BEFORE_EARLY_WEBINAR = timedelta(days=7)
# Webinar length is not configured; 2 h covers the usual 60-90 minutes plus overrun.
FOLLOWUP_AFTER = timedelta(hours=2)
# Ticks fire at each due instant but arrive a little after it (and the periodic
# tick up to 30 s after). Lateness below this is "on time" even with
# catch_up_hours = 0, which then means "never catch up after an outage".
ON_TIME_GRACE = timedelta(minutes=5)


class ItemKind(StrEnum):
    LAUNCH = "launch"
    WEBINAR_ANNOUNCE = "webinar-announce"
    DIGEST = "digest"
    ICEBREAKER = "icebreaker"
    CHECKIN = "checkin"
    REFLECTION = "reflection"
    WEBINAR_REMINDER_24H = "webinar-24h"
    WEBINAR_REMINDER_1H = "webinar-1h"
    WEBINAR_FOLLOWUP = "webinar-followup"


# Order of items due at the same instant (messages to one room keep queue order).
KIND_ORDER: dict[ItemKind, int] = {kind: i for i, kind in enumerate(ItemKind)}

REMINDERS: tuple[tuple[ItemKind, timedelta], ...] = (
    (ItemKind.WEBINAR_REMINDER_24H, timedelta(hours=24)),
    (ItemKind.WEBINAR_REMINDER_1H, timedelta(hours=1)),
)


class TargetKind(StrEnum):
    """Where a calendar item is delivered: each value is one kind of `Target` (a room or inboxes).

    Not `hub.core.content.Audience`, which says whom a content template is written for
    (pair, cohort, person): one content audience serves several target kinds (a COHORT
    template goes to the lounge and to every member's inbox), so the two stay apart.
    """

    LOUNGE = "lounge"  # the cohort's lounge room
    PAIR = "pair"  # each active (not paused, not closed) pair room
    # Each person's direct room with the hub, unless snoozed: for most items the people in an
    # active pair; for the items in `DIRECT_FOR_UNPAIRED`, the people no pair room reaches.
    DIRECT = "direct"
    MEMBER = "member"  # each person of the cohort, by email (digest, webinar invites)


# PRODUCT.md "Program calendar". The weekly icebreaker also posts a cohort
# icebreaker in the lounge, as `!hub send icebreaker` does; webinar reminders
# go "by chat and email": the lounge (a notice), each active pair room and the direct room of each
# participant in none (prompts that notify them), and each member's inbox.
AUDIENCES: dict[ItemKind, tuple[TargetKind, ...]] = {
    ItemKind.LAUNCH: (TargetKind.LOUNGE, TargetKind.PAIR),
    ItemKind.WEBINAR_ANNOUNCE: (TargetKind.LOUNGE, TargetKind.MEMBER),
    ItemKind.DIGEST: (TargetKind.LOUNGE, TargetKind.MEMBER),
    ItemKind.ICEBREAKER: (TargetKind.PAIR, TargetKind.LOUNGE),
    ItemKind.CHECKIN: (TargetKind.PAIR,),
    ItemKind.REFLECTION: (TargetKind.PAIR, TargetKind.DIRECT),
    ItemKind.WEBINAR_REMINDER_24H: (TargetKind.LOUNGE, TargetKind.PAIR, TargetKind.DIRECT, TargetKind.MEMBER),
    ItemKind.WEBINAR_REMINDER_1H: (TargetKind.LOUNGE, TargetKind.PAIR, TargetKind.DIRECT, TargetKind.MEMBER),
    ItemKind.WEBINAR_FOLLOWUP: (TargetKind.LOUNGE,),
}

# Items a person gets in their pair room OR their direct room, never both: their DIRECT audience
# is the participants (with a Matrix id, not snoozed) in no pair room the PAIR audience reaches.
DIRECT_FOR_UNPAIRED: frozenset[ItemKind] = frozenset(
    {ItemKind.WEBINAR_REMINDER_24H, ItemKind.WEBINAR_REMINDER_1H})


@dataclass(frozen=True)
class Target:
    """One recipient of an item: an audience and a stable id within the cohort.

    The id is whatever the target source chooses (a pair id or room id, a
    person id) as long as it never changes for that target.
    """

    audience: TargetKind
    id: str

    @property
    def key(self) -> str:
        return f"{self.audience.value}:{self.id}"


@dataclass(frozen=True)
class Webinar:
    at: datetime  # timezone-aware
    title: str
    url: str | None = None
    # When it was scheduled (`!hub webinar`); None for a config webinar, announced at launch.
    announce_at: datetime | None = None

    def __post_init__(self) -> None:
        _require_aware(self.at, "Webinar.at")
        if self.announce_at is not None:
            _require_aware(self.announce_at, "Webinar.announce_at")

    @property
    def id(self) -> str:
        """Stable id: the start in UTC. A rescheduled webinar is a new one (new reminders)."""
        return self.at.astimezone(UTC).strftime("%Y%m%dT%H%MZ")


@dataclass(frozen=True)
class CohortProgram:
    """A cohort's program as configured: the one definition of these fields.

    hub.config builds it from a `[[cohort]]` table (`CohortSettings` adds the
    cohort's name); `ProgramSpec` is the same fields with a start date settled,
    which is what the calendar is built from.
    """

    slug: str
    timezone: ZoneInfo
    start: date | None  # None: the cohort starts on the date the hub records for it
    weeks: int
    digest: WeeklySlot
    icebreaker: WeeklySlot
    checkin: WeeklySlot
    checkin_weeks: tuple[int, ...]
    reflection: WeeklySlot
    reflection_weeks: tuple[int, ...]
    webinars: tuple[Webinar, ...] = ()


@dataclass(frozen=True)
class ProgramSpec(CohortProgram):
    """Everything the calendar depends on, for one cohort (hashable, so calendars are cached)."""

    start: date

    def __post_init__(self) -> None:
        if not self.slug:
            raise ValueError("a cohort needs a slug")
        if self.weeks < 1:
            raise ValueError(f"weeks must be 1 or more, not {self.weeks}")
        for name, weeks in (("checkin_weeks", self.checkin_weeks),
                            ("reflection_weeks", self.reflection_weeks)):
            bad = [w for w in weeks if not 1 <= w <= self.weeks]
            if bad:
                raise ValueError(f"{name}: {bad} outside weeks 1-{self.weeks}")
        ids = [w.id for w in self.webinars]
        if len(ids) != len(set(ids)):
            raise ValueError("two webinars of one cohort start at the same minute")

    @classmethod
    def from_settings(
        cls,
        cohort: CohortProgram,
        *,
        start: date | None = None,
        webinars: Iterable[Webinar] = (),
    ) -> ProgramSpec:
        """The spec of a configured cohort, plus webinars scheduled at run time.

        `start` fills in (or overrides) the configured start date: a cohort
        configured without one starts on the date the hub recorded for it.
        """
        first = start or cohort.start
        if first is None:
            raise ValueError(f"cohort {cohort.slug!r} has no start date")
        return cls(
            slug=cohort.slug,
            timezone=cohort.timezone,
            start=first,
            weeks=cohort.weeks,
            digest=cohort.digest,
            icebreaker=cohort.icebreaker,
            checkin=cohort.checkin,
            checkin_weeks=tuple(cohort.checkin_weeks),
            reflection=cohort.reflection,
            reflection_weeks=tuple(cohort.reflection_weeks),
            webinars=tuple(cohort.webinars) + tuple(webinars),
        )


@dataclass(frozen=True)
class CalendarItem:
    key: str  # e.g. "icebreaker:winter-2027:w3"; stable and unique across all cohorts
    kind: ItemKind
    cohort: str
    week: int | None  # program week of `due`; None for a webinar item outside the program
    due: datetime  # aware, UTC
    webinar: Webinar | None = None

    @property
    def audiences(self) -> tuple[TargetKind, ...]:
        return AUDIENCES[self.kind]


@dataclass(frozen=True)
class ProgramCalendar:
    spec: ProgramSpec
    items: tuple[CalendarItem, ...]  # sorted by (due, KIND_ORDER, key)
    _by_key: dict[str, CalendarItem] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_key", {i.key: i for i in self.items})

    @property
    def launch(self) -> CalendarItem:
        return self._by_key[f"{ItemKind.LAUNCH.value}:{self.spec.slug}"]

    def get(self, key: str) -> CalendarItem | None:
        return self._by_key.get(key)

    def between(self, after: datetime | None, until: datetime) -> tuple[CalendarItem, ...]:
        """Items with ``after < due <= until`` (all up to `until` when `after` is None)."""
        lo = 0 if after is None else bisect.bisect_right(self.items, _utc(after), key=_due)
        hi = bisect.bisect_right(self.items, _utc(until), key=_due)
        return self.items[lo:hi]

    def next_due_after(self, instant: datetime) -> datetime | None:
        """The first due instant strictly after `instant`, for arming the next tick."""
        i = bisect.bisect_right(self.items, _utc(instant), key=_due)
        return self.items[i].due if i < len(self.items) else None

    def in_week(self, week: int) -> tuple[CalendarItem, ...]:
        return tuple(i for i in self.items if i.week == week)


@dataclass(frozen=True)
class DueItems:
    due: tuple[CalendarItem, ...]  # send now
    late: tuple[CalendarItem, ...]  # missed by catch_up or more: skip, list in the report


def dedupe_key(item: CalendarItem, target: Target) -> str:
    """The outbox dedupe key of `item` for `target`: the "at most once, ever" guarantee.

    At most 63 (slug) + ~40 + the target id; callers deriving several outbox
    rows (chat and email) append their own suffix to this.
    """
    return f"{item.key}:{target.key}"


def week_start(spec: ProgramSpec, week: int) -> date:
    """The first local date of program week `week` (week 1 starts on the start date)."""
    return spec.start + timedelta(days=7 * (week - 1))


def program_week(spec: ProgramSpec, instant: datetime) -> int | None:
    """The program week `instant` falls in, by the cohort's local date; None outside the program."""
    local = _utc(instant).astimezone(spec.timezone).date()
    days = (local - spec.start).days
    if days < 0:
        return None
    week = days // 7 + 1
    return week if week <= spec.weeks else None


def due_items(
    calendar: ProgramCalendar,
    now: datetime,
    since: datetime | None,
    catch_up: timedelta,
) -> DueItems:
    """Items with ``since < due <= now``, split into those to send and those too late.

    `since` is the previous tick's `now` (None before the first tick: the whole
    calendar so far). An item is late when it is `catch_up` or more behind
    `now` (PRODUCT.md: "sent on start if less than catch_up_hours late"), but
    never when less than `ON_TIME_GRACE` behind.
    """
    window = max(catch_up, ON_TIME_GRACE)
    now = _utc(now)
    due: list[CalendarItem] = []
    late: list[CalendarItem] = []
    for item in calendar.between(since, now):
        (due if now - item.due < window else late).append(item)
    return DueItems(tuple(due), tuple(late))


@lru_cache(maxsize=256)
def build_calendar(spec: ProgramSpec) -> ProgramCalendar:
    """All items of the cohort's program, sorted by due instant."""
    slug = spec.slug
    items: list[CalendarItem] = []

    def add(kind: ItemKind, key: str, due: datetime, week: int | None,
            webinar: Webinar | None = None) -> None:
        items.append(CalendarItem(key, kind, slug, week, due, webinar))

    weekly: list[tuple[ItemKind, WeeklySlot, Iterable[int]]] = [
        (ItemKind.DIGEST, spec.digest, range(1, spec.weeks + 1)),
        (ItemKind.ICEBREAKER, spec.icebreaker, range(1, spec.weeks + 1)),
        (ItemKind.CHECKIN, spec.checkin, spec.checkin_weeks),
        (ItemKind.REFLECTION, spec.reflection, spec.reflection_weeks),
    ]
    launch = datetime.combine(spec.start, LAUNCH_TIME, tzinfo=spec.timezone).astimezone(UTC)
    for kind, slot, weeks in weekly:
        for week in sorted(set(weeks)):
            due = _slot_due(spec, slot, week)
            add(kind, f"{kind.value}:{slug}:w{week}", due, week)
            if week == 1 and slot.weekday == spec.start.weekday():
                launch = min(launch, due)
    add(ItemKind.LAUNCH, f"{ItemKind.LAUNCH.value}:{slug}", launch, 1)

    for webinar in spec.webinars:
        at = webinar.at.astimezone(UTC)
        if webinar.announce_at is not None:
            announce = webinar.announce_at.astimezone(UTC)
        elif at > launch:
            announce = launch
        else:
            announce = at - ANNOUNCE_BEFORE_EARLY_WEBINAR
        if at <= announce:
            continue  # scheduled for a time already past: nothing to announce or remind
        suffix = f"{slug}:{webinar.id}"
        add(ItemKind.WEBINAR_ANNOUNCE, f"{ItemKind.WEBINAR_ANNOUNCE.value}:{suffix}", announce,
            program_week(spec, announce), webinar)
        for kind, before in REMINDERS:
            due = at - before
            if due > announce:
                add(kind, f"{kind.value}:{suffix}", due, program_week(spec, due), webinar)
        followup = at + FOLLOWUP_AFTER
        add(ItemKind.WEBINAR_FOLLOWUP, f"{ItemKind.WEBINAR_FOLLOWUP.value}:{suffix}", followup,
            program_week(spec, followup), webinar)

    items.sort(key=lambda i: (i.due, KIND_ORDER[i.kind], i.key))
    return ProgramCalendar(spec, tuple(items))


def _slot_due(spec: ProgramSpec, slot: WeeklySlot, week: int) -> datetime:
    """The slot's instant in program week `week`: its weekday within that week's seven days."""
    day = week_start(spec, week) + timedelta(days=(slot.weekday - spec.start.weekday()) % 7)
    monday = day - timedelta(days=day.weekday())
    # in_week keeps the wall time and applies fold=0 to gaps and overlaps (see module doc).
    return slot.in_week(monday, spec.timezone).astimezone(UTC)


def _due(item: CalendarItem) -> datetime:
    return item.due


def _utc(instant: datetime) -> datetime:
    _require_aware(instant, "instant")
    return instant.astimezone(UTC)


def _require_aware(instant: datetime, what: str) -> None:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {instant!r}")
