"""Issue 18, items 1 and 8, the pure parts: whose room and tag a state says, what drift is.

No homeserver: the raw state events and sync responses are what Synapse sends
(the live tests, test_takeover_live.py and test_room_drift_live.py, use a real one).
"""

from __future__ import annotations

from typing import Any

from nio import RoomCreateEvent, SyncResponse

from hub.core.cohorts import OWNED_STATE, ROOM_TAG, lounge_spec, pair_spec, state_fixes
from hub.matrix.events import creators_from_create, state_changes
from hub.matrix.provision import own_tag, snapshot_from_events

HUB, MOD, EVE = "@hub:x", "@mod:x", "@eve:x"
TAG = {"install": "i", "key": "pair:2", "generation": 1}


def ev(kind: str, sender: str, content: dict[str, Any], key: str = "", n: int = 0) -> dict[str, Any]:
    return {"type": kind, "state_key": key, "sender": sender, "content": content,
            "event_id": f"${kind}{n}", "origin_server_ts": 1, "room_id": "!r:x"}


def create(sender: str, version: str = "12", **content: Any) -> dict[str, Any]:
    return ev("m.room.create", sender, {"room_version": version, **content})


# -- item 1: a tag counts only where the hub made the room and wrote the tag ------------------------


def test_own_tag_only_in_a_room_the_hub_made_alone_with_a_tag_it_sent() -> None:
    assert own_tag([create(HUB), ev(ROOM_TAG, HUB, TAG)], HUB) == TAG
    assert own_tag([create(HUB, "10", creator=HUB), ev(ROOM_TAG, HUB, TAG)], HUB) == TAG
    # A participant's room with a copied tag (the takeover), with or without the hub as co-creator.
    assert own_tag([create(EVE), ev(ROOM_TAG, EVE, TAG)], HUB) is None
    assert own_tag([create(EVE, additional_creators=[HUB]), ev(ROOM_TAG, EVE, TAG)], HUB) is None
    assert own_tag([create(HUB, additional_creators=[EVE]), ev(ROOM_TAG, HUB, TAG)], HUB) is None
    # The hub's room, relabelled by a power-50 moderator.
    assert own_tag([create(HUB), ev(ROOM_TAG, MOD, TAG)], HUB) is None
    # No create event in what was read, or no tag at all.
    assert own_tag([ev(ROOM_TAG, HUB, TAG)], HUB) is None
    assert own_tag([create(HUB)], HUB) is None


def test_snapshot_says_who_owns_the_room_and_who_the_hub_cannot_remove() -> None:
    power = ev("m.room.power_levels", HUB, {"users": {HUB: 100, MOD: 50, EVE: 100}})
    joined = ev("m.room.member", EVE, {"membership": "join"}, EVE)
    forged = snapshot_from_events("!r:x", [create(EVE), joined])
    assert not forged.owned_by(HUB) and forged.created_by == {EVE}
    assert forged.outranks(EVE, HUB)  # v12 creator: unlimited power, no kick possible
    mine = snapshot_from_events("!r:x", [create(HUB), power])
    assert mine.owned_by(HUB)
    assert not mine.outranks(EVE, HUB) and not mine.outranks(MOD, HUB)  # the hub is creator in v12
    old = snapshot_from_events("!r:x", [create(HUB, "10", creator=HUB), power])
    assert old.owned_by(HUB)
    assert old.outranks(EVE, HUB) and not old.outranks(MOD, HUB)  # v10: levels decide
    assert mine.state_event("m.room.power_levels") == power and mine.state_event("m.room.topic") is None


def test_creators_have_power_only_in_versions_that_give_it() -> None:
    v12 = RoomCreateEvent.from_dict(create(EVE, additional_creators=[MOD]))
    v10 = RoomCreateEvent.from_dict(create(EVE, "10", creator=EVE))
    assert creators_from_create(v12) == {EVE, MOD}
    # In room version 10 the creator may have been demoted since: nothing follows from creating.
    assert creators_from_create(v10) == frozenset()


# -- item 8: drift ------------------------------------------------------------------------------------


def test_state_fixes_put_back_history_guests_levels_and_encryption() -> None:
    spec = lounge_spec("lounge:1", "W", None, {MOD: 50}, TAG, "!hub")
    state: dict[tuple[str, str], dict[str, Any]] = {
        ("m.room.name", ""): {"name": "W lounge"},
        ("m.room.topic", ""): {"topic": spec.topic},
        ("m.room.join_rules", ""): {"join_rule": "invite"},
        ("m.room.power_levels", ""): {"users": {MOD: 50}, "invite": 50, "events_default": 0},
        (ROOM_TAG, ""): dict(TAG),
    }
    assert state_fixes(spec, state, hub=HUB, room_version="12") == []
    drifted = {**state, ("m.room.history_visibility", ""): {"history_visibility": "world_readable"},
               ("m.room.guest_access", ""): {"guest_access": "can_join"},
               ("m.room.power_levels", ""): {"users": {MOD: 50}, "invite": 0, "events_default": 0}}
    fixes = {f.reason: f for f in state_fixes(spec, drifted, hub=HUB, room_version="12")}
    assert set(fixes) == {"history visibility", "guest access", "power levels"}
    assert fixes["history visibility"].content == {"history_visibility": "shared"}
    assert fixes["guest access"].content == {"guest_access": "forbidden"}
    assert fixes["power levels"].content["invite"] == 50
    # A pair room: anyone allowed to invite, or encryption set to something else, is put back.
    pair = pair_spec("pair:1", "A", "B", "l", encrypted=True, tag=TAG, prefix="!hub")
    pair_state: dict[tuple[str, str], dict[str, Any]] = {
        ("m.room.encryption", ""): {"algorithm": "m.olm.v1.curve25519-aes-sha2"},
        ("m.room.history_visibility", ""): {"history_visibility": "invited"},
        ("m.room.power_levels", ""): {"users": {}, "invite": 0},
    }
    reasons = {f.reason: f for f in state_fixes(pair, pair_state, hub=HUB, room_version="12")}
    assert {"encryption", "power levels"} <= set(reasons)
    assert reasons["power levels"].content["invite"] == 100


def _sync(events: list[dict[str, Any]], state: list[dict[str, Any]] | None = None) -> SyncResponse:
    resp = SyncResponse.from_dict({
        "next_batch": "s1",
        "rooms": {"join": {"!r:x": {"timeline": {"events": events, "limited": False},
                                    "state": {"events": state or []}}}},
    })
    assert isinstance(resp, SyncResponse), resp
    return resp


def test_state_changes_are_others_changes_to_what_the_hub_owns() -> None:
    resp = _sync(
        [ev("m.room.join_rules", MOD, {"join_rule": "public"}, n=1),
         ev("m.room.join_rules", HUB, {"join_rule": "invite"}, n=2),  # the hub's own fix
         ev("m.room.pinned_events", MOD, {"pinned": []}, n=3),  # not the hub's to keep
         {"type": "m.room.message", "sender": MOD, "content": {"msgtype": "m.text", "body": "hi"},
          "event_id": "$m", "origin_server_ts": 1},
         ev(ROOM_TAG, EVE, TAG, n=4)],
        state=[ev("m.room.guest_access", MOD, {"guest_access": "can_join"}, n=5)],
    )
    got = [(c.room_id, c.event_type, c.sender) for c in state_changes(resp, HUB, OWNED_STATE)]
    assert got == [("!r:x", "m.room.guest_access", MOD), ("!r:x", "m.room.join_rules", MOD),
                   ("!r:x", ROOM_TAG, EVE)]
