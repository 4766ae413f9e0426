"""`Targets` (hub.program) over the cohort tables: who gets a scheduled item right now.

Target ids are stable for the life of the target, as the dedupe keys need:

* lounge and pair rooms by their room *key* (``lounge:3``, ``pair:17``), never
  the Matrix room id, which changes when a lost room is replaced;
* direct rooms by the person's Matrix id (the room is created on first use):
  the paired for the private check-in, the people no pair room reaches for a
  webinar reminder;
* email members by the member row's id.

Exclusions happen here, at the tick: a paused or closed pair, a pair whose
room is closed, a snoozed person, an address that is opted out or suppressed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, literal, or_, select

from hub.core.membership import CLOSED_ROOM, MemberStatus, PairStatus, Role, RoomKind, RoomStatus
from hub.email.payload import normalize_address
from hub.storage.db import Database
from hub.storage.models import (
    cohort_table,
    email_suppression_table,
    hub_room_table,
    member_table,
    pair_table,
    person_pref_table,
)

__all__ = ["PARTICIPANT_ROLES", "SqlTargets", "effective_address", "person_key"]

PARTICIPANT_ROLES = (Role.MENTOR, Role.MENTEE)
C, M, P, R = cohort_table, member_table, pair_table, hub_room_table
PREF, SUP = person_pref_table, email_suppression_table


def person_key(matrix_id: str | None, email: str | None) -> str | None:
    """Where a person's preferences (person_pref) live: their Matrix id, else ``mailto:ADDRESS``.

    People without a Matrix account can still unsubscribe by link; their
    choice needs a row too, under a key no Matrix id can collide with.
    """
    if matrix_id:
        return matrix_id
    return f"mailto:{normalize_address(email)}" if email else None


def effective_address(member_email: str | None, pref_email: str | None) -> str | None:
    """The address mail goes to: a confirmed replacement (`!hub email ADDRESS`) wins."""
    address = pref_email or member_email
    return normalize_address(address) if address else None


class SqlTargets:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def lounge(self, cohort: str) -> str | None:
        async with self.db.session() as s:
            key = (await s.execute(
                select(R.c.key).join(C, C.c.id == R.c.cohort_id)
                .where((C.c.slug == cohort) & (R.c.kind == RoomKind.LOUNGE)
                       & (R.c.status != RoomStatus.CLOSED))
            )).scalar_one_or_none()
        return key

    async def active_pair_rooms(self, cohort: str, now: datetime) -> Sequence[str]:
        # Joined or not: a room whose people have not accepted yet still gets the
        # item, so it is there when they do (PRODUCT.md, `!hub send`).
        async with self.db.session() as s:
            rows = (await s.execute(
                select(R.c.key).join(P, P.c.id == R.c.pair_id).join(C, C.c.id == P.c.cohort_id)
                .where((C.c.slug == cohort) & (R.c.kind == RoomKind.PAIR)
                       & R.c.status.not_in(CLOSED_ROOM) & (P.c.status == PairStatus.ACTIVE))
                .order_by(P.c.id)
            )).scalars().all()
        return list(rows)

    async def direct_rooms(self, cohort: str, now: datetime) -> Sequence[str]:
        """Participants with a Matrix id who are in an active pair and not snoozed.

        The private check-in is about a mentoring relationship, so people
        without an active pair (or moderators) are not asked.
        """
        ts = now.timestamp()
        async with self.db.session() as s:
            paired = select(P.c.mentor_id.label("mid")).where(P.c.status == PairStatus.ACTIVE).union(
                select(P.c.mentee_id.label("mid")).where(P.c.status == PairStatus.ACTIVE)).subquery()
            rows = (await s.execute(
                select(M.c.matrix_id).distinct()
                .join(C, C.c.id == M.c.cohort_id)
                .join(paired, paired.c.mid == M.c.id)
                .outerjoin(PREF, PREF.c.user_id == M.c.matrix_id)
                .where((C.c.slug == cohort) & (M.c.status == MemberStatus.ACTIVE) & M.c.matrix_id.is_not(None)
                       & M.c.role.in_(PARTICIPANT_ROLES)
                       & or_(PREF.c.snooze_until.is_(None), PREF.c.snooze_until <= ts))
                .order_by(M.c.matrix_id)
            )).scalars().all()
        return [r for r in rows if r]

    async def unpaired_direct_rooms(self, cohort: str, now: datetime) -> Sequence[str]:
        """Participants with a Matrix id, not snoozed, in no pair room `active_pair_rooms` returns.

        For items everyone should get in one room (the webinar reminders): the
        complement of the pair rooms, by the same conditions, so a person is in
        exactly one of the two sets: unpaired, their pair paused or closed, or
        their pair's room not made yet or being closed. Snooze pauses what comes
        to you alone; a snoozed person's pair room still gets the item.
        """
        ts = now.timestamp()
        async with self.db.session() as s:
            in_room = (select(P.c.mentor_id, P.c.mentee_id).join(R, R.c.pair_id == P.c.id)
                       .where((R.c.kind == RoomKind.PAIR) & R.c.status.not_in(CLOSED_ROOM)
                              & (P.c.status == PairStatus.ACTIVE)).subquery())
            reached = select(in_room.c.mentor_id).union(select(in_room.c.mentee_id))
            rows = (await s.execute(
                select(M.c.matrix_id).distinct()
                .join(C, C.c.id == M.c.cohort_id)
                .outerjoin(PREF, PREF.c.user_id == M.c.matrix_id)
                .where((C.c.slug == cohort) & (M.c.status == MemberStatus.ACTIVE) & M.c.matrix_id.is_not(None)
                       & M.c.role.in_(PARTICIPANT_ROLES) & M.c.id.not_in(reached)
                       & or_(PREF.c.snooze_until.is_(None), PREF.c.snooze_until <= ts))
                .order_by(M.c.matrix_id)
            )).scalars().all()
        return [r for r in rows if r]

    async def members(self, cohort: str, now: datetime) -> Sequence[str]:
        """Active members with an address that is neither opted out nor suppressed.

        ``weekly`` (digest only) is the emitter's to apply, as it depends on the item.
        """
        async with self.db.session() as s:
            rows = (await s.execute(
                select(M.c.id, M.c.email, PREF.c.email, PREF.c.email_mode)
                .join(C, C.c.id == M.c.cohort_id)
                .outerjoin(PREF, PREF.c.user_id == func.coalesce(M.c.matrix_id,
                                                                 literal("mailto:").concat(M.c.email)))
                .where((C.c.slug == cohort) & (M.c.status == MemberStatus.ACTIVE)
                       & or_(M.c.email.is_not(None), PREF.c.email.is_not(None))
                       & or_(PREF.c.email_mode.is_(None), PREF.c.email_mode != "off"))
                .order_by(M.c.id)
            )).all()
            addresses = {r[0]: effective_address(r[1], r[2]) for r in rows}
            wanted = [a for a in addresses.values() if a]
            suppressed: set[str] = set()
            for i in range(0, len(wanted), 500):  # keep IN lists a sane size
                chunk = wanted[i:i + 500]
                suppressed.update((await s.execute(
                    select(SUP.c.address).where(SUP.c.address.in_(chunk))
                )).scalars().all())
        return [str(mid) for mid, a in addresses.items() if a and a not in suppressed]
