"""A limiter shared by every send to one peer: a 429 pauses all sends, not just one."""

from __future__ import annotations

import asyncio
import logging

from hub.clock import Clock

__all__ = ["SharedPause"]

log = logging.getLogger(__name__)


class SharedPause:
    def __init__(self, clock: Clock, name: str) -> None:
        self.clock = clock
        self.name = name
        self._until = 0.0

    def pause(self, seconds: float) -> None:
        until = self.clock.monotonic() + seconds
        if until > self._until:
            log.warning("%s asked us to slow down: pausing all sends for %d ms",
                        self.name, int(seconds * 1000))
            self._until = until

    @property
    def remaining(self) -> float:
        return max(0.0, self._until - self.clock.monotonic())

    async def wait(self) -> None:
        # A loop, because another 429 may extend the pause while we sleep.
        while (left := self.remaining) > 0:  # noqa: ASYNC110
            await asyncio.sleep(left)
