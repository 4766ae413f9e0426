"""Cohorts, members and pairs in the database (SQLite and PostgreSQL), with the rows they queue."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, inspect, select
from sqlalchemy.exc import IntegrityError

from hub.clock import SystemClock
from hub.config import Settings
from hub.core.cohorts import Who
from hub.delivery.outbox import Outbox
from hub.devserver.synapse import RegisteredUser
from hub.errors import CommandError
from hub.features import membership_batch
from hub.features.cohort_setup import cohort_rooms, create_cohort, get_cohort
from hub.features.config_sync import sync_config
from hub.features.direct_rooms import ensure_direct_room
from hub.features.members import add_member, remove_member
from hub.features.pairs import ensure_pair_room, find_open_pair, make_pair, make_pairs
from hub.features.people import is_participant, member_label
from hub.features.room_queue import Env, load_env, queue_room_message, relane
from hub.storage.db import Database, open_database
from hub.storage.models import HubRoom, Member, Pair, RoomMember, hub_room_table, metadata, room_member_table
from hub.storage.models import outbox_table as T

from tests.support.databases import backends
from tests.support.live_hub import hub_settings

pytestmark = pytest.mark.parametrize("backend", backends())
BOT = RegisteredUser("@hub:example.org", "pw", "token", "DEV")
MOD = "@lead:example.org"


def settings_for(tmp_path: Path, url: str, **extra: Any) -> Settings:
    return hub_settings(homeserver="https://example.org", bot=BOT, data_dir=tmp_path / "hub",
                        moderators=[MOD], database_url=url, extra=extra)


@pytest.fixture
async def world(database_urls: dict[str, str], backend: str, tmp_path: Path) -> AsyncIterator[Any]:
    db = await open_database(database_urls[backend])

    class World:
        def __init__(self) -> None:
            self.db: Database = db
            self.settings = settings_for(tmp_path, database_urls[backend])
            self.outbox = Outbox(db, SystemClock())

        async def env(self, s: Any) -> Env:
            return await load_env(s, self.outbox, SystemClock(), self.settings)

        async def rows(self) -> list[dict[str, Any]]:
            async with db.session() as s:
                result = await s.execute(select(T.c.seq, T.c.kind, T.c.lane, T.c.channel, T.c.payload)
                                         .order_by(T.c.seq))
                return [{"seq": r[0], "kind": r[1], "lane": r[2], "channel": r[3],
                         "payload": json.loads(r[4])} for r in result.all()]

    yield World()
    await db.close()


async def _cohort(w: Any) -> Any:
    async with w.db.transaction() as s:
        env = await w.env(s)
        return await create_cohort(s, env, slug="winter", name="Winter", timezone="UTC", start=None,
                                      weeks=12, source="command")


async def test_schema_matches_models(world: Any) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    def diff(conn: Any) -> list[Any]:
        mine = {"cohort", "member", "pair", "hub_room", "room_member"}
        changes = compare_metadata(MigrationContext.configure(conn), metadata)
        return [c for c in changes if any(t in repr(c) for t in (f"'{n}'" for n in mine))]

    async with world.db.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_cohort_creation_queues_space_then_lounge_with_moderators(world: Any) -> None:
    cohort = await _cohort(world)
    rows = await world.rows()
    creates = [r for r in rows if r["kind"] == "room-create"]
    assert [r["lane"] for r in creates] == [f"room:space:{cohort.id}", f"room:lounge:{cohort.id}"]
    # The moderator is wanted in both; creating a room invites who is wanted by then,
    # so a room made in the same transaction needs no invite rows of its own.
    assert [r for r in rows if r["kind"] == "room-invite"] == []
    async with world.db.session() as s:
        wanted = (await s.execute(select(room_member_table.c.user_id, room_member_table.c.state))).all()
    assert sorted(wanted) == [(MOD, "pending"), (MOD, "pending")]
    assert len(cohort.start_date) == 10


async def test_members_are_added_once_and_roles_do_not_silently_change(world: Any) -> None:
    cohort = await _cohort(world)
    async with world.db.transaction() as s:
        env = await world.env(s)
        member, outcome = await add_member(s, env, cohort, "mentor", Who(matrix_id="@ada:x.org"),
                                              name="Ada", email="ada@x.org")
        assert outcome == "added" and member.email == "ada@x.org"
    before = len(await world.rows())
    async with world.db.transaction() as s:
        env = await world.env(s)
        _, again = await add_member(s, env, cohort, "mentor", Who(email="ADA@x.org"), name="Ada")
        assert again == "unchanged"
        with pytest.raises(CommandError, match="already a mentor"):
            await add_member(s, env, cohort, "mentee", Who(matrix_id="@ada:x.org"))
    assert len(await world.rows()) == before  # nothing queued twice


async def test_email_only_members_get_a_welcome_email_when_email_is_on(world: Any, tmp_path: Path,
                                                                      database_urls: dict[str, str],
                                                                      backend: str) -> None:
    world.settings = settings_for(tmp_path, database_urls[backend],
                                  email={"enabled": True, "from": "hub@x.org"})
    cohort = await _cohort(world)
    async with world.db.transaction() as s:
        env = await world.env(s)
        await add_member(s, env, cohort, "mentee", Who(email="cy@x.org"), name="Cy")
    emails = [r for r in await world.rows() if r["channel"] == "email"]
    assert len(emails) == 1
    payload = emails[0]["payload"]
    assert emails[0]["lane"] == "cy@x.org" and set(payload) == {"to", "to_name", "subject", "text", "html",
                                                                  "headers"}
    assert "Winter" in payload["subject"]
    # Her welcome promises "a link at the bottom of every email" to stop them: both parts have it.
    unsubscribe = payload["headers"]["List-Unsubscribe"].strip("<>")
    assert unsubscribe in payload["text"] and unsubscribe in payload["html"]


async def test_pairing_queues_room_invites_and_welcome_in_order(world: Any) -> None:
    cohort = await _cohort(world)
    async with world.db.transaction() as s:
        env = await world.env(s)
        await add_member(s, env, cohort, "mentor", Who(matrix_id="@ada:x.org"), name="Ada")
        await add_member(s, env, cohort, "mentee", Who(matrix_id="@bo:x.org"), name="Bo")
        await add_member(s, env, cohort, "mentee", Who(email="cy@x.org"))
        pair, created = await make_pair(s, env, cohort, Who(matrix_id="@ada:x.org"),
                                           Who(matrix_id="@bo:x.org"))
        assert created
        again, created_again = await make_pair(s, env, cohort, Who(matrix_id="@ada:x.org"),
                                                  Who(matrix_id="@bo:x.org"))
        assert again.id == pair.id and not created_again
        with pytest.raises(CommandError, match="is a mentee in winter, not a mentor"):
            await make_pair(s, env, cohort, Who(matrix_id="@bo:x.org"), Who(email="cy@x.org"))
        with pytest.raises(CommandError, match="not a member"):
            await make_pair(s, env, cohort, Who(matrix_id="@zed:x.org"), Who(email="cy@x.org"))
    lane = f"room:pair:{pair.id}"
    mine = [r for r in await world.rows() if r["lane"] == lane]
    assert [r["kind"] for r in mine] == ["room-create", "pair-welcome"]
    welcome = mine[-1]["payload"]
    assert welcome["room_key"] == f"pair:{pair.id}" and pair.video_name in welcome["content"]["body"]


async def test_a_mentee_has_one_open_pair_even_at_the_database_level(world: Any) -> None:
    cohort = await _cohort(world)
    async with world.db.transaction() as s:
        env = await world.env(s)
        for who, role in (("@a:x", "mentor"), ("@b:x", "mentor"), ("@m:x", "mentee")):
            await add_member(s, env, cohort, role, Who(matrix_id=who))
        await make_pair(s, env, cohort, Who(matrix_id="@a:x"), Who(matrix_id="@m:x"))
        with pytest.raises(CommandError, match="already paired with a"):
            await make_pair(s, env, cohort, Who(matrix_id="@b:x"), Who(matrix_id="@m:x"))
    with pytest.raises(IntegrityError):
        async with world.db.transaction() as s:
            first = (await s.execute(select(Pair))).scalars().first()
            assert first is not None
            s.add(Pair(cohort_id=first.cohort_id, mentor_id=first.mentor_id, mentee_id=first.mentee_id,
                       status="active", video_name="x", created_at=0))


async def test_relane_moves_waiting_rows_to_the_room_lane_in_order(world: Any) -> None:
    cohort = await _cohort(world)
    async with world.db.transaction() as s:
        env = await world.env(s)
        await add_member(s, env, cohort, "mentor", Who(matrix_id="@ada:x.org"))
        space, _ = await cohort_rooms(s, env, cohort.id)
        assert space is not None
        space.room_id, space.status = "!space:x.org", "ready"
        moved = await relane(s, space)
        assert moved == 2  # the create row (still queued here) and Ada's invite, queued later
    rows = [r for r in await world.rows() if r["lane"] == "!space:x.org"]
    assert [r["kind"] for r in rows] == ["room-create", "room-invite"]
    async with world.db.transaction() as s:
        env = await world.env(s)
        space, _ = await cohort_rooms(s, env, cohort.id)
        assert space is not None and space.room_id == "!space:x.org"
        await add_member(s, env, cohort, "mentee", Who(matrix_id="@bo:x.org"))
    assert (await world.rows())[-2]["lane"] == "!space:x.org"  # known room: queued on its id


async def test_remove_closes_pairs_and_kicks(world: Any) -> None:
    cohort = await _cohort(world)
    async with world.db.transaction() as s:
        env = await world.env(s)
        await add_member(s, env, cohort, "mentor", Who(matrix_id="@ada:x.org"))
        await add_member(s, env, cohort, "mentee", Who(matrix_id="@bo:x.org"))
        pair, _ = await make_pair(s, env, cohort, Who(matrix_id="@ada:x.org"), Who(matrix_id="@bo:x.org"))
        room = (await s.execute(
            select(HubRoom).where(hub_room_table.c.key == f"pair:{pair.id}"))).scalar_one()
        room.room_id, room.status = "!pair:x.org", "ready"
    async with world.db.transaction() as s:
        env = await world.env(s)
        member, closed = await remove_member(s, env, cohort, Who(matrix_id="@bo:x.org"))
        assert closed == 1 and member.status == "removed"
        with pytest.raises(CommandError, match="not a member"):
            await remove_member(s, env, cohort, Who(matrix_id="@bo:x.org"))
    kinds = [r["kind"] for r in await world.rows()]
    assert kinds[-4:] == ["pair-goodbye", "room-leave", "room-kick", "room-kick"]
    async with world.db.session() as s:
        pair2 = await s.get(Pair, pair.id)
        assert pair2 is not None and pair2.status == "closed"
        space, lounge = await cohort_rooms(s, env, cohort.id)
        assert space is not None and lounge is not None
        states = {(r.room_pk, r.user_id): r.state for r in (await s.execute(select(RoomMember))).scalars()}
    assert states[(space.id, "@bo:x.org")] == states[(lounge.id, "@bo:x.org")] == "removed"
    assert states[(space.id, "@ada:x.org")] == "pending"
    # Added again: reactivated (same row), invited again.
    async with world.db.transaction() as s:
        env = await world.env(s)
        again, outcome = await add_member(s, env, cohort, "mentee", Who(matrix_id="@bo:x.org"))
        assert outcome == "added" and again.id == member.id


async def test_config_sync_creates_cohorts_once_and_follows_moderators(
    world: Any, tmp_path: Path, database_urls: dict[str, str], backend: str
) -> None:
    cohort_cfg = {"slug": "spring", "name": "Spring", "start": "2027-03-01"}
    world.settings = settings_for(tmp_path, database_urls[backend])
    data = world.settings
    from dataclasses import replace

    from hub.config import settings_from_dict

    with_cohort = settings_from_dict(
        {"matrix": {"homeserver": "https://x.org", "user_id": BOT.user_id, "password": "p",
                    "moderators": [MOD]}, "cohort": [cohort_cfg],
         "database": {"url": database_urls[backend]}}, base=tmp_path, env={})
    world.settings = replace(data, cohorts=with_cohort.cohorts)
    async with world.db.transaction() as s:
        changes = await sync_config(s, await world.env(s))
    assert changes == ["cohort spring created from the config"]
    async with world.db.transaction() as s:
        assert await sync_config(s, await world.env(s)) == []
        cohort = await get_cohort(s, "spring")
        assert cohort is not None and cohort.start_date == "2027-03-01" and cohort.source == "config"
    # A second moderator in the config is invited to the space and lounge.
    world.settings = replace(world.settings, matrix=replace(world.settings.matrix,
                                                            moderators=(MOD, "@second:x.org")))
    async with world.db.transaction() as s:
        changes = await sync_config(s, await world.env(s))
    assert changes and "@second:x.org" in changes[0]
    invited = [r["payload"]["users"] for r in await world.rows() if r["kind"] == "room-invite"]
    assert invited[-2:] == [["@second:x.org"], ["@second:x.org"]]


async def test_participants_and_room_kinds(world: Any) -> None:
    cohort = await _cohort(world)
    async with world.db.transaction() as s:
        env = await world.env(s)
        await add_member(s, env, cohort, "mentor", Who(matrix_id="@ada:x.org"))
        direct = await ensure_direct_room(s, env, "@ada:x.org")
        assert (await ensure_direct_room(s, env, "@ada:x.org")).id == direct.id
        await queue_room_message(s, env, direct, "hello", kind="test", dedupe_key="t1")
    async with world.db.session() as s:
        assert await is_participant(s, "@ada:x.org")
        assert not await is_participant(s, "@stranger:x.org")
        count = (await s.execute(select(func.count()).select_from(Member))).scalar()
        assert count == 1
    lane = [r for r in await world.rows() if r["lane"] == "room:direct:@ada:x.org"]
    assert [r["kind"] for r in lane] == ["room-create", "test"]


async def test_the_cohort_migration_downgrades_and_upgrades_again(world: Any) -> None:
    from alembic import command
    from alembic.config import Config

    from hub.storage.db import MIGRATIONS

    def go(conn: Any, target: str, up: bool) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        (command.upgrade if up else command.downgrade)(cfg, target)

    await _cohort(world)
    async with world.db.engine.begin() as conn:
        await conn.run_sync(go, "0002", False)
    async with world.db.engine.connect() as conn:
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert not {"cohort", "member", "pair", "hub_room", "room_member"} & tables
    async with world.db.engine.begin() as conn:
        await conn.run_sync(go, "head", True)
    assert (await _cohort(world)).id == 1


# -- a batch (the roster import's indexes and bulk writes) changes nothing but the speed ---------


class _Undo(Exception):
    """Rolls a transaction back once what it wrote has been read."""


async def _said(s: Any, result: Any) -> Any:
    """A function's result in words that do not depend on ids (PostgreSQL's differ between runs)."""
    async def who(member_id: int) -> str:
        m = await s.get(Member, member_id)
        return member_label(m)

    if isinstance(result, list):
        return [await _said(s, r) for r in result]
    if isinstance(result, CommandError):
        return f"error: {result}"
    if isinstance(result, tuple) and isinstance(result[0], Pair):
        pair, created = result
        return ("pair", await who(pair.mentor_id), await who(pair.mentee_id), pair.status, created)
    if isinstance(result, tuple) and isinstance(result[0], Member):
        m, extra = result
        return ("member", m.role, m.name, m.email, m.matrix_id, m.status, extra)
    if isinstance(result, Pair):
        return ("pair", await who(result.mentor_id), await who(result.mentee_id), result.status)
    assert isinstance(result, HubRoom)
    return ("room", result.key, result.kind, result.status)


async def _everything(s: Any) -> dict[str, Any]:
    """The five tables as seen inside the transaction, ids replaced by their order of creation."""
    import re

    from sqlalchemy import text

    async def rows(sql: str) -> list[Any]:
        return [tuple(r) for r in (await s.execute(text(sql))).all()]

    members = {r[0]: i for i, r in enumerate(await rows("SELECT id FROM member ORDER BY id"))}
    pairs = {r[0]: i for i, r in enumerate(await rows("SELECT id FROM pair ORDER BY id"))}
    video = re.compile(r"CohortHub-[a-z2-7]{26}")

    def norm(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        value = video.sub("VIDEO", re.sub(r"[0-9a-f]{32}", "UUID", value))
        # Signed links carry a random per-person handle: the two runs make different ones.
        value = re.sub(r"/(unsubscribe|answer)/[A-Za-z0-9_-]+", r"/\1/TOKEN", value)
        value = re.sub(r"pair:(\d+)", lambda m: f"pair:P{pairs[int(m[1])]}", value)
        value = re.sub(r"welcome-email:(\d+)", lambda m: f"welcome-email:M{members[int(m[1])]}", value)
        return re.sub(r"pair-email:(\d+):(\d+)",
                      lambda m: f"pair-email:P{pairs[int(m[1])]}:M{members[int(m[2])]}", value)

    return {
        "members": [(members[r[0]], *r[1:]) for r in await rows(
            "SELECT id, role, name, email, matrix_id, timezone, status, removed_at IS NULL FROM member")],
        "pairs": sorted((pairs[r[0]], members[r[1]], members[r[2]], r[3]) for r in await rows(
            "SELECT id, mentor_id, mentee_id, status FROM pair")),
        "rooms": sorted(tuple(map(norm, r)) for r in await rows(
            "SELECT key, kind, generation, room_id, status, pair_id IS NULL FROM hub_room")),
        "room_members": sorted(tuple(map(norm, r)) for r in await rows(
            "SELECT h.key, m.user_id, m.state FROM room_member m JOIN hub_room h ON h.id = m.room_pk")),
        "outbox": [tuple(map(norm, r)) for r in await rows(
            "SELECT dedupe_key, channel, kind, lane, payload, status FROM outbox ORDER BY seq")],
    }


async def test_a_batch_writes_what_the_same_calls_write_one_after_another(
    world: Any, tmp_path: Path, database_urls: dict[str, str], backend: str
) -> None:
    """Several commands on the same people in one transaction, with and without a Batch: the
    same answers and the same rows, in the same order. Its indexes must follow every change
    the calls before made (a removal, a reactivation, a closed pair, a new Matrix id)."""
    world.settings = settings_for(tmp_path, database_urls[backend],
                                  email={"enabled": True, "from": "hub@x.org"})
    cohort = await _cohort(world)
    ada, bo, cy, di, eve = (Who(matrix_id="@ada:x.org"), Who(email="bo@x.org"), Who(matrix_id="@cy:x.org"),
                            Who(email="di@x.org"), Who(email="eve@x.org"))
    async with world.db.transaction() as s:  # before: a pair whose room is ready, its mentee email-only
        env = await world.env(s)
        await add_member(s, env, cohort, "mentor", ada, name="Ada")
        await add_member(s, env, cohort, "mentee", bo, name="Bo")
        pair, _ = await make_pair(s, env, cohort, ada, bo)
        room = await ensure_pair_room(s, env, pair)
        assert room is not None
        room.room_id, room.status = "!ab:x.org", "ready"

    async def story(s: Any, env: Env) -> list[Any]:
        steps: list[Callable[[], Awaitable[object]]] = [
            lambda: add_member(s, env, cohort, "mentor", cy, name="Cy"),
            lambda: add_member(s, env, cohort, "mentee", di, name="Di"),
            lambda: make_pair(s, env, cohort, cy, di),
            # Bo gets a Matrix id: wanted in the space, the lounge and Ada's ready pair room.
            lambda: add_member(s, env, cohort, "mentee", bo, matrix_id="@bo:x.org"),
            lambda: add_member(s, env, cohort, "mentee", Who(matrix_id="@bo:x.org")),
            lambda: remove_member(s, env, cohort, cy),  # closes Cy and Di's pair
            lambda: add_member(s, env, cohort, "mentor", cy),  # back: the same row, invited again
            lambda: add_member(s, env, cohort, "mentee", cy),
            lambda: make_pair(s, env, cohort, ada, di),  # Di is free again
            lambda: make_pair(s, env, cohort, cy, di),
            lambda: add_member(s, env, cohort, "moderator", Who(matrix_id="@mo:x.org")),
            lambda: add_member(s, env, cohort, "mentee", eve),
            lambda: make_pairs(s, env, [(cohort, cy, eve), (cohort, cy, eve), (cohort, ada, eve),
                                           (cohort, eve, cy), (cohort, cy, Who(email="nobody@x.org"))]),
            lambda: remove_member(s, env, cohort, eve),
            lambda: ensure_direct_room(s, env, "@ada:x.org"),  # not a cohort room: asked of the database
            lambda: find_open_pair(s, env, cohort, ada, di),
        ]
        said = []
        for step in steps:
            try:
                result = await step()
            except CommandError as e:
                result = e
            said.append(await _said(s, result))
        return said

    seen: dict[bool, Any] = {}
    for batched in (False, True):
        with contextlib.suppress(_Undo):
            async with world.db.transaction() as s:
                env = await world.env(s)
                if batched:
                    async with membership_batch.batch(s, env, [cohort.id]) as batch_env:
                        said = await story(s, batch_env)
                else:
                    said = await story(s, env)
                seen[batched] = (said, await _everything(s))
                raise _Undo
    assert seen[True][0] == seen[False][0]
    for table, rows in seen[False][1].items():
        assert seen[True][1][table] == rows, table
    said, tables = seen[False]
    assert said[9] == "error: di@x.org is already paired with Ada; `!hub unpair` them first."
    assert [r if isinstance(r, str) else r[-1] for r in said[12]] == [
        True, False, "error: eve@x.org is already paired with Cy; `!hub unpair` them first.",
        "error: eve@x.org is a mentee in winter, not a mentor.",
        "error: nobody@x.org is not a member of winter; `!hub add winter ROLE WHO` first."]
    assert ("!ab:x.org" in {r[3] for r in tables["outbox"]})  # Bo's invite, on the ready room's lane
