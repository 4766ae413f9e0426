"""`MembershipStore` on the database: each lookup a query in the caller's transaction."""

from __future__ import annotations

import json
from typing import Any, Protocol

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from hub.core.cohorts import Who
from hub.core.membership import OPEN_PAIR, MembershipState, MemberStatus
from hub.core.membership_store import MembershipRow
from hub.delivery.outbox import OutboxStatus
from hub.storage.models import (
    HubRoom,
    Member,
    Pair,
    RoomMember,
    hub_room_table,
    member_table,
    outbox_table,
    pair_table,
    room_member_table,
)

__all__ = ["RowSink", "SqlMembershipStore"]


class RowSink(Protocol):
    """Where outbox rows go (`hub.delivery.outbox.Outbox`): insert them, then wake the sender."""

    @staticmethod
    async def insert_new(session: AsyncSession, rows: list[dict[str, Any]]) -> int: ...

    def notify_after_commit(self, session: AsyncSession) -> None: ...


class SqlMembershipStore:
    """Stateless: safe to share between transactions (one per `Env`)."""

    def __init__(self, sink: RowSink) -> None:
        self.sink = sink

    async def room(self, tx: AsyncSession, key: str) -> HubRoom | None:
        return (await tx.execute(select(HubRoom).where(hub_room_table.c.key == key))).scalar_one_or_none()

    def room_added(self, room: HubRoom) -> None:
        pass

    async def membership(self, tx: AsyncSession, room: HubRoom, user_id: str) -> MembershipRow | None:
        return (await tx.execute(select(RoomMember).where(
            (room_member_table.c.room_pk == room.id) & (room_member_table.c.user_id == user_id)
        ))).scalar_one_or_none()

    async def add_membership(self, tx: AsyncSession, room: HubRoom, user_id: str, now: float) -> None:
        assert room.id is not None
        tx.add(RoomMember(room_pk=room.id, user_id=user_id, state=MembershipState.PENDING, updated_at=now))

    async def find_member(self, tx: AsyncSession, cohort_id: int, who: Who, *, active_only: bool,
                          ) -> Member | None:
        conds = []
        if who.matrix_id:
            conds.append(member_table.c.matrix_id == who.matrix_id)
        if who.email:
            conds.append(member_table.c.email == who.email.lower())
        if not conds:
            return None
        q = select(Member).where((member_table.c.cohort_id == cohort_id) & or_(*conds))
        if active_only:
            q = q.where(member_table.c.status == MemberStatus.ACTIVE)
        rows = (await tx.execute(q.order_by(member_table.c.id))).scalars().all()
        return rows[0] if rows else None

    async def member_saved(self, tx: AsyncSession, member: Member) -> None:
        await tx.flush()

    async def open_pairs_of(self, tx: AsyncSession, member: Member) -> list[Pair]:
        q = select(Pair).where(
            ((pair_table.c.mentor_id == member.id) | (pair_table.c.mentee_id == member.id))
            & pair_table.c.status.in_(OPEN_PAIR)
        ).order_by(pair_table.c.id)
        return list((await tx.execute(q)).scalars().all())

    async def open_pair_of_mentee(self, tx: AsyncSession, cohort_id: int, mentee: Member) -> Pair | None:
        if mentee.id is None:
            await tx.flush()
        return (await tx.execute(select(Pair).where(
            (pair_table.c.mentee_id == mentee.id) & pair_table.c.status.in_(OPEN_PAIR)
        ))).scalar_one_or_none()

    def pair_added(self, pair: Pair) -> None:
        pass

    async def new_id(self, tx: AsyncSession, table: str) -> int | None:
        return None

    async def queue(self, tx: AsyncSession, row: dict[str, Any]) -> bool:
        inserted = await self.sink.insert_new(tx, [row])
        self.sink.notify_after_commit(tx)
        return bool(inserted)

    async def replace_queued(self, tx: AsyncSession, dedupe_key: str, payload: dict[str, Any]) -> bool:
        result = await tx.execute(update(outbox_table).where(
            (outbox_table.c.dedupe_key == dedupe_key) & (outbox_table.c.status == OutboxStatus.QUEUED)
        ).values(payload=json.dumps(payload, separators=(",", ":"), ensure_ascii=False)))
        return bool(getattr(result, "rowcount", 0))
