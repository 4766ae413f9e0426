"""Wake-ups for the program runner, from APScheduler 3.11's `AsyncIOScheduler`.

APScheduler here only says "look now"; it never knows what is due. Two jobs,
both in its in-memory job store:

* a periodic tick (every 30 s, and once immediately at start, which is the
  catch-up after an outage), which also picks up config reloads, new cohorts
  and webinars scheduled with `!hub webinar` within 30 s;
* a one-shot tick at the next due instant that the last tick reported, so
  items go out on time rather than up to 30 s late.

Why it only ticks: what is due is computed from the calendar and our own
tables at each tick (`hub.program.ProgramRunner`), and "at most once per
target" is the outbox's unique dedupe key. A persistent APScheduler job store
would be a second, drifting copy of the calendar; its misfire rules on restart
would decide catch-up instead of `hub.catch_up_hours`; and with several
processes each would fire the same job. A lost wake-up here costs at most 30 s,
a duplicate one nothing.

The callback works on the injected `Clock` and returns the next due instant by
that clock; the wake-up itself is armed on real time, at the same distance
from real "now". With `SystemClock` those are the same thing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from hub.clock import Clock

__all__ = ["DEFAULT_INTERVAL", "Tick", "TickScheduler"]

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 30.0
_PERIODIC = "hub-tick"
_NEXT_DUE = "hub-tick-next-due"

# Runs one tick; returns the next instant (by the injected clock) something is due, or None.
Tick = Callable[[], Awaitable[datetime | None]]


class TickScheduler:
    def __init__(self, tick: Tick, *, clock: Clock, interval: float = DEFAULT_INTERVAL) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.tick = tick
        self.clock = clock
        self.interval = interval
        self.ticks = 0  # ticks run, failed ones included (health, tests)
        self._scheduler: AsyncIOScheduler | None = None
        self._lock = asyncio.Lock()
        self._closing = False

    @property
    def running(self) -> bool:
        return self._scheduler is not None

    def start(self) -> None:
        """Start ticking, first tick right away. Needs a running event loop."""
        if self._scheduler is not None:
            raise RuntimeError("TickScheduler already started")
        self._closing = False
        # UTC so APScheduler never consults the host's local zone; it only handles instants.
        scheduler = AsyncIOScheduler(timezone=UTC)
        scheduler.add_job(
            self._fire,
            "interval",
            seconds=self.interval,
            id=_PERIODIC,
            next_run_time=datetime.now(UTC),
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
        )
        scheduler.start()
        self._scheduler = scheduler

    def poke(self) -> None:
        """Tick as soon as possible (after `!hub webinar`, a roster import, a config reload)."""
        self._arm(datetime.now(UTC))

    async def tick_now(self) -> None:
        """Run a tick now, after any tick in progress, and return when it is done.

        For callers that must know the calendar has caught up (tests waiting for the
        hub to hold still); `poke` is the fire-and-forget form.
        """
        await self._fire()

    async def stop(self, grace: float = 10.0) -> None:
        """No new ticks; wait (bounded) for a tick in progress to finish, then stop."""
        scheduler = self._scheduler
        if scheduler is None:
            return
        self._closing = True
        scheduler.remove_all_jobs()
        try:
            # Waiting for the lock is waiting for the in-flight tick: a tick cut
            # short is harmless (retried, deduplicated) but finishing it is tidier.
            # Real time on purpose, like the wake-ups (armed on real time, above): the
            # tick is not cancelled when the grace ends, only no longer waited for, and
            # on a FakeClock the grace would pass at once, so the hub would close the
            # database under a tick still running.
            await asyncio.wait_for(self._lock.acquire(), grace)
        except TimeoutError:
            log.warning("a program tick still running after %.0f s; stopping anyway", grace)
        else:
            self._lock.release()
        scheduler.shutdown(wait=False)
        self._scheduler = None
        await asyncio.sleep(0)  # AsyncIOScheduler.shutdown is scheduled on the loop

    async def _fire(self) -> None:
        if self._closing:
            return
        next_due: datetime | None = None
        async with self._lock:
            if self._closing:
                return
            try:
                next_due = await self.tick()
            except Exception:
                # The periodic tick retries; never let one failure stop the calendar.
                log.exception("program tick failed")
            self.ticks += 1
        if next_due is not None and not self._closing:
            delay = (next_due - self.clock.now()).total_seconds()
            self._arm(datetime.now(UTC) + timedelta(seconds=max(0.0, delay)))

    def _arm(self, when: datetime) -> None:
        if self._scheduler is None or self._closing:
            return
        # One pending exact wake-up is enough: each tick re-arms for the next instant.
        # max_instances=2: a tick re-arms this job from inside the job's own run,
        # and APScheduler counts that run until just after it returns; one more
        # waiting on our lock is all that is ever useful.
        self._scheduler.add_job(
            self._fire,
            "date",
            run_date=when,
            id=_NEXT_DUE,
            replace_existing=True,
            misfire_grace_time=None,
            coalesce=True,
            max_instances=2,
        )
