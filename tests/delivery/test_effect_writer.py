"""The effect writer: the one place rows are built, with their lanes, and every email via email_payload."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from hub.clock import FakeClock
from hub.core.effects import Email, Invite, LeaveRoom, Outgoing, RoomMessage, effect_from_payload
from hub.delivery.effect_writer import EffectWriter, row_spec
from hub.delivery.outbox import Outbox
from hub.errors import UnsafeHeaderError

T0 = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)


def _writer() -> EffectWriter:
    return EffectWriter(Outbox(db=None, clock=FakeClock(T0)))  # type: ignore[arg-type]  # rows only


def test_a_row_carries_the_effects_payload_on_the_chosen_lane() -> None:
    out = Outgoing(Invite("lounge:1", ("@a:x",)), "room-invite", "invite:lounge:1:@a:x:n", "!l:x")
    row = _writer().row(out)
    assert (row["channel"], row["kind"], row["lane"], row["dedupe_key"]) == (
        "matrix", "room-invite", "!l:x", "invite:lounge:1:@a:x:n")
    assert effect_from_payload(json.loads(row["payload"])) == out.effect
    assert row["not_before"] == T0.timestamp() and row["status"] == "queued"


@pytest.mark.parametrize(("effect", "lane"), [
    (RoomMessage({"body": "x"}, room_key="pair:1"), "room:pair:1"),
    (RoomMessage({"body": "x"}, room_id="!r:x"), "!r:x"),
    (LeaveRoom("!r:x"), "!r:x"),
    (Email("Ada@X.org ", "Hi", "t"), "ada@x.org"),
])
def test_default_lanes(effect: Any, lane: str) -> None:
    assert row_spec(Outgoing(effect, "k", "d"))["lane"] == lane


def test_every_email_is_built_by_email_payload() -> None:
    spec = row_spec(Outgoing(Email("a@x.org", "Hi", "text", html="<p>café</p>"), "k", "d"))
    assert spec["channel"] == "email"
    assert spec["payload"]["html"] == "<p>caf&#233;</p>"  # email_payload makes the HTML ASCII
    with pytest.raises(UnsafeHeaderError):
        row_spec(Outgoing(Email("a@x.org", "Hi\r\nBcc: b@x.org", "t"), "k", "d"))
    with pytest.raises(ValueError):
        row_spec(Outgoing(Email("a@x.org", "Hi", "t", headers={"From": "evil@x.org"}), "k", "d"))
