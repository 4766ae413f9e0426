"""Fuzzing the command parser against the hub's real registry: any message parses or gets a usage message.

Whatever anyone types in a room, `CommandRegistry.addressed` + `parse` (+ `authorize`, `help`) must
either produce a command or raise `UsageError` / `PermissionDenied` with a message the sender can act
on: the usage line of the command they meant, the unknown word with the way to list commands, or
the unclosed quote. Anything else would be a traceback where people talk. Commands that parse are
what they look like: generated valid commands come back with exactly the arguments written.
See tests/support/fuzz.py for the settings used.
"""

from __future__ import annotations

import shlex
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from hub.core.commands import Arg, CommandContext, CommandSpec, RoomKind, split_command_line
from hub.errors import PermissionDenied, UsageError
from hub.service import build_registry

from tests.support.fuzz import ANY_TEXT, fuzz, spliced

PREFIX = "!hub"
REGISTRY = build_registry(PREFIX)
NAMES = [s.name for s in REGISTRY.specs]
CHOICES = sorted({c for s in REGISTRY.specs for a in s.args for c in a.choices})
FRAGMENTS = [
    *NAMES, *(n.upper() for n in NAMES), *CHOICES, " ", "  ", "\n", "\t", "\u00a0", "\u2028", "\x1c", "'",
    '"', "\\", "''", '""', "0", "1", "5", "-1", "200", "201", "99999999999", "1_000", "١٢", "+3", "1" * 5000,
    "@ada:example.org", "ada@example.org", "winter", "https://x.org", "`", "*", "é", "\x00",
]
LINES = st.one_of(spliced(FRAGMENTS, max_size=10), ANY_TEXT)
CONTEXTS = st.builds(
    CommandContext, sender=st.just("@someone:example.org"), room_id=st.just("!room:example.org"),
    room_kind=st.sampled_from(list(RoomKind)), is_moderator=st.booleans(), event_id=st.just("$e"),
)


def _assert_clear_usage(message: str) -> None:
    """One of the three shapes a person can act on, never an internal error."""
    assert message.strip() and "Traceback" not in message
    clear = (
        (". Usage: `" + PREFIX + " ") in message
        or (message.startswith("Unknown command ") and f"Send `{PREFIX} help` for the list." in message)
        or (message.startswith("could not read the command: ") and "(close your quotes)" in message)
    )
    assert clear, f"unclear usage message: {message!r}"


@fuzz(500)
@given(LINES, CONTEXTS)
@example("help \u00a0", CommandContext("@a:b", "!r:b", RoomKind.OTHER, False, "$e"))
@example("audit " + "1" * 5000, CommandContext("@a:b", "!r:b", RoomKind.CONTROL, True, "$e"))
@example("plan set 'unclosed", CommandContext("@a:b", "!r:b", RoomKind.PAIR, False, "$e"))
def test_any_message_parses_or_gets_a_usage_message(line: str, ctx: CommandContext) -> None:
    for body in (f"{PREFIX} {line}", f"{PREFIX}\n{line}", line):
        rest = REGISTRY.addressed(body)
        if rest is None:
            continue
        try:
            parsed = REGISTRY.parse(rest)
        except UsageError as e:
            _assert_clear_usage(str(e))
            continue
        assert parsed.spec in REGISTRY.specs
        assert set(parsed.args) == {a.name for a in parsed.spec.args}
        try:
            REGISTRY.authorize(parsed.spec, ctx)
        except PermissionDenied as e:
            assert f"`{PREFIX} {parsed.spec.name}`" in str(e)
            continue
        if parsed.spec.name == "help":
            try:
                reply = REGISTRY.help(ctx, parsed.args["command"])
            except UsageError as e:
                _assert_clear_usage(str(e))
            else:
                assert reply.text.strip()


@fuzz(300)
@given(LINES)
def test_split_command_line_splits_or_asks_to_close_quotes(line: str) -> None:
    try:
        words = split_command_line(line)
    except UsageError as e:
        _assert_clear_usage(str(e))
    else:
        assert all(isinstance(w, str) for w in words)


# --- valid commands round-trip --------------------------------------------------------------------

_WORD = st.text(st.characters(categories=("L", "N", "P", "S")), min_size=1, max_size=20)
# Text as people type it: quotes, apostrophes, line breaks, other scripts; trimmed, as the hub trims.
_TEXT = st.text(st.characters(exclude_categories=("Cs", "Cc")) | st.just("\n"), min_size=1,
                max_size=200).map(str.strip).filter(bool)


def _value(draw: st.DrawFn, arg: Arg) -> tuple[str, Any]:
    """A typed value for `arg`, as written and as parsed."""
    if arg.kind == "int":
        n = draw(st.integers(arg.minimum if arg.minimum is not None else -10**6,
                             arg.maximum if arg.maximum is not None else 10**6))
        return str(n), n
    if arg.kind == "choice":
        choice = draw(st.sampled_from(arg.choices))
        written = draw(st.sampled_from([choice, choice.upper(), choice.title()]))
        return written, choice
    return "", draw(_WORD)


@st.composite
def _commands(draw: st.DrawFn) -> tuple[CommandSpec, str, dict[str, Any]]:
    spec = draw(st.sampled_from(REGISTRY.specs))
    verbatim = bool(spec.args) and spec.args[-1].kind == "text"
    written: list[str] = []
    expected: dict[str, Any] = {}
    omit_from = draw(st.integers(0, len(spec.args)))  # optional args at the end may be left out
    for i, arg in enumerate(spec.args):
        if arg.optional and i >= omit_from and all(a.optional for a in spec.args[i:]):
            expected.update({a.name: None for a in spec.args[i:]})
            break
        if arg.kind == "rest":
            words = draw(st.lists(_WORD, min_size=0 if arg.optional else 1, max_size=4))
            written.extend(shlex.quote(w) for w in words)
            expected[arg.name] = " ".join(words) or None
            break
        if arg.kind == "text":
            text = draw(_TEXT)
            written.append(text)
            expected[arg.name] = text
            break
        shown, value = _value(draw, arg)
        if arg.kind == "word":
            shown = value
            if i == 0 and f"{spec.name} {value}".lower() in NAMES:
                value = shown = f"{value}x"  # "email unsuppress" is another command: longest name wins
        written.append(shown if verbatim else shlex.quote(shown))
        expected[arg.name] = value
    name = draw(st.sampled_from([spec.name, spec.name.upper()]))
    return spec, " ".join([PREFIX, name, *written]), expected


@fuzz(400)
@given(_commands())
def test_valid_commands_round_trip(case: tuple[CommandSpec, str, dict[str, Any]]) -> None:
    spec, body, expected = case
    rest = REGISTRY.addressed(body)
    assert rest is not None
    parsed = REGISTRY.parse(rest)
    assert (parsed.spec.name, parsed.args) == (spec.name, expected)
