"""Direct chats people open with the hub, and the invites that bring the hub into rooms.

A participant or moderator who invites the hub gets a `Join` row (queued by the
sync handler in `hub.service`); once joined, a chat marked direct is adopted as
their direct room if it really is one (`adopt_direct`). Adopted, the room is the
person's, never the hub's (`HubRoomKind.DM`): the hub sends only what is meant for them
and watches who is in it.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from hub.core.effects import Join
from hub.core.homeserver import RoomSnapshot
from hub.core.membership import MembershipState, RoomStatus
from hub.delivery.dispatcher import Claimed
from hub.errors import PermanentDeliveryError, TemporaryDeliveryError
from hub.features.direct_rooms import adopt_direct_room, drop_direct_room
from hub.features.room_base import log
from hub.features.room_ops import RoomOps
from hub.features.room_queue import Env, leave_by_id
from hub.storage.models import HubRoom

__all__ = ["JOIN_TRIES", "RoomJoins"]

JOIN_TRIES = 6  # an invite's join is tried this often (backing off to 30 s), then given up


class RoomJoins(RoomOps):
    async def join(self, row: Claimed, e: Join) -> str:
        """Join `e.room_id`: accept an invite (adopting a direct chat), or go back into a hub room.

        A hub room's rejoin is tried once: the room check that queued it waits for the answer
        and replaces the room if the hub cannot get back in. An invite is tried again with a
        growing pause, and given up (logged, nobody told: the inviter can invite again).
        """
        if await self.provision.join(e.room_id):
            log.info("joined %s%s", e.room_id, f" on invite from {e.inviter}" if e.inviter else "")
            if e.direct and e.inviter:
                try:
                    await self.adopt_direct(e.room_id, e.inviter)
                except Exception:
                    # The room stays an ordinary one; the next start's room check does not retry
                    # it, but a new direct chat from the person would be adopted.
                    log.exception("adopting %s as the direct room of %s failed", e.room_id, e.inviter)
            return "joined"
        log.warning("joining %s failed (try %d)", e.room_id, row.attempts + 1)
        if e.inviter is None or row.attempts + 1 >= JOIN_TRIES:
            return "not joined"
        raise TemporaryDeliveryError(f"joining {e.room_id} failed",
                                     retry_after=min(30.0, 2.0 ** row.attempts))

    async def adopt_direct(self, room_id: str, user_id: str) -> bool:
        """A direct chat `user_id` opened and the hub just joined: adopt it as their direct room.

        Only a room the person created, with the two of them in it and nobody else
        invited, counts (its state is read after joining: an invite's stripped state does
        not list members). Anything else stays an ordinary room, with a word saying why.
        Adopted, it is theirs, never the hub's (`HubRoomKind.DM`): the hub sends only what is meant
        for the person and watches who is in it (`_dm_member`, `_check_dm`).
        """
        hub = self.settings().matrix.user_id
        snap = await self.provision.snapshot(room_id)
        if snap is None:
            return False
        why = _not_direct(snap, user_id, hub)
        async with self.db.transaction() as s:
            env = await self.env(s)
            if why is None:
                adopted, old = await adopt_direct_room(s, env, user_id, room_id)
                why = None if adopted else "the hub already uses it for something else"
            if why is not None:
                log.info("%s is not a direct room with %s: %s", room_id, user_id, why)
                await self._say(s, env, room_id, _not_direct_text(env.prefix, why), f"not-direct:{room_id}")
                return False
            await self._say(s, env, room_id, _hello_text(env.prefix), f"dm-hello:{room_id}")
            if old is not None:
                await leave_by_id(s, env, old, _REPLACED, key=f"direct:{user_id}:replaced")
        log.info("adopted %s as the direct room of %s%s", room_id, user_id,
                 f" (instead of {old})" if old else "")
        self.provision.feed(room_id, snap.events)  # nio may not have synced it yet: the hello is next
        try:
            await self.provision.set_direct(user_id, room_id)
        except (TemporaryDeliveryError, PermanentDeliveryError) as e:
            # Only the hub's own clients read m.direct: the room works without it.
            log.warning("m.direct not updated for %s: %s", room_id, e.reason)
        return True

    async def _dm_member(self, s: AsyncSession, env: Env, room: HubRoom, user: str, state: str) -> None:
        """Someone's membership changed in an adopted direct room (seen by the sync)."""
        if room.status != RoomStatus.READY:
            return
        if user == room.user_id:
            if state in (MembershipState.LEFT, MembershipState.BANNED):
                await drop_direct_room(s, env, room, None)  # they left it: nobody to tell
        elif state in (MembershipState.INVITED, MembershipState.JOINED):
            log.info("%s is no longer a direct room: %s %s", room.room_id, user, state)
            await drop_direct_room(s, env, room, _NOT_PRIVATE)

    async def _check_dm(self, room: HubRoom) -> None:
        """An adopted direct room at start: still the two of them? Nothing else is checked or set."""
        assert room.room_id is not None
        hub = self.settings().matrix.user_id
        snap = await self.provision.snapshot(room.room_id)
        gone = snap is None or snap.members.get(hub) != "join"
        why = None if gone or snap is None else _not_direct(snap, room.user_id or "", hub, adopted=True)
        if not gone and why is None:
            self.provision.feed(room.room_id, snap.events if snap is not None else [])
            return
        async with self.db.transaction() as s:
            env = await self.env(s)
            fresh = await self._by_key(s, room.key)
            if fresh is None or fresh.room_id != room.room_id or fresh.status != RoomStatus.READY:
                return
            log.info("giving up %s as a direct room: %s", room.room_id, why or "the hub is not in it")
            if gone:
                fresh.status = RoomStatus.CLOSED  # removed from it, or the room is gone: nothing to leave
            else:
                await drop_direct_room(s, env, fresh, _NOT_PRIVATE)


_REPLACED = ("You opened a new direct chat with me, so I'll talk with you there from now on and "
             "leave this room. What was said here stays with you.")
_NOT_PRIVATE = ("Someone else is in this chat now, so it is no longer private between you and the hub: "
                "I'm leaving it. Your private check-ins will come in a direct chat of their own, or "
                "start one with just me.")


def _hello_text(prefix: str) -> str:
    return (f"This is your private chat with the hub: only the two of us are in it. "
            f"`{prefix} checkin 1-5`, `{prefix} reflect` and `{prefix} support TEXT` work here, "
            f"and private check-ins will come here; `{prefix} help` lists the rest.")


def _not_direct_text(prefix: str, why: str) -> str:
    return (f"I've joined, but this isn't a private chat between you and me ({why}), so "
            f"`{prefix} checkin`, `{prefix} reflect` and `{prefix} support` don't work here. "
            "For those, start a direct chat with just me.")


def _not_direct(snap: RoomSnapshot, user_id: str, hub: str, *, adopted: bool = False) -> str | None:
    """Why the room is not `user_id`'s direct chat with the hub, or None if it is.

    The person made it (nobody but them and the hub holds a creator's power there: in
    room version 12 the trusted-private-chat preset, which clients use for direct chats,
    makes the invitee a creator too), and besides the hub only they are in it or invited:
    a room with a third member is not a direct room.
    """
    others = [u for u, m in snap.members.items() if m in ("join", "invite") and u not in (hub, user_id)]
    if others:
        return "other people are in it"
    if snap.members.get(user_id) != "join":
        return "you are not in it" if not adopted else "they left it"
    if user_id not in snap.created_by or not snap.created_by <= {user_id, hub}:
        return "someone else created it"
    return None
