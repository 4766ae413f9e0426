"""A limiter shared by every send to one peer: a 429 pauses all sends, not just one.

It also handles outages: when the peer is unreachable (connection refused,
timeouts, 5xx), every send would fail the same way, so instead of each row
backing off on its own (and a thousand rows hammering a dead server), the
first failure pauses all sends and the pause grows exponentially, with
jitter, while failures continue. Each pause ends with a probe by whichever
rows are due; one success ends the outage. The pause is capped at
`max_outage_pause`, which bounds how late delivery resumes after the peer is
back.
"""

from __future__ import annotations

import logging
import random

from hub.clock import Clock

__all__ = ["SharedPause"]

log = logging.getLogger(__name__)


class SharedPause:
    def __init__(self, clock: Clock, name: str, *, max_outage_pause: float = 10.0) -> None:
        self.clock = clock
        self.name = name
        self.max_outage_pause = max_outage_pause
        self._until = 0.0
        self._failures = 0
        self.epoch = 0
        """Bumped at each outage step; a send reports its failure with the epoch it began in,
        so sixteen sends failing together count as one step, not sixteen."""

    def pause(self, seconds: float) -> None:
        until = self.clock.monotonic() + seconds
        if until > self._until:
            log.warning("%s asked us to slow down: pausing all sends for %d ms",
                        self.name, int(seconds * 1000))
            self._until = until

    def failure(self, epoch: int, reason: str) -> float:
        """A send that began in `epoch` found the peer unreachable; return the seconds to wait."""
        if epoch == self.epoch:
            self.epoch += 1
            self._failures += 1
            ceiling = min(self.max_outage_pause, 0.5 * 2 ** min(self._failures - 1, 20))
            delay = random.uniform(ceiling / 2, ceiling)
            log.warning("%s is unreachable (%s): pausing all sends for %.1f s",
                        self.name, reason, delay)
            self._until = max(self._until, self.clock.monotonic() + delay)
        return max(self.remaining, 0.1)

    def success(self) -> None:
        if self._failures:
            log.info("%s is reachable again", self.name)
            self._failures = 0

    @property
    def down(self) -> bool:
        """True while an outage is being waited out."""
        return self._failures > 0

    @property
    def remaining(self) -> float:
        return max(0.0, self._until - self.clock.monotonic())

    async def wait(self) -> None:
        # A loop, because another 429 may extend the pause while we sleep. On the clock it
        # reads: a pause measured on one clock and slept on another never ends on a fake one.
        while (left := self.remaining) > 0:
            await self.clock.sleep(left)
