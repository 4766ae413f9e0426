"""Ports the core names but does not implement: what a command's effects are queued into.

The outbox (hub.delivery.outbox.Outbox) is the implementation; handlers,
`enqueue_email` and unit tests' fakes see only this. Generic in the
transaction type, so core needs no database import: the hub's is
``Queue[AsyncSession]`` (hub.features.ports).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

__all__ = ["Queue"]

Tx_contra = TypeVar("Tx_contra", contravariant=True)


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

    async def enqueue_many(self, session: Tx_contra, rows: list[dict[str, Any]]) -> int:
        """Queue rows (channel, kind, lane, payload, dedupe_key); how many were new."""
        ...
