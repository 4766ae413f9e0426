"""Keeping the hub's rooms as the database says: `RoomKeeper`, and its upkeep.

`RoomKeeper` is one object made of the room jobs, one module each
(hub.features.room_base explains the stack): the handlers of room effects
(`room_ops`, `room_joins`), the room check (`room_check`) and membership from
the sync (`room_sync`). This module adds its life: on start (after the first
sync) it starts the room check's passes (a page of rooms at a time), and keeps
watching: it sends the one 48-hour "you have not joined yet" email and picks up
config changes and roster imports.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from sqlalchemy import select

from hub.config import load_settings
from hub.core.cohorts import not_joined_reminder
from hub.core.membership import MembershipState, MemberStatus, RoomStatus
from hub.errors import ConfigError
from hub.features.config_sync import sync_config
from hub.features.people import member_label
from hub.features.room_base import ReconcileReport, log
from hub.features.room_queue import queue_email
from hub.features.room_sync import RoomSync
from hub.storage.models import (
    Cohort,
    HubRoom,
    Member,
    RoomMember,
    hub_room_table,
    member_table,
    room_member_table,
)

__all__ = ["REMINDER_AFTER", "ReconcileReport", "RoomKeeper"]

REMINDER_AFTER = 48 * 3600.0


class RoomKeeper(RoomSync):
    async def start(self) -> None:
        """After the first sync: apply the config and check the rooms in the background (a page
        at a time, hub.features.room_check), and keep watching the config and the reminders."""
        path = self.settings().path
        self._config_mtime = _mtime(path)
        self._tasks.append(asyncio.create_task(self.check_rooms(), name="room-check"))
        self._tasks.append(asyncio.create_task(self._watch(), name="rooms"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _watch(self) -> None:
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
                .where((room_member_table.c.state == MembershipState.INVITED)
                       & (room_member_table.c.invited_at <= cutoff)
                       & (hub_room_table.c.status == RoomStatus.READY)
                       & hub_room_table.c.cohort_id.is_not(None))
            )).all()
            waiting: dict[tuple[str, int], list[HubRoom]] = {}
            for rm, room in rows:
                assert room.cohort_id is not None
                waiting.setdefault((rm.user_id, room.cohort_id), []).append(room)
            sent = 0
            for (user, cohort_id), rooms in waiting.items():
                member = (await s.execute(select(Member).where(
                    (member_table.c.cohort_id == cohort_id) & (member_table.c.matrix_id == user)
                    & (member_table.c.status == MemberStatus.ACTIVE)
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


def _mtime(path: Path | None) -> float | None:
    if path is None:
        return None
    with contextlib.suppress(OSError):
        return path.stat().st_mtime
    return None
