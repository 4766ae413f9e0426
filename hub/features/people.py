"""Finding members of a cohort and naming them: lookups the other membership modules share."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.core.cohorts import Who, display_name
from hub.core.content_format import escape_markdown
from hub.core.membership import MemberStatus
from hub.features.room_queue import Env
from hub.storage.models import Cohort, Member, Pair, member_table

__all__ = ["find_member", "is_participant", "member_label", "member_markdown", "pair_people"]


async def find_member(
    s: AsyncSession, env: Env, cohort_id: int, who: Who, *, active_only: bool = True
) -> Member | None:
    """The member `who` names in the cohort (by Matrix id or email; the oldest if they name two)."""
    if not (who.matrix_id or who.email):
        return None
    return await env.store.find_member(s, cohort_id, who, active_only=active_only)


def member_label(m: Member) -> str:
    return display_name(m.name, m.matrix_id, m.email)


def member_markdown(m: Member) -> str:
    """The member's name for a Markdown reply: shown as typed, never as formatting or a link."""
    return escape_markdown(member_label(m))


async def is_participant(s: AsyncSession, user_id: str) -> bool:
    row = (await s.execute(select(member_table.c.id).where(
        (member_table.c.matrix_id == user_id) & (member_table.c.status == MemberStatus.ACTIVE)
    ).limit(1))).first()
    return row is not None


async def pair_people(s: AsyncSession, pair: Pair) -> tuple[Member, Member, Cohort]:
    """A pair's mentor, mentee and cohort."""
    mentor = await s.get(Member, pair.mentor_id)
    mentee = await s.get(Member, pair.mentee_id)
    cohort = await s.get(Cohort, pair.cohort_id)
    assert mentor is not None and mentee is not None and cohort is not None
    return mentor, mentee, cohort
