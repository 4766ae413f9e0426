"""Room commands declared with their arguments; the parser and help come from the declarations.

A command is a `CommandSpec`: its words (``"cohort create"``), typed
arguments, who may run it and in which kinds of room. `CommandRegistry.parse`
turns ``!hub cohort create x "X Y"`` into a `ParsedCommand` or raises a
`UsageError` whose message carries the usage line; nothing runs until the
whole line has parsed, so bad input never changes anything. Whatever of the
input a message repeats goes through `markup.echo` (inline code, cut short),
so a reply can never carry a link or an image someone typed.
"""

from __future__ import annotations

import difflib
import enum
import shlex
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic

from typing_extensions import TypeVar

from hub.core.converters import Converter
from hub.core.markup import echo
from hub.core.messages import Mention
from hub.errors import PermissionDenied, UsageError

__all__ = [
    "Arg",
    "CommandContext",
    "CommandRegistry",
    "CommandSpec",
    "ParsedCommand",
    "Reply",
    "RoomKind",
    "split_command_line",
]


class RoomKind(enum.Enum):
    CONTROL = "control room"
    LOUNGE = "lounge"
    PAIR = "pair room"
    DIRECT = "direct room"
    OTHER = "room"


ANYWHERE: frozenset[RoomKind] = frozenset(RoomKind)


@dataclass(frozen=True)
class Arg:
    name: str
    # word | int | choice | rest (the remaining words, joined) | text (the rest of the
    # line verbatim: people's own words, where an apostrophe is not a shell quote)
    kind: str = "word"
    choices: tuple[str, ...] = ()
    optional: bool = False
    minimum: int | None = None
    maximum: int | None = None
    # What the word means (hub.core.converters: a slug, a person, an address, a time, a link):
    # applied by `CommandRegistry.check`, once the sender may run the command.
    to: Converter | None = None

    def usage(self) -> str:
        label = "|".join(self.choices) if self.kind == "choice" else self.name.upper()
        if self.kind in ("rest", "text"):
            label += "..."
        return f"[{label}]" if self.optional else label

    def convert(self, value: str) -> Any:
        if self.kind == "int":
            try:
                number = int(value)
            except ValueError:
                raise ValueError(f"{self.name} must be a whole number, not {echo(value)}") from None
            if self.minimum is not None and number < self.minimum:
                raise ValueError(f"{self.name} must be at least {self.minimum}")
            if self.maximum is not None and number > self.maximum:
                raise ValueError(f"{self.name} must be at most {self.maximum}")
            return number
        if self.kind == "choice" and value.lower() not in self.choices:
            raise ValueError(f"{self.name} must be one of {', '.join(self.choices)}, not {echo(value)}")
        return value.lower() if self.kind == "choice" else value


@dataclass(frozen=True)
class Reply:
    """What the hub answers: Markdown-free plain text plus optional HTML."""

    text: str
    html: str | None = None
    # The people this answer asks to act (the partner, after `!hub dropped`): it is then an
    # m.text that notifies them (hub.core.messages.prompt_content), not a silent notice.
    mentions: tuple[Mention, ...] = ()
    # Set by the runner (hub.inbound), never by a handler: a moderator's answer with data
    # in it, given where participants read, which goes to the control room instead.
    private: bool = False


# The ports a command's handler receives (hub.features.ports): core knows only that there are some.
# Unparametrized (`CommandContext`) means any ports: what the registry itself handles.
P_co = TypeVar("P_co", covariant=True, default=Any)


@dataclass
class CommandContext(Generic[P_co]):
    """Who asked, where, with which arguments; and the ports the handler may use.

    A handler declares the ports it needs as the type parameter
    (``CommandContext[Store]``), so it is typed against exactly those and a
    test can give it fakes; the runner gives every handler the same full set.
    """

    sender: str
    room_id: str
    room_kind: RoomKind
    is_moderator: bool
    event_id: str
    # A member of a cohort (by Matrix id); others may use only `open_to_all` commands.
    is_participant: bool = True
    args: dict[str, Any] = field(default_factory=dict)
    services: P_co | None = None  # set by the runner (hub.inbound); handlers use `ports`
    prefix: str = "!hub"  # the command prefix, for replies that name another command

    @property
    def ports(self) -> P_co:
        if self.services is None:
            raise RuntimeError("this command context has no ports: the runner sets them")
        return self.services


