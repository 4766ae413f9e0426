"""hub.inbound without a homeserver: what a stranger is offered and refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.features.test_program_wiring import BERLIN, CONTROL, MOD, PEOPLE, World, make_world

OTHER = "!elsewhere:example.org"  # a room a participant invited the hub into


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = await make_world(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}",
                         datetime(2027, 1, 12, 12, 0, tzinfo=BERLIN))
    yield w
    await w.db.close()


def _listed(body: str) -> set[str]:
    return {line.split()[1] for line in body.splitlines()[1:] if line.startswith("!hub ")}


async def test_help_offers_a_stranger_only_what_a_stranger_may_use(world: World) -> None:
    stranger = await world.command("@stranger:example.org", OTHER, "!hub help")
    assert _listed(stranger["body"]) == {"help", "ping"}
    # A participant in the same room is offered the commands for everyone there.
    participant = await world.command(PEOPLE[0][1], OTHER, "!hub help")
    assert {"help", "ping", "email", "snooze"} <= _listed(participant["body"])


# -- argument converters and argument errors, through the runner ----------------------------------


async def test_a_bad_person_gets_the_usage_line_from_the_declaration(world: World) -> None:
    reply = await world.command(MOD, CONTROL, "!hub add winter mentor nobody")
    assert reply["body"] == ("`nobody` is neither a Matrix id (@name:server) nor an email address. "
                             "Usage: `!hub add SLUG mentor|mentee|moderator WHO [NAME_AND_EMAIL...]`")


async def test_arguments_are_judged_after_the_sender_may_run_the_command(world: World) -> None:
    """A participant who may not run `add` is told that, not how to type a person."""
    reply = await world.command(PEOPLE[0][1], OTHER, "!hub add winter mentor nobody")
    assert reply["body"] == "`!hub add` is for moderators only; nothing was changed."


async def test_a_handlers_argument_error_gets_the_declared_usage_line(world: World) -> None:
    reply = await world.command(MOD, CONTROL, '!hub cohort create spring " "')
    assert reply["body"] == "NAME: is empty. Usage: `!hub cohort create SLUG NAME [OPTIONS...]`"
