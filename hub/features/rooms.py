"""Keeping the hub's rooms as the database says: room ops, reconcile, membership, reminders.

`RoomKeeper` plugs room ops into the Matrix sender (`create_room`, `invite`,
`kick`, `leave`, `room_fix`) and resolves rows that name a room by its key.
On start (after the first sync) it reconciles: every room the hub owns is
checked against its spec and its wanted members, drift is repaired through
the outbox, and a room that is gone for the hub is replaced and reported to
the moderators. While running it records who joined and left (from sync),
sends the one 48-hour "you have not joined yet" email, and picks up config
changes and roster imports.

Creating a room is crash-safe: the row is marked `creating` (committed)
before createRoom is called, and a retry of a row so marked first looks for
a room carrying the room's tag among the hub's rooms, so a crash between
createRoom and recording its id adopts that room instead of making another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nio import RoomMemberEvent, SyncResponse
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.clock import Clock
from hub.config import Settings, load_settings
from hub.core.cohorts import (
    MODERATOR_LEVEL,
    OWNED_STATE,
    StateFix,
    not_joined_reminder,
    pair_welcome,
    state_fixes,
    video_url,
)
from hub.core.commands import RoomKind
from hub.core.content_format import escape_markdown
from hub.core.effects import FixState, Invite, Kick, Outgoing, RoomMessage, StateEvent
from hub.core.membership import RoomKind as HubRoomKind
from hub.delivery.dispatcher import Claimed
from hub.delivery.outbox import Outbox
from hub.errors import ConfigError, PermanentDeliveryError, TemporaryDeliveryError
from hub.features.cohort_setup import cohort_rooms
from hub.features.config_sync import sync_config
from hub.features.direct_rooms import adopt_direct_room, drop_direct_room
from hub.features.pairs import ensure_pair_room
from hub.features.people import is_participant, member_label, member_markdown
from hub.features.room_queue import (
    Env,
    leave_by_id,
    load_env,
    queue,
    queue_create,
    queue_email,
    queue_room_message,
    queue_room_op,
    relane,
    users_in,
)
from hub.features.room_spec import build_spec, desired_members
from hub.matrix.events import StateChange, state_changes
from hub.matrix.provision import Provision, RoomSnapshot
from hub.matrix.sender import MatrixSender
from hub.storage.db import Database
from hub.storage.models import (
    Cohort,
    HubRoom,
    Member,
    Pair,
    RoomMember,
    hub_room_table,
    member_table,
    outbox_table,
    room_member_table,
)

__all__ = ["REMINDER_AFTER", "ReconcileReport", "RoomKeeper"]

log = logging.getLogger(__name__)

REMINDER_AFTER = 48 * 3600.0
_KINDS = {"lounge": RoomKind.LOUNGE, "pair": RoomKind.PAIR, "direct": RoomKind.DIRECT,
          HubRoomKind.DM: RoomKind.DIRECT}
_LIVE = ("pending", "creating", "ready", "closing")
_DRIFT_RECHECKS = 5  # a drift fix looks again this many times for a change that came back


@dataclass
class ReconcileReport:
    checked: int = 0
    repaired: list[str] | None = None
    replaced: list[str] | None = None
    problems: list[str] | None = None

    def lines(self) -> list[str]:
        return [*(self.replaced or []), *(self.repaired or []), *(self.problems or [])]


class RoomKeeper:
    def __init__(
        self,
        *,
        db: Database,
        outbox: Outbox,
        clock: Clock,
        provision: Provision,
        settings: Callable[[], Settings],
        control_room: Callable[[], str | None],
        on_settings: Callable[[Settings], None] | None = None,
        on_config_applied: Callable[[], None] | None = None,
        tick_seconds: float = 5.0,
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.clock = clock
        self.provision = provision
        self.settings = settings
        self.control_room = control_room
        self.on_settings = on_settings
        self.on_config_applied = on_config_applied
        self.tick_seconds = tick_seconds
        self.reconciled = asyncio.Event()
        self.last_report: ReconcileReport | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._config_mtime: float | None = None
        self._env: Env | None = None
        self._ticks = 0
        self._told: set[str] = set()  # state event ids of drift already told to the moderators

    # -- wiring ---------------------------------------------------------------------------------

    def install(self, sender: MatrixSender) -> None:
        sender.ops.update({
            "create_room": self.op_create,
            "invite": self.op_invite,
            "kick": self.op_kick,
            "leave": self.op_leave,
            "room_fix": self.op_fix,
            "leave_room": self.op_leave_room,
        })
        sender.resolve_room_key = self.resolve
        sender.load_room = self.provision.load_room

    async def env(self, s: AsyncSession) -> Env:
        settings = self.settings()
        if self._env is None or self._env.settings is not settings:
            self._env = await load_env(s, self.outbox, self.clock, settings)
        return self._env

    async def start(self) -> None:
        """After the first sync: apply the config, reconcile in the background, then keep watching."""
        path = self.settings().path
        self._config_mtime = _mtime(path)
        self._tasks.append(asyncio.create_task(self._reconcile_then_watch(), name="rooms"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _reconcile_then_watch(self) -> None:
        try:
            await self.reconcile()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reconciling rooms failed; will retry on the next start")
        finally:
            self.reconciled.set()
        while True:
            await self.clock.sleep(self.tick_seconds)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("room upkeep failed; retrying")

    async def tick(self) -> None:
        await self.check_config()  # every tick: a change shows within seconds
        self._ticks += 1
        if self._ticks % 12 == 1:  # about once a minute: 48 hours need no finer grain
            await self.send_reminders()

    # -- looking rooms up ----------------------------------------------------------------------

    async def _by_key(self, s: AsyncSession, key: str) -> HubRoom | None:
        return (await s.execute(select(HubRoom).where(hub_room_table.c.key == key))).scalar_one_or_none()

    async def resolve(self, key: str) -> str:
        async with self.db.session() as s:
            room = await self._by_key(s, key)
        if room is None:
            raise PermanentDeliveryError(f"the hub has no room {key}")
        if room.status == "closed":
            raise PermanentDeliveryError(f"room {key} is closed")
        if room.room_id is None:
            raise TemporaryDeliveryError(f"room {key} is not created yet", retry_after=2.0)
        return room.room_id

    async def kind_of(self, room_id: str) -> RoomKind | None:
        async with self.db.session() as s:
            kind = (await s.execute(select(hub_room_table.c.kind).where(
                (hub_room_table.c.room_id == room_id) & (hub_room_table.c.status != "closed")
            ))).scalar_one_or_none()
        return _KINDS.get(kind, RoomKind.OTHER) if kind else None

    async def is_participant(self, user_id: str) -> bool:
        async with self.db.session() as s:
            return await is_participant(s, user_id)

    # -- ops (called by the Matrix sender for outbox rows) ------------------------------------------

    async def op_create(self, row: Claimed, p: dict[str, Any]) -> str:
        """Create (or adopt) the room, record its id, invite its members, then release its rows.

        Each step is safe to repeat: a crash before the id is recorded finds the
        room by its tag; a crash after it finishes the invites and the release.
        """
        key = str(p["room_key"])
        async with self.db.transaction() as s:
            env = await self.env(s)
            room = await self._by_key(s, key)
            if room is None:
                raise PermanentDeliveryError(f"the hub has no room {key}")
            if room.generation != p.get("generation", room.generation):
                return "superseded"
            if room.status == "closed" and room.room_id is None:
                return "closed before it was created"
            room_id, version = room.room_id, room.room_version
            if room_id is None:
                # `closing`: closed while being created; make (or find) it, then the queued
                # goodbye and leave follow.
                retry = room.status in ("creating", "closing")
                spec, _ = await build_spec(s, env, room)
                if room.kind == "lounge" and spec.parent_space is None:
                    space, _ = await cohort_rooms(s, env, room.cohort_id or 0)
                    if space is not None and space.status != "closed":
                        raise TemporaryDeliveryError("waiting for the cohort's space", retry_after=1.0)
                known: set[str] = set()
                if retry:
                    known = {r for r in (await s.execute(select(hub_room_table.c.room_id).where(
                        hub_room_table.c.room_id.is_not(None)))).scalars() if r}
                if room.status == "pending":
                    room.status = "creating"
            invitees = users_in((await s.execute(select(RoomMember).where(
                room_member_table.c.room_pk == room.id))).scalars(), "pending")
        if room_id is None:
            # Committed: a crash from here on finds `creating` and looks before creating.
            version = await self.provision.room_version(spec)
            room_id = await self.provision.find_tagged(spec.tag, known) if retry else None
            if room_id is not None:
                log.info("adopted %s for %s (created before a restart)", room_id, key)
                await self.provision.load_room(room_id)
            else:
                room_id = await self.provision.create(spec, version)
            if room.kind == "direct" and room.user_id:
                await self.provision.set_direct(room.user_id, room_id)
            if room.kind == "space":
                # Recorded before inviting a whole cohort, so the lounge (which names the
                # space) need not wait for that. Still `creating`: rows queued meanwhile
                # wait on the key lane. Other rooms record it all at once, below.
                async with self.db.transaction() as s:
                    recorded = await self._by_key(s, key)
                    assert recorded is not None
                    recorded.room_id, recorded.room_version = room_id, version
        # Invited before anything is posted, so the first (encrypted) message is
        # shared with the invitees' devices too.
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
            if room.status == "creating":
                room.status, room.ready_at = "ready", env.now()
            await self._mark_invited(s, env, room, done, failed, row)
            await relane(s, room)
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
            if rm.state == "pending":
                rm.state, rm.invited_at, rm.updated_at = "invited", now, now
        if failed:
            await self._alert(s, env, f"Could not invite to {await self._describe(s, room)}: "
                              + "; ".join(failed), dedupe=f"invite-failed:{row.txn_id}")

    async def _after_created(self, s: AsyncSession, env: Env, room: HubRoom) -> None:
        assert room.id is not None and room.room_id is not None
        if room.kind in ("space", "lounge") and room.cohort_id is not None:
            space, lounge = await cohort_rooms(s, env, room.cohort_id)
            # The space lists the lounge; a replaced space also needs the lounge's links redone.
            if space is not None and space.room_id and lounge is not None and lounge.room_id:
                await queue_room_op(s, env, space, FixState(space.key), kind="room-fix",
                                       dedupe_key=f"fix:{space.key}:{space.generation}:"
                                                  f"{lounge.generation}:link")
                if room.kind == "space":
                    await queue_room_op(s, env, lounge, FixState(lounge.key), kind="room-fix",
                                           dedupe_key=f"fix:{lounge.key}:{lounge.generation}:"
                                                      f"{space.generation}:parent")

    async def op_invite(self, row: Claimed, p: dict[str, Any]) -> str:
        """Invite the row's users, and everyone else still pending in the room: one row
        carries the invites of many (a roster import queues one per person)."""
        key = str(p["room_key"])
        room_id = await self.resolve(key)
        async with self.db.session() as s:
            room = await self._by_key(s, key)
            assert room is not None
            states = {r.user_id: r.state for r in (await s.execute(select(RoomMember).where(
                room_member_table.c.room_pk == room.id))).scalars()}
        # Only people still waiting for an invite: not those removed since, already
        # invited or in, or who left on their own.
        users = sorted({u for u in p.get("users", []) if states.get(u, "pending") == "pending"}
                       | {u for u, state in states.items() if state == "pending"})
        if not users:
            return "nothing to do"
        done, failed = await self._invite_all(room_id, users)
        async with self.db.transaction() as s:
            env = await self.env(s)
            room = await self._by_key(s, key)
            assert room is not None
            await self._mark_invited(s, env, room, done, failed, row)
        return f"invited {len(done)}" + (f", {len(failed)} failed" if failed else "")

    async def op_kick(self, row: Claimed, p: dict[str, Any]) -> str:
        room_id = await self.resolve(str(p["room_key"]))
        await self.provision.kick(room_id, str(p["user"]), str(p.get("reason", "")))
        return "kicked"

    async def op_leave(self, row: Claimed, p: dict[str, Any]) -> str:
        key = str(p["room_key"])
        async with self.db.session() as s:
            room = await self._by_key(s, key)
        if room is None or room.room_id is None:
            return "nothing to leave"
        await self.provision.leave(room.room_id)
        async with self.db.transaction() as s:
            room = await self._by_key(s, key)
            if room is not None:
                room.status = "closed"
        return "left"

    async def op_leave_room(self, row: Claimed, p: dict[str, Any]) -> str:
        """Leave a room by id: one the hub no longer uses (a replaced or given-up direct chat)."""
        await self.provision.leave(str(p["room_id"]))
        return "left"

    async def op_fix(self, row: Claimed, p: dict[str, Any]) -> str:
        key = str(p["room_key"])
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
        demote = [u for u in p.get("demote", []) if u not in spec.moderators]
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
        if fixes and p.get("drift"):
            await self._tell_drift(row, key, snap, fixes, env.hub_user)
        for fix in fixes:
            await self.provision.put_state(room_id, fix.event_type, fix.state_key, fix.content)
        if fixes and p.get("drift") and row.attempts < _DRIFT_RECHECKS:
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

    # -- direct chats people open ---------------------------------------------------------------

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

    async def _say(self, s: AsyncSession, env: Env, room_id: str, markdown: str, dedupe: str) -> None:
        await queue(s, env, Outgoing(RoomMessage.markdown(markdown, room_id=room_id), "room-notice", dedupe))

    async def _dm_member(self, s: AsyncSession, env: Env, room: HubRoom, user: str, state: str) -> None:
        """Someone's membership changed in an adopted direct room (seen by the sync)."""
        if room.status != "ready":
            return
        if user == room.user_id:
            if state in ("left", "banned"):
                await drop_direct_room(s, env, room, None)  # they left it: nobody to tell
        elif state in ("invited", "joined"):
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
            if fresh is None or fresh.room_id != room.room_id or fresh.status != "ready":
                return
            log.info("giving up %s as a direct room: %s", room.room_id, why or "the hub is not in it")
            if gone:
                fresh.status = "closed"  # removed from it, or the room is gone: nothing to leave
            else:
                await drop_direct_room(s, env, fresh, _NOT_PRIVATE)

    # -- alerts ------------------------------------------------------------------------------------

    async def _alert(self, s: AsyncSession, env: Env, text: str, *, dedupe: str) -> None:
        control = self.control_room()
        if not control:
            log.warning("%s", text)
            return
        await queue(s, env, Outgoing(RoomMessage.markdown(text, room_id=control), "alert", dedupe))

    async def _describe(self, s: AsyncSession, room: HubRoom) -> str:
        if room.kind in ("space", "lounge") and room.cohort_id is not None:
            cohort = await s.get(Cohort, room.cohort_id)
            return f"the {escape_markdown(cohort.name) if cohort else '?'} {room.kind}"
        if room.kind == "pair" and room.pair_id is not None:
            pair = await s.get(Pair, room.pair_id)
            if pair is not None:
                a, b = await s.get(Member, pair.mentor_id), await s.get(Member, pair.mentee_id)
                if a is not None and b is not None:
                    return f"the pair room of {member_markdown(a)} & {member_markdown(b)}"
        if room.kind in ("direct", HubRoomKind.DM):
            return f"the direct room with {escape_markdown(room.user_id or '?')}"
        return f"room {room.key}"

    # -- membership from sync ------------------------------------------------------------------------

    async def on_sync(self, resp: SyncResponse, first: bool) -> None:
        """Record invites, joins and leaves in the hub's rooms; welcome pair members who join."""
        hub = self.settings().matrix.user_id
        changes: dict[tuple[str, str], str] = {}
        for room_id, info in resp.rooms.join.items():
            for ev in [*info.state, *info.timeline.events]:
                if isinstance(ev, RoomMemberEvent):
                    changes[(room_id, ev.state_key)] = ev.membership
        lost = list(resp.rooms.leave.keys())
        # The first sync of a run shows all state; the start's reconcile checks that.
        drift = [] if first else state_changes(resp, hub, OWNED_STATE)
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
                if room is not None and room.status == "ready":
                    # Removed behind the hub's back while running: repair now, not at the next start.
                    task = asyncio.create_task(self._check_later(room.key))
                    self._tasks.append(task)
            await self._queue_drift_fixes(s, env, rooms, drift, str(resp.next_batch))

    async def _queue_drift_fixes(self, s: AsyncSession, env: Env, rooms: dict[str | None, HubRoom],
                                 drift: list[StateChange], batch: str) -> None:
        """Someone changed what the hub owns in one of its rooms: a fix row per room and sync batch.

        Only queued here (the sync handler does no network work); the fix compares the
        room with its spec when it is sent, and tells the moderators if anything was off.
        A batch replayed after a crash may queue a second row: it finds nothing to fix.
        """
        for room_id in dict.fromkeys(c.room_id for c in drift):
            room = rooms.get(room_id)
            if room is None or room.status != "ready" or room.kind == HubRoomKind.DM:
                continue  # an adopted direct room's state is its maker's, not the hub's
            # Keyed by the batch, not the event: state resolution can bring an event back
            # that was fixed already, and the sync then shows the same event id again.
            await queue_room_op(s, env, room, FixState(room.key, drift=True),
                                   kind="room-fix", dedupe_key=f"fix:{room.key}:drift:{batch}")

    async def _check_later(self, key: str) -> None:
        async with self.db.session() as s:
            room = await self._by_key(s, key)
        if room is not None:
            report = ReconcileReport(repaired=[], replaced=[], problems=[])
            await self.check_room(room, report)
            await self._report(report)

    async def _record(self, s: AsyncSession, env: Env, room: HubRoom, user: str, membership: str,
                      *, welcome: bool) -> None:
        rm = (await s.execute(select(RoomMember).where(
            (room_member_table.c.room_pk == room.id) & (room_member_table.c.user_id == user)
        ))).scalar_one_or_none()
        now = env.now()
        state = {"invite": "invited", "join": "joined", "leave": "left", "ban": "banned"}.get(membership)
        if state is None:
            return
        if room.kind == HubRoomKind.DM:
            await self._dm_member(s, env, room, user, state)
            return
        if rm is None:
            if room.kind in ("pair", "direct") and state in ("invited", "joined"):
                log.warning("%s is in %s but was not invited by the hub", user, room.key)
            return  # not someone the hub manages here (e.g. a guest in the lounge)
        if rm.state == "removed" and state != "joined":
            return  # a kick the hub asked for: keep the row as removed
        previous = rm.state
        rm.state, rm.updated_at = state, now
        if state == "invited" and rm.invited_at is None:
            rm.invited_at = now
        if state == "joined" and previous != "joined":
            rm.joined_at = now
            if welcome and room.kind == "pair":
                await self._welcome_member(s, env, room, user)

    async def _welcome_member(self, s: AsyncSession, env: Env, room: HubRoom, user: str) -> None:
        """A member's own welcome when they join: their devices may postdate the first one."""
        if room.pair_id is None:
            return
        pair = await s.get(Pair, room.pair_id)
        if pair is None or pair.status == "closed":
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

    # -- reconcile -------------------------------------------------------------------------------------

    async def reconcile(self) -> ReconcileReport:
        """Apply the config, then check every room the hub owns and repair what drifted."""
        report = ReconcileReport(repaired=[], replaced=[], problems=[])
        async with self.db.transaction() as s:
            env = await self.env(s)
            for change in await sync_config(s, env):
                log.info("config: %s", change)
            rooms = list((await s.execute(select(HubRoom).where(
                hub_room_table.c.status.in_(_LIVE)))).scalars())
            for room in rooms:
                if room.room_id is None:
                    await self._ensure_creation(s, env, room, report)
        sem = asyncio.Semaphore(8)

        async def one(room: HubRoom) -> None:
            async with sem:
                try:
                    await self.check_room(room, report)
                except (TemporaryDeliveryError, PermanentDeliveryError) as e:
                    assert report.problems is not None
                    report.problems.append(f"could not check {room.key}: {e.reason}")

        await asyncio.gather(*(one(r) for r in rooms if r.room_id is not None and r.status == "ready"))
        report.checked = sum(1 for r in rooms if r.room_id is not None)
        self.last_report = report
        await self._report(report)
        log.info("reconciled %d rooms: %d repaired, %d replaced, %d problems", report.checked,
                 len(report.repaired or []), len(report.replaced or []), len(report.problems or []))
        return report

    async def _ensure_creation(self, s: AsyncSession, env: Env, room: HubRoom,
                               report: ReconcileReport) -> None:
        """A room without an id must have a live create row; a failed one is tried again."""
        row = (await s.execute(select(outbox_table.c.status).where(
            outbox_table.c.dedupe_key == f"create:{room.key}:{room.generation}"))).scalar_one_or_none()
        if row == "failed":
            room.generation += 1
            room.status = "pending"
            assert report.problems is not None
            report.problems.append(f"creating {await self._describe(s, room)} had failed; trying again")
            await queue_create(s, env, room)
            if room.kind == "pair" and room.pair_id is not None:
                pair = await s.get(Pair, room.pair_id)
                if pair is not None:
                    await ensure_pair_room(s, env, pair)
        elif row is None:
            await queue_create(s, env, room)

    async def check_room(self, room: HubRoom, report: ReconcileReport) -> None:
        assert room.room_id is not None and report.repaired is not None
        hub = self.settings().matrix.user_id
        if room.kind == HubRoomKind.DM:
            await self._check_dm(room)
            return
        snap = await self.provision.snapshot(room.room_id)
        if snap is None or snap.members.get(hub) != "join":
            # Invited back, or the join rule lets the hub in: rejoining keeps the room.
            if await self.provision.join(room.room_id):
                snap = await self.provision.snapshot(room.room_id)
            if snap is None or snap.members.get(hub) != "join":
                await self._replace(room, "the hub is no longer in it (deleted, or removed)", report)
                return
            report.repaired.append(f"rejoined {room.key}")
        if not snap.owned_by(hub):
            # Recorded, but not made by the hub alone (adopted by a tag someone copied, before
            # tags had to be the hub's own): whoever made it can read everything and cannot be
            # removed. Nothing more goes there; the room is made again, and the hub leaves it.
            others = ", ".join(escape_markdown(u) for u in sorted(snap.created_by - {hub})) or "someone else"
            await self._replace(room, f"it was created by {others}, not by the hub", report)
            with contextlib.suppress(TemporaryDeliveryError, PermanentDeliveryError):
                await self.provision.leave(room.room_id)
            return
        self.provision.feed(room.room_id, snap.events)
        async with self.db.transaction() as s:
            env = await self.env(s)
            fresh = await self._by_key(s, room.key)
            if fresh is None or fresh.room_id != room.room_id:
                return
            spec, children = await build_spec(s, env, fresh)
            fixes = state_fixes(spec, snap.state, hub=hub, room_version=snap.room_version,
                                child_rooms=children)
            if fixes:
                await queue_room_op(s, env, fresh, FixState(fresh.key), kind="room-fix",
                                       dedupe_key=f"fix:{fresh.key}:reconcile:{self.clock.now().timestamp()}")
                report.repaired.append(f"{await self._describe(s, fresh)}: "
                                       + ", ".join(f.reason for f in fixes))
            await self._check_members(s, env, fresh, snap, report)

    async def _check_members(self, s: AsyncSession, env: Env, room: HubRoom, snap: RoomSnapshot,
                             report: ReconcileReport) -> None:
        assert report.repaired is not None
        wanted = await desired_members(s, env, room)
        rows = {r.user_id: r for r in (await s.execute(select(RoomMember).where(
            room_member_table.c.room_pk == room.id))).scalars()}
        now = env.now()
        missing: list[str] = []
        for user in sorted(wanted):
            actual = snap.members.get(user)
            rm = rows.get(user)
            if rm is None:
                assert room.id is not None
                rm = RoomMember(room_pk=room.id, user_id=user, state="pending", updated_at=now)
                s.add(rm)
            if actual is None or (actual == "leave" and rm.state in ("pending", "invited")):
                # Never invited (or the invite was lost): invite. Someone who left on
                # their own is not pulled back in.
                if rm.state != "pending" or actual is None:
                    missing.append(user)
                rm.state = "pending"
            else:
                state = {"invite": "invited", "join": "joined", "leave": "left", "ban": "banned"}.get(
                    actual, rm.state)
                if state != rm.state:
                    rm.state = state
                    if state == "invited" and rm.invited_at is None:
                        rm.invited_at = now
                    if state == "joined" and rm.joined_at is None:
                        rm.joined_at = now
            rm.updated_at = now
        if missing:
            await queue_room_op(s, env, room, Invite(room.key, tuple(missing)), kind="room-invite",
                                   dedupe_key=f"invite:{room.key}:reconcile:{now}")
            report.repaired.append(f"{await self._describe(s, room)}: invited {', '.join(missing)}")
        if room.kind in ("pair", "direct"):
            hub = env.hub_user
            extra = [u for u, m in snap.members.items()
                     if m in ("join", "invite") and u not in wanted and u != hub]
            # Say only what the hub can do: a kick is queued (a failure is reported on its own);
            # someone who outranks the hub cannot be removed, and the moderators must know that.
            stuck = [u for u in extra if snap.outranks(u, hub)]
            removing = [u for u in extra if u not in stuck]
            for user in removing:
                await queue_room_op(s, env, room, Kick(room.key, user, "this room is only for its pair"),
                                    kind="room-kick", dedupe_key=f"kick:{room.key}:{user}:{now}")
            what = await self._describe(s, room)
            if removing:
                report.repaired.append(f"{what}: removing {', '.join(map(escape_markdown, removing))}")
            if stuck:
                assert report.problems is not None
                report.problems.append(f"{what}: cannot remove {', '.join(map(escape_markdown, stuck))}, "
                                       "who has as much power "
                                       "as the hub there (a creator of the room)")

    async def _replace(self, room: HubRoom, reason: str, report: ReconcileReport) -> None:
        """The room is gone for the hub: make a new one (new generation), invite again, tell moderators."""
        assert report.replaced is not None
        async with self.db.transaction() as s:
            env = await self.env(s)
            fresh = await self._by_key(s, room.key)
            if fresh is None or fresh.room_id != room.room_id or fresh.status != "ready":
                return
            old = fresh.room_id
            what = await self._describe(s, fresh)
            if fresh.kind == "pair" and fresh.pair_id is not None:
                pair = await s.get(Pair, fresh.pair_id)
                if pair is None or pair.status == "closed":
                    fresh.status = "closed"
                    return
            fresh.generation += 1
            fresh.room_id, fresh.status, fresh.problem = None, "pending", f"{old}: {reason}"
            for rm in (await s.execute(select(RoomMember).where(
                room_member_table.c.room_pk == fresh.id))).scalars():
                if rm.state != "removed":
                    rm.state, rm.invited_at, rm.joined_at = "pending", None, None
            await queue_create(s, env, fresh)
            if fresh.kind == "pair" and fresh.pair_id is not None:
                pair = await s.get(Pair, fresh.pair_id)
                assert pair is not None
                await ensure_pair_room(s, env, pair)
            if fresh.kind == "lounge" and fresh.cohort_id is not None:
                space, _ = await cohort_rooms(s, env, fresh.cohort_id)
                if space is not None and space.room_id:
                    await queue_room_op(
                        s, env, space,
                        StateEvent("m.space.child", {}, state_key=old or "", room_key=space.key),
                        kind="room-state", dedupe_key=f"unlink:{space.key}:{old}")
            line = f"{what} ({old}) was lost: {reason}. A new one is being made and its members invited."
            report.replaced.append(line)
        self.provision.client.rooms.pop(room.room_id or "", None)

    async def _report(self, report: ReconcileReport) -> None:
        lines = report.lines()
        if not lines:
            return
        async with self.db.transaction() as s:
            env = await self.env(s)
            shown = lines[:30] + ([f"... and {len(lines) - 30} more"] if len(lines) > 30 else [])
            text = "Room check: " + ("\n- " if len(shown) > 1 else "") + "\n- ".join(shown)
            await self._alert(s, env, text, dedupe=f"reconcile:{env.now()}:{id(report)}")

    # -- reminders ---------------------------------------------------------------------------------------

    async def send_reminders(self) -> int:
        """One email to each member still not in their rooms 48 h after being invited."""
        async with self.db.transaction() as s:
            env = await self.env(s)
            if not env.settings.email.enabled:
                return 0
            cutoff = env.now() - REMINDER_AFTER
            rows = (await s.execute(
                select(RoomMember, HubRoom).join(HubRoom, hub_room_table.c.id == room_member_table.c.room_pk)
                .where((room_member_table.c.state == "invited") & (room_member_table.c.invited_at <= cutoff)
                       & (hub_room_table.c.status == "ready") & hub_room_table.c.cohort_id.is_not(None))
            )).all()
            waiting: dict[tuple[str, int], list[HubRoom]] = {}
            for rm, room in rows:
                assert room.cohort_id is not None
                waiting.setdefault((rm.user_id, room.cohort_id), []).append(room)
            sent = 0
            for (user, cohort_id), rooms in waiting.items():
                member = (await s.execute(select(Member).where(
                    (member_table.c.cohort_id == cohort_id) & (member_table.c.matrix_id == user)
                    & (member_table.c.status == "active")
                ))).scalar_one_or_none()
                if member is None or not member.email or member.reminded_at is not None:
                    continue
                cohort = await s.get(Cohort, cohort_id)
                assert cohort is not None
                names = [await self._describe(s, r) for r in rooms]
                subject, body = not_joined_reminder(name=member_label(member), cohort=cohort.name,
                                                    rooms=names, homeserver=env.settings.matrix.homeserver)
                # Through email_payload like every email: the subject carries the cohort's name.
                await queue_email(s, env, member.email, subject, body, kind="join-reminder",
                                     dedupe_key=f"join-reminder:{member.id}")
                member.reminded_at = env.now()
                sent += 1
        return sent

    # -- config changes ------------------------------------------------------------------------------------

    async def check_config(self) -> bool:
        """Reload the config file if it changed; apply cohorts and moderators. True if applied."""
        path = self.settings().path
        mtime = _mtime(path)
        if path is None or mtime is None or mtime == self._config_mtime:
            return False
        self._config_mtime = mtime
        try:
            fresh = load_settings(path)
        except ConfigError as e:
            async with self.db.transaction() as s:
                env = await self.env(s)
                await self._alert(s, env, "The changed config was not applied:\n- "
                                  + "\n- ".join(e.problems), dedupe=f"config-error:{mtime}")
            return False
        if self.on_settings is not None:
            self.on_settings(fresh)
        async with self.db.transaction() as s:
            env = await self.env(s)
            changes = await sync_config(s, env)
            for change in changes:
                log.info("config: %s", change)
        if changes and self.on_config_applied is not None:
            self.on_config_applied()  # after the commit: a new cohort may be due its launch post
        return True


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


def _mtime(path: Path | None) -> float | None:
    if path is None:
        return None
    with contextlib.suppress(OSError):
        return path.stat().st_mtime
    return None

