"""What the program's features share: a cohort snapshot, content variables, rotation, rows.

Everything here runs inside the caller's transaction and only reads or
queues; the scheduled emitter (hub.features.program) and the room commands
(pair_commands, person_commands, program_commands) build on it.

Privacy rule, enforced by construction: nothing read here from pair or
direct rooms exists at all (the hub stores no room text); the only things
stored about participants' answers are a pair's check-in *mode* and
anonymous 1-5 scores, and only counts of those ever leave.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.core import content as ct
from hub.core.cohorts import display_name, video_url
from hub.core.content_format import escape_markdown
from hub.core.effects import Outgoing, RoomMessage
from hub.core.markup import markdown_to_matrix
from hub.core.zones import find_zone
from hub.delivery.effect_writer import row_spec
from hub.errors import CommandError
from hub.program_targets import effective_address, person_key
from hub.storage.models import (
    Cohort,
    ContentUse,
    HubRoom,
    Member,
    Pair,
    PairPlan,
    PersonPref,
    content_use_table,
    hub_room_table,
    member_table,
    pair_plan_table,
    pair_table,
    person_pref_table,
)

__all__ = [
    "CohortView",
    "PairView",
    "content_cohort",
    "content_pair",
    "content_person",
    "get_pref",
    "load_cohort_view",
    "pair_of_room",
    "record_use",
    "room_row",
    "said",
    "used_items",
]


def said(template: str, **values: str) -> tuple[str, str]:
    """(plain, HTML) for a Markdown reply that quotes people's own words.

    The plain body gets the words as they were; the HTML gets them escaped, so
    a plan like ``<img onerror=...>`` or ``[x](javascript:...)`` is inert text.
    """
    plain = template.format(**values)
    _, html = markdown_to_matrix(template.format(**{k: escape_markdown(v) for k, v in values.items()}))
    return plain, html


# -- what a cohort looks like right now ------------------------------------------------------


@dataclass
class PairView:
    pair: Pair
    mentor: Member
    mentee: Member
    room: HubRoom | None
    plan: str  # "" when none is set

    @property
    def key(self) -> str:
        return f"pair:{self.pair.id}"


@dataclass
class CohortView:
    cohort: Cohort
    lounge: HubRoom | None
    pairs: dict[str, PairView] = field(default_factory=dict)  # by room key
    members: dict[int, Member] = field(default_factory=dict)  # by id, active only
    prefs: dict[str, PersonPref] = field(default_factory=dict)  # by person key (program_targets.person_key)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.cohort.timezone)

    def partner_of(self, user_id: str) -> Member | None:
        """The person's pair partner when they have exactly one open pair."""
        found = [pv for pv in self.pairs.values() if user_id in (pv.mentor.matrix_id, pv.mentee.matrix_id)]
        if len(found) != 1:
            return None
        pv = found[0]
        return pv.mentee if pv.mentor.matrix_id == user_id else pv.mentor

    def member_by_matrix(self, user_id: str) -> Member | None:
        return next((m for m in self.members.values() if m.matrix_id == user_id), None)

    def address(self, member: Member) -> str | None:
        pref = self.prefs.get(person_key(member.matrix_id, member.email) or "")
        return effective_address(member.email, pref.email if pref else None)

    def email_mode(self, member: Member) -> str:
        pref = self.prefs.get(person_key(member.matrix_id, member.email) or "")
        return pref.email_mode if pref else "all"


async def load_cohort_view(s: AsyncSession, slug: str) -> CohortView | None:
    """The cohort, its lounge, its open pairs (with people, room, plan), members and prefs."""
    cohort = (await s.execute(select(Cohort).where(Cohort.slug == slug))).scalar_one_or_none()  # type: ignore[arg-type]
    if cohort is None:
        return None
    rooms = (await s.execute(select(HubRoom).where(
        (hub_room_table.c.cohort_id == cohort.id) & (hub_room_table.c.status != "closed")
    ))).scalars().all()
    by_pair = {r.pair_id: r for r in rooms if r.kind == "pair" and r.pair_id is not None}
    lounge = next((r for r in rooms if r.kind == "lounge"), None)
    members = {m.id: m for m in (await s.execute(select(Member).where(
        (member_table.c.cohort_id == cohort.id) & (member_table.c.status == "active")
    ))).scalars().all() if m.id is not None}
    pairs = (await s.execute(select(Pair).where(
        (pair_table.c.cohort_id == cohort.id) & pair_table.c.status.in_(("active", "paused"))
    ).order_by(pair_table.c.id))).scalars().all()
    plans = {p.pair_id: p.text for p in (await s.execute(select(PairPlan).where(
        pair_plan_table.c.pair_id.in_([p.id for p in pairs])
    ))).scalars().all()} if pairs else {}
    view = CohortView(cohort, lounge, members=members)
    for p in pairs:
        mentor, mentee = members.get(p.mentor_id), members.get(p.mentee_id)
        if mentor is None or mentee is None:
            continue
        pid = p.id or 0
        pv = PairView(p, mentor, mentee, by_pair.get(pid), plans.get(pid, ""))
        view.pairs[pv.key] = pv
    ids = [k for k in (person_key(m.matrix_id, m.email) for m in members.values()) if k]
    for i in range(0, len(ids), 500):
        for pref in (await s.execute(select(PersonPref).where(
            person_pref_table.c.user_id.in_(ids[i:i + 500])
        ))).scalars().all():
            view.prefs[pref.user_id] = pref
    return view


