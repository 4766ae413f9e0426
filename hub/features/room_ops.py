"""The room effects the Matrix sender hands over: create, invite, kick, leave, fix state, join.

`hub.service` maps each effect type (`hub.core.effects`) to one of these handlers;
the sender parses the row and calls the handler with the row and its effect. A
handler does the database side itself and the homeserver side through
`hub.core.homeserver.Homeserver`, so nothing here knows nio.

Creating a room is crash-safe: the row is marked `creating` (committed)
before createRoom is called, and a retry of a row so marked first looks for
a room carrying the room's tag among the hub's rooms, so a crash between
createRoom and recording its id adopts that room instead of making another.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.core.cohorts import MODERATOR_LEVEL, StateFix, state_fixes
from hub.core.content_format import escape_markdown
from hub.core.effects import CreateRoom, FixState, Invite, Kick, Leave, LeaveRoom, Outgoing
from hub.core.homeserver import RoomSnapshot
from hub.core.membership import MembershipState, RoomStatus, room_lane
from hub.core.membership import RoomKind as HubRoomKind
from hub.delivery.dispatcher import Claimed
from hub.errors import PermanentDeliveryError, TemporaryDeliveryError
from hub.features.cohort_setup import cohort_rooms
from hub.features.room_base import RoomBase, log
from hub.features.room_queue import Env, leave_by_id, queue_room_op, relane, users_in
from hub.features.room_spec import build_spec
from hub.storage.models import HubRoom, RoomMember, hub_room_table, room_member_table

__all__ = ["INVITE_CHUNK", "RoomOps"]

_DRIFT_RECHECKS = 5  # a drift fix looks again this many times for a change that came back
# People one row invites (8 at a time); the rest go on in a new row at the end of the room's
# lane (`RoomOps._continue`). At the 2-10 invites/s a homeserver manages into a room of
# thousands, a chunk holds the lane for seconds, not the hour a whole cohort took.
INVITE_CHUNK = 50


class RoomOps(RoomBase):
    async def create_room(self, row: Claimed, e: CreateRoom) -> str:
        """Create (or adopt) the room, record its id, invite its members, then release its rows.

        Each step is safe to repeat: a crash before the id is recorded finds the
        room by its tag; a crash after it finishes the invites and the release.
        """
        key = e.room_key
        async with self.db.transaction() as s:
            env = await self.env(s)
            room = await self._by_key(s, key)
            if room is None:
                raise PermanentDeliveryError(f"the hub has no room {key}")
            if e.generation is not None and room.generation != e.generation:
                return "superseded"
            if room.status == RoomStatus.CLOSED and room.room_id is None:
                return "closed before it was created"
            room_id, version = room.room_id, room.room_version
            if room_id is None:
                # `closing`: closed while being created; make (or find) it, then the queued
                # goodbye and leave follow.
                retry = room.status in (RoomStatus.CREATING, RoomStatus.CLOSING)
                spec, _ = await build_spec(s, env, room)
                if room.kind == HubRoomKind.LOUNGE and spec.parent_space is None:
                    space, _ = await cohort_rooms(s, env, room.cohort_id or 0)
                    if space is not None and space.status != RoomStatus.CLOSED:
                        raise TemporaryDeliveryError("waiting for the cohort's space", retry_after=1.0)
                known: set[str] = set()
                if retry:
                    known = {r for r in (await s.execute(select(hub_room_table.c.room_id).where(
                        hub_room_table.c.room_id.is_not(None)))).scalars() if r}
                if room.status == RoomStatus.PENDING:
                    room.status = RoomStatus.CREATING
            invitees = users_in((await s.execute(select(RoomMember).where(
                room_member_table.c.room_pk == room.id))).scalars(), MembershipState.PENDING)
        if room_id is None:
            # Committed: a crash from here on finds `creating` and looks before creating.
            version = await self.provision.room_version(spec)
            room_id = await self.provision.find_tagged(spec.tag, known) if retry else None
            if room_id is not None:
                log.info("adopted %s for %s (created before a restart)", room_id, key)
                await self.provision.load_room(room_id)
            else:
                room_id = await self.provision.create(spec, version)
            if room.kind == HubRoomKind.DIRECT and room.user_id:
                await self.provision.set_direct(room.user_id, room_id)
            if room.kind == HubRoomKind.SPACE:
                # Recorded before inviting a whole cohort, so the lounge (which names the
                # space) need not wait for that. Still `creating`: rows queued meanwhile
                # wait on the key lane. Other rooms record it all at once, below.
                async with self.db.transaction() as s:
                    recorded = await self._by_key(s, key)
                    assert recorded is not None
                    recorded.room_id, recorded.room_version = room_id, version
        # Invited before anything is posted, so the first (encrypted) message is
        # shared with the invitees' devices too. A chunk at most (a space made for a cohort
        # of thousands): the rest follow in a continuation row, queued below.
        invitees = sorted(invitees)
        invitees, rest = invitees[:INVITE_CHUNK], len(invitees) - INVITE_CHUNK
        done, failed = await self._invite_all(room_id, invitees)
        async with self.db.transaction() as s:
            env = await self.env(s)
            room = await self._by_key(s, key)
            assert room is not None
            if room.room_id is None:
                room.room_id, room.room_version = room_id, version
            elif room.room_id != room_id:
                # The person opened a direct chat while this one was being made: theirs is
                # used (`adopt_direct`), this one is left.
                await leave_by_id(s, env, room_id, None, key=f"{key}:superseded")
                return f"superseded by {room.room_id}"
            if room.status == RoomStatus.CREATING:
                room.status, room.ready_at = RoomStatus.READY, env.now()
            await self._mark_invited(s, env, room, done, failed, row)
            await relane(s, room)
            if rest > 0:  # after relane: on the room's id lane, behind what waited for the room
                await self._continue(s, env, room, invitees[-1], row)
            await self._after_created(s, env, room)
        return room_id

    async def _invite_all(self, room_id: str, users: list[str]) -> tuple[list[str], list[str]]:
        """Invite concurrently (bounded); (done, failed-for-good as "user: reason")."""
        sem = asyncio.Semaphore(8)
        done: list[str] = []
        failed: list[str] = []

        async def one(user: str) -> None:
            async with sem:
                try:
                    await self.provision.invite(room_id, user)
                    done.append(user)
                except PermanentDeliveryError as e:
                    failed.append(f"{user}: {e.reason}")

        await asyncio.gather(*(one(u) for u in users))
        return done, failed

    async def _mark_invited(self, s: AsyncSession, env: Env, room: HubRoom, done: list[str],
                            failed: list[str], row: Claimed) -> None:
        now = env.now()
        for rm in (await s.execute(select(RoomMember).where(
            (room_member_table.c.room_pk == room.id) & room_member_table.c.user_id.in_(done)
        ))).scalars():
            if rm.state == MembershipState.PENDING:
                rm.state, rm.invited_at, rm.updated_at = MembershipState.INVITED, now, now
        if failed:
            await self._alert(s, env, f"Could not invite to {await self._describe(s, room)}: "
                              + "; ".join(failed), dedupe=f"invite-failed:{row.txn_id}")

    async def _after_created(self, s: AsyncSession, env: Env, room: HubRoom) -> None:
        assert room.id is not None and room.room_id is not None
        if room.kind in (HubRoomKind.SPACE, HubRoomKind.LOUNGE) and room.cohort_id is not None:
            space, lounge = await cohort_rooms(s, env, room.cohort_id)
            # The space lists the lounge; a replaced space also needs the lounge's links redone.
            if space is not None and space.room_id and lounge is not None and lounge.room_id:
                await queue_room_op(s, env, space, FixState(space.key), kind="room-fix",
                                       dedupe_key=f"fix:{space.key}:{space.generation}:"
                                                  f"{lounge.generation}:link")
                if room.kind == HubRoomKind.SPACE:
                    await queue_room_op(s, env, lounge, FixState(lounge.key), kind="room-fix",
                                           dedupe_key=f"fix:{lounge.key}:{lounge.generation}:"
                                                      f"{space.generation}:parent")

    async def invite(self, row: Claimed, e: Invite) -> str:
        """Invite the row's users, and everyone else still pending in the room: one row
        carries the invites of many (a roster import queues one per person). At most
        `INVITE_CHUNK` of them; the rest go on in a continuation row (`_continue`)."""
        key = e.room_key
        room_id = await self.resolve(key)
        async with self.db.session() as s:
            room = await self._by_key(s, key)
            assert room is not None
            states = {r.user_id: r.state for r in (await s.execute(select(RoomMember).where(
                room_member_table.c.room_pk == room.id))).scalars()}
        # Only people still waiting for an invite: not those removed since, already
        # invited or in, or who left on their own.
        pending = MembershipState.PENDING
        users = sorted(u for u in {u for u in e.users if states.get(u, pending) == pending}
                       | {u for u, state in states.items() if state == pending}
                       if e.after is None or u > e.after)
        if not users:
            return "nothing to do"
        users, rest = users[:INVITE_CHUNK], len(users) - INVITE_CHUNK
        done, failed = await self._invite_all(room_id, users)
        async with self.db.transaction() as s:
            env = await self.env(s)
            room = await self._by_key(s, key)
            assert room is not None
            await self._mark_invited(s, env, room, done, failed, row)
            if rest > 0:
                await self._continue(s, env, room, users[-1], row)
        return (f"invited {len(done)}" + (f", {len(failed)} failed" if failed else "")
                + (f"; {rest} more in a new row" if rest > 0 else ""))

    async def _continue(self, s: AsyncSession, env: Env, room: HubRoom, last: str, row: Claimed) -> None:
        """Queue the rest of a room's invites behind whatever its lane holds now.

        One row inviting a whole cohort (10,000 people into the space and the lounge) would
        hold the room's lane for an hour on a loaded homeserver, and a lounge post (an
        announcement, the digest's pointer) queued meanwhile would wait for all of it. In
        chunks, a post waits for one chunk. Safe for the order that matters: the space and
        the lounge are unencrypted with shared history, so someone invited after a post
        still reads it; the encrypted rooms (pair and direct rooms, whose first message must
        follow the invites so their keys reach the invitees) never have a chunk's worth of
        people. The cursor (`after`) always moves on, so people whose invite failed for good
        are not tried again and again; the dedupe key makes a retried row queue it once.
        """
        out = Outgoing(Invite(room.key, (), after=last), "room-invite",
                       f"invite:{room.key}:after:{row.txn_id}", room_lane(room))
        # As the row it continues: a roster import's invites stay bulk, behind people's replies.
        await env.store.queue(s, {**env.writer.row(out), "priority": row.priority})

    async def kick(self, row: Claimed, e: Kick) -> str:
        room_id = await self.resolve(e.room_key)
        await self.provision.kick(room_id, e.user, e.reason)
        return "kicked"

    async def leave(self, row: Claimed, e: Leave) -> str:
        key = e.room_key
        async with self.db.session() as s:
            room = await self._by_key(s, key)
        if room is None or room.room_id is None:
            return "nothing to leave"
        await self.provision.leave(room.room_id)
        async with self.db.transaction() as s:
            room = await self._by_key(s, key)
            if room is not None:
                room.status = RoomStatus.CLOSED
        return "left"

    async def leave_room(self, row: Claimed, e: LeaveRoom) -> str:
        """Leave a room by id: one the hub no longer uses (a replaced or given-up direct chat)."""
        await self.provision.leave(e.room_id)
        return "left"

    async def fix_state(self, row: Claimed, e: FixState) -> str:
        key = e.room_key
        async with self.db.session() as s:
            found = await self._by_key(s, key)
        if found is not None and found.kind == HubRoomKind.DM:
            return "not the hub's room: its state is the person's"  # a fix queued before adoption
        room_id = await self.resolve(key)
        snap = await self.provision.snapshot(room_id)
        if snap is None:
            raise PermanentDeliveryError(f"the hub is not in room {key} ({room_id}) any more")
        async with self.db.session() as s:
            env = await self.env(s)
            room = await self._by_key(s, key)
            assert room is not None
            spec, children = await build_spec(s, env, room)
        fixes = state_fixes(spec, snap.state, hub=env.hub_user, room_version=snap.room_version,
                            child_rooms=children)
        demote = [u for u in e.demote if u not in spec.moderators]
        power = dict(snap.state.get(("m.room.power_levels", ""), {}))
        users = dict(power.get("users") or {})
        if any(users.get(u) == MODERATOR_LEVEL for u in demote):
            for fix in fixes:
                if fix.event_type == "m.room.power_levels":
                    users = dict(fix.content.get("users") or {})
            for u in demote:
                if users.get(u) == MODERATOR_LEVEL:
                    users.pop(u)
            fixes = [f for f in fixes if f.event_type != "m.room.power_levels"]
            await self.provision.put_state(room_id, "m.room.power_levels", "", {**power, "users": users})
        if fixes:
            # Any fix, not only one queued for drift the sync showed: a change made while the
            # hub was down can be put back first by another fix of the room (the space's link
            # to a recreated lounge), before the paged room check reaches it; the moderators
            # are told either way. Changes the hub made itself are not told (`_tell_drift`).
            await self._tell_drift(row, key, snap, fixes, env.hub_user)
        for fix in fixes:
            await self.provision.put_state(room_id, fix.event_type, fix.state_key, fix.content)
        if fixes and e.drift and row.attempts < _DRIFT_RECHECKS:
            # A change sent at the same moment as the fix forks the room's history, and state
            # resolution can then pick the change over the fix (for join rules it favours the
            # less powerful sender). Look again; the retry fixes whatever came back.
            after = await self.provision.snapshot(room_id)
            if after is not None and state_fixes(spec, after.state, hub=env.hub_user,
                                                 room_version=after.room_version, child_rooms=children):
                raise TemporaryDeliveryError(f"room {key} changed again while being fixed", retry_after=1.0)
        return "fixed: " + (", ".join(f.reason for f in fixes) or "nothing")

    async def _tell_drift(self, row: Claimed, key: str, snap: RoomSnapshot, fixes: list[StateFix],
                          hub: str) -> None:
        """Tell the moderators who changed what the hub manages, once per change.

        Told before the fix is sent: if sending it fails for good, that failure is reported
        after this. A change is its state event; one seen again (a retry, a second sync
        showing it) is not told twice. State the hub itself set (a changed config) is no one's doing.
        """
        changes = [(e, f) for f in fixes
                   if (e := snap.state_event(f.event_type, f.state_key)) is not None
                   and e.get("sender") != hub and str(e.get("event_id")) not in self._told]
        if not changes:
            return
        async with self.db.transaction() as s:
            env = await self.env(s)
            room = await self._by_key(s, key)
            assert room is not None
            who = ", ".join(sorted({escape_markdown(str(e.get("sender"))) for e, _ in changes}))
            await self._alert(s, env, f"{who} changed {await self._describe(s, room)}: "
                              f"{', '.join(f.reason for _, f in changes)}. The hub manages these and "
                              "is setting them back.", dedupe=f"drift:{row.txn_id}:{row.attempts}")
        if len(self._told) > 10_000:  # only to bound memory; a repeat after that is harmless
            self._told.clear()
        self._told.update(str(e.get("event_id")) for e, _ in changes)
