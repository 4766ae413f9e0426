"""Whose device lists the hub follows, kept across restarts (nio keeps that in memory only).

nio counts a user as tracked once it has queried their keys, and starts every run tracking
nobody. The hub resumes its sync from the saved position without full state, so after each
start nio queried the keys of every room's members again before the hub's first send there:
5,251 key queries in a 5,000-room icebreaker (53 ms each, in every row's path), where plain
nio after an initial sync made 2 (bench/README.md, run H).

A client that resumes its sync keeps its tracking: what changed while it was away comes in
the resumed sync's `device_lists.changed`, and nio queries those users again. The one gap is
a crash after a sync position is saved and before the changes it carried were queried; so
the users waiting for a query are saved with every position, in the same transaction, and
are queried again after a start. The tracked set itself is saved now and then and at stop;
whoever was tracked since the last save is simply queried again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from nio import AsyncClient
from sqlalchemy.ext.asyncio import AsyncSession

from hub.clock import Clock
from hub.storage.db import Database

__all__ = ["PENDING_KEY", "TRACKED_KEY", "DeviceTracking"]

log = logging.getLogger(__name__)
TRACKED_KEY = "matrix.tracked_users"
PENDING_KEY = "matrix.key_query_pending"


class DeviceTracking:
    def __init__(self, client: AsyncClient, db: Database, clock: Clock, *, save_every: float = 60.0) -> None:
        self.client = client
        self.db = db
        self.clock = clock
        self.save_every = save_every
        self._saved_pending: list[str] | None = None
        self._saved_tracked = 0
        self._saved_at = clock.monotonic()

    @property
    def _olm(self) -> Any:
        return self.client.olm

    async def restore(self) -> int:
        """Before the first sync of a run: nio tracks whom the last run tracked; returns how many."""
        olm = self._olm
        if olm is None:
            return 0
        tracked = set(_users(await self.db.get_state(TRACKED_KEY)))
        pending = set(_users(await self.db.get_state(PENDING_KEY)))
        olm.tracked_users.update(tracked - pending)
        olm.users_for_key_query.update(pending)
        self._saved_pending = sorted(pending)
        self._saved_tracked = len(olm.tracked_users)
        return len(tracked - pending)

    def note_changes(self, changed: Iterable[str], left: Iterable[str]) -> None:
        """A sync's `device_lists`, for the users the hub follows.

        nio takes a change only for members of rooms it knows in this run, and after a start
        it knows none until it loads them: a phone logged in while the hub was down would
        not get the room key of its next message.
        """
        olm = self._olm
        if olm is None:
            return
        olm.users_for_key_query.update(u for u in changed if u in olm.tracked_users)
        # No longer sharing a room: followed again (queried) if they share one later.
        olm.tracked_users.difference_update(left)

    async def with_position(self, session: AsyncSession) -> None:
        """In the transaction that saves a sync position: who still waits for a key query."""
        olm = self._olm
        if olm is None:
            return
        pending = sorted(olm.users_for_key_query)
        if pending != self._saved_pending:
            await self.db.set_state(PENDING_KEY, json.dumps(pending), session)
            self._saved_pending = pending

    async def save_if_due(self, *, force: bool = False) -> None:
        """Save the tracked set when it grew and `save_every` passed (or `force`, at stop)."""
        olm = self._olm
        if olm is None or len(olm.tracked_users) == self._saved_tracked:
            return
        if not force and self.clock.monotonic() - self._saved_at < self.save_every:
            return
        # Not those waiting for a query: their keys are not known to be current.
        tracked = sorted(set(olm.tracked_users) - set(olm.users_for_key_query))
        await self.db.set_state(TRACKED_KEY, json.dumps(tracked))
        self._saved_tracked, self._saved_at = len(olm.tracked_users), self.clock.monotonic()


def _users(raw: str | None) -> list[str]:
    """A saved list of user ids; anything else (hand-edited, truncated) counts as none."""
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except ValueError:
        log.warning("the saved device-tracking list is not JSON; the hub queries everyone's keys again")
        return []
    return [u for u in value if isinstance(u, str)] if isinstance(value, list) else []