Handler = Callable[[CommandContext[Any]], Awaitable[Reply]]


@dataclass(frozen=True)
class CommandSpec:
    name: str
    summary: str
    handler: Handler
    args: tuple[Arg, ...] = ()
    moderator_only: bool = False
    where: frozenset[RoomKind] = ANYWHERE
    # The answer is for moderators' eyes (people, addresses, room ids, counts): asked in a
    # room others can read, the runner carries the command out there and answers in the
    # control room (PRODUCT.md "Moderators' answers stay among moderators").
    private_answer: bool = False
    # Anyone may use it, participant or not (PRODUCT.md: help and ping); every other
    # command is for the cohorts' participants and moderators.
    open_to_all: bool = False

    def usage(self, prefix: str) -> str:
        parts = [prefix, self.name, *(a.usage() for a in self.args)]
        return " ".join(parts)


@dataclass(frozen=True)
class ParsedCommand:
    spec: CommandSpec
    args: dict[str, Any]


def split_command_line(text: str) -> list[str]:
    """Split like a shell: quotes group words. Raises UsageError on an unclosed quote."""
    try:
        return shlex.split(text, posix=True)
    except ValueError as e:
        raise UsageError(f"could not read the command: {e} (close your quotes)") from None


class CommandRegistry:
    def __init__(self, prefix: str = "!hub") -> None:
        self.prefix = prefix
        self._specs: dict[str, CommandSpec] = {}

    def add(self, spec: CommandSpec) -> None:
        if spec.name in self._specs:
            raise ValueError(f"command {spec.name!r} declared twice")
        self._specs[spec.name] = spec

    def command(
        self,
        name: str,
        summary: str,
        *args: Arg,
        moderator_only: bool = False,
        where: frozenset[RoomKind] = ANYWHERE,
        private_answer: bool = False,
        open_to_all: bool = False,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.add(CommandSpec(name, summary, handler, tuple(args), moderator_only, where,
                                 private_answer, open_to_all))
            return handler

        return register

    @property
    def specs(self) -> Sequence[CommandSpec]:
        return list(self._specs.values())

    def get(self, name: str) -> CommandSpec | None:
        return self._specs.get(name)

    def addressed(self, body: str) -> str | None:
        """The text after the prefix, or None if the message is not for the hub."""
        stripped = body.strip()
        if stripped == self.prefix:
            return ""
        if stripped.startswith(self.prefix + " ") or stripped.startswith(self.prefix + "\n"):
            return stripped[len(self.prefix) :].strip()
        return None

    def parse(self, rest: str) -> ParsedCommand:
        """The command and its words, bound to its arguments (ints and choices checked).

        Arguments declared with a converter (`Arg.to`) keep the word as typed
        here: `check` converts them once the sender may run the command.
        """
        verbatim = self._parse_verbatim(rest)
        if verbatim is not None:
            return verbatim
        words = split_command_line(rest)
        if not words:
            words = ["help"]
        # Longest declared name first, so "cohort create" wins over "cohort".
        for n in (2, 1):
            name = " ".join(words[:n]).lower()
            if len(words) >= n and name in self._specs:
                spec = self._specs[name]
                return ParsedCommand(spec, self._bind(spec, words[n:]))
        raise UsageError(self._unknown(words))

    def _parse_verbatim(self, rest: str) -> ParsedCommand | None:
        """A command ending in a `text` argument: leading words split on spaces, the rest as typed.

        "I'd like help" or a plan with quotes in it must arrive exactly as written,
        not fail as an unclosed quote or lose its quotes to shell splitting.
        """
        parts = rest.split(None, 2)
        for n in (2, 1):
            spec = self._specs.get(" ".join(parts[:n]).lower()) if len(parts) >= n else None
            if spec is None or not spec.args or spec.args[-1].kind != "text":
                continue
            leading = spec.args[:-1]
            chunks = rest.split(None, n + len(leading))[n:]
            values: dict[str, Any] = {}
            for arg, word in zip(leading, chunks, strict=False):
                try:
                    values[arg.name] = arg.convert(word)
                except ValueError as e:
                    raise self.usage_error(spec, str(e)) from None
            if len(chunks) < len(leading):
                raise self.usage_error(spec, f"{leading[len(chunks)].name} is missing")
            text = chunks[len(leading)].strip() if len(chunks) > len(leading) else ""
            if not text and not spec.args[-1].optional:
                raise self.usage_error(spec, f"{spec.args[-1].name} is missing")
            values[spec.args[-1].name] = text or None
            return ParsedCommand(spec, values)
        return None

    def _unknown(self, words: list[str]) -> str:
        attempt = " ".join(words[:2]).lower()
        names = list(self._specs)
        close = difflib.get_close_matches(attempt, names, n=1, cutoff=0.5) or difflib.get_close_matches(
            words[0].lower(), names, n=1, cutoff=0.5
        )
        hint = f" Did you mean `{self.prefix} {close[0]}`?" if close else ""
        return f"Unknown command {echo(words[0])}.{hint} Send `{self.prefix} help` for the list."

    def _bind(self, spec: CommandSpec, words: list[str]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        i = 0
        for arg in spec.args:
            if arg.kind == "rest":
                text = " ".join(words[i:]).strip()
                if not text and not arg.optional:
                    raise self.usage_error(spec, f"{arg.name} is missing")
                values[arg.name] = text or None
                i = len(words)
                break
            if i >= len(words):
                if not arg.optional:
                    raise self.usage_error(spec, f"{arg.name} is missing")
                values[arg.name] = None
                continue
            try:
                values[arg.name] = arg.convert(words[i])
            except ValueError as e:
                raise self.usage_error(spec, str(e)) from None
            i += 1
        if i < len(words):
            raise self.usage_error(spec, f"unexpected {echo(words[i])}")
        return values

    def check(self, parsed: ParsedCommand) -> ParsedCommand:
        """Convert the arguments declared with a converter, in order; UsageError names the first bad one."""
        values = dict(parsed.args)
        for arg in parsed.spec.args:
            if arg.to is None or values.get(arg.name) is None:
                continue
            try:
                values[arg.name] = arg.to(str(values[arg.name]))
            except ValueError as e:
                raise self.usage_error(parsed.spec, str(e)) from None
        return ParsedCommand(parsed.spec, values)

    def usage_error(self, spec: CommandSpec, problem: str) -> UsageError:
        """`problem` followed by the command's usage line, as every argument error reads."""
        return UsageError(f"{problem}. Usage: `{spec.usage(self.prefix)}`")

    def authorize(self, spec: CommandSpec, ctx: CommandContext) -> None:
        if spec.moderator_only and not ctx.is_moderator:
            raise PermissionDenied(
                f"`{self.prefix} {spec.name}` is for moderators only; nothing was changed."
            )
        if ctx.room_kind not in spec.where:
            places = ", ".join(sorted(k.value for k in spec.where))
            raise PermissionDenied(
                f"`{self.prefix} {spec.name}` works in: {places}; this is a {ctx.room_kind.value}."
            )

    def available(self, ctx: CommandContext) -> list[CommandSpec]:
        return [
            s
            for s in self._specs.values()
            if ctx.room_kind in s.where and (ctx.is_moderator or not s.moderator_only)
            and (ctx.is_moderator or ctx.is_participant or s.open_to_all)
        ]

    def help(self, ctx: CommandContext, topic: str | None) -> Reply:
        if topic:
            spec = self._specs.get(topic.lower())
            if spec is None:
                raise UsageError(self._unknown(topic.split()))
            who = "moderators" if spec.moderator_only else "everyone"
            places = ", ".join(sorted(k.value for k in spec.where))
            text = f"{spec.usage(self.prefix)}\n{spec.summary}\nFor {who}; works in: {places}."
            return Reply(text)
        lines = [f"{s.usage(self.prefix)} — {s.summary}" for s in self.available(ctx)]
        header = f"Commands you can use in this {ctx.room_kind.value}:"
        return Reply("\n".join([header, *lines]))
