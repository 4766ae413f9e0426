"""hub.features.room_base: where a row naming a hub room by key goes, looked up per claimed batch.

Real databases (SQLite and PostgreSQL). The sender half uses `MatrixSender` with no client:
every row here is decided before anything would reach the homeserver.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from nio import AsyncClient
from sqlalchemy import event

from hub.clock import FakeClock
from hub.config import Settings
from hub.core.homeserver import Homeserver
from hub.delivery.dispatcher import Claimed
from hub.delivery.outbox import Outbox
from hub.delivery.ratelimit import SharedPause
from hub.errors import DeliveryError, PermanentDeliveryError, TemporaryDeliveryError
from hub.features.room_base import INVITEES_FOR, RoomBase
from hub.matrix.sender import RESOLVED_FOR, MatrixSender
from hub.storage.db import Database, open_database
from hub.storage.models import HubRoom, RoomMember, hub_room_table, room_member_table

from tests.support.databases import backends

BOTH = pytest.mark.parametrize("backend", backends())
ROOMS = 600  # more than one query's chunk of 500 keys


async def _rooms(url: str) -> tuple[Database, RoomBase, FakeClock]:
    db = await open_database(url)
    clock = FakeClock(datetime(2027, 3, 1, tzinfo=UTC))
    async with db.transaction() as s:
        s.add_all([HubRoom(key=f"pair:{i}", kind="pair", room_id=f"!p{i}:x", status="ready", created_at=0.0)
                   for i in range(ROOMS)])
        s.add(HubRoom(key="pair:new", kind="pair", status="pending", created_at=0.0))
        s.add(HubRoom(key="pair:gone", kind="pair", room_id="!gone:x", status="closed", created_at=0.0))
    base = RoomBase(db=db, outbox=Outbox(db, clock), clock=clock, provision=cast(Homeserver, None),
                    settings=lambda: cast(Settings, None), control_room=lambda: None)
    return db, base, clock


def _row(seq: int, key: str) -> Claimed:
    return Claimed(seq=seq, txn_id=f"t{seq}", channel="matrix", kind="test", lane=f"room:{key}",
                   payload={"op": "message", "room_key": key, "type": "m.room.message",
                            "content": {"msgtype": "m.notice", "body": "hello"}},
                   attempts=0, created_at=0.0)


@BOTH
async def test_many_keys_are_answered_by_one_query_per_500_each_with_its_rooms_answer(
    database_urls: dict[str, str], backend: str,
) -> None:
    db, base, _ = await _rooms(database_urls[backend])
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM hub_room" in statement:
            seen.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", record)
    try:
        keys = [*(f"pair:{i}" for i in range(ROOMS)), "pair:new", "pair:gone", "pair:x"]
        found = await base.resolve_many(keys)
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", record)
        await db.close()
    assert len(seen) == 2  # 603 keys: one query per 500, where a lookup per row made 603
    assert [found[f"pair:{i}"] for i in (0, 7, ROOMS - 1)] == ["!p0:x", "!p7:x", f"!p{ROOMS - 1}:x"]
    assert isinstance(found["pair:new"], TemporaryDeliveryError)  # not created yet: the row waits
    assert isinstance(found["pair:gone"], PermanentDeliveryError) and "closed" in str(found["pair:gone"])
    assert isinstance(found["pair:x"], PermanentDeliveryError) and "no room" in str(found["pair:x"])


@BOTH
async def test_the_sender_uses_its_batchs_answers_while_fresh_and_looks_up_again_after(
    database_urls: dict[str, str], backend: str,
) -> None:
    db, base, clock = await _rooms(database_urls[backend])
    lookups: list[list[str]] = []

    async def resolve_many(keys: Collection[str]) -> dict[str, str | DeliveryError]:
        lookups.append(sorted(keys))
        return await base.resolve_many(keys)

    pause = SharedPause(clock, "test")
    sender = MatrixSender(cast(AsyncClient, None), pause, resolve_room_keys=resolve_many)
    try:
        await sender.prepare([_row(1, "pair:gone"), _row(2, "pair:new"), _row(3, "pair:gone")])
        assert lookups == [["pair:gone", "pair:new"]]
        with pytest.raises(PermanentDeliveryError, match="closed"):
            await sender.send(_row(1, "pair:gone"))
        with pytest.raises(TemporaryDeliveryError, match="not created yet"):
            await sender.send(_row(2, "pair:new"))
        assert lookups[1:] == []  # both answered by the batch's one query
        # An answer older than RESOLVED_FOR (the row waited on a pause) is looked up again.
        clock.advance(RESOLVED_FOR + 1)
        with pytest.raises(PermanentDeliveryError, match="closed"):
            await sender.send(_row(3, "pair:gone"))
        assert lookups[1:] == [["pair:gone"]]
        # A row the batch did not cover (a retry claimed alone) is looked up on its own.
        with pytest.raises(TemporaryDeliveryError):
            await sender.send(_row(2, "pair:new"))
        assert lookups[1:] == [["pair:gone"], ["pair:new"]]
    finally:
        await db.close()


@BOTH
async def test_the_invitees_of_a_room_are_those_the_hub_invited_or_is_inviting_who_have_not_answered(
    database_urls: dict[str, str], backend: str,
) -> None:
    db, base, clock = await _rooms(database_urls[backend])
    try:
        async with db.transaction() as s:
            wanted = hub_room_table.c.key.in_(["pair:0", "pair:1", "pair:gone"])
            rooms = {r.key: r.id for r in (await s.execute(hub_room_table.select().where(wanted))).all()}
            states = {"@pending:x": "pending", "@invited:x": "invited", "@joined:x": "joined",
                      "@left:x": "left", "@banned:x": "banned", "@removed:x": "removed"}
            s.add_all([RoomMember(room_pk=rooms["pair:0"], user_id=u, state=st, updated_at=0.0)
                       for u, st in states.items()])
            s.add_all([RoomMember(room_pk=rooms[key], user_id=user, state="invited", updated_at=0.0)
                       for key, user in (("pair:1", "@other:x"), ("pair:gone", "@closed:x"))])
        assert await base.invitees("!p0:x") == {"@pending:x", "@invited:x"}
        assert await base.invitees("!p1:x") == {"@other:x"}
        assert await base.invitees("!gone:x") == set()  # a closed room gets no more messages
        assert await base.invitees("!unknown:x") == set()

        # Read with a claimed batch's room lookup: the first send in each room asks nothing more.
        await base.resolve_many([f"pair:{i}" for i in range(ROOMS)])
        queries = _counting(db)
        try:
            assert await base.invitees("!p0:x") == {"@pending:x", "@invited:x"}
            assert await base.invitees("!p5:x") == set()
            assert queries == []
            # Used once: a second ask reads the database again.
            assert await base.invitees("!p0:x") == {"@pending:x", "@invited:x"}
            assert len(queries) == 1
            # The sync recorded a change in pair:1's room: what the batch read is dropped.
            async with db.transaction() as s:
                await s.execute(room_member_table.update().values(state="left")
                                .where(room_member_table.c.user_id == "@other:x"))
            base.membership_changed({"!p1:x"})
            assert await base.invitees("!p1:x") == set()
            # Older than INVITEES_FOR (the row waited): read again.
            clock.advance(INVITEES_FOR + 1)
            assert await base.invitees("!p2:x") == set() and len(queries) == 3
        finally:
            event.remove(db.engine.sync_engine, "before_cursor_execute", queries.record)
    finally:
        await db.close()


class _Queries(list[str]):
    def record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM room_member" in statement:
            self.append(statement)


def _counting(db: Database) -> _Queries:
    queries = _Queries()
    event.listen(db.engine.sync_engine, "before_cursor_execute", queries.record)
    return queries
