"""Argument converters: what each accepts, the message for what it refuses, and when they run."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pytest

from hub.core.cohorts import Who
from hub.core.commands import Arg, CommandContext, CommandRegistry, Reply, RoomKind
from hub.core.converters import to_datetime, to_email, to_slug, to_title, to_url, to_who
from hub.errors import PermissionDenied, UsageError


async def _noop(ctx: CommandContext) -> Reply:
    return Reply("ok")


def test_accepted_values() -> None:
    assert to_slug("Winter-2027") == "winter-2027"
    assert to_who(" @ada:example.org") == Who(matrix_id="@ada:example.org")
    assert to_who("Ada@Example.org") == Who(email="ada@example.org")
    assert to_email("Ben@Example.org") == "Ben@Example.org"  # normalized where it is used
    assert to_datetime("2027-01-11T17:00") == datetime(2027, 1, 11, 17, 0)
    assert to_title(" Kick-off\n call ") == "Kick-off call"
    assert to_url("https://meet.jit.si/x") == "https://meet.jit.si/x"


@pytest.mark.parametrize(
    ("convert", "value", "message"),
    [
        (to_slug, "Winter_2027", "`winter_2027` is not a cohort slug: lowercase letters, digits and -, "
                                 "like winter-2027"),
        (to_who, "@ada", "`@ada` is not a Matrix id (like @name:example.org)"),
        (to_who, "ada", "`ada` is neither a Matrix id (@name:server) nor an email address"),
        (to_email, "ben", "`ben` is not an email address; nothing changed"),
        (to_datetime, "2027-01-11 17:00", "`2027-01-11 17:00` is not a time like 2027-01-11T17:00"),
        (to_datetime, "2027-02-30T17:00", "`2027-02-30T17:00` is not a real date and time"),
        (to_title, " \n ", "the title must be 1-200 characters"),
        (to_title, "x" * 201, "the title must be 1-200 characters"),
        (to_url, "javascript:alert(1)", "`javascript:alert(1)` is not an http(s) link"),
    ],
)
def test_refusals_say_what_is_wrong(convert: Callable[[str], object], value: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        convert(value)
    assert str(e.value) == message


def _registry() -> CommandRegistry:
    r = CommandRegistry("!hub")
    r.command("add", "add", Arg("slug"), Arg("who", to=to_who), Arg("note", kind="rest", optional=True),
              moderator_only=True)(_noop)
    return r


def test_parse_keeps_the_word_and_check_converts_it_with_the_usage_line() -> None:
    r = _registry()
    parsed = r.parse("add winter nobody")
    assert parsed.args["who"] == "nobody"  # as typed: nothing is judged before authorization
    with pytest.raises(UsageError) as e:
        r.check(parsed)
    assert str(e.value) == ("`nobody` is neither a Matrix id (@name:server) nor an email address. "
                            "Usage: `!hub add SLUG WHO [NOTE...]`")
    assert r.check(r.parse("add winter @ada:example.org")).args == {
        "slug": "winter", "who": Who(matrix_id="@ada:example.org"), "note": None}


def test_someone_who_may_not_run_it_is_told_so_not_how_to_type_it() -> None:
    r = _registry()
    parsed = r.parse("add winter nobody")  # a bad WHO does not stop the parse...
    with pytest.raises(PermissionDenied, match="for moderators only"):  # ...so the refusal answers
        r.authorize(parsed.spec, CommandContext("@a:x", "!r", RoomKind.OTHER, False, "$e"))
