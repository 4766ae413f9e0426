"""Ports the core names but does not implement: what a command's effects are queued into.

The outbox (hub.delivery.outbox.Outbox) is the implementation; handlers,
`enqueue_email` and unit tests' fakes see only this. Generic in the
transaction type, so core needs no database import: the hub's is
``Queue[AsyncSession]`` (hub.features.ports).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Protocol, TypeVar

__all__ = ["Priority", "Queue"]

Tx_contra = TypeVar("Tx_contra", contravariant=True)


class Priority(IntEnum):
    """Which due lane heads a dispatcher claims first (`outbox.priority`, lowest first).

    A fan-out queues thousands of rows at once; without this, a moderator's reply or a
    participant's answer queued a moment later waits behind all of them (49 s behind an
    icebreaker to 2,000 rooms). Order within a lane is kept regardless: a row is claimed
    only when it is its lane's head, so an interactive row never overtakes an earlier row
    to the same room or mailbox.
    """

    INTERACTIVE = 0  # answers and notices someone is waiting for
    BULK = 1  # fan-outs: scheduled items, digests, announcements, roster provisioning


class Queue(Protocol[Tx_contra]):
    """Rows queued in the caller's transaction; a dispatcher sends them after the commit."""

    async def enqueue(
        self,
        session: Tx_contra,
        *,
        channel: str,
        kind: str,
        lane: str,
        payload: dict[str, Any],
        dedupe_key: str,
        not_before: float | None = None,
    ) -> bool:
        """Queue one row; False if `dedupe_key` was queued before."""
        ...

    async def enqueue_many(self, session: Tx_contra, rows: list[dict[str, Any]], *,
                           priority: Priority = Priority.BULK) -> int:
        """Queue rows (channel, kind, lane, payload, dedupe_key), a fan-out unless told; how many were new."""
        ...
