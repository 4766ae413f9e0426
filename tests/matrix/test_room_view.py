"""nio's room built from state events without nio's parser: members, their changes, bad fields."""

from __future__ import annotations

from typing import Any

from nio import MatrixRoom

from hub.matrix.room_view import joined_events, room_from_state, state_events

HUB = "@hub:example.org"


def member(user: Any, membership: str, **content: Any) -> dict[str, Any]:
    return {"type": "m.room.member", "state_key": user, "sender": HUB, "event_id": f"$m{user}",
            "origin_server_ts": 1, "content": {"membership": membership, **content}}


def state(kind: str, content: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "state_key": "", "sender": HUB, "event_id": f"${kind}",
            "origin_server_ts": 1, "content": content}


def test_joined_and_invited_are_members_and_the_rest_are_not() -> None:
    room = room_from_state("!r:x", HUB, [
        state("m.room.create", {"room_version": "10", "creator": HUB}),
        state("m.room.power_levels", {"users": {HUB: 100, "@ada:x": 50}}),
        member(HUB, "join", displayname="Hub"),
        member("@ada:x", "join", displayname="Ada"),
        member("@bo:x", "invite"),
        member("@cy:x", "leave"),
        member("@di:x", "ban"),
    ], encrypted=False)
    assert set(room.users) == {HUB, "@ada:x", "@bo:x"}
    assert set(room.invited_users) == {"@bo:x"}
    assert room.user_name("@ada:x") == "Ada"
    assert room.power_levels.get_user_level("@ada:x") == 50
    assert not room.encrypted


def test_an_encryption_event_makes_the_room_encrypted() -> None:
    room = room_from_state("!r:x", HUB, [state("m.room.encryption", {"algorithm": "m.megolm.v1.aes-sha2"})],
                           encrypted=False)
    assert room.encrypted


def test_member_fields_of_the_wrong_type_are_skipped_or_dropped() -> None:
    room = room_from_state("!r:x", HUB, [
        member(["@list:x"], "join"),  # a state key that is not a user id: skipped
        {"type": "m.room.member", "state_key": "@nocontent:x", "content": "join"},
        member("@odd:x", "join", displayname={"html": "<b>x</b>"}, avatar_url=7),
    ], encrypted=True)
    assert set(room.users) == {"@odd:x"}
    assert room.users["@odd:x"].display_name is None and room.users["@odd:x"].avatar_url is None
    assert room.encrypted


def test_an_existing_room_learns_joins_renames_and_departures() -> None:
    room = MatrixRoom("!r:x", HUB, True)
    room.add_member("@bo:x", "Bo", None, invited=True)
    room.add_member("@cy:x", None, None)
    same = room_from_state("!r:x", HUB, [member("@bo:x", "join", displayname="Bo B."),
                                        member("@cy:x", "leave")], encrypted=True, room=room)
    assert same is room
    assert set(room.users) == {"@bo:x"} and not room.invited_users
    assert not room.users["@bo:x"].invited and room.user_name("@bo:x") == "Bo B."


def test_state_events_keeps_the_objects_of_either_answer() -> None:
    assert state_events([{"type": "a"}, "junk", 3]) == [{"type": "a"}]
    assert state_events({"chunk": [{"type": "b"}, None]}) == [{"type": "b"}]
    assert state_events({"errcode": "M_FORBIDDEN"}) == [] and state_events(None) == []


def test_the_joined_from_joined_members_and_the_invited_from_the_hubs_records() -> None:
    answer = {"joined": {HUB: {"display_name": "Hub"}, "@ada:x": {"display_name": "Ada", "avatar_url": "mxc://x/a"},
                         "@bo:x": {}}}
    # Bo is in the hub's records as invited but has joined since: a member, not an invitee.
    room = room_from_state("!r:x", HUB, joined_events(answer, {"@bo:x", "@cy:x"}), encrypted=True)
    assert set(room.users) == {HUB, "@ada:x", "@bo:x", "@cy:x"}
    assert set(room.invited_users) == {"@cy:x"}
    assert room.user_name("@ada:x") == "Ada" and room.users["@ada:x"].avatar_url == "mxc://x/a"
    assert room.encrypted


def test_a_joined_members_answer_of_the_wrong_shape_teaches_only_what_is_well_formed() -> None:
    answers: list[Any] = [None, [], {"joined": []}, {"joined": "x"}]
    for answer in answers:
        room = room_from_state("!r:x", HUB, joined_events(answer, {"@cy:x"}), encrypted=True)
        assert set(room.users) == {"@cy:x"}, answer
    room = room_from_state("!r:x", HUB, joined_events(
        {"joined": {"@ada:x": {"display_name": 7, "avatar_url": ["x"]}, "@bo:x": "not an object"}}, ()),
        encrypted=True)
    assert set(room.users) == {"@ada:x", "@bo:x"}
    assert room.user_name("@ada:x") == "@ada:x" and room.users["@ada:x"].avatar_url is None
