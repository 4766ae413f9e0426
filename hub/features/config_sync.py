"""Applying the config's `[[cohort]]` tables and `matrix.moderators` to the database."""

from __future__ import annotations

import json

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from hub.core.cohorts import Who
from hub.core.membership import RoomKind, RoomStatus
from hub.features.cohort_setup import cohort_rooms, config_moderators, create_cohort, get_cohort
from hub.features.people import find_member
from hub.features.room_queue import Env, queue_fix, unwant, want
from hub.storage.models import HubRoom, KeyValue, hub_room_table

__all__ = ["sync_config"]

_CONFIG_MODS_KEY = "cohorts.config_moderators"
# Distinct from the dispatcher's lock class; one key, since config syncs are rare and short.
_CONFIG_LOCK = (0x48554231, 1)


async def sync_config(s: AsyncSession, env: Env) -> list[str]:
    """Apply `[[cohort]]` and `matrix.moderators` from the config; returns what changed, for the log."""
    if s.bind is not None and s.bind.dialect.name == "postgresql":
        # The running hub and a `hub roster import` may both find a configured cohort missing
        # and create it; under READ COMMITTED one would then fail on the unique slug. Waiting
        # here until the other commits means the lookups below see its rows. (On SQLite the
        # write transaction's BEGIN IMMEDIATE already serialises them.)
        await s.execute(text("SELECT pg_advisory_xact_lock(:c, :i)"),
                        {"c": _CONFIG_LOCK[0], "i": _CONFIG_LOCK[1]})
    changes: list[str] = []
    for c in env.settings.cohorts:
        cohort = await get_cohort(s, c.slug)
        if cohort is None:
            await create_cohort(s, env, slug=c.slug, name=c.name, timezone=c.timezone.key,
                                start=c.start, weeks=c.weeks, source="config")
            changes.append(f"cohort {c.slug} created from the config")
            continue
        if cohort.source != "config":
            continue  # made with `cohort create`; the config only adds, never takes over
        renamed = cohort.name != c.name
        cohort.name, cohort.timezone, cohort.weeks = c.name, c.timezone.key, c.weeks
        if c.start is not None:
            cohort.start_date = c.start.isoformat()
        if renamed:
            assert cohort.id is not None
            for room in await cohort_rooms(s, env, cohort.id):
                if room is not None:
                    await queue_fix(s, env, room)
            changes.append(f"cohort {c.slug} renamed to {c.name!r}")
    # Moderators: invited to every cohort's space and lounge at power 50; the
    # previous list is remembered so that removing one from the config is acted on too.
    kv = await s.get(KeyValue, _CONFIG_MODS_KEY)
    before = set(json.loads(kv.value)) if kv is not None and kv.value else set()
    now_mods = set(config_moderators(env))
    added, dropped = now_mods - before, before - now_mods
    if added or dropped:
        touched = 0
        for room in (await s.execute(select(HubRoom).where(
            hub_room_table.c.kind.in_((RoomKind.SPACE, RoomKind.LOUNGE))
            & (hub_room_table.c.status != RoomStatus.CLOSED)
        ))).scalars():
            assert room.cohort_id is not None
            changed = [await want(s, env, room, mod) for mod in sorted(added)]
            for mod in sorted(dropped):
                if await find_member(s, env, room.cohort_id, Who(matrix_id=mod)) is None:
                    changed.append(await unwant(s, env, room, mod, "no longer a moderator"))
            if any(changed) or dropped:
                # Power levels follow at send time (room_fix reads the moderators then).
                await queue_fix(s, env, room, demote=sorted(dropped))
                touched += 1
        if touched:
            changes.append(f"moderators: added {sorted(added) or 'none'}, "
                           f"removed {sorted(dropped) or 'none'}")
    value = json.dumps(sorted(now_mods))
    if kv is None:
        s.add(KeyValue(key=_CONFIG_MODS_KEY, value=value))
    else:
        kv.value = value
    return changes
