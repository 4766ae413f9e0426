"""Membership from the sync: who was invited, joined or left the hub's rooms; drift to fix.

The sync handler only records and queues (no network work): a pair member who
joins gets their own welcome, a change someone made to what the hub manages gets
a `room_fix` row, and a room the hub was removed from is checked again at once.
It receives `hub.core.homeserver.RoomSyncFacts`, made from nio's sync response by
the Matrix adapter (`hub.matrix.events.room_facts`).
"""

from __future__ import annotations

import asyncio

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.core.cohorts import pair_welcome, video_url
from hub.core.effects import FixState
from hub.core.homeserver import RoomSyncFacts, StateChange
from hub.core.membership import MATRIX_MEMBERSHIP, MembershipState, PairStatus, RoomStatus
from hub.core.membership import RoomKind as HubRoomKind
from hub.features.people import member_label
from hub.features.room_base import log
from hub.features.room_check import RoomCheck
from hub.features.room_queue import Env, queue_room_message, queue_room_op
from hub.storage.models import Cohort, HubRoom, Member, Pair, RoomMember, hub_room_table, room_member_table

__all__ = ["RoomSync"]


class RoomSync(RoomCheck):
    async def on_sync(self, facts: RoomSyncFacts, first: bool) -> None:
        """Record invites, joins and leaves in the hub's rooms; welcome pair members who join."""
        hub = self.settings().matrix.user_id
        changes, lost = facts.memberships, facts.left
        # The first sync of a run shows all state; the start's reconcile checks that.
        drift = [] if first else facts.drift
        if not changes and not lost and not drift:
            return
        room_ids = {r for r, _ in changes} | set(lost) | {c.room_id for c in drift}
        async with self.db.transaction() as s:
            env = await self.env(s)
            rooms = {r.room_id: r for r in (await s.execute(select(HubRoom).where(
                hub_room_table.c.room_id.in_(room_ids)))).scalars()}
            if not rooms:
                return
            for (room_id, user), membership in changes.items():
                room = rooms.get(room_id)
                if room is None or user == hub:
                    continue
                await self._record(s, env, room, user, membership, welcome=not first)
            for room_id in lost:
                room = rooms.get(room_id)
                if room is not None and room.status == RoomStatus.READY:
                    # Removed behind the hub's back while running: repair now, not at the next start.
                    task = asyncio.create_task(self._check_later(room.key))
                    self._tasks.append(task)
            await self._queue_drift_fixes(s, env, rooms, drift, facts.batch)
        # After the commit: a batch's lookup made from here on reads the change.
        self.membership_changed({r for r, _ in changes})

    async def _queue_drift_fixes(self, s: AsyncSession, env: Env, rooms: dict[str | None, HubRoom],
                                 drift: list[StateChange], batch: str) -> None:
        """Someone changed what the hub owns in one of its rooms: a fix row per room and sync batch.

        Only queued here (the sync handler does no network work); the fix compares the
        room with its spec when it is sent, and tells the moderators if anything was off.
        A batch replayed after a crash may queue a second row: it finds nothing to fix.
        """
        for room_id in dict.fromkeys(c.room_id for c in drift):
            room = rooms.get(room_id)
            if room is None or room.status != RoomStatus.READY or room.kind == HubRoomKind.DM:
                continue  # an adopted direct room's state is its maker's, not the hub's
            # Keyed by the batch, not the event: state resolution can bring an event back
            # that was fixed already, and the sync then shows the same event id again.
            await queue_room_op(s, env, room, FixState(room.key, drift=True),
                                   kind="room-fix", dedupe_key=f"fix:{room.key}:drift:{batch}")

    async def _record(self, s: AsyncSession, env: Env, room: HubRoom, user: str, membership: str,
                      *, welcome: bool) -> None:
        rm = (await s.execute(select(RoomMember).where(
            (room_member_table.c.room_pk == room.id) & (room_member_table.c.user_id == user)
        ))).scalar_one_or_none()
        now = env.now()
        state = MATRIX_MEMBERSHIP.get(membership)
        if state is None:
            return
        if room.kind == HubRoomKind.DM:
            await self._dm_member(s, env, room, user, state)
            return
        if rm is None:
            hub_only = room.kind in (HubRoomKind.PAIR, HubRoomKind.DIRECT)
            if hub_only and state in (MembershipState.INVITED, MembershipState.JOINED):
                log.warning("%s is in %s but was not invited by the hub", user, room.key)
            return  # not someone the hub manages here (e.g. a guest in the lounge)
        if rm.state == MembershipState.REMOVED and state != MembershipState.JOINED:
            return  # a kick the hub asked for: keep the row as removed
        previous = rm.state
        rm.state, rm.updated_at = state, now
        if state == MembershipState.INVITED and rm.invited_at is None:
            rm.invited_at = now
        if state == MembershipState.JOINED and previous != MembershipState.JOINED:
            rm.joined_at = now
            if welcome and room.kind == HubRoomKind.PAIR:
                await self._welcome_member(s, env, room, user)

    async def _welcome_member(self, s: AsyncSession, env: Env, room: HubRoom, user: str) -> None:
        """A member's own welcome when they join: their devices may postdate the first one."""
        if room.pair_id is None:
            return
        pair = await s.get(Pair, room.pair_id)
        if pair is None or pair.status == PairStatus.CLOSED:
            return
        a, b = await s.get(Member, pair.mentor_id), await s.get(Member, pair.mentee_id)
        cohort = await s.get(Cohort, pair.cohort_id)
        if a is None or b is None or cohort is None:
            return
        me = a if a.matrix_id == user else b
        text = pair_welcome(mentor=member_label(a), mentee=member_label(b), cohort=cohort.name,
                            link=video_url(env.settings.video.base_url, pair.video_name),
                            prefix=env.prefix, for_name=member_label(me))
        await queue_room_message(s, env, room, text, kind="pair-welcome",
                                    dedupe_key=f"welcome:{room.key}:{room.generation}:{user}")
