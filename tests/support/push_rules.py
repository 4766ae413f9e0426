"""Matrix push rules, evaluated the way a client decides whether an event notifies its user.

The spec (client-server API, "Push Rules"; v1.7+ for intentional mentions) in
short: the kinds are checked in the order override, content, room, sender,
underride; within a kind, in the listed order; the first enabled rule whose
conditions all hold decides, and its actions say whether (``notify``) and how
(``highlight``, ``sound`` tweaks). ``.m.rule.master`` always comes first. The
legacy body-matching rules (``.m.rule.contains_display_name``,
``.m.rule.contains_user_name``, ``.m.rule.roomnotif``) apply only to events
without an ``m.mentions`` property. An event the user sent never notifies them.
In an encrypted room the server only sees ``m.room.encrypted``; the client runs
the rules again on the decrypted event, which is what this is for.

Tests use it on rules read from Synapse (``GET /_matrix/client/v3/pushrules/``),
so the verdict is the one the user's own rules give, not what we assume they are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KINDS", "LEGACY_MENTION_RULES", "RoomState", "Verdict", "evaluate", "glob_matches",
           "matches", "property_path", "resolve"]

KINDS = ("override", "content", "room", "sender", "underride")
LEGACY_MENTION_RULES = frozenset({".m.rule.contains_display_name", ".m.rule.contains_user_name",
                                  ".m.rule.roomnotif"})
_HISTORICAL_ACTIONS = frozenset({"dont_notify", "coalesce"})  # "MUST ignore" (spec: Historical Actions)
_WORD = "A-Za-z0-9_"  # the spec's word characters; anything else is a word boundary
_MISSING = object()


@dataclass(frozen=True)
class RoomState:
    """What the rules may ask about the room, as the user's client knows it."""

    member_count: int
    display_name: str | None = None  # the user's display name in this room
    power_levels: Mapping[str, Any] = field(default_factory=dict)  # m.room.power_levels content
    # Room versions 12+: the creators' power is above any level and not in the power levels.
    creators: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Verdict:
    """The rule that decided (None: no rule matched, or the user sent the event) and its actions."""

    rule_id: str | None
    kind: str | None
    actions: tuple[Any, ...] = ()

    @property
    def notify(self) -> bool:
        return "notify" in self.actions

    def tweak(self, name: str) -> Any:
        for action in self.actions:
            if isinstance(action, dict) and action.get("set_tweak") == name:
                # "If a highlight tweak is given with no value, its value is defined to be true."
                return action.get("value", True if name == "highlight" else None)
        return False if name == "highlight" else None

    @property
    def highlight(self) -> bool:
        return bool(self.tweak("highlight"))


def property_path(key: str) -> list[str]:
    """Split a dot-separated property path (spec appendix): ``\\.`` is a dot, ``\\\\`` a backslash.

    Any other backslash stays literal, with the character after it.
    """
    parts, current, i = [], [], 0
    while i < len(key):
        ch = key[i]
        if ch == "\\" and i + 1 < len(key) and key[i + 1] in ".\\":
            current.append(key[i + 1])
            i += 2
            continue
        if ch == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def resolve(event: Mapping[str, Any], key: str) -> Any:
    """The value at `key` in `event`, or `_MISSING`."""
    value: Any = event
    for part in property_path(key):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _glob(pattern: str) -> str:
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)


def glob_matches(pattern: str, value: str, *, words: bool = False) -> bool:
    """Case-insensitive glob (``*`` any run, ``?`` one character) over the whole value.

    With `words` (``content.body`` and content rules), over any substring that starts and
    ends at a word boundary: the value's start or end, or a character outside ``[A-Za-z0-9_]``.
    """
    if not words:
        return re.fullmatch(_glob(pattern), value, re.IGNORECASE | re.DOTALL) is not None
    return re.search(_bounded(_glob(pattern)), value, re.IGNORECASE | re.DOTALL | re.ASCII) is not None


def _bounded(regex: str) -> str:
    # As Synapse builds it: a boundary is the value's edge, a non-word character, or a \b.
    return rf"(?:^|[^{_WORD}]|\b){regex}(?:\b|[^{_WORD}]|$)"


