"""The port membership reads and writes through: `MembershipStore`.

Two implementations: `hub.storage.membership_store.SqlMembershipStore` asks the
database each time (a chat command makes a few lookups), and
`hub.features.membership_batch.BatchStore` answers a bulk operation's lookups from
memory and writes its rows in bulk when it ends (a roster import: thousands of
rows in one transaction). The membership features take whichever the caller's
`Env` carries; they never ask which one it is.

The store is generic in the transaction and row types so that this module (core)
imports nothing of the storage adapter: the SQL implementations bind them to an
`AsyncSession` and the ORM rows.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from hub.core.cohorts import Who

__all__ = ["MembershipRow", "MembershipStore"]

Tx = TypeVar("Tx", contravariant=True)
RoomT = TypeVar("RoomT")
MemberT = TypeVar("MemberT")
PairT = TypeVar("PairT")


class MembershipRow(Protocol):
    """One person in one room (`room_member`), as the transitions change it."""

    state: str
    updated_at: float


class MembershipStore(Protocol[Tx, RoomT, MemberT, PairT]):
    # rooms

    async def room(self, tx: Tx, key: str) -> RoomT | None:
        """The hub room with this key, or None."""
        ...

    def room_added(self, room: RoomT) -> None:
        """A new room's row was flushed (it has an id): it has no members yet."""
        ...

    async def membership(self, tx: Tx, room: RoomT, user_id: str) -> MembershipRow | None: ...

    async def add_membership(self, tx: Tx, room: RoomT, user_id: str, now: float) -> None:
        """A new `pending` membership of `user_id` in `room`."""
        ...

    # members

    async def find_member(self, tx: Tx, cohort_id: int, who: Who, *, active_only: bool) -> MemberT | None:
        """The member `who` names in the cohort (the oldest, if the two ids name two people)."""
        ...

    async def member_saved(self, tx: Tx, member: MemberT) -> None:
        """A member was added or given an id (email, Matrix id): make later lookups find it."""
        ...

    # pairs

    async def open_pairs_of(self, tx: Tx, member: MemberT) -> list[PairT]:
        """The member's active and paused pairs, oldest first."""
        ...

    async def open_pair_of_mentee(self, tx: Tx, cohort_id: int, mentee: MemberT) -> PairT | None: ...

    def pair_added(self, pair: PairT) -> None:
        """A new pair was flushed (it has an id)."""
        ...

    # writing

    async def new_id(self, tx: Tx, table: str) -> int | None:
        """The id for a new row of `table`, or None for the database's own choice."""
        ...

    async def queue(self, tx: Tx, row: dict[str, Any]) -> bool:
        """Queue one outbox row (`EffectWriter.row`); False if its dedupe key was queued before."""
        ...

    async def replace_queued(self, tx: Tx, dedupe_key: str, payload: dict[str, Any]) -> bool:
        """Give a row queued in this transaction (so not sent yet) a new payload; False if none."""
        ...
