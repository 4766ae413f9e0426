"""The matcher's view of a cohort, read from the database, and the last proposal kept for `accept`.

`load_cohort_match` reads a cohort's active people and its pairs with three
plain SELECTs (no ORM objects: 3,000 people load in tens of milliseconds) and
gives hub.core.matching its input: unpaired mentees, mentors with their room
left (capacity minus open pairs), and the forbidden pairs, where a former
pair and either person's private `avoid` are merged into one set on purpose,
so nothing downstream can tell why a pair is forbidden. People are named by
their Matrix id, else their email (`label`); `avoid` is read here and nowhere
else.

The proposal a moderator saw is kept (key ``match.proposal:<cohort id>`` in
`kv`) so `!hub match SLUG accept N` makes exactly the pairs of those lines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.core.cohorts import Who
from hub.core.matching import MatchInput, Mentee, Mentor, Proposal
from hub.core.membership import OPEN_PAIR, MemberStatus, Role
from hub.core.zones import find_zone
from hub.storage.models import Cohort, KeyValue, member_table, pair_table

__all__ = ["CohortMatch", "Person", "forget_proposal", "load_cohort_match", "load_proposal", "save_proposal"]



@dataclass(frozen=True)
class Person:
    id: int
    role: str
    name: str
    email: str | None
    matrix_id: str | None
    timezone: str | None

    @property
    def label(self) -> str:
        """How proposals name people: the Matrix id, else the email (PRODUCT.md "Matching")."""
        return self.matrix_id or self.email or f"member {self.id}"

    @property
    def who(self) -> Who:
        return Who(matrix_id=self.matrix_id, email=self.email)


@dataclass
class CohortMatch:
    cohort: Cohort
    input: MatchInput
    people: dict[int, Person] = field(default_factory=dict)  # mentors and unpaired mentees, by id

    def label(self, key: int) -> str:
        return self.people[key].label


def _words(text: str | None) -> frozenset[str]:
    return frozenset(w for w in (text or "").split(";") if w)


def _offset(zone_name: str | None, fallback: str, now: datetime, cache: dict[str, float]) -> float:
    """Hours ahead of UTC at `now` (DST-correct); a person without a zone has the cohort's."""
    name = zone_name or fallback
    if name not in cache:
        zone = find_zone(name) or find_zone(fallback)
        delta = now.astimezone(zone).utcoffset() if zone is not None else None
        cache[name] = delta.total_seconds() / 3600 if delta is not None else 0.0
    return cache[name]


async def load_cohort_match(s: AsyncSession, cohort: Cohort, now: datetime) -> CohortMatch:
    assert cohort.id is not None
    m = member_table
    rows = (await s.execute(
        select(m.c.id, m.c.role, m.c.name, m.c.email, m.c.matrix_id, m.c.timezone, m.c.languages,
               m.c.topics, m.c.capacity, m.c.avoid)
        .where((m.c.cohort_id == cohort.id) & (m.c.status == MemberStatus.ACTIVE)
               & m.c.role.in_((Role.MENTOR, Role.MENTEE)))
        .order_by(m.c.id))).all()
    pairs = (await s.execute(
        select(pair_table.c.mentor_id, pair_table.c.mentee_id, pair_table.c.status)
        .where(pair_table.c.cohort_id == cohort.id))).all()
    open_of: dict[int, int] = {}  # member id -> open pairs
    forbidden: set[tuple[int, int]] = set()
    for mentor_id, mentee_id, status in pairs:
        if status in OPEN_PAIR:
            open_of[mentor_id] = open_of.get(mentor_id, 0) + 1
            open_of[mentee_id] = open_of.get(mentee_id, 0) + 1
        else:
            forbidden.add((mentor_id, mentee_id))  # a former pair is never proposed again
    by_ident: dict[str, int] = {}
    for r in rows:
        for ident in (r.matrix_id, r.email):
            if ident:
                by_ident.setdefault(ident.lower(), r.id)
    roles = {r.id: r.role for r in rows}
    zones: dict[str, float] = {}
    mentees: list[Mentee] = []
    mentors: list[Mentor] = []
    people: dict[int, Person] = {}
    for r in rows:
        offset = _offset(r.timezone, cohort.timezone, now, zones)
        langs, topics = _words(r.languages), _words(r.topics)
        if r.role == Role.MENTEE:
            if open_of.get(r.id):
                continue
            mentees.append(Mentee(r.id, langs, topics, offset))
        else:
            room = (r.capacity or 1) - open_of.get(r.id, 0)
            mentors.append(Mentor(r.id, room, langs, topics, offset))
        people[r.id] = Person(r.id, r.role, r.name, r.email, r.matrix_id, r.timezone)
        for ident in _words(r.avoid):
            other = by_ident.get(ident.lower())
            if other is None or roles.get(other) == r.role:
                continue
            forbidden.add((r.id, other) if r.role == Role.MENTOR else (other, r.id))
    inp = MatchInput(tuple(mentees), tuple(mentors), frozenset(forbidden))
    return CohortMatch(cohort, inp, people)


def _key(cohort: Cohort) -> str:
    return f"match.proposal:{cohort.id}"


async def save_proposal(s: AsyncSession, cohort: Cohort, proposal: Proposal, at: float) -> None:
    """Keep the numbered lines a moderator saw: line N is pairs[N - 1] (mentor id, mentee id)."""
    value = json.dumps({"at": at, "pairs": [[p.mentor, p.mentee] for p in proposal.pairs]})
    row = await s.get(KeyValue, _key(cohort))
    if row is None:
        s.add(KeyValue(key=_key(cohort), value=value))
    else:
        row.value = value


async def load_proposal(s: AsyncSession, cohort: Cohort) -> list[tuple[int, int]] | None:
    row = await s.get(KeyValue, _key(cohort))
    if row is None:
        return None
    return [(int(a), int(b)) for a, b in json.loads(row.value)["pairs"]]


async def forget_proposal(s: AsyncSession, cohort: Cohort) -> None:
    row = await s.get(KeyValue, _key(cohort))
    if row is not None:
        await s.delete(row)
