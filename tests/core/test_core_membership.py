"""The membership core on fakes: states are the stored strings, transitions return the right effects."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from hub.core import membership as core
from hub.core.effects import CreateRoom, FixState, Invite, Kick, Leave, LeaveRoom, RoomMessage
from hub.core.membership import MembershipState, PairStatus, RoomKind, RoomStatus


@dataclass
class FakeRoom:
    key: str = "pair:7"
    room_id: str | None = None
    status: str = "pending"
    generation: int = 1


def test_states_are_the_strings_in_the_database() -> None:
    # No migration: a row written as "ready" reads back equal to the enum, and the enum is stored as-is.
    stored: str = "ready"
    assert RoomStatus(stored) is RoomStatus.READY and stored == RoomStatus.READY
    assert {str(s) for s in MembershipState} == {"pending", "invited", "joined", "left", "banned", "removed"}
    assert {str(s) for s in RoomKind} == {"space", "lounge", "pair", "direct", "dm"}
    assert "paused" in core.OPEN_PAIR and "closed" not in core.OPEN_PAIR


def test_the_state_groups_cover_what_they_say() -> None:
    assert set(core.LIVE_ROOM) == set(RoomStatus) - {RoomStatus.CLOSED}
    # Every Matrix membership the hub records maps to a state; "knock" is not one.
    assert core.MATRIX_MEMBERSHIP == {"invite": "invited", "join": "joined", "leave": "left", "ban": "banned"}
    assert "knock" not in core.MATRIX_MEMBERSHIP


@pytest.mark.parametrize(("status", "room_id", "lane"), [
    ("pending", None, "room:pair:7"),
    ("creating", None, "room:pair:7"),
    ("creating", "!r:x", "room:pair:7"),  # a space's id is recorded before it is ready
    ("ready", "!r:x", "!r:x"),
    ("closing", "!r:x", "!r:x"),
    ("closed", "!r:x", "room:pair:7"),
])
def test_a_rooms_rows_wait_on_its_key_lane_until_it_is_ready(status: str, room_id: str | None,
                                                              lane: str) -> None:
    assert core.room_lane(FakeRoom(status=status, room_id=room_id)) == lane


def test_creation_goes_first_on_the_key_lane_once_per_generation() -> None:
    out = core.create_room(FakeRoom(status="ready", room_id="!r:x", generation=3))
    assert out.effect == CreateRoom("pair:7", 3)
    assert (out.kind, out.dedupe_key, out.lane) == ("room-create", "create:pair:7:3", "room:pair:7")


@pytest.mark.parametrize(("current", "new"), [
    (None, "pending"), ("removed", "pending"), ("left", "pending"),
    ("pending", None), ("invited", None), ("joined", None), ("banned", None),
])
def test_wanting_someone_invites_them_only_if_not_there(current: str | None, new: str | None) -> None:
    assert core.want(current) == new


@pytest.mark.parametrize(("current", "new", "kicked"), [
    (None, None, False), ("removed", None, False),
    ("pending", "removed", True), ("invited", "removed", True), ("joined", "removed", True),
    ("left", "removed", False), ("banned", "removed", False),
])
def test_unwanting_someone_kicks_them_only_if_they_were_sent_for(current: str | None, new: str | None,
                                                                  kicked: bool) -> None:
    room = FakeRoom(status="ready", room_id="!r:x")
    state, outs = core.unwant(room, current, "@a:x", "removed from C", "n1")
    assert state == new
    assert [o.effect for o in outs] == ([Kick("pair:7", "@a:x", "removed from C")] if kicked else [])
    assert all(o.lane == "!r:x" and o.dedupe_key == "kick:pair:7:@a:x:n1" for o in outs)


def test_closing_a_created_room_says_goodbye_then_leaves() -> None:
    room = FakeRoom(status="ready", room_id="!r:x", generation=2)
    status, outs = core.close_room(room, "Bye")
    assert status == RoomStatus.CLOSING
    assert [type(o.effect) for o in outs] == [RoomMessage, Leave]
    assert [o.dedupe_key for o in outs] == ["goodbye:pair:7:2", "leave:pair:7:2"]
    assert isinstance(outs[0].effect, RoomMessage) and outs[0].effect.content["body"] == "Bye"


def test_closing_a_room_never_created_sends_nothing() -> None:
    assert core.close_room(FakeRoom(), "Bye") == (RoomStatus.CLOSED, [])
    assert core.close_room(FakeRoom(status="closing", room_id="!r:x"), "Bye") == (None, [])


def test_leaving_by_id_says_farewell_first() -> None:
    outs = core.leave_room_by_id("!old:x", "Moved", key="direct:@a:x:2")
    assert [o.effect for o in outs][1:] == [LeaveRoom("!old:x")]
    assert [o.dedupe_key for o in outs] == ["farewell:direct:@a:x:2:!old:x", "leave:direct:@a:x:2:!old:x"]
    assert all(o.lane == "!old:x" for o in outs)
    assert [type(o.effect) for o in core.leave_room_by_id("!old:x", None, key="k")] == [LeaveRoom]


def test_invites_and_fixes() -> None:
    room = FakeRoom()
    assert core.invite(room, ["@a:x"], "n").dedupe_key == "invite:pair:7:@a:x:n"
    bulk = core.invite(room, ["@a:x", "@b:x"], "n", bulk=True)
    assert bulk.effect == Invite("pair:7", ("@a:x", "@b:x")) and bulk.dedupe_key == "invite:pair:7:bulk:n"
    fix = core.fix_room(room, "n", demote=["@m:x"])
    assert fix.effect == FixState("pair:7", ("@m:x",)) and fix.kind == "room-fix"


def test_pausing_changes_only_an_open_pair_to_the_other_open_state() -> None:
    assert core.pause("active", PairStatus.PAUSED) and not core.pause("paused", PairStatus.PAUSED)
    with pytest.raises(ValueError):
        core.pause("active", PairStatus.CLOSED)
