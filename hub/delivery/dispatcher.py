"""Sends due outbox rows: bounded concurrency, per-lane order, retries, leases.

A round claims the *head* of each lane (the lowest `seq` not yet sent in that
room or mailbox), marks it `sending` with a lease, commits, sends, then
records the outcome. Claiming only heads is what keeps messages to one room in
queue order while different rooms go out in parallel. On PostgreSQL the claim
uses ``FOR UPDATE SKIP LOCKED`` so several processes can share the queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import text, update

from hub.clock import Clock
from hub.delivery.outbox import Outbox
from hub.errors import PermanentDeliveryError, TemporaryDeliveryError
from hub.storage.db import Database
from hub.storage.models import outbox_table as T

__all__ = ["Claimed", "Dispatcher", "Sender", "backoff_seconds"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claimed:
    seq: int
    txn_id: str
    channel: str
    kind: str
    lane: str
    payload: dict[str, Any]
    attempts: int
    created_at: float


class Sender(Protocol):
    async def send(self, row: Claimed) -> str:
        """Deliver one row; return a short result (event id, SMTP reply).

        Raise TemporaryDeliveryError to retry later, PermanentDeliveryError to give up.
        """
        ...


def backoff_seconds(attempts: int, *, base: float = 1.0, cap: float = 300.0) -> float:
    """Exponential backoff with full jitter: many rows failing together don't retry together."""
    ceiling = min(cap, base * (2 ** min(attempts, 20)))
    return random.uniform(ceiling / 2, ceiling)


_CLAIM = """
SELECT o.seq FROM outbox o
WHERE (o.status = 'queued' OR (o.status = 'sending' AND o.claimed_until < :now))
  AND o.not_before <= :now
  AND o.channel IN ({channels})
  AND NOT EXISTS (
    SELECT 1 FROM outbox p
    WHERE p.lane = o.lane AND p.seq < o.seq AND p.status IN ('queued', 'sending')
  )
ORDER BY o.seq
LIMIT :limit
"""


class Dispatcher:
    def __init__(
        self,
        db: Database,
        outbox: Outbox,
        clock: Clock,
        senders: dict[str, Sender],
        *,
        concurrency: int = 16,
        lease_seconds: float = 120.0,
        poll_seconds: float = 1.0,
        give_up_after: dict[str, float] | None = None,
        on_failed: Callable[[Claimed, str], Awaitable[None]] | None = None,
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.clock = clock
        self.senders = senders
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        # How long a row may keep failing temporarily before it is failed for good.
        self.give_up_after = give_up_after or {"email": 24 * 3600.0, "matrix": 24 * 3600.0}
        self.on_failed = on_failed
        self._wake = asyncio.Event()
        self._stopping = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self.sent_count = 0
        outbox.on_enqueue(self.wake)

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Loop until `stop()`; each round fills free slots with claimed lane heads."""
        while not self._stopping:
            free = self.concurrency - len(self._in_flight)
            claimed: list[Claimed] = []
            if free > 0:
                self._wake.clear()
                try:
                    claimed = await self.claim(free)
                except Exception:
                    log.exception("outbox claim failed; retrying")
                    await asyncio.sleep(self.poll_seconds)
                    continue
            for row in claimed:
                task = asyncio.create_task(self._deliver(row))
                self._in_flight.add(task)
                task.add_done_callback(self._done)
            if claimed and len(self._in_flight) < self.concurrency:
                continue  # more may be due right away
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_seconds)
            except TimeoutError:
                pass

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._wake.set()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming; give in-flight sends `grace` seconds. Unsent rows stay queued."""
        self._stopping = True
        self._wake.set()
        if self._in_flight:
            _, pending = await asyncio.wait(set(self._in_flight), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("%d sends still in flight at shutdown; they stay queued", len(pending))

    async def claim(self, limit: int) -> list[Claimed]:
        now = self.clock.now().timestamp()
        channels = [c for c in self.senders]
        if not channels:
            return []
        names = ", ".join(f":ch{i}" for i in range(len(channels)))
        sql = _CLAIM.format(channels=names)
        if self.db.is_postgres:
            sql += " FOR UPDATE SKIP LOCKED"
        params: dict[str, Any] = {"now": now, "limit": limit}
        params.update({f"ch{i}": c for i, c in enumerate(channels)})
        async with self.db.transaction() as s:
            seqs = [r[0] for r in (await s.execute(text(sql), params)).all()]
            if not seqs:
                return []
            await s.execute(
                update(T)
                .where(T.c.seq.in_(seqs))
                .values(status="sending", claimed_until=now + self.lease_seconds)
            )
            rows = (
                await s.execute(
                    text(
                        "SELECT seq, txn_id, channel, kind, lane, payload, attempts, created_at "
                        "FROM outbox WHERE seq IN (" + ", ".join(str(int(q)) for q in seqs) + ")"
                        " ORDER BY seq"
                    )
                )
            ).all()
        return [
            Claimed(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7]) for r in rows
        ]

    async def _deliver(self, row: Claimed) -> None:
        sender = self.senders[row.channel]
        try:
            result = await sender.send(row)
        except TemporaryDeliveryError as e:
            await self._retry(row, e)
            return
        except PermanentDeliveryError as e:
            await self._fail(row, e.reason)
            return
        except asyncio.CancelledError:
            # Shutdown: the row stays `sending` until its lease ends or the next start frees it.
            raise
        except Exception as e:  # a bug in a sender must not kill the dispatcher
            log.exception("unexpected error sending outbox row %s", row.seq)
            await self._retry(row, TemporaryDeliveryError(f"{e.__class__.__name__}: {e}"))
            return
        await self._mark(row.seq, status="sent", sent_at=self.clock.now().timestamp(),
                         result=result[:255], claimed_until=None, attempts=row.attempts + 1)
        self.sent_count += 1

    async def _retry(self, row: Claimed, e: TemporaryDeliveryError) -> None:
        now = self.clock.now().timestamp()
        if now - row.created_at > self.give_up_after.get(row.channel, 86400.0):
            await self._fail(row, f"gave up after {row.attempts + 1} attempts: {e.reason}")
            return
        delay = e.retry_after if e.retry_after is not None else backoff_seconds(row.attempts)
        log.info("outbox row %s (%s to %s) will be retried in %.1fs: %s",
                 row.seq, row.kind, row.lane, delay, e.reason)
        await self._mark(row.seq, status="queued", attempts=row.attempts + 1,
                         not_before=now + delay, last_error=e.reason[:2000], claimed_until=None)

    async def _fail(self, row: Claimed, reason: str) -> None:
        log.warning("outbox row %s (%s to %s) failed: %s", row.seq, row.kind, row.lane, reason)
        await self._mark(row.seq, status="failed", attempts=row.attempts + 1,
                         last_error=reason[:2000], claimed_until=None)
        if self.on_failed is not None:
            try:
                await self.on_failed(row, reason)
            except Exception:
                log.exception("could not report failed outbox row %s", row.seq)

    async def _mark(self, seq: int, **values: Any) -> None:
        # Recording the outcome must not be lost to a transient database error,
        # or a sent chat message would be re-sent (deduplicated, but wasteful).
        for attempt in range(5):
            try:
                async with self.db.transaction() as s:
                    await s.execute(update(T).where(T.c.seq == seq).values(**values))
                return
            except Exception:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.2 * (attempt + 1))
