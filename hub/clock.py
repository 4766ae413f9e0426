"""Injectable time, so that time-based code is tested without sleeping.

Production code takes a `Clock` and never calls `time.time()` or
`datetime.now()` itself, nor `asyncio.sleep` or a timeout of its own: it waits
with `clock.sleep` and `clock.wait`. Tests pass a `FakeClock` and move it
forward (its waits move it too, at once).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any, Protocol

__all__ = ["Clock", "FakeClock", "SystemClock", "wait_tasks"]


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going backwards."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        """Wait for `event` at most `seconds` of this clock; True if it was set."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        # asyncio.timeout, not wait_for: no task per wait (the dispatcher waits once per send).
        try:
            async with asyncio.timeout(seconds):
                await event.wait()
        except TimeoutError:
            return event.is_set()
        return True


class FakeClock:
    """A clock that only moves when told to; `sleep` advances it instantly."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start time")
        self._now = start.astimezone(UTC)
        self._mono = 0.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        from datetime import timedelta

        self._now += timedelta(seconds=seconds)
        self._mono += seconds

    def set(self, when: datetime) -> None:
        delta = (when.astimezone(UTC) - self._now).total_seconds()
        if delta < 0:
            raise ValueError("FakeClock cannot go backwards")
        self.advance(delta)

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        """Like `sleep`: whatever is ready runs first; if that does not set `event`, all the
        seconds pass at once (so a loop polling on this clock races through idle time)."""
        await asyncio.sleep(0)
        if not event.is_set():
            await self.sleep(seconds)
        return event.is_set()


async def wait_tasks(
    clock: Clock, tasks: Collection[asyncio.Future[Any]], seconds: float
) -> set[asyncio.Future[Any]]:
    """`asyncio.wait(tasks, timeout=seconds)` on `clock`: wait at most `seconds` of it for all
    of `tasks`; return those still pending (nothing is cancelled: the caller decides)."""
    pending = {t for t in tasks if not t.done()}
    if not pending:
        return set()
    all_done = asyncio.Event()

    def finished(task: asyncio.Future[Any]) -> None:
        if all(t.done() for t in pending):
            all_done.set()

    for t in pending:
        t.add_done_callback(finished)
    try:
        await clock.wait(all_done, seconds)
    finally:
        for t in pending:
            t.remove_done_callback(finished)
    return {t for t in pending if not t.done()}
