"""Cohort commands against a real Synapse, seen from participants' own E2EE clients."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nio import RoomGetStateResponse, RoomMessageNotice
from sqlalchemy import select, text

from hub.core.commands import CommandSpec
from hub.core.limits import CommandRateLimiter
from hub.devserver.synapse import SynapseServer
from hub.service import Hub, build_registry
from hub.storage.models import hub_room_table

from tests.support.cohorts import quiet, room_of
from tests.support.live_hub import hub_settings, running_hub
from tests.support.matrix_user import Participant

pytestmark = pytest.mark.synapse


@dataclass
class Live:
    hub: Hub
    mod: Participant
    control: str

    async def command(self, body: str, *, who: Participant | None = None, room: str | None = None,
                      timeout: float = 20) -> str:
        sender = who or self.mod
        where = room or self.control
        event = await sender.send(where, body)
        reply = await sender.wait_for_reply(where, event, timeout=timeout)
        assert isinstance(reply, RoomMessageNotice), reply
        assert "Traceback" not in reply.body
        return str(reply.body)


async def new_participant(synapse: SynapseServer, base: Path, prefix: str) -> Participant:
    user = await synapse.register(f"{prefix}{secrets.token_hex(4)}", secrets.token_urlsafe(12))
    p = Participant(synapse.url, user, base / f"store-{user.user_id[1:].split(':')[0]}")
    await p.start()
    return p


async def state_of(p: Participant, room_id: str) -> dict[tuple[str, str], dict[str, Any]]:
    resp = await p.client.room_get_state(room_id)
    assert isinstance(resp, RoomGetStateResponse), resp
    return {(e["type"], e.get("state_key", "")): e["content"] for e in resp.events}


@pytest.fixture(scope="module")
async def live(synapse: SynapseServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    base = tmp_path_factory.mktemp("cohorts-live")
    bot = await synapse.register(f"hub{secrets.token_hex(4)}", secrets.token_urlsafe(12))
    mod = await new_participant(synapse, base, "lead")
    settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=base / "hub", moderators=[mod.user_id])
    async with running_hub(settings) as hub:
        assert hub.control_room_id is not None
        await mod.wait_joined(hub.control_room_id, mod.user_id, timeout=20)
        yield Live(hub, mod, hub.control_room_id)
    await mod.stop()


@pytest.fixture
async def people(synapse: SynapseServer, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    made: list[Participant] = []

    async def make(prefix: str) -> Participant:
        p = await new_participant(synapse, tmp_path, prefix)
        made.append(p)
        return p

    yield make
    for p in made:
        await p.stop()


async def test_cohort_create_makes_a_space_whose_members_can_join_the_lounge(live: Live, people: Any) -> None:
    reply = await live.command('!hub cohort create spring "Spring 2027" tz=Europe/Berlin weeks=10')
    assert "Created cohort **Spring 2027**" in reply and "10 weeks" in reply
    assert "exists already" in await live.command('!hub cohort create spring "Again"')
    assert "`spring`" in await live.command("!hub cohort list")
    space = await room_of(live.hub, "space:1")
    lounge = await room_of(live.hub, "lounge:1")
    await live.mod.wait_joined(lounge, live.mod.user_id)  # moderators are invited to both
    await live.mod.wait_joined(space, live.mod.user_id)
    # The space's m.space.child for the lounge is its own row, sent after the lounge exists.
    await quiet(live.hub)
    space_state = await state_of(live.mod, space)
    lounge_state = await state_of(live.mod, lounge)
    assert space_state[("m.room.create", "")].get("type") == "m.space"
    assert space_state[("m.room.name", "")]["name"] == "Spring 2027"
    assert space_state[("m.space.child", lounge)]["via"] == ["localhost"]
    assert lounge_state[("m.space.parent", space)]["via"] == ["localhost"]
    assert lounge_state[("m.room.join_rules", "")] == {
        "join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]}
    for state in (space_state, lounge_state):
        assert state[("m.room.power_levels", "")]["users"].get(live.mod.user_id) == 50
    hub_user = live.hub.settings.matrix.user_id
    if space_state[("m.room.create", "")].get("room_version") == "12":
        assert hub_user not in space_state[("m.room.power_levels", "")]["users"]  # creator: not listed

    # Someone a moderator invites to the space only joins the lounge on their own.
    guest = await people("guest")
    guest.auto_join = False
    invited = await live.mod.client.room_invite(space, guest.user_id)
    assert type(invited).__name__ == "RoomInviteResponse", invited
    await guest.wait_until(lambda: space in guest.client.invited_rooms, 15)
    await guest.client.join(space)
    joined = await guest.client.join(lounge)
    assert type(joined).__name__ == "JoinResponse", joined
    await guest.wait_joined(lounge, guest.user_id)


async def test_a_cohort_starting_today_gets_its_launch_post_at_once(live: Live) -> None:
    # Launch is 09:00 in the cohort's zone: pick the fixed-offset zone where it is 10:xx now.
    now = datetime.now(UTC)
    offset = 10 - now.hour if 10 - now.hour >= -12 else 34 - now.hour
    zone = f"Etc/GMT{-offset:+d}"  # POSIX sign: Etc/GMT-3 is UTC+3
    today = (now + timedelta(hours=offset)).date()
    reply = await live.command(f'!hub cohort create today "Launch Day" tz={zone} start={today}')
    assert "Created cohort" in reply, reply
    began = time.monotonic()
    # The periodic tick is every 30 s; the successful command ticks the calendar at once.
    assert live.hub.db is not None
    while True:
        async with live.hub.db.session() as s:
            queued = (await s.execute(text(
                "SELECT count(*) FROM outbox WHERE dedupe_key LIKE 'launch:today:lounge:%'"))).scalar()
        if queued:
            break
        assert time.monotonic() - began < 5, "no launch post queued within 5 s of the command"
        await asyncio.sleep(0.05)
    lounge = await room_of(live.hub, "lounge:" + str(await cohort_id(live.hub, "today")))
    await live.mod.wait_joined(lounge, live.mod.user_id)
    await live.mod.wait_until(lambda: any(
        isinstance(e, RoomMessageNotice) and "Welcome to the Launch Day lounge" in e.body
        for e in live.mod.in_room(lounge)), 20)


async def cohort_id(hub: Hub, slug: str) -> int:
    assert hub.db is not None
    async with hub.db.session() as s:
        return int((await s.execute(text("SELECT id FROM cohort WHERE slug = :s"), {"s": slug})).scalar_one())


async def test_pairing_makes_an_encrypted_room_of_exactly_the_pair(live: Live, people: Any) -> None:
    await live.command('!hub cohort create pairs "Pairs cohort"')
    mentor, mentee = await people("mentor"), await people("mentee")
    assert "Added Ada Lovelace as a mentor" in await live.command(
        f"!hub add pairs mentor {mentor.user_id} Ada Lovelace email=ada@example.org")
    assert "Added" in await live.command(f'!hub add pairs mentee {mentee.user_id} "Bo Chen"')
    reply = await live.command(f"!hub pair pairs {mentor.user_id} {mentee.user_id}")
    assert reply.startswith("Paired Ada Lovelace & Bo Chen")
    link = reply.split("Video link: ")[1].strip()
    assert link.startswith("https://meet.jit.si/CohortHub-")
    assert "already a pair" in await live.command(f"!hub pair pairs {mentor.user_id} {mentee.user_id}")

    assert live.hub.db is not None
    async with live.hub.db.session() as s:
        key = (await s.execute(select(hub_room_table.c.key).where(
            hub_room_table.c.kind == "pair").order_by(hub_room_table.c.id.desc()))).scalars().first()
    room = await room_of(live.hub, str(key))
    await mentor.wait_joined(room, mentor.user_id, timeout=20)
    await mentor.wait_joined(room, mentee.user_id, timeout=20)
    state = await state_of(mentor, room)
    members = {k for (t, k), c in state.items()
               if t == "m.room.member" and c["membership"] in ("join", "invite")}
    assert members == {mentor.user_id, mentee.user_id, live.hub.settings.matrix.user_id}
    assert live.mod.user_id not in members  # moderators are not in pair rooms
    assert state[("m.room.encryption", "")]["algorithm"] == "m.megolm.v1.aes-sha2"
    assert state[("m.room.join_rules", "")]["join_rule"] == "invite"
    assert state[("m.room.name", "")]["name"] == "Ada Lovelace & Bo Chen"
    assert link in state[("m.room.topic", "")]["topic"]

    def welcomes(p: Participant) -> list[RoomMessageNotice]:
        return [e for e in p.in_room(room) if isinstance(e, RoomMessageNotice) and link in e.body]

    # The mentor's client decrypts the welcome (the raw events were encrypted).
    await mentor.wait_until(lambda: len(welcomes(mentor)) >= 1, 20)
    assert all(w.source["type"] == "m.room.encrypted" or w.decrypted for w in welcomes(mentor))
    assert any("backup plan" in w.body for w in welcomes(mentor))
    await mentee.wait_until(lambda: len(welcomes(mentee)) >= 1, 20)


async def test_unpair_pause_resume_and_remove(live: Live, people: Any) -> None:
    await live.command('!hub cohort create fall "Fall"')
    mentor, mentee = await people("mentor"), await people("mentee")
    await live.command(f"!hub add fall mentor {mentor.user_id}")
    await live.command(f"!hub add fall mentee {mentee.user_id}")
    await live.command("!hub add fall mentee cy@example.org Cy")
    await live.command(f"!hub pair fall {mentor.user_id} {mentee.user_id}")
    pair = f"{mentor.user_id} {mentee.user_id}"
    assert "Paused" in await live.command(f"!hub pause fall {pair}")
    assert "already paused" in await live.command(f"!hub pause fall {pair}")
    assert "Resumed" in await live.command(f"!hub resume fall {pair}")
    show = await live.command("!hub cohort show fall")
    assert "1 mentors, 2 mentees" in show and "(1 by email only)" in show and "1 active" in show
    assert live.hub.db is not None
    async with live.hub.db.session() as s:
        key = (await s.execute(select(hub_room_table.c.key).where(
            hub_room_table.c.kind == "pair").order_by(hub_room_table.c.id.desc()))).scalars().first()
    room = await room_of(live.hub, str(key))
    await mentor.wait_joined(room, mentor.user_id)
    assert "Closed the pair" in await live.command(f"!hub unpair fall {pair}")
    hub_user = live.hub.settings.matrix.user_id
    # Goodbye first, then the hub leaves; the people stay with their history.
    await mentor.wait_until(lambda: any(isinstance(e, RoomMessageNotice) and "leaving" in e.body
                                        for e in mentor.in_room(room)), 20)
    await mentor.wait_until(lambda: hub_user not in (mentor.client.rooms[room].users), 20)
    assert "not a pair" in await live.command(f"!hub unpair fall {pair}")
    assert "Removed" in await live.command(f"!hub remove fall {mentee.user_id}")
    assert "not a member" in await live.command(f"!hub remove fall {mentee.user_id}")


@pytest.mark.parametrize(
    ("command", "answer"),
    [
        ("!hub cohort show nope", "There is no cohort `nope`"),
        ("!hub cohort create Bad_Slug X", "is not a cohort slug"),
        ("!hub cohort create ok X tz=Mars/Base", "`tz=Mars/Base` is not a known time zone"),
        ("!hub cohort create ok X weeks=0", "`weeks=0` must be a whole number from 1 to 104"),
        ("!hub cohort create ok X colour=red", "unexpected `colour=red`"),
        ("!hub add nope mentor @x:localhost", "There is no cohort `nope`"),
        ("!hub add nope mentor someone", "neither a Matrix id"),
        ("!hub add nope boss @x:localhost", "role must be one of mentor, mentee, moderator"),
        ("!hub add nope mentor @x:localhost email=nope", "`nope` is not an email address"),
        ("!hub pair nope @a:localhost", "mentee is missing"),
    ],
)
async def test_bad_input_is_explained_and_changes_nothing(live: Live, command: str, answer: str) -> None:
    # Other tests' people may still be joining rooms here, so: the cohort tables and the outbox.
    tables = ("cohort", "member", "pair", "hub_room")
    await quiet(live.hub)
    before = await domain_snapshot(live.hub, tables)
    reply = await live.command(command)
    assert answer in reply, reply
    assert await domain_snapshot(live.hub, tables) == before


# -- every moderator command refused for everyone else -----------------------------------------------

_SAMPLES = {"slug": "refuse", "name": "Renamed", "who": "@member{n}:localhost",
            "mentor": "@member1:localhost", "mentee": "@member2:localhost", "role": "mentor"}


def sample_args(spec: CommandSpec) -> str:
    """Arguments that parse, so the refusal (not a usage error) is what answers."""
    words: list[str] = []
    for arg in spec.args:
        if arg.optional:
            continue
        if arg.kind == "choice":
            words.append(arg.choices[0])
        elif arg.kind == "int":
            words.append(str(arg.minimum or 1))
        elif arg.kind == "rest":
            words.append("some text")
        else:
            words.append(_SAMPLES.get(arg.name, "x").format(n=3))
    return " ".join(words)


MODERATOR_COMMANDS = sorted(s.name for s in build_registry("!hub").specs if s.moderator_only)


_NOT_DOMAIN = ("handled_event", "outbox", "alembic_version", "program_tick")


async def domain_snapshot(hub: Hub, only: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Everything a command could change (or just the tables `only`), minus answering it.

    Not the calendar's bookmark (program_tick): every tick moves it, command or not.
    """
    assert hub.db is not None
    out: dict[str, list[str]] = {}
    async with hub.db.session() as s:
        tables = [t for t in (await s.execute(text(
            "SELECT name FROM sqlite_master WHERE type = 'table'"))).scalars()
            if t not in _NOT_DOMAIN and (t in only or not only)]
        for table in tables:
            where = " WHERE key <> 'sync.next_batch'" if table == "kv" else ""
            rows = (await s.execute(text(f"SELECT * FROM {table}{where}"))).all()
            out[table] = sorted(map(repr, rows))
        out["outbox"] = sorted((await s.execute(text(
            "SELECT dedupe_key FROM outbox WHERE kind NOT IN ('reply', 'audit')"))).scalars())
    return out


