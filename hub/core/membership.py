"""Cohorts, members, pairs and rooms as states, and what each change of state causes.

The states are `StrEnum`s: each member *is* the string stored in the database, so
rows written before the enums read back equal to them and no migration is needed.

The transitions are pure: they take the current state (and the room they are about)
and return the new state with the effects to queue (`Outgoing`: an effect from
`hub.core.effects`, its outbox kind, dedupe key and lane). The feature layer
(`hub.features.room_queue` and the modules over it) reads the rows, applies the new
state and hands the effects to the effect writer; nothing here touches the database,
the homeserver or the clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Protocol

from hub.core.effects import CreateRoom, FixState, Invite, Kick, Leave, LeaveRoom, Outgoing, RoomMessage

__all__ = [
    "CLOSED_ROOM",
    "OPEN_PAIR",
    "SENT_TO",
    "MemberStatus",
    "MembershipState",
    "Outgoing",
    "PairStatus",
    "Role",
    "RoomKind",
    "RoomRow",
    "RoomStatus",
    "close_room",
    "create_room",
    "fix_room",
    "invite",
    "leave_room_by_id",
    "pause",
    "room_lane",
    "room_message",
    "unwant",
    "want",
]


class RoomKind(StrEnum):
    """What a hub room is for (`hub_room.kind`)."""

    SPACE = "space"
    LOUNGE = "lounge"
    PAIR = "pair"
    DIRECT = "direct"  # the hub's own direct room with one person
    # A direct room the person opened and the hub joined (an `is_direct` invite): theirs,
    # not the hub's. It is never repaired, tagged or given pair content.
    DM = "dm"


class RoomStatus(StrEnum):
    """A hub room's life (`hub_room.status`): queued, being made, in use, being left, gone."""

    PENDING = "pending"
    CREATING = "creating"
    READY = "ready"
    CLOSING = "closing"
    CLOSED = "closed"


class MembershipState(StrEnum):
    """One person in one hub room (`room_member.state`)."""

    PENDING = "pending"  # wanted; the invite is queued or to be queued
    INVITED = "invited"
    JOINED = "joined"
    LEFT = "left"  # left on their own
    BANNED = "banned"
    REMOVED = "removed"  # no longer wanted (removed from the cohort, pair closed)


class MemberStatus(StrEnum):
    ACTIVE = "active"
    REMOVED = "removed"


class Role(StrEnum):
    MENTOR = "mentor"
    MENTEE = "mentee"
    MODERATOR = "moderator"


class PairStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"  # scheduled content stops; the room stays
    CLOSED = "closed"


# A pair that still has its room and its people: active or paused.
OPEN_PAIR: tuple[PairStatus, ...] = (PairStatus.ACTIVE, PairStatus.PAUSED)
# Rooms whose messages go by room id (created, not left yet); others wait on their key lane.
_ID_LANE = (RoomStatus.READY, RoomStatus.CLOSING)
CLOSED_ROOM: tuple[RoomStatus, ...] = (RoomStatus.CLOSING, RoomStatus.CLOSED)
# States in which the person has (or is about to get) an invite: a removal kicks them.
SENT_TO: tuple[MembershipState, ...] = (MembershipState.PENDING, MembershipState.INVITED,
                                        MembershipState.JOINED)


class RoomRow(Protocol):
    """What the transitions read of a hub room (the `HubRoom` row has these)."""

    @property
    def key(self) -> str: ...

    @property
    def room_id(self) -> str | None: ...

    @property
    def status(self) -> str: ...

    @property
    def generation(self) -> int: ...


def room_lane(room: RoomRow) -> str:
    """The room id once the room is ready; its key lane (behind its creation) until then.

    Rows for one room keep their order either way: nothing is sent on the key lane after
    the room is ready, because its creation moves what waits there to the id lane.
    """
    if room.room_id and room.status in _ID_LANE:
        return room.room_id
    return f"room:{room.key}"


