"""The room check: every room the hub owns against its spec and its wanted members.

After start (after the first sync), and again every `CHECK_EVERY`, every room is
checked; drift is repaired through the outbox, and a room that is gone for the hub
is replaced (a new generation, its members invited again) and reported to the
moderators. A room the sync shows the hub removed from is checked the same way at
once (`_check_later`).

Checking a room reads its whole state (one GET /state), so a pass costs one request
per room. It walks the rooms a page at a time (`CHECK_PAGE` rooms, then `CHECK_PAUSE`):
read all at once at start, 2,000 rooms took 30 s of the homeserver's and the hub's
time, while the first commands after a restart waited behind them. Most of what a
pass finds the sync shows first anyway (it resumes from the saved position, so
changes made while the hub was down arrive on its first sync); the pass is for what
no sync shows: a room deleted or purged, an invite that was never sent, a record
that no longer matches the room.
"""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.core.cohorts import state_fixes
from hub.core.content_format import escape_markdown
from hub.core.effects import FixState, Invite, Join, Kick, StateEvent
from hub.core.homeserver import RoomSnapshot
from hub.core.membership import (
    LIVE_ROOM,
    MATRIX_MEMBERSHIP,
    MembershipState,
    Outgoing,
    PairStatus,
    RoomStatus,
    room_lane,
)
from hub.core.membership import RoomKind as HubRoomKind
from hub.delivery.outbox import MATRIX, UNSENT, OutboxStatus
from hub.errors import PermanentDeliveryError, TemporaryDeliveryError
from hub.features.cohort_setup import cohort_rooms
from hub.features.config_sync import sync_config
from hub.features.pairs import ensure_pair_room
from hub.features.room_base import ReconcileReport, log
from hub.features.room_joins import RoomJoins
from hub.features.room_queue import Env, leave_by_id, queue, queue_create, queue_room_op
from hub.features.room_spec import build_spec, desired_members
from hub.storage.models import HubRoom, Pair, RoomMember, hub_room_table, outbox_table, room_member_table

__all__ = ["CHECK_BUSY_ROWS", "CHECK_CPU_SHARE", "CHECK_EVERY", "CHECK_PAGE", "CHECK_PAUSE",
           "CHECK_PAUSE_MAX", "CHECK_YIELD_MAX", "REJOIN_WAIT", "REPORT_EVERY", "RoomCheck", "page_pause"]

REJOIN_WAIT = 30.0  # seconds the check waits for its rejoin row to be sent
# Rooms checked per page: 20 GET /state (8 at a time) take the homeserver a few tenths of
# a second, so with `CHECK_PAUSE` between pages a pass is ~4 rooms/s: 2,000 rooms in about
# 8 minutes, 5,000 in about 21, while commands and sends go on unhindered.
CHECK_PAGE = 20
CHECK_PAUSE = 5.0  # seconds between pages
# A new pass this long after the last one began. The sync shows changes as they happen;
# the passes find what it cannot show (see the module docstring), so a few a day do.
CHECK_EVERY = 6 * 3600.0
# A pass waits between pages while more than this many Matrix rows are due (a fan-out being
# sent), for `CHECK_YIELD_MAX` seconds in all at most: a cohort's invites, thousands of people
# in rows of 50 that take hours, must not hold a pass back for as long.
CHECK_BUSY_ROWS = 100
CHECK_YIELD_MAX = 900.0
# The pause after a page is long enough that a pass takes at most this share of one core
# (the hub's CPU during the page over the page and its pause; `CHECK_PAUSE` at least,
# `CHECK_PAUSE_MAX` at most). At 5,000 rooms a page of 20 cost the hub ~130 ms, 2.7 % of a
# core at one page per 5 s for the 21 minutes of a pass after every start. At 1 % the pass
# takes about an hour there (drift no sync shows is found within the hour, not 21 min), and
# small programmes, whose pages cost little, keep the 5 s pace.
CHECK_CPU_SHARE = 0.01
CHECK_PAUSE_MAX = 60.0
# What a pass finds is told in one control-room message per minute at most (and at its end),
# not one per page: a pass over many drifted rooms is a few messages, not hundreds.
REPORT_EVERY = 60.0
_IN_FLIGHT = 8  # rooms of a page read at once
# People named per report line. A lounge missing 3,400 invites once made a report line
# of every name, and Synapse refused the whole report (M_TOO_LARGE): nobody was told.
_NAMES_SHOWN = 10


