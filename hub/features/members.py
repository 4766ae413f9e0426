"""Members of a cohort: adding (or completing) and removing them, with the rooms that follows."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from hub.core.cohorts import Who
from hub.core.membership import MemberStatus, Role
from hub.errors import CommandError
from hub.features.cohort_setup import cohort_rooms, config_moderators
from hub.features.member_mail import queue_welcome
from hub.features.pairs import close_pair, ensure_pair_room, open_pairs_of
from hub.features.people import find_member
from hub.features.room_queue import Env, queue_fix, unwant, want
from hub.storage.models import Cohort, Member, member_table

__all__ = ["add_member", "remove_member"]


async def add_member(
    s: AsyncSession, env: Env, cohort: Cohort, role: str, who: Who, *, name: str = "",
    email: str | None = None, matrix_id: str | None = None, timezone: str | None = None,
    queue_invites: bool = True,
) -> tuple[Member, str]:
    """Add (or reactivate, or update) a member; returns it and "added" | "updated" | "unchanged".

    `who` finds an existing member; `email`/`matrix_id` complete a person named
    by the other one (a roster row with both). With `queue_invites=False` the
    cohort rooms' invites are left to the caller (`queue_pending_invites`).
    """
    assert cohort.id is not None
    mx = who.matrix_id or matrix_id
    mail = (who.email or email or "").lower() or None
    existing = await find_member(s, env, cohort.id, Who(matrix_id=mx, email=mail), active_only=False)
    outcome = "unchanged"
    if existing is not None and existing.status == MemberStatus.ACTIVE and existing.role != role:
        raise CommandError(
            f"{who} is already a {existing.role} in {cohort.slug}; "
            f"`{env.prefix} remove {cohort.slug} {who}` first to change their role."
        )
    fresh_email = False
    if existing is None:
        member = Member(id=await env.store.new_id(s, member_table.name), cohort_id=cohort.id, role=role,
                        name=name.strip()[:200], email=mail, matrix_id=mx, timezone=timezone,
                        status=MemberStatus.ACTIVE, created_at=env.now())
        s.add(member)
        outcome, gained_matrix, fresh_email = "added", mx is not None, True
    else:
        member = existing
        gained_matrix = False
        if member.status != MemberStatus.ACTIVE:
            member.status, member.removed_at, member.role = MemberStatus.ACTIVE, None, role
            outcome, gained_matrix, fresh_email = "added", member.matrix_id is not None, True
        for attr, value in (("name", name.strip()[:200] or None), ("timezone", timezone)):
            if value and getattr(member, attr) != value:
                setattr(member, attr, value)
                outcome = "updated" if outcome == "unchanged" else outcome
        if mail and member.email is None:
            member.email, outcome = mail, ("updated" if outcome == "unchanged" else outcome)
        if mx and member.matrix_id is None:
            member.matrix_id, gained_matrix = mx, True
            outcome = "updated" if outcome == "unchanged" else outcome
    await env.store.member_saved(s, member)
    if gained_matrix and member.matrix_id:
        for room in await cohort_rooms(s, env, cohort.id):
            if room is not None:
                await want(s, env, room, member.matrix_id, queue_invite=queue_invites)
                if role == Role.MODERATOR:
                    await queue_fix(s, env, room)
        # Someone who only had email may now be reachable in their pair room.
        for pair in await open_pairs_of(s, env, member):
            await ensure_pair_room(s, env, pair)
    if fresh_email and member.matrix_id is None and member.email:
        await queue_welcome(s, env, member, cohort)
    return member, outcome


async def remove_member(s: AsyncSession, env: Env, cohort: Cohort, who: Who) -> tuple[Member, int]:
    """Remove a member: their open pairs close, they leave the space and lounge.

    Returns the member and how many pairs were closed.
    """
    assert cohort.id is not None
    member = await find_member(s, env, cohort.id, who)
    if member is None:
        raise CommandError(f"{who} is not a member of {cohort.slug}.")
    member.status, member.removed_at = MemberStatus.REMOVED, env.now()
    closed = 0
    for pair in await open_pairs_of(s, env, member):
        await close_pair(s, env, pair)
        closed += 1
    if member.matrix_id and member.matrix_id not in config_moderators(env):
        for room in await cohort_rooms(s, env, cohort.id):
            if room is not None:
                await unwant(s, env, room, member.matrix_id, f"removed from {cohort.name}")
                if member.role == Role.MODERATOR:
                    await queue_fix(s, env, room, demote=[member.matrix_id])
    return member, closed
