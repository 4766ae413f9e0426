"""The push-rule evaluator (tests/support/push_rules.py) against the spec's default rules and its examples.

The rules below are the spec's predefined rules (client-server API, "Predefined
Rules", v1.7+) for ``@alice:example.org``, in the spec's order. The live test
reads the real ones from Synapse; these pin down what the evaluator does with them.
"""

from __future__ import annotations

from typing import Any

import pytest

from hub.core.markup import sanitize_matrix_html
from hub.core.messages import Mention, notice_content, prompt_content

from tests.support.push_rules import RoomState, Verdict, evaluate, glob_matches, matches, property_path

ALICE = "@alice:example.org"
BOT = "@hub:example.org"
ROOM = "!pair:example.org"
SOUND = {"set_tweak": "sound", "value": "default"}
HIGHLIGHT = {"set_tweak": "highlight"}


def _match(key: str, pattern: str) -> dict[str, Any]:
    return {"kind": "event_match", "key": key, "pattern": pattern}


def spec_rules(user_id: str = ALICE) -> dict[str, Any]:
    local = user_id[1:].split(":", 1)[0]
    rule = {"default": True, "enabled": True}
    return {
        "override": [
            {**rule, "rule_id": ".m.rule.master", "enabled": False, "conditions": [], "actions": []},
            {**rule, "rule_id": ".m.rule.suppress_notices",
             "conditions": [_match("content.msgtype", "m.notice")], "actions": []},
            {**rule, "rule_id": ".m.rule.invite_for_me",
             "conditions": [_match("type", "m.room.member"), _match("content.membership", "invite"),
                            _match("state_key", user_id)], "actions": ["notify", SOUND]},
            {**rule, "rule_id": ".m.rule.member_event", "conditions": [_match("type", "m.room.member")],
             "actions": []},
            {**rule, "rule_id": ".m.rule.is_user_mention",
             "conditions": [{"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids",
                             "value": user_id}], "actions": ["notify", SOUND, HIGHLIGHT]},
            {**rule, "rule_id": ".m.rule.contains_display_name",
             "conditions": [{"kind": "contains_display_name"}], "actions": ["notify", SOUND, HIGHLIGHT]},
            {**rule, "rule_id": ".m.rule.is_room_mention",
             "conditions": [{"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True},
                            {"kind": "sender_notification_permission", "key": "room"}],
             "actions": ["notify", HIGHLIGHT]},
            {**rule, "rule_id": ".m.rule.roomnotif",
             "conditions": [_match("content.body", "@room"),
                            {"kind": "sender_notification_permission", "key": "room"}],
             "actions": ["notify", HIGHLIGHT]},
            {**rule, "rule_id": ".m.rule.tombstone",
             "conditions": [_match("type", "m.room.tombstone"), _match("state_key", "")],
             "actions": ["notify", HIGHLIGHT]},
            {**rule, "rule_id": ".m.rule.reaction", "conditions": [_match("type", "m.reaction")],
             "actions": []},
            {**rule, "rule_id": ".m.rule.room.server_acl",
             "conditions": [_match("type", "m.room.server_acl"), _match("state_key", "")], "actions": []},
            {**rule, "rule_id": ".m.rule.suppress_edits",
             "conditions": [{"kind": "event_property_is", "key": "content.m\\.relates_to.rel_type",
                             "value": "m.replace"}], "actions": []},
        ],
        "content": [
            {**rule, "rule_id": ".m.rule.contains_user_name", "pattern": local,
             "actions": ["notify", SOUND, HIGHLIGHT]},
        ],
        "room": [],
        "sender": [],
        "underride": [
            {**rule, "rule_id": ".m.rule.call", "conditions": [_match("type", "m.call.invite")],
             "actions": ["notify", {"set_tweak": "sound", "value": "ring"}]},
            {**rule, "rule_id": ".m.rule.encrypted_room_one_to_one",
             "conditions": [{"kind": "room_member_count", "is": "2"}, _match("type", "m.room.encrypted")],
             "actions": ["notify", SOUND]},
            {**rule, "rule_id": ".m.rule.room_one_to_one",
             "conditions": [{"kind": "room_member_count", "is": "2"}, _match("type", "m.room.message")],
             "actions": ["notify", SOUND]},
            {**rule, "rule_id": ".m.rule.message", "conditions": [_match("type", "m.room.message")],
             "actions": ["notify"]},
            {**rule, "rule_id": ".m.rule.encrypted", "conditions": [_match("type", "m.room.encrypted")],
             "actions": ["notify"]},
        ],
    }


PAIR_ROOM = RoomState(member_count=3, display_name="Alice", power_levels={"users": {BOT: 100}})


def message(content: dict[str, Any], *, sender: str = BOT, etype: str = "m.room.message") -> dict[str, Any]:
    return {"type": etype, "content": content, "sender": sender, "room_id": ROOM, "event_id": "$e"}


def verdict(content: dict[str, Any], room: RoomState = PAIR_ROOM, **more: Any) -> Verdict:
    return evaluate(spec_rules(), message(content, **more), ALICE, room)


# --- what the hub sends --------------------------------------------------------------------------


def test_a_prompt_naming_the_user_notifies_and_highlights_by_the_mention_rule() -> None:
    v = verdict({"msgtype": "m.text", "body": "Alice and Bo: Check-in", "m.mentions": {"user_ids": [ALICE]}})
    assert (v.rule_id, v.kind, v.notify, v.highlight) == (".m.rule.is_user_mention", "override", True, True)
    assert v.tweak("sound") == "default"


def test_the_same_prompt_as_a_notice_is_silenced_before_the_mention_is_looked_at() -> None:
    v = verdict({"msgtype": "m.notice", "body": "Alice: Check-in", "m.mentions": {"user_ids": [ALICE]}})
    assert (v.rule_id, v.notify, v.highlight) == (".m.rule.suppress_notices", False, False)


def test_a_prompt_for_someone_else_is_an_ordinary_message() -> None:
    v = verdict({"msgtype": "m.text", "body": "Bo: your turn",
                 "m.mentions": {"user_ids": ["@bo:example.org"]}})
    assert (v.rule_id, v.notify, v.highlight) == (".m.rule.message", True, False)


def test_empty_mentions_turn_off_the_legacy_body_rules() -> None:
    body = {"msgtype": "m.text", "body": "Alice said @room and alice"}
    legacy = verdict(body)
    assert (legacy.rule_id, legacy.highlight) == (".m.rule.contains_display_name", True)
    quiet = verdict({**body, "m.mentions": {}})
    assert (quiet.rule_id, quiet.highlight) == (".m.rule.message", False)


def test_a_reply_to_a_command_is_silent_even_when_it_quotes_the_name() -> None:
    v = verdict({"msgtype": "m.notice", "body": "> <@alice:example.org> !hub met video\n\nThanks, Alice",
                 "m.mentions": {}, "m.relates_to": {"m.in_reply_to": {"event_id": "$cmd"}}})
    assert (v.rule_id, v.notify) == (".m.rule.suppress_notices", False)


# --- the other default rules ---------------------------------------------------------------------


def test_user_name_content_rule_matches_the_localpart_at_word_boundaries() -> None:
    room = RoomState(member_count=3, display_name="Al")
    assert verdict({"msgtype": "m.text", "body": "ping alice!"}, room).rule_id == ".m.rule.contains_user_name"
    assert verdict({"msgtype": "m.text", "body": "palices"}, room).rule_id == ".m.rule.message"


def test_room_mentions_need_the_senders_power() -> None:
    mod = "@mod:example.org"
    room = RoomState(member_count=3, display_name="Alice", power_levels={"users": {mod: 50}})
    assert verdict({"msgtype": "m.text", "body": "hi @room"}, room, sender=mod).rule_id == ".m.rule.roomnotif"
    assert verdict({"msgtype": "m.text", "body": "hi @room"}, room,
                   sender="@pleb:example.org").rule_id == ".m.rule.message"
    assert verdict({"msgtype": "m.text", "body": "hi", "m.mentions": {"room": True}}, room,
                   sender=mod).rule_id == ".m.rule.is_room_mention"
    # With m.mentions present, "@room" in the body is text, not a room mention.
    assert verdict({"msgtype": "m.text", "body": "hi @room", "m.mentions": {}}, room,
                   sender=mod).rule_id == ".m.rule.message"
    # The room's own threshold wins over the default 50.
    strict = RoomState(member_count=3, power_levels={"users": {mod: 50}, "notifications": {"room": 75}})
    assert verdict({"msgtype": "m.text", "body": "x", "m.mentions": {"room": True}}, strict,
                   sender=mod).rule_id == ".m.rule.message"


def test_one_to_one_and_encrypted_underrides() -> None:
    direct = RoomState(member_count=2)
    assert verdict({"msgtype": "m.text", "body": "hi"}, direct).rule_id == ".m.rule.room_one_to_one"
    sealed = {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "..."}
    assert verdict(sealed, direct, etype="m.room.encrypted").rule_id == ".m.rule.encrypted_room_one_to_one"
    assert verdict(sealed, etype="m.room.encrypted").rule_id == ".m.rule.encrypted"


def test_edits_reactions_and_members_do_not_notify() -> None:
    edited = {"msgtype": "m.text", "body": "* fixed", "m.mentions": {},
              "m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}}
    edit = verdict(edited)
    assert (edit.rule_id, edit.notify) == (".m.rule.suppress_edits", False)
    # The edit rule comes after the mention rule: an edit that newly names someone notifies them.
    naming = verdict({**edited, "m.mentions": {"user_ids": [ALICE]}})
    assert (naming.rule_id, naming.notify) == (".m.rule.is_user_mention", True)
    reaction = verdict({"m.relates_to": {"rel_type": "m.annotation", "event_id": "$x", "key": "🎥"}},
                       etype="m.reaction")
    assert (reaction.rule_id, reaction.notify) == (".m.rule.reaction", False)
    invite = evaluate(spec_rules(), {"type": "m.room.member", "state_key": ALICE, "sender": BOT,
                                     "content": {"membership": "invite"}}, ALICE, PAIR_ROOM)
    assert (invite.rule_id, invite.notify) == (".m.rule.invite_for_me", True)
    join = evaluate(spec_rules(), {"type": "m.room.member", "state_key": BOT, "sender": BOT,
                                   "content": {"membership": "join"}}, ALICE, PAIR_ROOM)
    assert (join.rule_id, join.notify) == (".m.rule.member_event", False)


def test_own_events_never_notify_and_unmatched_events_have_no_rule() -> None:
    mine = verdict({"msgtype": "m.text", "body": "hi", "m.mentions": {"user_ids": [ALICE]}}, sender=ALICE)
    assert (mine.rule_id, mine.notify) == (None, False)
    other = evaluate(spec_rules(), message({"x": 1}, etype="org.example.custom"), ALICE, PAIR_ROOM)
    assert (other.rule_id, other.notify) == (None, False)


def test_master_rule_wins_wherever_it_is_listed_and_disabled_rules_are_skipped() -> None:
    rules = spec_rules()
    master = {**rules["override"].pop(0), "enabled": True}
    rules["underride"].append(master)
    v = evaluate(rules, message({"msgtype": "m.text", "body": "x", "m.mentions": {"user_ids": [ALICE]}}),
                 ALICE, PAIR_ROOM)
    assert (v.rule_id, v.notify) == (".m.rule.master", False)
    rules = spec_rules()
    rules["override"][1]["enabled"] = False  # the user turned notices on
    v = evaluate(rules, message({"msgtype": "m.notice", "body": "x", "m.mentions": {}}), ALICE, PAIR_ROOM)
    assert (v.rule_id, v.notify) == (".m.rule.message", True)


def test_room_and_sender_rules_and_historical_actions() -> None:
    rules = spec_rules()
    rules["room"] = [{"rule_id": ROOM, "default": False, "enabled": True, "actions": ["dont_notify"]}]
    v = evaluate(rules, message({"msgtype": "m.text", "body": "x"}), ALICE, PAIR_ROOM)
    assert (v.rule_id, v.kind, v.actions, v.notify) == (ROOM, "room", (), False)
    rules = spec_rules()
    rules["sender"] = [{"rule_id": BOT, "default": False, "enabled": True, "actions": ["notify", "coalesce"]}]
    v = evaluate(rules, message({"msgtype": "m.text", "body": "x"}), ALICE, PAIR_ROOM)
    assert (v.rule_id, v.kind, v.actions) == (BOT, "sender", ("notify",))
    # Override rules come before room rules: a mention still gets through a muted-ish room rule.
    rules = spec_rules()
    rules["room"] = [{"rule_id": ROOM, "default": False, "enabled": True, "actions": []}]
    v = evaluate(rules, message({"msgtype": "m.text", "body": "x", "m.mentions": {"user_ids": [ALICE]}}),
                 ALICE, PAIR_ROOM)
    assert v.rule_id == ".m.rule.is_user_mention"


# --- conditions, as the spec's examples define them ----------------------------------------------


@pytest.mark.parametrize(("key", "parts"), [
    ("content.body", ["content", "body"]),
    ("content.m\\.mentions.user_ids", ["content", "m.mentions", "user_ids"]),
    ("content.m\\\\foo", ["content", "m\\foo"]),
    ("content.a\\xb", ["content", "a\\xb"]),
])
def test_dot_separated_property_paths(key: str, parts: list[str]) -> None:
    assert property_path(key) == parts


def test_event_match_globs_the_whole_value_case_insensitively() -> None:
    topic = {"type": "m.room.topic", "state_key": "", "sender": BOT, "content": {"topic": "Lunch plans"}}
    cond = _match("content.topic", "lunc?*")
    assert matches(cond, topic, ALICE, PAIR_ROOM)
    for value, expected in (("LUNCH", True), (" lunch", False), ("lunc", False), (None, False)):
        assert matches(cond, {**topic, "content": {"topic": value}}, ALICE, PAIR_ROOM) is expected
    assert not matches(_match("content.absent", "*"), topic, ALICE, PAIR_ROOM)


def test_body_globs_match_at_word_boundaries() -> None:
    for body in ("An example event.", "exple", "An exciting triple-whammy"):
        assert glob_matches("ex*ple", body, words=True), body
    assert not glob_matches("ex*ple", "examples", words=True)
    assert not glob_matches("ex*ple", "An example event.")  # not the whole value


def test_event_property_is_and_contains_do_not_cast() -> None:
    create = {"type": "m.room.create", "content": {"m.federate": True, "alt_aliases": ["#a:x", "#b:y"],
                                                   "n": 1, "nested": {"k": "v"}}}
    is_true = {"kind": "event_property_is", "key": "content.m\\.federate", "value": True}
    assert matches(is_true, create, ALICE, PAIR_ROOM)
    for value in ("true", 1):
        assert not matches({**is_true, "value": value}, create, ALICE, PAIR_ROOM)
    assert not matches({"kind": "event_property_is", "key": "content.n", "value": True}, create, ALICE,
                       PAIR_ROOM)
    assert not matches({"kind": "event_property_is", "key": "content.nested", "value": None}, create, ALICE,
                       PAIR_ROOM)
    contains = {"kind": "event_property_contains", "key": "content.alt_aliases"}
    assert matches({**contains, "value": "#b:y"}, create, ALICE, PAIR_ROOM)
    assert not matches({**contains, "value": ":y"}, create, ALICE, PAIR_ROOM)  # partial values do not match
    assert not matches({"kind": "event_property_contains", "key": "content.n", "value": 1}, create, ALICE,
                       PAIR_ROOM)  # not an array


@pytest.mark.parametrize(("spec", "count", "expected"), [
    ("2", 2, True), ("==2", 3, False), ("<3", 2, True), ("<3", 3, False), (">=3", 3, True),
    ("<=1", 2, False), (">1", 2, True), ("two", 2, False),
])
def test_room_member_count(spec: str, count: int, expected: bool) -> None:
    cond = {"kind": "room_member_count", "is": spec}
    assert matches(cond, message({}), ALICE, RoomState(member_count=count)) is expected


def test_unknown_conditions_never_match() -> None:
    rules = spec_rules()
    rules["override"].insert(0, {"rule_id": "custom", "default": False, "enabled": True,
                                 "conditions": [{"kind": "org.example.future"}], "actions": ["notify"]})
    v = evaluate(rules, message({"msgtype": "m.notice", "body": "x"}), ALICE, PAIR_ROOM)
    assert v.rule_id == ".m.rule.suppress_notices"


def test_contains_display_name_needs_a_name_and_a_whole_word() -> None:
    cond = {"kind": "contains_display_name"}
    assert matches(cond, message({"body": "thanks, alice."}), ALICE, PAIR_ROOM)
    assert not matches(cond, message({"body": "Alicent"}), ALICE, PAIR_ROOM)
    assert not matches(cond, message({"body": "Alice"}), ALICE, RoomState(member_count=3))
    odd = RoomState(member_count=3, display_name="a.b (x)")
    assert matches(cond, message({"body": "hi a.b (x)!"}), ALICE, odd)
    # The name is literal text, not a pattern.
    assert not matches(cond, message({"body": "hi aXb (x)"}), ALICE, odd)


# --- the hub's two builders, judged by the spec's rules ------------------------------------------

BO = "@bo:example.org"


def test_prompt_content_notifies_exactly_the_people_it_names() -> None:
    content = prompt_content("**Check-in**", "<p><strong>Check-in</strong></p>",
                             [Mention(ALICE, "Alice"), Mention(BO, "Bo"), Mention(ALICE, "again")])
    assert content["msgtype"] == "m.text" and content["m.mentions"] == {"user_ids": [ALICE, BO]}
    assert content["body"] == "Alice and Bo: **Check-in**"
    assert content["formatted_body"] == (
        '<p><a href="https://matrix.to/#/%40alice%3Aexample.org">Alice</a> and '
        '<a href="https://matrix.to/#/%40bo%3Aexample.org">Bo</a>: <strong>Check-in</strong></p>')
    for user, expected in ((ALICE, ".m.rule.is_user_mention"), (BO, ".m.rule.is_user_mention"),
                           ("@carol:example.org", ".m.rule.message")):
        v = evaluate(spec_rules(user), message(content), user, RoomState(member_count=3))
        assert v.rule_id == expected, user


def test_a_hostile_name_is_text_in_the_pill_and_pings_nobody_else() -> None:
    name = 'Eve <img src="https://evil.example/p.png"> @room carol'
    content = prompt_content("Hi", None, [Mention(ALICE, name)])
    html = content["formatted_body"]
    assert sanitize_matrix_html(html) == html and "<img" not in html and "&lt;img" in html
    # Without m.mentions, "carol" and "@room" in the body would highlight Carol (display name, room ping).
    carol, mod = "@carol:example.org", "@mod:example.org"
    room = RoomState(member_count=3, display_name="carol", power_levels={"users": {mod: 100}})
    v = evaluate(spec_rules(carol), message(content, sender=mod), carol, room)
    assert (v.rule_id, v.highlight) == (".m.rule.message", False)
    bare = {k: v for k, v in content.items() if k != "m.mentions"}
    assert evaluate(spec_rules(carol), message(bare, sender=mod), carol, room).highlight


def test_notice_content_is_silent_for_everyone_it_quotes() -> None:
    content = notice_content("Alice asked: @room", reply_to="$cmd", thread_root="$root")
    assert content["m.mentions"] == {} and content["m.relates_to"]["rel_type"] == "m.thread"
    mod = "@mod:example.org"
    room = RoomState(member_count=3, display_name="Alice", power_levels={"users": {mod: 100}})
    v = evaluate(spec_rules(), message(content, sender=mod), ALICE, room)
    assert (v.rule_id, v.notify) == (".m.rule.suppress_notices", False)


def test_a_prompt_with_nobody_to_name_mentions_nobody() -> None:
    content = prompt_content("Plan", "<p>Plan</p>", [])
    assert content == {"msgtype": "m.text", "body": "Plan", "format": "org.matrix.custom.html",
                       "formatted_body": "<p>Plan</p>", "m.mentions": {}}
