"""The bulk-operation store: one transaction's membership lookups answered from memory.

A roster import runs `members.add_member` once per CSV row and `pairs.make_pairs` once, in
one transaction; `batch()` gives it an `Env` whose `MembershipStore` is a `BatchStore`, so
those calls read the cohorts once and write in bulk (see `Batch`). The membership modules
only see the store Protocol (`hub.core.membership_store`): nothing there knows of batches.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.core.cohorts import Who
from hub.core.membership import OPEN_PAIR, MembershipState, MemberStatus
from hub.core.membership_store import MembershipRow
from hub.core.ports import Priority
from hub.features.room_queue import Env
from hub.storage.membership_store import SqlMembershipStore
from hub.storage.models import (
    HubRoom,
    Member,
    Pair,
    RoomMember,
    hub_room_table,
    member_table,
    pair_table,
    room_member_table,
)

__all__ = ["Batch", "BatchStore", "NewMembership", "batch"]

_TABLES: dict[str, Table] = {t.name: t for t in (hub_room_table, member_table, pair_table, room_member_table)}


class Batch:
    """What a bulk operation (a roster import) would otherwise ask the database row by row.

    An import runs `add_member` once per CSV row and `make_pairs` once, in one transaction.
    Asked of the database each time, the cohort's rooms, the people named, their pairs and
    the rooms' members cost ~50 round trips per row (each query first flushing what the row
    before it added), and on SQLite the import holds the write lock all the while. A Batch
    reads the cohorts' members, pairs and rooms once (`load`), answers those lookups from
    memory and keeps its indexes up to date as `membership` adds or changes rows. New room
    memberships and outbox rows are kept as plain rows and written with one executemany
    each when the batch ends, in the order they were made; on SQLite new rows get their ids
    from the batch (`new_id`) so the ORM can write them in bulk too.

    The indexes hold the session's own ORM objects, so they see every change made through
    those objects; they do not see rows changed by SQL statements or by another module, and
    SQL run inside the batch does not see the buffered rows until `flush`. So a Batch is only
    for a transaction that changes people, pairs and rooms through `membership` alone (the
    roster import); a chat command makes a few queries and uses none. Rooms and cohorts
    outside the batch's cohorts fall back to queries.
    """

    def __init__(self, cohort_ids: Iterable[int]) -> None:
        self.cohorts = frozenset(cohort_ids)
        # (cohort id, matrix id or email) -> member, any status: both are unique per cohort.
        self._by_matrix: dict[tuple[int, str], Member] = {}
        self._by_email: dict[tuple[int, str], Member] = {}
        # Creation order of the members above (id order, also for members not flushed yet):
        # find_member's query returns the lowest id when the two identifiers name two people.
        self._rank: dict[int, int] = {}  # id(member) -> order
        self._pairs_of: dict[int, list[Pair]] = {}  # member id -> their pairs (any status), by id
        # Room key -> room, or None where the key is known to have no room yet: the cohorts'
        # spaces and lounges and every pair room of their pairs.
        self._rooms: dict[str, HubRoom | None] = {}
        # Room pk -> user -> membership row; a room's rows are read the first time it is asked.
        self._room_members: dict[int, dict[str, RoomMember | NewMembership]] = {}
        self._new_memberships: list[NewMembership] = []
        self._outbox: list[dict[str, Any]] = []
        self._next_id: dict[str, int] = {}  # table -> the next id to give (SQLite only)

    @classmethod
    async def load(cls, s: AsyncSession, cohort_ids: Iterable[int]) -> Batch:
        """Three queries, whatever the cohorts' size."""
        b = cls(cohort_ids)
        if not b.cohorts:
            return b
        ids = sorted(b.cohorts)
        for m in (await s.execute(select(Member).where(member_table.c.cohort_id.in_(ids))
                                  .order_by(member_table.c.id))).scalars():
            b.note_member(m)
        for cid in ids:
            b._rooms[f"space:{cid}"] = b._rooms[f"lounge:{cid}"] = None
        for pair in (await s.execute(select(Pair).where(pair_table.c.cohort_id.in_(ids))
                                     .order_by(pair_table.c.id))).scalars():
            b.note_pair(pair)
        # A cohort's space, lounge and pair rooms all carry its id (`_new_room` callers).
        for room in (await s.execute(select(HubRoom).where(hub_room_table.c.cohort_id.in_(ids)))).scalars():
            b._rooms[room.key] = room
        return b

    def covers(self, cohort_id: int | None) -> bool:
        return cohort_id is not None and cohort_id in self.cohorts

    # members

    def note_member(self, m: Member) -> None:
        """Index a member, new or just given an email or Matrix id (idempotent)."""
        self._rank.setdefault(id(m), len(self._rank))
        if m.matrix_id:
            self._by_matrix[(m.cohort_id, m.matrix_id)] = m
        if m.email:
            self._by_email[(m.cohort_id, m.email)] = m

    def find_member(self, cohort_id: int, who: Who, *, active_only: bool) -> Member | None:
        found = [
            m for m in (
                self._by_matrix.get((cohort_id, who.matrix_id)) if who.matrix_id else None,
                self._by_email.get((cohort_id, who.email.lower())) if who.email else None,
            )
            if m is not None and (m.status == MemberStatus.ACTIVE or not active_only)
        ]
        return min(found, key=lambda m: self._rank[id(m)]) if found else None

    # pairs

    def note_pair(self, pair: Pair) -> None:
        """Index a pair (its id known); its room key is known to be free until a room is made."""
        assert pair.id is not None
        for member_id in {pair.mentor_id, pair.mentee_id}:
            self._pairs_of.setdefault(member_id, []).append(pair)
        self._rooms.setdefault(f"pair:{pair.id}", None)

    def pairs_of(self, member: Member) -> list[Pair]:
        if member.id is None:
            return []  # not even flushed: a member made in this batch, with no pairs yet
        return self._pairs_of.get(member.id, [])

    # rooms

    def room(self, key: str) -> tuple[bool, HubRoom | None]:
        """(known, room): whether the batch can answer for `key`, and the room if there is one."""
        if key in self._rooms:
            return True, self._rooms[key]
        return False, None

    def note_room(self, room: HubRoom, *, new: bool) -> None:
        assert room.id is not None
        self._rooms[room.key] = room
        if new:
            self._room_members[room.id] = {}

    async def room_members(self, s: AsyncSession, room: HubRoom) -> dict[str, RoomMember | NewMembership]:
        assert room.id is not None
        rows = self._room_members.get(room.id)
        if rows is None:
            rows = self._room_members[room.id] = {
                rm.user_id: rm for rm in (await s.execute(select(RoomMember).where(
                    room_member_table.c.room_pk == room.id))).scalars()
            }
        return rows

    async def add_membership(self, s: AsyncSession, room: HubRoom, user_id: str, now: float) -> None:
        """A new room_member row, written when the batch ends.

        Three in five of an import's new rows are these (everyone in the space and the
        lounge, both people in their pair room), and nothing in the import needs them as ORM
        objects: plain rows and one executemany save most of the import's ORM bookkeeping.
        """
        assert room.id is not None
        row = NewMembership(await self.new_id(s, room_member_table.name), room.id, user_id,
                            MembershipState.PENDING, now)
        (await self.room_members(s, room))[user_id] = row
        self._new_memberships.append(row)

    # ids

    async def new_id(self, s: AsyncSession, table: str) -> int | None:
        """On SQLite, the id the new row will get; None elsewhere (the database assigns it).

        SQLite's ORM inserts with a database-assigned id go one statement per row (their
        RETURNING order is not guaranteed, so SQLAlchemy does not batch them); with the id
        given, a flush is one executemany per table. SQLite itself gives max(id) + 1 (these
        tables have no AUTOINCREMENT) and the transaction holds the write lock (BEGIN
        IMMEDIATE), so these are the ids the rows would have got. Every insert into these
        tables made through `membership` while the batch is open takes its id from here.
        PostgreSQL batches inserts with RETURNING by itself and keeps its sequences.
        """
        if s.bind is None or s.bind.dialect.name != "sqlite":
            return None
        next_id = self._next_id.get(table)
        if next_id is None:
            next_id = int((await s.execute(select(func.max(_TABLES[table].c.id)))).scalar() or 0) + 1
        self._next_id[table] = next_id + 1
        return next_id

    # the outbox

    def queue(self, row: dict[str, Any]) -> None:
        """Buffer one outbox row (`EffectWriter.row`), written in order when the batch ends."""
        self._outbox.append(row)

    def replace(self, dedupe_key: str, payload: dict[str, Any]) -> bool:
        """Give the buffered row `dedupe_key` a new payload (a welcome completed by a pairing)."""
        for row in self._outbox:
            if row["dedupe_key"] == dedupe_key:
                row["payload"] = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
                return True
        return False

    async def flush(self, s: AsyncSession, env: Env) -> int:
        """Write everything: the ORM's pending rows, then the buffered outbox rows in queue order.

        As with `Outbox.enqueue`, a row whose dedupe_key exists already is skipped (also one
        queued twice in this batch). Returns how many rows were buffered.
        """
        await s.flush()
        # After the ORM's rows: their rooms may have been among them.
        memberships, self._new_memberships = self._new_memberships, []
        values = [m.values() for m in memberships]
        for i in range(0, len(values), _BATCH_ROWS):
            await s.execute(room_member_table.insert(), values[i:i + _BATCH_ROWS])
        rows, self._outbox = self._outbox, []
        if not rows:
            return 0
        for row in rows:
            # A roster's provisioning is a fan-out: replies to commands go ahead of it.
            row["priority"] = Priority.BULK
        await env.outbox.insert_new(s, rows)
        env.outbox.notify_after_commit(s)
        return len(rows)


