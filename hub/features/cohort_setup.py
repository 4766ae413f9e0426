"""Cohorts: finding one, making one with its space and lounge."""

from __future__ import annotations

from datetime import date
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.core.markup import echo
from hub.core.membership import RoomKind
from hub.errors import CommandError
from hub.features.room_queue import Env, find_room, new_room, want
from hub.storage.models import Cohort, HubRoom, cohort_table

__all__ = ["cohort_rooms", "config_moderators", "create_cohort", "get_cohort", "require_cohort"]


async def get_cohort(s: AsyncSession, slug: str) -> Cohort | None:
    return (await s.execute(select(Cohort).where(cohort_table.c.slug == slug))).scalar_one_or_none()


async def require_cohort(s: AsyncSession, env: Env, slug: str) -> Cohort:
    cohort = await get_cohort(s, slug.lower())
    if cohort is None:
        raise CommandError(f"There is no cohort {echo(slug)}. `{env.prefix} cohort list` shows them.")
    return cohort


async def cohort_rooms(s: AsyncSession, env: Env, cohort_id: int) -> tuple[HubRoom | None, HubRoom | None]:
    """The cohort's space and lounge (None where there is none)."""
    return await find_room(s, env, f"space:{cohort_id}"), await find_room(s, env, f"lounge:{cohort_id}")


def config_moderators(env: Env) -> list[str]:
    return list(env.settings.matrix.moderators)


async def create_cohort(
    s: AsyncSession, env: Env, *, slug: str, name: str, timezone: str, start: date | None,
    weeks: int, source: str,
) -> Cohort:
    """A new cohort with its space and lounge queued for creation (the caller checked the slug)."""
    tz = ZoneInfo(timezone)
    first = start or env.clock.now().astimezone(tz).date()
    cohort = Cohort(slug=slug, name=name, timezone=timezone, start_date=first.isoformat(),
                    weeks=weeks, source=source, created_at=env.now())
    s.add(cohort)
    await s.flush()
    assert cohort.id is not None
    # The space first: the lounge names it in its join rule and parent link.
    space = await new_room(s, env, key=f"space:{cohort.id}", kind=RoomKind.SPACE, cohort_id=cohort.id)
    lounge = await new_room(s, env, key=f"lounge:{cohort.id}", kind=RoomKind.LOUNGE, cohort_id=cohort.id)
    for room in (space, lounge):
        for mod in config_moderators(env):
            await want(s, env, room, mod)
    return cohort