def _scalar_equal(a: Any, b: Any) -> bool:
    """Exact canonical-JSON equality: no casts (``true`` is not ``1``, ``"1"`` is not ``1``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return isinstance(a, str) and isinstance(b, str) and a == b


_MAX_INT = 2**53 - 1  # canonical JSON's integer range


def _is_scalar(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return -_MAX_INT <= value <= _MAX_INT
    return value is None or isinstance(value, (str, bool))


def _member_count(spec: str, count: int) -> bool:
    m = re.fullmatch(r"(==|<=|>=|<|>)?([0-9]+)", spec.strip())
    if m is None:
        return False
    op, n = m.group(1) or "==", int(m.group(2))
    return {"==": count == n, "<": count < n, ">": count > n, "<=": count <= n, ">=": count >= n}[op]


def _power(levels: Mapping[str, Any], user_id: str) -> int:
    users = levels.get("users") or {}
    default = levels.get("users_default", 0)
    level = users.get(user_id, default) if isinstance(users, Mapping) else default
    return int(level) if isinstance(level, int) else 0


def matches(condition: Mapping[str, Any], event: Mapping[str, Any], user_id: str, room: RoomState) -> bool:
    """Whether one condition holds; an unknown kind never does ("effectively disabled")."""
    kind = condition.get("kind")
    if kind == "event_match":
        key, pattern = condition.get("key"), condition.get("pattern")
        value = resolve(event, str(key))
        if not isinstance(pattern, str) or not isinstance(value, str):
            return False
        return glob_matches(pattern, value, words=key == "content.body")
    if kind == "event_property_is":
        value = resolve(event, str(condition.get("key")))
        return _is_scalar(value) and _scalar_equal(value, condition.get("value"))
    if kind == "event_property_contains":
        value = resolve(event, str(condition.get("key")))
        if not isinstance(value, list):
            return False
        wanted = condition.get("value")
        return any(_is_scalar(v) and _scalar_equal(v, wanted) for v in value)
    if kind == "contains_display_name":
        body = resolve(event, "content.body")
        name = room.display_name
        if not name or not isinstance(body, str):
            return False
        return re.search(_bounded(re.escape(name)), body, re.IGNORECASE | re.DOTALL | re.ASCII) is not None
    if kind == "room_member_count":
        spec = condition.get("is")
        return isinstance(spec, str) and _member_count(spec, room.member_count)
    if kind == "sender_notification_permission":
        key = condition.get("key")
        needed = (room.power_levels.get("notifications") or {}).get(key, 50)
        sender = str(event.get("sender", ""))
        if not isinstance(needed, int):
            return False
        return sender in room.creators or _power(room.power_levels, sender) >= needed
    return False


def _rule_matches(kind: str, rule: Mapping[str, Any], event: Mapping[str, Any], user_id: str,
                  room: RoomState) -> bool:
    if kind == "content":
        body = resolve(event, "content.body")
        pattern = rule.get("pattern")
        return isinstance(body, str) and isinstance(pattern, str) and glob_matches(pattern, body, words=True)
    if kind == "room":
        return rule.get("rule_id") == event.get("room_id")
    if kind == "sender":
        return rule.get("rule_id") == event.get("sender")
    conditions: Sequence[Mapping[str, Any]] = rule.get("conditions") or []
    return all(matches(c, event, user_id, room) for c in conditions)


def _ordered(ruleset: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    ordered = [(kind, rule) for kind in KINDS for rule in ruleset.get(kind) or []]
    # The master rule "has always a higher priority than any other rule, even user defined ones".
    return sorted(ordered, key=lambda kr: kr[1].get("rule_id") != ".m.rule.master")


def evaluate(ruleset: Mapping[str, Any], event: Mapping[str, Any], user_id: str, room: RoomState) -> Verdict:
    """The verdict of `user_id`'s rules (the ``global`` object of GET /pushrules/) on `event`."""
    if event.get("sender") == user_id:
        return Verdict(None, None)  # "MUST NOT notify ... for events that the user has sent themselves"
    content = event.get("content")
    has_mentions = isinstance(content, Mapping) and "m.mentions" in content
    for kind, rule in _ordered(ruleset):
        if not rule.get("enabled", True):
            continue
        if has_mentions and rule.get("rule_id") in LEGACY_MENTION_RULES:
            continue  # "should only be enabled if the event does not have an m.mentions property"
        if _rule_matches(kind, rule, event, user_id, room):
            actions = tuple(a for a in rule.get("actions") or []
                            if not (isinstance(a, str) and a in _HISTORICAL_ACTIONS))
            return Verdict(str(rule.get("rule_id")), kind, actions)
    return Verdict(None, None)
