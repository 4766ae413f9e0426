"""The Matrix sender reads each row back as its effect and dispatches on the effect's type.

No homeserver: the room effects go to the handlers the wiring gives (here, recorders), so
these need no client; a row whose op nobody serves, or that no hub knows, fails for good.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import pytest
from nio import AsyncClient

from hub.clock import FakeClock
from hub.core.effects import CreateRoom, FixState, Invite, Join, Kick, LeaveRoom, MatrixEffect, PinPlan
from hub.delivery.dispatcher import Claimed
from hub.delivery.ratelimit import SharedPause
from hub.errors import PermanentDeliveryError, UnknownEffectError
from hub.matrix.sender import EffectHandler, MatrixSender


def _row(payload: dict[str, Any]) -> Claimed:
    return Claimed(seq=1, txn_id="t1", channel="matrix", kind="test", lane="!r:x", payload=payload,
                   attempts=0, created_at=0.0)


def _sender(handlers: dict[type[MatrixEffect], EffectHandler]) -> MatrixSender:
    pause = SharedPause(FakeClock(datetime(2027, 3, 1, tzinfo=UTC)), "test")
    # The client is never reached: only messages and state events are sent by the sender itself.
    return MatrixSender(cast(AsyncClient, None), pause, handlers=handlers)


@pytest.mark.parametrize(("payload", "effect"), [
    ({"op": "create_room", "room_key": "pair:1", "generation": 2}, CreateRoom("pair:1", 2)),
    ({"op": "invite", "room_key": "lounge:1", "users": ["@a:x"]}, Invite("lounge:1", ("@a:x",))),
    ({"op": "kick", "room_key": "pair:1", "user": "@b:x", "reason": "r"}, Kick("pair:1", "@b:x", "r")),
    ({"op": "leave_room", "room_id": "!old:x"}, LeaveRoom("!old:x")),
    ({"op": "room_fix", "room_key": "space:1", "demote": [], "drift": True},
     FixState("space:1", (), drift=True)),
    ({"op": "pin_plan", "room_id": "!p:x", "pair_id": 4, "message_key": None}, PinPlan("!p:x", 4, None)),
    ({"op": "join", "room_id": "!j:x", "inviter": "@m:x", "direct": True}, Join("!j:x", "@m:x", direct=True)),
])
async def test_each_room_effect_goes_to_the_handler_of_its_type(payload: dict[str, Any],
                                                                effect: MatrixEffect) -> None:
    seen: list[tuple[str, object]] = []

    def recorder(name: str) -> EffectHandler:
        async def handle(row: Claimed, e: Any) -> str:
            seen.append((name, e))
            return f"done by {name}"
        return handle

    handlers: dict[type[MatrixEffect], EffectHandler] = {
        t: recorder(t.__name__) for t in (CreateRoom, Invite, Kick, LeaveRoom, FixState, PinPlan, Join)}
    result = await _sender(handlers).send(_row(payload))
    assert seen == [(type(effect).__name__, effect)]
    assert result == f"done by {type(effect).__name__}"
    assert effect.to_payload() == payload  # the row a feature queues is the one the handler gets


async def test_an_op_nobody_serves_or_no_hub_knows_fails_the_row_for_good() -> None:
    sender = _sender({})
    with pytest.raises(PermanentDeliveryError, match="no handler"):
        await sender.send(_row({"op": "kick", "room_key": "pair:1", "user": "@b:x"}))
    with pytest.raises(UnknownEffectError):
        await sender.send(_row({"op": "teleport", "room_id": "!r:x"}))
