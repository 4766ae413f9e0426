"""Limits on what one person can make the hub do, and on how often it tells moderators the same thing.

All pure logic on an injected clock (no SQL, no network), so every window is
unit-tested without sleeping. State is in memory on purpose: a restart that
forgets who was slowed down or already refused costs one extra notice. The
one limit a restart must not reset (confirmation emails to an address) is
counted in the database by its feature instead.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from hub.clock import Clock
from hub.core.commands import CommandSpec

__all__ = [
    "MAX_COMMAND_CHARS",
    "AlertAggregator",
    "CommandRateLimiter",
    "OncePerWindow",
    "Verdict",
    "text_too_long",
]

# Longer than the longest text a command takes (an announcement, 10,000), shorter
# than a Matrix event (64 KiB): an answer that names the problem always fits.
MAX_COMMAND_CHARS = 12_000

# Idle entries are forgotten once the table is this big, so a flood of new
# senders cannot grow it without end.
_PRUNE_AT = 10_000


class Verdict(enum.Enum):
    ALLOW = "allow"
    WARN = "warn"  # over the limit: answer once with "slow down"
    DROP = "drop"  # over the limit and already told: stay silent


@dataclass
class _Bucket:
    tokens: float
    at: float
    warned: bool = False


class CommandRateLimiter:
    """Per person: `per_minute` commands a minute on average, `burst` in a row.

    A token bucket: each command takes a token, tokens come back at
    `per_minute` a minute up to `burst`. The first command without a token is
    answered with one "slow down"; the rest are dropped unanswered until a token
    is back, so a flood never turns into a flood of answers.
    """

    def __init__(self, clock: Clock, *, per_minute: float = 10.0, burst: int = 10) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("per_minute must be positive and burst at least 1")
        self.clock = clock
        self.per_minute = per_minute
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}

    def check(self, who: str) -> Verdict:
        now = self.clock.monotonic()
        if len(self._buckets) >= _PRUNE_AT:
            self._prune(now)
        bucket = self._buckets.get(who)
        if bucket is None:
            bucket = self._buckets[who] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.per_minute / 60)
        bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            bucket.warned = False
            return Verdict.ALLOW
        if bucket.warned:
            return Verdict.DROP
        bucket.warned = True
        return Verdict.WARN

    def wait_seconds(self, who: str) -> float:
        """How long until `who` may send a command again (0 if now)."""
        bucket = self._buckets.get(who)
        if bucket is None or bucket.tokens >= 1:
            return 0.0
        return (1 - bucket.tokens) * 60 / self.per_minute

    def _prune(self, now: float) -> None:
        full = 60 * self.burst / self.per_minute  # an idle bucket is full again after this long
        for who in [w for w, b in self._buckets.items() if now - b.at >= full]:
            del self._buckets[who]


class OncePerWindow:
    """True the first time a key is seen in `window` seconds, False after (one refusal a day)."""

    def __init__(self, clock: Clock, window: float) -> None:
        self.clock = clock
        self.window = window
        self._seen: dict[Hashable, float] = {}

    def first(self, key: Hashable) -> bool:
        now = self.clock.monotonic()
        if len(self._seen) >= _PRUNE_AT:
            self._seen = {k: t for k, t in self._seen.items() if now - t < self.window}
        at = self._seen.get(key)
        if at is not None and now - at < self.window:
            return False
        self._seen[key] = now
        return True


@dataclass
class _AlertWindow:
    opened: float
    more: int = 0


class AlertAggregator:
    """One alert per key (kind and room) per `window`; the ones held back are counted.

    `admit(key)` says whether to send an alert now and how many were held back
    since the last one sent; `due()` lists the windows that closed with alerts
    held back, so the caller can send their count instead of losing it.
    """

    def __init__(self, clock: Clock, window: float = 3600.0) -> None:
        self.clock = clock
        self.window = window
        self._open: dict[tuple[str, str], _AlertWindow] = {}

    def admit(self, key: tuple[str, str]) -> tuple[bool, int]:
        now = self.clock.monotonic()
        current = self._open.get(key)
        if current is not None and now - current.opened < self.window:
            current.more += 1
            return False, current.more
        held = current.more if current is not None else 0
        self._open[key] = _AlertWindow(now)
        return True, held

    def due(self) -> list[tuple[tuple[str, str], int]]:
        """Closed windows that held alerts back: (key, count); each is returned once."""
        now = self.clock.monotonic()
        out: list[tuple[tuple[str, str], int]] = []
        for key, w in list(self._open.items()):
            if now - w.opened >= self.window:
                if w.more:
                    out.append((key, w.more))
                del self._open[key]
        return out


def text_too_long(spec: CommandSpec, args: Mapping[str, Any]) -> str | None:
    """The refusal for a free text over its declared `maximum` length, or None if it fits."""
    for arg in spec.args:
        value = args.get(arg.name)
        if arg.kind in ("text", "rest") and arg.maximum is not None and isinstance(value, str):
            if len(value) > arg.maximum:
                return (f"That {arg.name} is {len(value):,} characters long; `{spec.name}` takes at "
                        f"most {arg.maximum:,}. Nothing was sent or changed: please shorten it.")
    return None
