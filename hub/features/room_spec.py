"""What a hub room should be according to the database: its members, moderators and state."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.core.cohorts import (
    MODERATOR_LEVEL,
    RoomSpec,
    direct_spec,
    lounge_spec,
    pair_spec,
    room_tag,
    space_spec,
    video_url,
)
from hub.core.membership import OPEN_PAIR, MemberStatus, Role, RoomKind, RoomStatus
from hub.features.cohort_setup import cohort_rooms, config_moderators
from hub.features.people import member_label, pair_people
from hub.features.room_queue import Env
from hub.storage.models import Cohort, HubRoom, Pair, member_table

__all__ = ["build_spec", "desired_members", "moderators_of"]


async def moderators_of(s: AsyncSession, env: Env, cohort_id: int) -> dict[str, int]:
    mods = {m: MODERATOR_LEVEL for m in config_moderators(env)}
    rows = (await s.execute(select(member_table.c.matrix_id).where(
        (member_table.c.cohort_id == cohort_id) & (member_table.c.role == Role.MODERATOR)
        & (member_table.c.status == MemberStatus.ACTIVE) & member_table.c.matrix_id.is_not(None)
    ))).scalars().all()
    mods.update({m: MODERATOR_LEVEL for m in rows if m})
    mods.pop(env.hub_user, None)
    return mods


async def desired_members(s: AsyncSession, env: Env, room: HubRoom) -> set[str]:
    """Who should be in the room (besides the hub) according to the database."""
    wanted: set[str] = set()
    if room.kind in (RoomKind.SPACE, RoomKind.LOUNGE) and room.cohort_id is not None:
        rows = (await s.execute(select(member_table.c.matrix_id).where(
            (member_table.c.cohort_id == room.cohort_id) & (member_table.c.status == MemberStatus.ACTIVE)
            & member_table.c.matrix_id.is_not(None)
        ))).scalars().all()
        wanted = {r for r in rows if r} | set(config_moderators(env))
    elif room.kind == RoomKind.PAIR and room.pair_id is not None:
        pair = await s.get(Pair, room.pair_id)
        if pair is not None and pair.status in OPEN_PAIR:
            mentor, mentee, _ = await pair_people(s, pair)
            wanted = {m.matrix_id for m in (mentor, mentee) if m.matrix_id}
    elif room.kind == RoomKind.DIRECT and room.user_id:
        wanted = {room.user_id}
    wanted.discard(env.hub_user)
    return wanted


async def build_spec(s: AsyncSession, env: Env, room: HubRoom) -> tuple[RoomSpec, dict[str, list[str]]]:
    """The room as the database says it should be, and (for a space) its children with their via."""
    tag = room_tag(env.install, room.key, room.generation)
    server = env.hub_user.split(":", 1)[1]
    children: dict[str, list[str]] = {}
    if room.kind in (RoomKind.SPACE, RoomKind.LOUNGE):
        assert room.cohort_id is not None
        cohort = await s.get(Cohort, room.cohort_id)
        assert cohort is not None
        mods = await moderators_of(s, env, room.cohort_id)
        space, lounge = await cohort_rooms(s, env, room.cohort_id)
        if room.kind == RoomKind.SPACE:
            if lounge is not None and lounge.room_id and lounge.status != RoomStatus.CLOSED:
                children[lounge.room_id] = [server]
            return space_spec(room.key, cohort.name, mods, tag), children
        parent = space.room_id if space is not None else None
        return lounge_spec(room.key, cohort.name, parent, mods, tag, env.prefix), children
    if room.kind == RoomKind.PAIR:
        assert room.pair_id is not None
        pair = await s.get(Pair, room.pair_id)
        assert pair is not None
        mentor, mentee, _ = await pair_people(s, pair)
        link = video_url(env.settings.video.base_url, pair.video_name)
        return pair_spec(room.key, member_label(mentor), member_label(mentee), link,
                         encrypted=env.settings.matrix.encrypt_pair_rooms, tag=tag,
                         prefix=env.prefix), children
    return direct_spec(room.key, tag), children
