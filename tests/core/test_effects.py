"""Effects as values: each payload is the dict the hub has always queued, and reads back the same."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hub.core.effects import (
    CreateRoom,
    Email,
    FixState,
    Invite,
    Kick,
    Leave,
    LeaveRoom,
    PinPlan,
    RoomMessage,
    StateEvent,
    effect_from_payload,
)
from hub.core.messages import notice_content
from hub.errors import PermanentDeliveryError, UnknownEffectError

_NOTICE = notice_content("hi", "<p>hi</p>")

# (effect, the payload dict the code before effects built by hand for it)
CASES: list[tuple[Any, dict[str, Any]]] = [
    (CreateRoom("pair:3", 2), {"op": "create_room", "room_key": "pair:3", "generation": 2}),
    (Invite("lounge:1", ("@a:x", "@b:x")),
     {"op": "invite", "room_key": "lounge:1", "users": ["@a:x", "@b:x"]}),
    (Invite("lounge:1", (), after="@m:x"),
     {"op": "invite", "room_key": "lounge:1", "users": [], "after": "@m:x"}),
    (Kick("lounge:1", "@a:x", "removed from C"),
     {"op": "kick", "room_key": "lounge:1", "user": "@a:x", "reason": "removed from C"}),
    (Leave("pair:3"), {"op": "leave", "room_key": "pair:3"}),
    (LeaveRoom("!r:x"), {"op": "leave_room", "room_id": "!r:x"}),
    (FixState("space:1", ("@m:x",)), {"op": "room_fix", "room_key": "space:1", "demote": ["@m:x"]}),
    (FixState("space:1", drift=True), {"op": "room_fix", "room_key": "space:1", "demote": [], "drift": True}),
    (RoomMessage(_NOTICE, room_key="pair:3"),
     {"op": "message", "room_key": "pair:3", "type": "m.room.message", "content": _NOTICE}),
    (RoomMessage(_NOTICE, room_id="!r:x"),
     {"op": "message", "room_id": "!r:x", "type": "m.room.message", "content": _NOTICE}),
    (RoomMessage({"m.relates_to": {"rel_type": "m.annotation", "event_id": "$e", "key": "👍"}},
                 room_id="!r:x", type="m.reaction"),
     {"op": "message", "room_id": "!r:x", "type": "m.reaction",
      "content": {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$e", "key": "👍"}}}),
    (RoomMessage(_NOTICE, room_key="lounge:1", prompt={"kind": "program-checkin", "week": 1, "for": []}),
     {"op": "message", "room_key": "lounge:1", "type": "m.room.message", "content": _NOTICE,
      "prompt": {"kind": "program-checkin", "week": 1, "for": []}}),
    (StateEvent("m.space.child", {}, state_key="!old:x", room_key="space:1"),
     {"op": "state", "room_key": "space:1", "type": "m.space.child", "state_key": "!old:x", "content": {}}),
    (PinPlan("!r:x", 4, "plan:4:abc"),
     {"op": "pin_plan", "room_id": "!r:x", "pair_id": 4, "message_key": "plan:4:abc"}),
    (PinPlan("!r:x", 4, None), {"op": "pin_plan", "room_id": "!r:x", "pair_id": 4, "message_key": None}),
    (Email("a@x.org", "Hi", "text", html="<p>t</p>", headers={"List-Id": "<c.x>"}),
     {"to": "a@x.org", "subject": "Hi", "text": "text", "html": "<p>t</p>", "headers": {"List-Id": "<c.x>"}}),
]


@pytest.mark.parametrize(("effect", "payload"), CASES)
def test_payload_is_the_old_dict_byte_for_byte(effect: Any, payload: dict[str, Any]) -> None:
    # Same keys in the same order: the stored JSON is what an older hub wrote and reads.
    assert json.dumps(effect.to_payload()) == json.dumps(payload)


@pytest.mark.parametrize(("effect", "payload"), CASES)
def test_a_queued_payload_reads_back_as_its_effect(effect: Any, payload: dict[str, Any]) -> None:
    assert effect_from_payload(json.loads(json.dumps(payload))) == effect


def test_old_rows_without_op_or_generation_still_read() -> None:
    old = effect_from_payload({"room_id": "!r:x", "content": _NOTICE})
    assert old == RoomMessage(_NOTICE, room_id="!r:x")
    create = effect_from_payload({"op": "create_room", "room_key": "space:1"})
    assert create == CreateRoom("space:1", None)
    assert create.to_payload() == {"op": "create_room", "room_key": "space:1"}


def test_email_channel_is_told_by_the_row() -> None:
    assert isinstance(effect_from_payload({"to": "a@x.org", "subject": "s", "text": "t"}, "email"), Email)


@pytest.mark.parametrize("payload", [
    {"op": "teleport", "room_key": "pair:1"},
    {"op": "kick", "room_key": "pair:1"},  # no user
    {"op": "message", "content": {}},  # no room
])
def test_unknown_or_incomplete_ops_are_refused_for_good(payload: dict[str, Any]) -> None:
    with pytest.raises(UnknownEffectError) as e:
        effect_from_payload(payload)
    assert isinstance(e.value, PermanentDeliveryError)


def test_a_markdown_notice_is_rendered() -> None:
    m = RoomMessage.markdown("**hi**", room_key="pair:1")
    assert m.content["msgtype"] == "m.notice" and "<strong>hi</strong>" in m.content["formatted_body"]