def _some(users: list[str]) -> str:
    """The first `_NAMES_SHOWN` of `users`, escaped, and how many more."""
    shown = ", ".join(escape_markdown(u) for u in users[:_NAMES_SHOWN])
    more = len(users) - _NAMES_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


def page_pause(cpu_seconds: float, minimum: float, share: float) -> float:
    """Seconds to pause after a page that cost `cpu_seconds` of CPU, so the check keeps to
    `share` of a core: `minimum` at least, `CHECK_PAUSE_MAX` at most."""
    return min(CHECK_PAUSE_MAX, max(minimum, cpu_seconds / share if share > 0 else minimum))


class RoomCheck(RoomJoins):
    # Class attributes, so a test can make pages small and quick before the hub starts.
    check_page = CHECK_PAGE
    check_pause = CHECK_PAUSE
    check_every = CHECK_EVERY
    check_yield_max = CHECK_YIELD_MAX
    check_cpu_share = CHECK_CPU_SHARE
    cpu_time = staticmethod(time.process_time)  # the process's CPU seconds (a test sets its own)

    async def check_rooms(self) -> None:
        """The room check's own task: a pass after start (config applied first), then one
        every `check_every`. `reconciled` is set once the first pass has ended."""
        first = True
        while True:
            began = self.clock.monotonic()
            try:
                await self.reconcile(apply_config=first)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the room check failed; it runs again in %.0f s", self.check_every)
            finally:
                first = False
                self.reconciled.set()
            await self.clock.sleep(max(self.check_pause, self.check_every - (self.clock.monotonic() - began)))

    async def reconcile(self, *, apply_config: bool = True) -> ReconcileReport:
        """One pass: apply the config, then check every room the hub owns, a page of
        `check_page` rooms every `check_pause` seconds, and repair what drifted."""
        report = ReconcileReport(repaired=[], replaced=[], problems=[])
        async with self.db.transaction() as s:
            env = await self.env(s)
            if apply_config:
                for change in await sync_config(s, env):
                    log.info("config: %s", change)
            rooms = list((await s.execute(select(HubRoom).where(
                hub_room_table.c.status.in_(LIVE_ROOM)))).scalars())
            for room in rooms:
                if room.room_id is None:
                    await self._ensure_creation(s, env, room, report)
        # Ids only: each page reads its rooms again, as they are by then (replaced, closed).
        pending = [r.id for r in rooms
                   if r.id is not None and r.room_id is not None and r.status == RoomStatus.READY]
        report.checked = sum(1 for r in rooms if r.room_id is not None)
        untold, told_at = report.lines(), self.clock.monotonic()
        yielded, pause = 0.0, self.check_pause
        for start in range(0, len(pending), max(1, self.check_page)):
            if start:
                await self.clock.sleep(pause)
                yielded += await self._behind_fanout(self.check_yield_max - yielded)
            cpu = self.cpu_time()
            page = await self._check_page(pending[start:start + self.check_page])
            pause = page_pause(self.cpu_time() - cpu, self.check_pause, self.check_cpu_share)
            for mine, theirs in ((report.repaired, page.repaired), (report.replaced, page.replaced),
                                 (report.problems, page.problems)):
                assert mine is not None
                mine.extend(theirs or [])
            untold.extend(page.lines())
            if untold and self.clock.monotonic() - told_at >= REPORT_EVERY:
                await self._tell(untold, report)
                untold, told_at = [], self.clock.monotonic()
        await self._tell(untold, report)
        self.last_report = report
        log.info("checked %d rooms: %d repaired, %d replaced, %d problems", report.checked,
                 len(report.repaired or []), len(report.replaced or []), len(report.problems or []))
        return report

    async def _behind_fanout(self, budget: float) -> float:
        """Wait (a pause at a time, `budget` seconds at most) while a fan-out is being sent:
        more than `CHECK_BUSY_ROWS` Matrix rows due. An icebreaker to 5,000 pair rooms is what
        people wait for; a page of the check takes the homeserver's time from it (each read of
        a room's state costs it more than a send), and drift found a few minutes later is
        repaired all the same. Returns the seconds waited."""
        waited = 0.0
        while waited < budget and await self.outbox.unsent(due_only=True, channel=MATRIX) > CHECK_BUSY_ROWS:
            await self.clock.sleep(self.check_pause)
            waited += self.check_pause
        return waited

    async def _check_page(self, ids: list[int]) -> ReconcileReport:
        report = ReconcileReport(repaired=[], replaced=[], problems=[])
        async with self.db.session() as s:
            rooms = list((await s.execute(select(HubRoom).where(
                hub_room_table.c.id.in_(ids) & (hub_room_table.c.status == RoomStatus.READY)
                & hub_room_table.c.room_id.is_not(None)))).scalars())
        sem = asyncio.Semaphore(_IN_FLIGHT)

        async def one(room: HubRoom) -> None:
            async with sem:
                try:
                    await self.check_room(room, report)
                except (TemporaryDeliveryError, PermanentDeliveryError) as e:
                    assert report.problems is not None
                    report.problems.append(f"could not check {room.key}: {e.reason}")

        await asyncio.gather(*(one(r) for r in rooms))
        return report

    async def _ensure_creation(self, s: AsyncSession, env: Env, room: HubRoom,
                               report: ReconcileReport) -> None:
        """A room without an id must have a live create row; a failed one is tried again."""
        row = (await s.execute(select(outbox_table.c.status).where(
            outbox_table.c.dedupe_key == f"create:{room.key}:{room.generation}"))).scalar_one_or_none()
        if row == OutboxStatus.FAILED:
            room.generation += 1
            room.status = RoomStatus.PENDING
            assert report.problems is not None
            report.problems.append(f"creating {await self._describe(s, room)} had failed; trying again")
            await queue_create(s, env, room)
            if room.kind == HubRoomKind.PAIR and room.pair_id is not None:
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
            if await self._rejoin(room):
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
            async with self.db.transaction() as s:
                await leave_by_id(s, await self.env(s), room.room_id, None, key="not-owned")
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

    async def _invite_queued(self, s: AsyncSession, room: HubRoom) -> bool:
        """Whether an invite row for the room is still to run (queued, or being sent)."""
        return (await s.execute(select(outbox_table.c.seq).where(
            (outbox_table.c.lane == room_lane(room)) & (outbox_table.c.kind == "room-invite")
            & outbox_table.c.status.in_(UNSENT)).limit(1))).first() is not None

    async def _check_members(self, s: AsyncSession, env: Env, room: HubRoom, snap: RoomSnapshot,
                             report: ReconcileReport) -> None:
        assert report.repaired is not None
        wanted = await desired_members(s, env, room)
        rows = {r.user_id: r for r in (await s.execute(select(RoomMember).where(
            room_member_table.c.room_pk == room.id))).scalars()}
        now = env.now()
        missing: list[str] = []
        # An invite row still to run invites everyone pending when it does: their invites
        # are on the way, not lost (a cohort of thousands takes a while). Re-queued and
        # reported as repaired, each start's check added another row of the same people.
        queued = await self._invite_queued(s, room)
        for user in sorted(wanted):
            actual = snap.members.get(user)
            rm = rows.get(user)
            on_the_way = queued
            if rm is None:
                assert room.id is not None
                rm = RoomMember(room_pk=room.id, user_id=user, state=MembershipState.PENDING, updated_at=now)
                s.add(rm)
                on_the_way = False  # new to the room here: no row of before names them
            waiting = (MembershipState.PENDING, MembershipState.INVITED)
            if actual is None or (actual == "leave" and rm.state in waiting):
                # Never invited (or the invite was lost): invite. Someone who left on
                # their own is not pulled back in.
                if rm.state != MembershipState.PENDING or (actual is None and not on_the_way):
                    missing.append(user)
                if rm.state != MembershipState.PENDING:
                    rm.state, rm.updated_at = MembershipState.PENDING, now
            else:
                state = MATRIX_MEMBERSHIP.get(actual, rm.state)
                if state != rm.state:
                    rm.state, rm.updated_at = state, now
                    if state == MembershipState.INVITED and rm.invited_at is None:
                        rm.invited_at = now
                    if state == MembershipState.JOINED and rm.joined_at is None:
                        rm.joined_at = now
            # Only a change is written: a space or lounge of 10,000 people took as many UPDATEs
            # on every pass, for nothing.
        if missing:
            await queue_room_op(s, env, room, Invite(room.key, tuple(missing)), kind="room-invite",
                                   dedupe_key=f"invite:{room.key}:reconcile:{now}")
            report.repaired.append(f"{await self._describe(s, room)}: invited {_some(missing)}")
        if room.kind in (HubRoomKind.PAIR, HubRoomKind.DIRECT):
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
                report.repaired.append(f"{what}: removing {_some(removing)}")
            if stuck:
                assert report.problems is not None
                report.problems.append(f"{what}: cannot remove {_some(stuck)}, "
                                       "who has as much power "
                                       "as the hub there (a creator of the room)")

    async def _replace(self, room: HubRoom, reason: str, report: ReconcileReport) -> None:
        """The room is gone for the hub: make a new one (new generation), invite again, tell moderators."""
        assert report.replaced is not None
        async with self.db.transaction() as s:
            env = await self.env(s)
            fresh = await self._by_key(s, room.key)
            if fresh is None or fresh.room_id != room.room_id or fresh.status != RoomStatus.READY:
                return
            old = fresh.room_id
            what = await self._describe(s, fresh)
            if fresh.kind == HubRoomKind.PAIR and fresh.pair_id is not None:
                pair = await s.get(Pair, fresh.pair_id)
                if pair is None or pair.status == PairStatus.CLOSED:
                    fresh.status = RoomStatus.CLOSED
                    return
            fresh.generation += 1
            fresh.room_id, fresh.status, fresh.problem = None, RoomStatus.PENDING, f"{old}: {reason}"
            for rm in (await s.execute(select(RoomMember).where(
                room_member_table.c.room_pk == fresh.id))).scalars():
                if rm.state != MembershipState.REMOVED:
                    rm.state, rm.invited_at, rm.joined_at = MembershipState.PENDING, None, None
            await queue_create(s, env, fresh)
            if fresh.kind == HubRoomKind.PAIR and fresh.pair_id is not None:
                pair = await s.get(Pair, fresh.pair_id)
                assert pair is not None
                await ensure_pair_room(s, env, pair)
            if fresh.kind == HubRoomKind.LOUNGE and fresh.cohort_id is not None:
                space, _ = await cohort_rooms(s, env, fresh.cohort_id)
                if space is not None and space.room_id:
                    await queue_room_op(
                        s, env, space,
                        StateEvent("m.space.child", {}, state_key=old or "", room_key=space.key),
                        kind="room-state", dedupe_key=f"unlink:{space.key}:{old}")
            line = f"{what} ({old}) was lost: {reason}. A new one is being made and its members invited."
            report.replaced.append(line)
        self.provision.forget(room.room_id or "")

    async def _rejoin(self, room: HubRoom) -> bool:
        """Back into the room if the hub may (invited back, or the join rule lets it in).

        A Matrix write like any other, so an outbox row (its own lane: rows for the room
        itself would wait behind it); the check waits for its outcome, bounded, and a
        rejoin that did not happen in time is a problem to report, not a reason to replace.
        """
        assert room.room_id is not None
        key = f"rejoin:{room.key}:{room.generation}:{self.clock.now().timestamp()}"
        async with self.db.transaction() as s:
            rejoin = Join(room.room_id, room_key=room.key)
            await queue(s, await self.env(s), Outgoing(rejoin, "room-join", key, lane=f"join:{room.room_id}"))
        outcome = await self.outbox.outcome(key, within=REJOIN_WAIT)
        if outcome is None:
            raise TemporaryDeliveryError(f"rejoining it took longer than {REJOIN_WAIT:.0f} s")
        status, result = outcome
        return status == OutboxStatus.SENT and result == "joined"

    async def _report(self, report: ReconcileReport) -> None:
        await self._tell(report.lines(), report)

    async def _tell(self, lines: list[str], report: ReconcileReport) -> None:
        if not lines:
            return
        async with self.db.transaction() as s:
            env = await self.env(s)
            shown = lines[:30] + ([f"... and {len(lines) - 30} more"] if len(lines) > 30 else [])
            text = "Room check: " + ("\n- " if len(shown) > 1 else "") + "\n- ".join(shown)
            report.told += 1
            await self._alert(s, env, text, dedupe=f"reconcile:{env.now()}:{id(report)}:{report.told}")

    async def _check_later(self, key: str) -> None:
        async with self.db.session() as s:
            room = await self._by_key(s, key)
        if room is not None:
            report = ReconcileReport(repaired=[], replaced=[], problems=[])
            await self.check_room(room, report)
            await self._report(report)
