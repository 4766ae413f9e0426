"""`!hub rematch` called directly with fake ports: where it works, and that a refusal sends nothing."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from hub.core.commands import CommandContext, RoomKind
from hub.errors import CommandError
from hub.features.match_commands import MatchPorts, rematch
from hub.storage.models import RematchRequest

from tests.features.test_handlers import ADA, CONTROL, DIRECT, Fakes, fakes  # noqa: F401 (fixture)

LOUNGE = "!lounge:example.org"


def _ctx(ports: Any, room: str, kind: RoomKind, *, moderator: bool = False,
         text: str | None = None) -> CommandContext[MatchPorts]:
    return CommandContext(ADA, room, kind, moderator, "$cmd1", args={"text": text}, services=ports,
                          prefix="!hub")


async def _requests(f: Fakes) -> int:
    return int((await f.session.execute(select(func.count()).select_from(RematchRequest))).scalar_one())


async def test_a_rematch_request_outside_the_direct_room_sends_nothing(fakes: Fakes) -> None:  # noqa: F811
    fakes.control_room = CONTROL
    with pytest.raises(CommandError, match="works in your direct room"):
        await rematch(_ctx(fakes, LOUNGE, RoomKind.LOUNGE, text="it isn't working"))
    with pytest.raises(CommandError, match=r"Moderators: `!hub rematch SLUG MENTEE`"):
        # A moderator's words that name no cohort are a participant's request, in the wrong room.
        await rematch(_ctx(fakes, LOUNGE, RoomKind.LOUNGE, moderator=True, text="nosuch @ben:example.org"))
    assert fakes.outbox.rows == [] and await _requests(fakes) == 0


async def test_without_a_moderators_room_or_a_pair_nothing_is_sent_or_counted(fakes: Fakes) -> None:  # noqa: F811
    with pytest.raises(CommandError, match="not ready yet"):
        await rematch(_ctx(fakes, DIRECT, RoomKind.DIRECT, text="please"))
    fakes.control_room = CONTROL
    with pytest.raises(CommandError, match="not a mentor or mentee"):
        await rematch(_ctx(fakes, DIRECT, RoomKind.DIRECT))
    assert fakes.outbox.rows == [] and await _requests(fakes) == 0