def create_room(room: RoomRow) -> Outgoing:
    """First on the room's key lane: whatever else is queued for the room waits for it."""
    return Outgoing(CreateRoom(room.key, room.generation), "room-create",
                    f"create:{room.key}:{room.generation}", f"room:{room.key}")


def invite(room: RoomRow, users: Sequence[str], nonce: str, *, bulk: bool = False) -> Outgoing:
    """One invite row for `users` (the sender also invites whoever else is still pending)."""
    who = "bulk" if bulk else users[0]
    return Outgoing(Invite(room.key, tuple(users)), "room-invite", f"invite:{room.key}:{who}:{nonce}",
                    room_lane(room))


def fix_room(room: RoomRow, nonce: str, *, demote: Sequence[str] = (), drift: bool = False) -> Outgoing:
    """Bring the room's state (name, power levels, links) in line with the database, at send time."""
    return Outgoing(FixState(room.key, tuple(demote), drift=drift), "room-fix", f"fix:{room.key}:{nonce}",
                    room_lane(room))


def room_message(room: RoomRow, markdown: str, *, kind: str, dedupe_key: str) -> Outgoing:
    """An m.notice (Markdown rendered to plain + HTML) to a hub room, existing yet or not."""
    return Outgoing(RoomMessage.markdown(markdown, room_key=room.key), kind, dedupe_key, room_lane(room))


def want(current: str | None) -> MembershipState | None:
    """Someone is wanted in a room: their new state, or None when nothing changes or is sent.

    Absent, removed or gone on their own: pending again (an invite follows). Pending,
    invited, joined or banned: nothing to do (a ban is the moderators' call).
    """
    if current is None or current in (MembershipState.REMOVED, MembershipState.LEFT):
        return MembershipState.PENDING
    return None


def unwant(room: RoomRow, current: str | None, user: str, reason: str, nonce: str,
           ) -> tuple[MembershipState | None, list[Outgoing]]:
    """Someone is no longer wanted: (their new state or None if unchanged, the kick if one is due)."""
    if current is None or current == MembershipState.REMOVED:
        return None, []
    if current not in SENT_TO:
        return MembershipState.REMOVED, []  # left or banned: not in the room to kick
    return MembershipState.REMOVED, [Outgoing(Kick(room.key, user, reason), "room-kick",
                                              f"kick:{room.key}:{user}:{nonce}", room_lane(room))]


def close_room(room: RoomRow, goodbye: str | None) -> tuple[RoomStatus | None, list[Outgoing]]:
    """Close a hub room: (its new status or None if already so, the goodbye and leave to queue).

    A room never created is closed at once (its queued creation then finds it closed and
    makes nothing); a created one says goodbye, then the hub leaves (`closing` until it has).
    """
    if room.status in CLOSED_ROOM:
        return None, []
    if room.status == RoomStatus.PENDING and room.room_id is None:
        return RoomStatus.CLOSED, []
    out: list[Outgoing] = []
    if goodbye is not None:
        out.append(room_message(room, goodbye, kind="pair-goodbye",
                                dedupe_key=f"goodbye:{room.key}:{room.generation}"))
    out.append(Outgoing(Leave(room.key), "room-leave", f"leave:{room.key}:{room.generation}",
                        room_lane(room)))
    return RoomStatus.CLOSING, out


def leave_room_by_id(room_id: str, farewell: str | None, *, key: str) -> list[Outgoing]:
    """A last notice (if any), then leave: for a room the hub no longer records as anything."""
    out: list[Outgoing] = []
    if farewell:
        out.append(Outgoing(RoomMessage.markdown(farewell, room_id=room_id), "room-farewell",
                            f"farewell:{key}:{room_id}", room_id))
    out.append(Outgoing(LeaveRoom(room_id), "room-leave", f"leave:{key}:{room_id}", room_id))
    return out


def pause(current: str, wanted: PairStatus) -> bool:
    """Whether setting a pair to `wanted` (active or paused) changes anything."""
    if wanted not in OPEN_PAIR:
        raise ValueError(f"a pair is paused or resumed, not {wanted}")
    return current != wanted
