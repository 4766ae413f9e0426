"""What `hub demo` prints matches what it did (issue 16): fast checks of its texts, no servers.

The whole demo, end to end, is in test_demo.py.
"""

from __future__ import annotations

import pytest

from hub.core.calendar import AUDIENCES, ItemKind, TargetKind
from hub.demo import describe, login_lines

WHERE = {TargetKind.LOUNGE: "lounge", TargetKind.PAIR: "pair room", TargetKind.DIRECT: "direct room",
         TargetKind.MEMBER: "email"}


@pytest.mark.parametrize("kind", list(ItemKind))
def test_each_calendar_line_names_exactly_where_the_item_goes(kind: ItemKind) -> None:
    """ "webinar follow-up: lounge and email" was printed though the follow-up goes to the lounge only."""
    text = describe(kind, 3, pairs=4)
    said = {audience for audience, word in WHERE.items() if word in text}
    assert said == set(AUDIENCES[kind]), text
    assert text.endswith("(3 targets)") and describe(kind, 1, pairs=4).endswith("(1 target)")


def test_no_address_or_password_for_a_homeserver_that_is_gone() -> None:
    args = {"homeserver": "http://127.0.0.1:8448", "user": "@lin:localhost", "password": "s3cret-pw",
            "room": "#moderators:localhost"}
    gone = "\n".join(login_lines(keep=False, **args))
    assert "127.0.0.1" not in gone and "s3cret-pw" not in gone and "@lin:localhost" not in gone
    assert "deleted as the demo ends" in gone and "hub demo --keep" in gone
    kept = "\n".join(login_lines(keep=True, **args))
    for value in args.values():
        assert value in kept
