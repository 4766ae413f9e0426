"""Command handlers called directly with fake ports: no runner, no wiring, no hub object.

Each handler declares the ports it uses (hub.features.ports); these tests give
it exactly those, as small fakes (an outbox that records, a FakeClock) over a
real SQLite transaction, and check the answer and what it queued or stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from hub.clock import FakeClock
from hub.core.commands import CommandContext, RoomKind
from hub.core.ports import Priority
from hub.errors import ArgumentError, CommandError
from hub.features.basics import audit, ping
from hub.features.email_commands import unsuppress
from hub.features.person_commands import PersonPorts, Prefs, email, snooze, support, unsnooze
from hub.features.ports import Store
from hub.storage.db import open_database
from hub.storage.models import EmailSuppression, PersonPref

ADA = "@ada:example.org"
DIRECT = "!direct-ada:example.org"
CONTROL = "!control:example.org"
START = datetime(2027, 1, 12, 12, 0, tzinfo=UTC)  # a Tuesday


@dataclass
class RecordingOutbox:
    """The outbox port: remembers what a handler queued."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    async def enqueue(self, session: AsyncSession, *, channel: str, kind: str, lane: str,
                      payload: dict[str, Any], dedupe_key: str, not_before: float | None = None) -> bool:
        self.rows.append({"channel": channel, "kind": kind, "lane": lane, "payload": payload,
                          "dedupe_key": dedupe_key})
        return True

    async def enqueue_many(self, session: AsyncSession, rows: list[dict[str, Any]], *,
                           priority: Priority = Priority.BULK) -> int:
        self.rows.extend(rows)
        return len(rows)


@dataclass
class Fakes:
    """Store, Timed, Effects and Moderators; `program` and `settings` fail if a handler reaches them."""

    session: AsyncSession
    clock: FakeClock
    outbox: RecordingOutbox = field(default_factory=RecordingOutbox)
    control_room: str | None = None

    @property
    def program(self) -> Any:
        raise AssertionError("this handler must not need the program")

    def settings(self) -> Any:
        raise AssertionError("this handler must not need the settings")


@pytest.fixture
async def fakes(tmp_path: Path) -> AsyncIterator[Fakes]:
    db = await open_database(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        async with db.transaction() as s:
            yield Fakes(s, FakeClock(START))
    finally:
        await db.close()


def _ctx(ports: PersonPorts, room: str = DIRECT, kind: RoomKind = RoomKind.DIRECT,
         **args: Any) -> CommandContext[PersonPorts]:
    """Typed: mypy checks that the fakes are the ports, and that a handler asking for fewer
    (``CommandContext[Store]``) accepts this context (the type parameter is covariant)."""
    return CommandContext(ADA, room, kind, False, "$cmd1", args=args, services=ports, prefix="!hub")


async def test_ping_needs_no_ports() -> None:
    assert (await ping(CommandContext(ADA, DIRECT, RoomKind.DIRECT, False, "$e"))).text == "pong"


async def test_snooze_and_unsnooze_on_a_fake_clock(fakes: Fakes) -> None:
    ctx: CommandContext[Prefs] = _ctx(fakes, days=7)
    reply = await snooze(ctx)
    assert reply.text.startswith("Snoozed until Tuesday 19 January, 12:00 UTC: no private check-ins")
    pref = await fakes.session.get(PersonPref, ADA)
    assert pref is not None and pref.snooze_until == datetime(2027, 1, 19, 12, 0, tzinfo=UTC).timestamp()
    fakes.clock.advance(86400)
    assert (await unsnooze(_ctx(fakes))).text == "Welcome back: nudges to you are on again."
    assert (await unsnooze(_ctx(fakes))).text == "You weren't snoozed; nothing changed."


async def test_support_without_a_moderators_room_queues_nothing(fakes: Fakes) -> None:
    ctx: CommandContext[PersonPorts] = _ctx(fakes, text="I'd like to talk")
    with pytest.raises(CommandError, match="The moderators' room is not ready yet"):
        await support(ctx)
    assert fakes.outbox.rows == []


async def test_support_queues_only_the_words_typed_to_the_moderators(fakes: Fakes) -> None:
    fakes.control_room = CONTROL
    reply = await support(_ctx(fakes, text="I'd like to talk about <b>my</b> pairing"))
    assert reply.text.startswith("Sent to the moderators, just those words.")
    [row] = fakes.outbox.rows
    assert (row["lane"], row["kind"], row["dedupe_key"]) == (CONTROL, "support", "support:$cmd1")
    content = row["payload"]["content"]
    assert "I'd like to talk about <b>my</b> pairing" in content["body"]
    assert "<b>my</b>" not in content["formatted_body"]  # people's words are escaped in HTML


async def test_unsuppress_lifts_a_suppression_once(fakes: Fakes) -> None:
    ctx: CommandContext[Store] = _ctx(fakes, CONTROL, RoomKind.CONTROL, address="Ben@Example.org")
    fakes.session.add(EmailSuppression(address="ben@example.org", code=550, reason="no such user",
                                       created_at=START.timestamp()))
    reply = await unsuppress(ctx)
    assert reply.text.startswith("Lifted the suppression of ben@example.org (SMTP 550 since "
                                 "2027-01-12 12:00 UTC: no such user).")
    again = await unsuppress(ctx)
    assert again.text == "ben@example.org is not suppressed; nothing changed."


async def test_audit_on_a_new_hub(fakes: Fakes) -> None:
    reply = await audit(_ctx(fakes, CONTROL, RoomKind.CONTROL, n=None))
    assert reply.text == "No moderator actions recorded yet."


async def test_email_preference_and_an_argument_error_without_a_usage_line(fakes: Fakes) -> None:
    reply = await email(_ctx(fakes, setting="Weekly", code=None))
    assert reply.text == "Done: by email you now get only the weekly digest."
    pref = await fakes.session.get(PersonPref, ADA)
    assert pref is not None and pref.email_mode == "weekly"
    # The handler says only what is wrong; the runner adds the declared usage line.
    with pytest.raises(ArgumentError) as e:
        await email(_ctx(fakes, setting="on", code="ABCD"))
    assert str(e.value) == "unexpected `ABCD`"
