"""A person's direct room with the hub: the hub's own, or one the person opened.

A person's direct room is one row, key `direct:<user>`, whoever made the room: the hub
(kind `direct`, created when first needed) or the person (kind `dm`, adopted when they
open a direct chat with the hub). The newest one the person opened wins, since they
chose it: the hub says goodbye in the one it replaces and leaves it. An adopted room
the hub gives up (someone else joined, the person left, the hub was removed) is closed,
and the next private message makes a room of the hub's own again.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.core.content_format import escape_markdown, one_line
from hub.core.membership import MembershipState, RoomKind, RoomStatus
from hub.features.room_queue import Env, find_room, leave_by_id, new_room, relane, room_added, want
from hub.storage.models import HubRoom, RoomMember, cohort_table, hub_room_table, room_member_table

__all__ = ["adopt_direct_room", "describe_room", "drop_direct_room", "ensure_direct_room"]


async def ensure_direct_room(s: AsyncSession, env: Env, user_id: str) -> HubRoom:
    """The person's direct room: the one they opened, else the hub's own (queued the first time).

    Messages for it may be queued right away with `queue_room_message`: they
    wait for the room.
    """
    key = f"direct:{user_id}"
    room = await find_room(s, env, key)
    if room is None:
        room = await new_room(s, env, key=key, kind=RoomKind.DIRECT, user_id=user_id)
        await want(s, env, room, user_id)
    elif room.kind == RoomKind.DM and room.status == RoomStatus.CLOSED:
        # The chat they opened was given up: the hub makes one of its own (a new generation).
        room.kind, room.room_id, room.status, room.ready_at = RoomKind.DIRECT, None, RoomStatus.PENDING, None
        room.generation += 1
        rows = await s.execute(select(RoomMember).where(room_member_table.c.room_pk == room.id))
        for rm in rows.scalars():
            rm.state, rm.updated_at = MembershipState.PENDING, env.now()
            rm.invited_at = rm.joined_at = None
        await room_added(s, env, room)
        await want(s, env, room, user_id)
    return room


async def adopt_direct_room(s: AsyncSession, env: Env, user_id: str, room_id: str) -> tuple[bool, str | None]:
    """Record `room_id`, a direct chat `user_id` opened with the hub, as their direct room.

    The caller has checked that it is one (the person made it, the two of them only).
    Returns (adopted, the room id it replaces, which the caller says goodbye in and
    leaves); not adopted when the room is already recorded as something else.
    """
    key = f"direct:{user_id}"
    taken = (await s.execute(select(hub_room_table.c.key).where(hub_room_table.c.room_id == room_id))
             ).scalar_one_or_none()
    if taken is not None and taken != key:
        return False, None
    room = await find_room(s, env, key)
    now = env.now()
    old: str | None = None
    if room is None:
        room = HubRoom(id=await env.store.new_id(s, hub_room_table.name), key=key, kind=RoomKind.DM,
                       user_id=user_id, room_id=room_id, status=RoomStatus.READY, created_at=now,
                       ready_at=now)
        s.add(room)
        await s.flush()
    else:
        if room.room_id == room_id and room.status == RoomStatus.READY and room.kind == RoomKind.DM:
            return True, None
        if room.room_id and room.room_id != room_id and room.status != RoomStatus.CLOSED:
            old = room.room_id
        # A new generation: a creation still queued for the hub's own room is superseded.
        room.generation += 1
        room.kind, room.room_id, room.status, room.ready_at, room.problem = (
            RoomKind.DM, room_id, RoomStatus.READY, now, None)
    rm = (await s.execute(select(RoomMember).where(
        (room_member_table.c.room_pk == room.id) & (room_member_table.c.user_id == user_id)
    ))).scalar_one_or_none()
    if rm is None:
        assert room.id is not None
        s.add(RoomMember(room_pk=room.id, user_id=user_id, state=MembershipState.JOINED, joined_at=now,
                         updated_at=now))
    else:
        rm.state, rm.joined_at, rm.updated_at = MembershipState.JOINED, now, now
    # Messages waiting for a room of the hub's own that was never made go here instead.
    await relane(s, room)
    return True, old


async def drop_direct_room(s: AsyncSession, env: Env, room: HubRoom, farewell: str | None) -> None:
    """Stop using an adopted direct room: a last word (if any), then the hub leaves it.

    Both go by room id: the row is closed at once, so nothing private is sent there
    again and commands there stop being direct-room commands.
    """
    assert room.kind == RoomKind.DM and room.room_id is not None
    room.status = RoomStatus.CLOSED
    await leave_by_id(s, env, room.room_id, farewell, key=f"{room.key}:{room.generation}")


async def describe_room(s: AsyncSession, room_id: str) -> str:
    """A room as moderators know it ("the Spring 2027 lounge", "a pair room"), for notices."""
    row = (await s.execute(select(hub_room_table.c.kind, cohort_table.c.name)
                           .select_from(hub_room_table)
                           .outerjoin(cohort_table, cohort_table.c.id == hub_room_table.c.cohort_id)
                           .where(hub_room_table.c.room_id == room_id))).first()
    if row is None:
        return "a room the hub was invited to"
    kind, cohort = row
    if cohort and kind in (RoomKind.LOUNGE, RoomKind.SPACE):
        return f"the {escape_markdown(one_line(cohort))} {kind}"
    return {RoomKind.PAIR: "a pair room", RoomKind.DIRECT: "a direct room",
            RoomKind.DM: "a direct room"}.get(kind, "a room")
