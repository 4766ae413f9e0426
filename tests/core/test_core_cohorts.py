"""Cohort domain rules: who is who, video links, room specs and what drift looks like."""

from __future__ import annotations

import re
from typing import Any

import pytest

from hub.core.cohorts import (
    ROOM_TAG,
    Who,
    direct_spec,
    display_name,
    lounge_spec,
    pair_spec,
    pair_welcome,
    parse_who,
    space_spec,
    state_fixes,
    valid_slug,
    video_name,
    video_url,
)
from hub.core.markup import markdown_to_matrix

HUB = "@hub:example.org"
TAG = {"install": "i", "key": "lounge:1", "generation": 1}


@pytest.mark.parametrize(
    ("text", "who"),
    [
        ("@ada:example.org", Who(matrix_id="@ada:example.org")),
        ("  Ada@Example.ORG ", Who(email="ada@example.org")),
        ("@x.y=z/1+2:host.example.org:8448", Who(matrix_id="@x.y=z/1+2:host.example.org:8448")),
    ],
)
def test_parse_who(text: str, who: Who) -> None:
    assert parse_who(text) == who


@pytest.mark.parametrize("text", ["ada", "@ada", "@ada:", "@a da:x.org", "a@b", "<a@b.org>", ""])
def test_parse_who_refuses_with_the_reason(text: str) -> None:
    with pytest.raises(ValueError, match=r"Matrix id|email"):
        parse_who(text)


def test_slugs_and_names() -> None:
    assert valid_slug("winter-2027") and not valid_slug("Winter") and not valid_slug("-x")
    assert display_name(" Ada\x07 ", None, None) == "Ada"
    assert display_name("", "@bo:x.org", "b@x.org") == "bo"
    assert display_name(None, None, "cy@x.org") == "cy"


def test_video_names_are_stable_unguessable_and_secret_keyed() -> None:
    a = video_name(b"secret", "nonce-1")
    assert a == video_name(b"secret", "nonce-1")  # stable for the same pair
    assert a != video_name(b"secret", "nonce-2")  # each pair its own
    assert a != video_name(b"other", "nonce-1")  # unknowable without the secret
    token = a.removeprefix("CohortHub-")
    assert len(token) == 26 and token.isalnum() and "nonce" not in a
    assert video_url("https://meet.jit.si/", a) == f"https://meet.jit.si/{a}"


def test_pair_spec_is_private_encrypted_and_carries_the_link() -> None:
    spec = pair_spec("pair:1", "Ada", "Bo", "https://v/x", encrypted=True, tag=TAG, prefix="!hub")
    assert spec.name == "Ada & Bo" and "https://v/x" in (spec.topic or "")
    assert spec.encrypted and spec.join_rule == "invite" and spec.invite_level == 100
    assert not spec.moderators  # moderators are never in pair rooms
    assert not pair_spec("pair:1", "A", "B", "l", encrypted=False, tag=TAG, prefix="!hub").encrypted
    text = pair_welcome(mentor="Ada", mentee="Bo", cohort="W", link="https://v/x", prefix="!hub")
    assert "https://v/x" in text and "!hub plan set" in text
    assert direct_spec("direct:@a:b", TAG).is_direct and direct_spec("direct:@a:b", TAG).encrypted


def test_pair_welcome_shows_hostile_names_as_typed() -> None:
    mentor, mentee = "[Prize](https://evil.example/x)", "**Bo** <img src=https://evil.example/p>"
    text = pair_welcome(mentor=mentor, mentee=mentee, cohort="W_1 *beta*", link="https://v/x", prefix="!hub")
    body, html = markdown_to_matrix(text)
    assert "evil.example" not in "".join(re.findall(r'(?:href|src)="([^"]*)"', html))
    assert "<img" not in html and "<strong>Bo</strong>" not in html and "<em>beta</em>" not in html
    assert f"Welcome, {mentor} and {mentee}!" in body and "**W_1 *beta***" in body
    assert '<a href="https://v/x">' in html or "https://v/x" in html  # the real link still works


def test_state_fixes_for_a_correct_room_is_empty() -> None:
    spec = lounge_spec("lounge:1", "W", "!space", {"@mod:x": 50}, TAG, "!hub")
    state: dict[tuple[str, str], dict[str, Any]] = {
        ("m.room.name", ""): {"name": "W lounge"},
        ("m.room.topic", ""): {"topic": spec.topic},
        ("m.room.join_rules", ""): {"join_rule": "restricted",
                                    "allow": [{"type": "m.room_membership", "room_id": "!space"}]},
        ("m.room.power_levels", ""): {"users": {"@mod:x": 50}, "invite": 50},
        (ROOM_TAG, ""): dict(TAG),
        ("m.space.parent", "!space"): {"via": ["example.org"]},
    }
    assert state_fixes(spec, state, hub=HUB, room_version="12") == []


def test_state_fixes_find_drift_and_respect_room_versions() -> None:
    spec = space_spec("space:1", "W", {"@mod:x": 50}, {"key": "space:1"})
    state: dict[tuple[str, str], dict[str, Any]] = {
        ("m.room.name", ""): {"name": "renamed by hand"},
        ("m.room.power_levels", ""): {"users": {HUB: 100, "@other:x": 20}},
        ("m.space.child", "!old"): {"via": ["x"]},
    }
    fixes = {f.reason: f for f in state_fixes(spec, state, hub=HUB, room_version="12",
                                              child_rooms={"!lounge": ["example.org"]})}
    assert set(fixes) == {"name", "topic", "join rule", "power levels", "hub tag", "space child"}
    users = fixes["power levels"].content["users"]
    # v12: the creator (the hub) must not be listed; others are kept.
    assert users == {"@other:x": 20, "@mod:x": 50}
    assert fixes["space child"].state_key == "!lounge"
    older = state_fixes(spec, state, hub=HUB, room_version="10")
    assert next(f for f in older if f.reason == "power levels").content["users"][HUB] == 100


def test_restricted_join_rule_only_where_the_version_has_it() -> None:
    spec = lounge_spec("lounge:1", "W", "!space", {}, TAG, "!hub")
    [v12] = [f for f in state_fixes(spec, {}, hub=HUB, room_version="12") if f.reason == "join rule"]
    assert v12.content["join_rule"] == "restricted"
    [v6] = [f for f in state_fixes(spec, {}, hub=HUB, room_version="6") if f.reason == "join rule"]
    assert v6.content == {"join_rule": "invite"}
    # A lounge still naming a space that was replaced is pointed at the new one.
    old = {("m.room.join_rules", ""): {"join_rule": "restricted",
                                       "allow": [{"type": "m.room_membership", "room_id": "!old"}]}}
    [moved] = [f for f in state_fixes(spec, old, hub=HUB, room_version="12") if f.reason == "join rule"]
    assert moved.content["allow"] == [{"type": "m.room_membership", "room_id": "!space"}]
    # A pair room that lost encryption gets it back (never the other way round).
    pair = pair_spec("pair:1", "A", "B", "l", encrypted=True, tag=TAG, prefix="!hub")
    assert any(f.event_type == "m.room.encryption" for f in state_fixes(pair, {}, hub=HUB, room_version="12"))