_BATCH_ROWS = 5000  # rows per executemany: bounds the driver's buffers


@dataclass
class NewMembership:
    """A room_member row added in a batch (`Batch.add_membership`); changes until then are kept."""

    id: int | None  # None: the database assigns it (PostgreSQL)
    room_pk: int
    user_id: str
    state: str
    updated_at: float

    def values(self) -> dict[str, Any]:
        row = {"room_pk": self.room_pk, "user_id": self.user_id, "state": self.state,
               "updated_at": self.updated_at}
        return row if self.id is None else {"id": self.id, **row}


class BatchStore:
    """`MembershipStore` over a `Batch`: its cohorts from memory, the rest from the database."""

    def __init__(self, b: Batch, sql: SqlMembershipStore) -> None:
        self.batch = b
        self.sql = sql

    async def room(self, tx: AsyncSession, key: str) -> HubRoom | None:
        known, room = self.batch.room(key)
        if known:
            return room
        room = await self.sql.room(tx, key)
        if room is not None:
            self.batch.note_room(room, new=False)  # keys are unique: a room found stays the answer
        return room

    def room_added(self, room: HubRoom) -> None:
        self.batch.note_room(room, new=True)

    async def membership(self, tx: AsyncSession, room: HubRoom, user_id: str) -> MembershipRow | None:
        return (await self.batch.room_members(tx, room)).get(user_id)

    async def add_membership(self, tx: AsyncSession, room: HubRoom, user_id: str, now: float) -> None:
        await self.batch.add_membership(tx, room, user_id, now)

    async def find_member(self, tx: AsyncSession, cohort_id: int, who: Who, *, active_only: bool,
                          ) -> Member | None:
        if self.batch.covers(cohort_id):
            return self.batch.find_member(cohort_id, who, active_only=active_only)
        return await self.sql.find_member(tx, cohort_id, who, active_only=active_only)

    async def member_saved(self, tx: AsyncSession, member: Member) -> None:
        # The row waits for the next flush: one INSERT for many people instead of a round
        # trip each (its id is the batch's on SQLite, the flush's on PostgreSQL).
        self.batch.note_member(member)

    async def open_pairs_of(self, tx: AsyncSession, member: Member) -> list[Pair]:
        if self.batch.covers(member.cohort_id):
            return [p for p in self.batch.pairs_of(member) if p.status in OPEN_PAIR]
        return await self.sql.open_pairs_of(tx, member)

    async def open_pair_of_mentee(self, tx: AsyncSession, cohort_id: int, mentee: Member) -> Pair | None:
        if self.batch.covers(cohort_id):
            return next((p for p in self.batch.pairs_of(mentee)
                         if p.mentee_id == mentee.id and p.status in OPEN_PAIR), None)
        return await self.sql.open_pair_of_mentee(tx, cohort_id, mentee)

    def pair_added(self, pair: Pair) -> None:
        if self.batch.covers(pair.cohort_id):
            self.batch.note_pair(pair)

    async def new_id(self, tx: AsyncSession, table: str) -> int | None:
        return await self.batch.new_id(tx, table)

    async def queue(self, tx: AsyncSession, row: dict[str, Any]) -> bool:
        self.batch.queue(row)
        return True  # its dedupe key is checked when the batch is written

    async def replace_queued(self, tx: AsyncSession, dedupe_key: str, payload: dict[str, Any]) -> bool:
        return self.batch.replace(dedupe_key, payload)


@asynccontextmanager
async def batch(s: AsyncSession, env: Env, cohort_ids: Iterable[int]) -> AsyncIterator[Env]:
    """An `Env` whose store is a Batch on `cohort_ids`; everything is written when it ends.

    Membership functions called with the Env it yields read those cohorts from memory.
    On an exception nothing more is written (the caller's transaction is rolling back).
    """
    b = await Batch.load(s, cohort_ids)
    yield replace(env, store=BatchStore(b, SqlMembershipStore(env.outbox)))
    await b.flush(s, env)