async def pair_of_room(s: AsyncSession, room_id: str) -> tuple[CohortView, PairView]:
    """The pair whose room this is (commands in a pair room)."""
    room = (await s.execute(select(HubRoom).where(
        (hub_room_table.c.room_id == room_id) & (hub_room_table.c.kind == "pair")
    ))).scalar_one_or_none()
    pair = await s.get(Pair, room.pair_id) if room is not None and room.pair_id is not None else None
    cohort = await s.get(Cohort, pair.cohort_id) if pair is not None else None
    view = await load_cohort_view(s, cohort.slug) if cohort is not None else None
    pv = view.pairs.get(f"pair:{pair.id}") if view is not None and pair is not None else None
    if view is None or pv is None:
        raise CommandError("This pair is closed, so its commands no longer work here.")
    return view, pv


# -- content variables -----------------------------------------------------------------------


def _zone_name(name: str | None, fallback: str) -> str:
    zone = find_zone(name or "")  # a stored zone that no longer exists: the cohort's
    return zone.key if zone is not None else fallback


def content_cohort(view: CohortView) -> ct.Cohort:
    c = view.cohort
    lounge = view.lounge.room_id if view.lounge is not None else None
    return ct.Cohort(c.name, c.slug, c.weeks, date.fromisoformat(c.start_date), c.timezone,
                     f"https://matrix.to/#/{lounge}" if lounge else None)


def content_person(view: CohortView, member: Member) -> ct.Person:
    role = member.role if member.role in ct.ROLES else "mentee"
    return ct.Person(display_name(member.name, member.matrix_id, member.email), role,
                     _zone_name(member.timezone, view.cohort.timezone), member.matrix_id is not None)


def content_pair(view: CohortView, pv: PairView, video_base: str) -> ct.Pair:
    room = pv.room.room_id if pv.room is not None else None
    return ct.Pair(content_person(view, pv.mentor), content_person(view, pv.mentee),
                   video_url(video_base, pv.pair.video_name), pv.plan,
                   f"https://matrix.to/#/{room}" if room else None)


# -- rotation ----------------------------------------------------------------------------------


async def used_items(s: AsyncSession, scopes: Sequence[str], kind: str) -> dict[str, list[str]]:
    """Item ids each scope (room key) has had of `kind`, oldest first."""
    out: dict[str, list[str]] = defaultdict(list)
    for i in range(0, len(scopes), 500):
        rows = (await s.execute(
            select(content_use_table.c.scope, content_use_table.c.item_id)
            .where((content_use_table.c.kind == kind) & content_use_table.c.scope.in_(scopes[i:i + 500]))
            .order_by(content_use_table.c.id)
        )).all()
        for scope, item in rows:
            out[scope].append(item)
    return out


def record_use(s: AsyncSession, scope: str, kind: str, item_id: str, source: str, at: datetime) -> None:
    s.add(ContentUse(scope=scope, kind=kind, item_id=item_id, source=source, used_at=at.timestamp()))


async def uses_since(s: AsyncSession, scope: str, kind: str, source: str, since: datetime) -> int:
    rows = (await s.execute(select(content_use_table.c.id).where(
        (content_use_table.c.scope == scope) & (content_use_table.c.kind == kind)
        & (content_use_table.c.source == source) & (content_use_table.c.used_at >= since.timestamp())
    ))).all()
    return len(rows)


def local_midnight(now: datetime, zone: ZoneInfo) -> datetime:
    local = now.astimezone(zone)
    return datetime(local.year, local.month, local.day, tzinfo=zone).astimezone(UTC)


# -- preferences -------------------------------------------------------------------------------


async def get_pref(
    s: AsyncSession, user_id: str, now: datetime, *, create: bool = False
) -> PersonPref | None:
    pref = await s.get(PersonPref, user_id)
    if pref is None and create:
        pref = PersonPref(user_id=user_id, email_mode="all", updated_at=now.timestamp())
        s.add(pref)
    return pref


def code_hash(code: str) -> str:
    return hashlib.sha256(code.strip().upper().encode()).hexdigest()


async def memberships(s: AsyncSession, user_id: str) -> list[tuple[Member, Cohort]]:
    """The person's active memberships, oldest cohort first."""
    rows = (await s.execute(
        select(Member, Cohort).join(Cohort, Cohort.id == Member.cohort_id)  # type: ignore[arg-type]
        .where((member_table.c.matrix_id == user_id) & (member_table.c.status == "active"))
        .order_by(member_table.c.cohort_id)
    )).all()
    return [(m, c) for m, c in rows]


# -- outbox rows -----------------------------------------------------------------------------------


def room_row(room: HubRoom, content: dict[str, Any], *, kind: str, dedupe_key: str) -> dict[str, Any]:
    """A message row for a hub room, by its key (resolved to its current room id at send time).

    Before the room exists the row waits on the room's key lane, behind its creation.
    """
    return row_spec(Outgoing(RoomMessage(content, room_key=room.key), kind, dedupe_key,
                             room.room_id or f"room:{room.key}"))


def program_week_of(view: CohortView, now: datetime) -> int:
    """The cohort's program week at `now` (0 before the start, the last week after the end)."""
    start = date.fromisoformat(view.cohort.start_date)
    days = (now.astimezone(view.zone).date() - start).days
    if days < 0:
        return 0
    return min(days // 7 + 1, view.cohort.weeks)
