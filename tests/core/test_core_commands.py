"""The command registry: shell-like parsing, typed arguments, usage lines, suggestions, help."""

from __future__ import annotations

import pytest

from hub.core.commands import Arg, CommandContext, CommandRegistry, Reply, RoomKind
from hub.errors import PermissionDenied, UsageError


async def _noop(ctx: CommandContext) -> Reply:
    return Reply("ok")


def _registry() -> CommandRegistry:
    r = CommandRegistry("!hub")
    r.command("ping", "pong")(_noop)
    r.command("cohort create", "make one", Arg("slug"), Arg("name"), Arg("opts", kind="rest",
              optional=True), moderator_only=True)(_noop)
    r.command("cohort list", "list", moderator_only=True)(_noop)
    r.command("checkin", "rate", Arg("score", kind="int", minimum=1, maximum=5),
              where=frozenset({RoomKind.DIRECT}))(_noop)
    r.command("met", "answer", Arg("how", kind="choice", choices=("video", "voice", "text")))(_noop)
    return r


def _ctx(kind: RoomKind = RoomKind.OTHER, moderator: bool = False) -> CommandContext:
    return CommandContext("@a:x", "!r", kind, moderator, "$e")


def test_addressed_only_with_prefix_word() -> None:
    r = _registry()
    assert r.addressed("!hub ping") == "ping"
    assert r.addressed("  !hub  ") == ""
    assert r.addressed("!hubbub ping") is None
    assert r.addressed("say !hub ping") is None


def test_quotes_group_words_and_two_word_commands_win() -> None:
    parsed = _registry().parse('cohort create winter "Winter 2027" tz=Europe/Berlin weeks=10')
    assert parsed.spec.name == "cohort create"
    assert parsed.args == {"slug": "winter", "name": "Winter 2027",
                           "opts": "tz=Europe/Berlin weeks=10"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("checkin", "score is missing. Usage: `!hub checkin SCORE`"),
        ("checkin 9", "score must be at most 5"),
        ("checkin five", "score must be a whole number"),
        ("met telepathy", "how must be one of video, voice, text"),
        ("ping extra", "unexpected `extra`"),
        ('cohort create "unclosed', "close your quotes"),
    ],
)
def test_bad_arguments_give_usage(line: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("`", "`")):
        _registry().parse(line)


def test_unknown_command_suggests_nearest() -> None:
    with pytest.raises(UsageError, match="Did you mean `!hub ping`"):
        _registry().parse("pnig")
    with pytest.raises(UsageError, match="Did you mean `!hub cohort list`"):
        _registry().parse("cohort lsit")
    with pytest.raises(UsageError, match="Unknown command `zzzzzz`") as info:
        _registry().parse("zzzzzz")
    assert "Did you mean" not in str(info.value)


def test_bare_prefix_is_help() -> None:
    r = _registry()
    assert r.get("help") is None  # the fixture registry has no help: registered below
    r.command("help", "help", Arg("command", kind="rest", optional=True))(_noop)
    assert r.parse("").spec.name == "help"


def test_authorize_moderator_and_room_kind() -> None:
    r = _registry()
    with pytest.raises(PermissionDenied, match="moderators only"):
        r.authorize(r.parse("cohort list").spec, _ctx())
    r.authorize(r.parse("cohort list").spec, _ctx(moderator=True))
    with pytest.raises(PermissionDenied, match="works in: direct room"):
        r.authorize(r.parse("checkin 3").spec, _ctx(RoomKind.PAIR))


def test_help_lists_only_what_you_may_use_here() -> None:
    r = _registry()
    text = r.help(_ctx(RoomKind.PAIR), None).text
    assert "!hub ping" in text and "!hub met video|voice|text" in text
    assert "cohort create" not in text and "checkin" not in text
    mod_text = r.help(_ctx(RoomKind.PAIR, moderator=True), None).text
    assert "!hub cohort create SLUG NAME [OPTS...]" in mod_text
    detail = r.help(_ctx(), "checkin").text
    assert "!hub checkin SCORE" in detail and "direct room" in detail
