"""hub.inbound without a homeserver: what a stranger is offered and refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.features.test_program_wiring import BERLIN, PEOPLE, World, make_world

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