@pytest.fixture(scope="module")
async def refusing(synapse: SynapseServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    """A hub with a cohort and pair in place, and a participant (a mentee) who is not a moderator."""
    base = tmp_path_factory.mktemp("refusals")
    bot = await synapse.register(f"hub{secrets.token_hex(4)}", secrets.token_urlsafe(12))
    outsider = await new_participant(synapse, base, "mentee")
    # The moderator has no client: nothing joins anything while commands are refused.
    settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=base / "hub",
                            moderators=["@lead-nobody:localhost"])
    async with running_hub(settings) as hub:
        from hub.core.cohorts import Who
        from hub.features.cohort_setup import create_cohort
        from hub.features.members import add_member
        from hub.features.pairs import make_pair
        from hub.features.room_queue import load_env

        assert hub.db is not None and hub.outbox is not None
        async with hub.db.transaction() as s:
            env = await load_env(s, hub.outbox, hub.clock, hub.settings)
            # Starting next year: no calendar tick may queue program items while the
            # test compares the database before and after a refused command.
            next_year = hub.clock.now().date() + timedelta(days=365)
            cohort = await create_cohort(s, env, slug="refuse", name="Refuse", timezone="UTC",
                                            start=next_year, weeks=12, source="command")
            await add_member(s, env, cohort, "mentee", Who(matrix_id=outsider.user_id))
            for n, role in ((1, "mentor"), (2, "mentee"), (3, "mentor")):
                await add_member(s, env, cohort, role, Who(matrix_id=f"@member{n}:localhost"))
            await make_pair(s, env, cohort, Who(matrix_id="@member1:localhost"),
                               Who(matrix_id="@member2:localhost"))
        # One person tries every moderator command in a row: more than the per-person
        # command rate limit (hub.core.limits) lets through, which is not what this tests.
        assert hub.runner is not None
        hub.runner.rate_limiter = CommandRateLimiter(hub.clock, per_minute=600, burst=100)
        # A participant may invite the hub to a room of their own.
        room = await outsider.create_room(invite=[bot.user_id])
        await outsider.wait_joined(room, bot.user_id, timeout=20)
        await quiet(hub)
        yield Live(hub, outsider, room)
    await outsider.stop()


@pytest.mark.parametrize("name", MODERATOR_COMMANDS)
async def test_moderator_command_is_refused_for_a_participant(refusing: Live, name: str) -> None:
    spec = build_registry("!hub").get(name)
    assert spec is not None
    before = await domain_snapshot(refusing.hub)
    body = f"!hub {name} {sample_args(spec)}".strip()
    reply = await refusing.command(body, room=refusing.control)
    assert f"`!hub {name}` is for moderators only; nothing was changed." in reply, reply
    with contextlib.suppress(TimeoutError):
        await quiet(refusing.hub, timeout=2)
    assert await domain_snapshot(refusing.hub) == before
