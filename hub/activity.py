"""What the hub learns from its sync for the digest: activity counts, and lounge posts with reactions.

The privacy rule is enforced here, before any content is looked at: the room's
kind is read from ``hub_room`` first, and only a **lounge** event's body is
ever read, shortened and stored (`lounge_post.excerpt`). For pair and direct
rooms the recorder keeps a count and the time of the last message in
``room_activity``; it never reads their bodies (encrypted or not), so there is
nothing of theirs that could reach a digest, a report or an email.

Replays are harmless: posts and reactions are keyed by event id, and a room's
counter only moves for events newer than the last one it counted (a sync batch
is in timeline order, and a batch handled again after a crash is not newer).

Only people's messages are activity: the hub's own (welcomes, icebreakers,
replies) and state events (joins, pins, power levels) are not. A message's time
is its server timestamp, but never later than the hub's clock when the sync
brought it: "days since active" is measured on that clock, and a server whose
clock runs ahead (or the demo, which plays a program in the past on a shifted
clock while the homeserver stamps real time) would otherwise make every pair
look active "today". (With such a clock a batch replayed after a crash is
counted again, at the time it was seen again; the count is shown nowhere, and
a sane clock never clamps.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from hub.clock import Clock, SystemClock
from hub.core.digest import excerpt
from hub.core.membership import RoomKind
from hub.storage.db import Database
from hub.storage.models import (
    hub_room_table,
    lounge_post_table,
    lounge_reaction_table,
    room_activity_table,
)

__all__ = [
    "KEEP_POSTS",
    "ActivityRecorder",
    "PostStats",
    "lounge_messages_since",
    "pair_last_active",
    "prune",
    "top_lounge_posts",
]

log = logging.getLogger(__name__)

KEEP_POSTS = timedelta(days=35)  # excerpts older than this are deleted: the digest looks back 7 days
_TRACKED = (RoomKind.LOUNGE, RoomKind.PAIR, RoomKind.DIRECT)
# Event types that are "someone said something" (encrypted ones count without being read).
_MESSAGE_TYPES = ("m.room.message", "m.room.encrypted", "m.sticker")
_POST_MSGTYPES = ("m.text", "m.emote", "m.image", "m.file", "m.video", "m.audio")
_NAME_LENGTH = 200

DisplayName = Callable[[str, str], str]  # (room_id, user_id) -> the name the room shows


@dataclass(frozen=True, slots=True)
class PostStats:
    room_id: str
    event_id: str
    sender: str
    sender_name: str
    excerpt: str
    reactions: int


def _relation(content: dict[str, Any]) -> tuple[str | None, str | None]:
    rel = content.get("m.relates_to")
    if not isinstance(rel, dict):
        return None, None
    target = rel.get("event_id")
    kind = rel.get("rel_type")
    return (kind if isinstance(kind, str) else None), (target if isinstance(target, str) else None)


def _insert_ignore(db: Database, table: Any) -> Any:
    # The same "insert unless the key exists" on both backends, so replays are no-ops.
    return (pg_insert if db.is_postgres else sqlite_insert)(table)


class ActivityRecorder:
    """Hooked into `Hub._on_sync`; one instance per process."""

    def __init__(self, db: Database, own_user_id: str, *, display_name: DisplayName | None = None,
                 command_prefix: str = "!hub", clock: Clock | None = None) -> None:
        self.db = db
        self.own_user_id = own_user_id
        self.clock = clock or SystemClock()
        self.display_name = display_name or (lambda _room, user: user)
        self.command_prefix = command_prefix

    async def on_sync(self, resp: Any) -> None:
        """Count one sync's messages (`resp`: a nio SyncResponse, read by duck typing like its
        events: the features import this module for the counts, and they import no nio)."""
        batches = {room_id: list(info.timeline.events)
                   for room_id, info in resp.rooms.join.items() if info.timeline.events}
        if not batches:
            return
        seen_at = self.clock.now().timestamp()
        async with self.db.transaction() as s:
            kinds = dict((await s.execute(
                select(hub_room_table.c.room_id, hub_room_table.c.kind).where(
                    hub_room_table.c.room_id.in_(list(batches)) & hub_room_table.c.kind.in_(_TRACKED))
            )).all())
            for room_id, kind in kinds.items():
                await self._room(s, room_id, kind, batches[room_id], seen_at)

    async def _room(self, s: AsyncSession, room_id: str, kind: str, events: Iterable[Any],
                    seen_at: float) -> None:
        last = (await s.execute(select(room_activity_table.c.last_active_at).where(
            room_activity_table.c.room_id == room_id))).scalar_one_or_none()
        newest, count = last or 0.0, 0
        for ev in events:
            sender = getattr(ev, "sender", None)
            source: dict[str, Any] = getattr(ev, "source", None) or {}
            etype = source.get("type")
            if sender is None or sender == self.own_user_id:
                continue
            ts = min(float(getattr(ev, "server_timestamp", 0) or 0) / 1000, seen_at)
            if etype in _MESSAGE_TYPES and ts > (last or 0.0):
                count, newest = count + 1, max(newest, ts)
            if kind == RoomKind.LOUNGE:
                # The only branch that reads content, and only for the lounge.
                await self._lounge(s, room_id, ev, sender, str(etype), source, ts)
        if count == 0:
            return
        if last is None:
            await s.execute(_insert_ignore(self.db, room_activity_table).values(
                room_id=room_id, kind=kind, messages=count, last_active_at=newest
            ).on_conflict_do_nothing())
        else:
            await s.execute(update(room_activity_table).where(room_activity_table.c.room_id == room_id)
                            .values(messages=room_activity_table.c.messages + count, last_active_at=newest))

    async def _lounge(self, s: AsyncSession, room_id: str, ev: Any, sender: str, etype: str,
                      source: dict[str, Any], ts: float) -> None:
        content = source.get("content")
        if not isinstance(content, dict):
            return
        rel_type, target = _relation(content)
        if etype == "m.reaction" and rel_type == "m.annotation" and target:
            await s.execute(_insert_ignore(self.db, lounge_reaction_table).values(
                event_id=ev.event_id, post_event_id=target, sender=sender, sent_at=ts
            ).on_conflict_do_nothing())
        elif etype == "m.room.redaction":
            # Someone deleted a post or took back a reaction: the digest forgets it too.
            gone = source.get("redacts") or content.get("redacts")
            if isinstance(gone, str):
                await s.execute(delete(lounge_post_table).where(lounge_post_table.c.event_id == gone))
                await s.execute(delete(lounge_reaction_table).where(
                    (lounge_reaction_table.c.event_id == gone)
                    | (lounge_reaction_table.c.post_event_id == gone)))
        elif etype == "m.room.message":
            body = content.get("body")
            if rel_type == "m.replace" and target:
                new = content.get("m.new_content")
                text = new.get("body") if isinstance(new, dict) else None
                if isinstance(text, str):
                    await s.execute(update(lounge_post_table).where(
                        (lounge_post_table.c.event_id == target) & (lounge_post_table.c.sender == sender)
                    ).values(excerpt=excerpt(text)))
                return
            if (not isinstance(body, str) or content.get("msgtype") not in _POST_MSGTYPES
                    or body.lstrip().startswith(self.command_prefix)):
                return  # notices are bots', and a command is not a post
            name = self.display_name(room_id, sender)[:_NAME_LENGTH]
            await s.execute(_insert_ignore(self.db, lounge_post_table).values(
                event_id=ev.event_id, room_id=room_id, sender=sender, sender_name=name,
                excerpt=excerpt(body), sent_at=ts,
            ).on_conflict_do_nothing())


# -- reading it back ------------------------------------------------------------------------------


async def pair_last_active(s: AsyncSession, cohort_id: int) -> dict[int, float]:
    """pair id -> when someone last said something in its (current) room; a time, no words."""
    R, A = hub_room_table, room_activity_table
    rows = (await s.execute(
        select(R.c.pair_id, A.c.last_active_at).join(A, A.c.room_id == R.c.room_id)
        .where((R.c.cohort_id == cohort_id) & (R.c.kind == RoomKind.PAIR) & R.c.pair_id.is_not(None))
    )).all()
    return {int(pid): float(at) for pid, at in rows}


async def lounge_messages_since(s: AsyncSession, room_id: str, since: datetime) -> int:
    return int((await s.execute(select(func.count()).select_from(lounge_post_table).where(
        (lounge_post_table.c.room_id == room_id) & (lounge_post_table.c.sent_at >= since.timestamp())
    ))).scalar() or 0)


async def top_lounge_posts(s: AsyncSession, room_id: str, since: datetime, limit: int = 3) -> list[PostStats]:
    """The most-reacted lounge posts sent since `since`, most reactions first.

    Only other people's reactions count: an author reacting to their own post (or
    adding five emoji to it) would otherwise rank it above what others liked.
    """
    P, Rx = lounge_post_table, lounge_reaction_table
    reactions = func.count(Rx.c.event_id)
    rows = (await s.execute(
        select(P.c.event_id, P.c.sender, P.c.sender_name, P.c.excerpt, reactions)
        .join(Rx, (Rx.c.post_event_id == P.c.event_id) & (Rx.c.sender != P.c.sender))
        .where((P.c.room_id == room_id) & (P.c.sent_at >= since.timestamp()))
        .group_by(P.c.event_id, P.c.sender, P.c.sender_name, P.c.excerpt, P.c.sent_at)
        .order_by(reactions.desc(), P.c.sent_at).limit(limit)
    )).all()
    return [PostStats(room_id, e, snd, name, text, int(n)) for e, snd, name, text, n in rows]


async def prune(s: AsyncSession, now: datetime) -> None:
    """Drop old excerpts and their reactions: nothing is kept longer than the digest needs."""
    cutoff = (now - KEEP_POSTS).timestamp()
    old = select(lounge_post_table.c.event_id).where(lounge_post_table.c.sent_at < cutoff)
    await s.execute(delete(lounge_reaction_table).where(lounge_reaction_table.c.post_event_id.in_(old)))
    await s.execute(delete(lounge_post_table).where(lounge_post_table.c.sent_at < cutoff))
