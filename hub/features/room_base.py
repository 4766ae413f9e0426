"""What the room modules share: the database, the homeserver port, lookups, alerts.

`RoomKeeper` (hub.features.rooms) keeps the hub's rooms as the database says; its
jobs live in one module each, stacked on this base: the effect handlers the Matrix
sender calls for room rows (`room_ops`), direct chats people open (`room_joins`),
membership from the sync (`room_sync`), the room check at start (`room_check`), and
reminders and config watching (`rooms`). None of them imports nio or `hub.matrix`:
they see the homeserver through `hub.core.homeserver.Homeserver`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.clock import Clock
from hub.config import Settings
from hub.core.commands import RoomKind
from hub.core.content_format import escape_markdown
from hub.core.effects import RoomMessage
from hub.core.homeserver import Homeserver
from hub.core.membership import MembershipState, Outgoing, RoomStatus
from hub.core.membership import RoomKind as HubRoomKind
from hub.delivery.outbox import Outbox
from hub.errors import DeliveryError, PermanentDeliveryError, TemporaryDeliveryError
from hub.features.people import is_participant, member_markdown
from hub.features.room_queue import Env, load_env, queue
from hub.storage.db import Database
from hub.storage.models import Cohort, HubRoom, Member, Pair, hub_room_table, room_member_table

__all__ = ["ReconcileReport", "RoomBase"]

# One logger for all the room modules: they were one module, and log filters name it.
log = logging.getLogger("hub.features.rooms")

_KINDS = {HubRoomKind.LOUNGE: RoomKind.LOUNGE, HubRoomKind.PAIR: RoomKind.PAIR,
          HubRoomKind.DIRECT: RoomKind.DIRECT, HubRoomKind.DM: RoomKind.DIRECT}


@dataclass
class ReconcileReport:
    checked: int = 0
    repaired: list[str] | None = None
    replaced: list[str] | None = None
    problems: list[str] | None = None
    told: int = 0  # control-room messages this check has sent so far

    def lines(self) -> list[str]:
        return [*(self.replaced or []), *(self.repaired or []), *(self.problems or [])]


def _room_id_or_error(key: str, status: str | None, room_id: str | None) -> str | DeliveryError:
    if status is None:
        return PermanentDeliveryError(f"the hub has no room {key}")
    if status == RoomStatus.CLOSED:
        return PermanentDeliveryError(f"room {key} is closed")
    if room_id is None:
        return TemporaryDeliveryError(f"room {key} is not created yet", retry_after=2.0)
    return room_id


# How long the invitees read with a batch's room lookup are used (as `RESOLVED_FOR`).
INVITEES_FOR = 10.0


def _invitees_of(room_ids: Collection[str]) -> Select[Any]:
    """(room id, user) of everyone invited to these rooms, or about to be, who has not answered."""
    rm, room = room_member_table, hub_room_table
    return (select(room.c.room_id, rm.c.user_id).select_from(rm.join(room, rm.c.room_pk == room.c.id))
            .where(room.c.room_id.in_(room_ids) & (room.c.status != RoomStatus.CLOSED)
                   & rm.c.state.in_([MembershipState.PENDING, MembershipState.INVITED])))


class RoomBase:
    """The state and helpers every room job uses."""

    def __init__(
        self,
        *,
        db: Database,
        outbox: Outbox,
        clock: Clock,
        provision: Homeserver,
        settings: Callable[[], Settings],
        control_room: Callable[[], str | None],
        on_settings: Callable[[Settings], None] | None = None,
        on_config_applied: Callable[[], None] | None = None,
        tick_seconds: float = 5.0,
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.clock = clock
        self.provision = provision
        self.settings = settings
        self.control_room = control_room
        self.on_settings = on_settings
        self.on_config_applied = on_config_applied
        self.tick_seconds = tick_seconds
        self.reconciled = asyncio.Event()
        self.last_report: ReconcileReport | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._config_mtime: float | None = None
        self._env: Env | None = None
        self._ticks = 0
        self._told: set[str] = set()  # state event ids of drift already told to the moderators
        # Each room's invitees, read with a claimed batch's room lookup (`resolve_many`) for the
        # first send there (`invitees`): room id -> (when, who). Used once, while younger than
        # INVITEES_FOR, and dropped when the sync records a membership change there (`RoomSync`).
        self._invitees: dict[str, tuple[float, frozenset[str]]] = {}

    async def env(self, s: AsyncSession) -> Env:
        settings = self.settings()
        if self._env is None or self._env.settings is not settings:
            self._env = await load_env(s, self.outbox, self.clock, settings)
        return self._env

    # -- looking rooms up ----------------------------------------------------------------------

    async def _by_key(self, s: AsyncSession, key: str) -> HubRoom | None:
        return (await s.execute(select(HubRoom).where(hub_room_table.c.key == key))).scalar_one_or_none()

    async def resolve(self, key: str) -> str:
        """The room id a row naming the hub room `key` goes to now, or the delivery error."""
        found = (await self.resolve_many([key]))[key]
        if isinstance(found, Exception):
            raise found
        return found

    async def resolve_many(self, keys: Collection[str]) -> dict[str, str | DeliveryError]:
        """`resolve` for each key, in one query: what a claimed batch of Matrix rows needs.

        At 5,000 rooms a lookup per row (a pooled connection's ping, the query, its rollback)
        was 12 % of the hub's event loop during a fan-out (py-spy, bench/README.md).
        """
        wanted = sorted(set(keys))
        found: dict[str, tuple[str, str | None]] = {}
        invited: dict[str, set[str]] = {}
        async with self.db.engine.connect() as conn:  # Core: a session's bookkeeping costs more
            for i in range(0, len(wanted), 500):
                rows = await conn.execute(select(hub_room_table.c.key, hub_room_table.c.status,
                                                 hub_room_table.c.room_id)
                                          .where(hub_room_table.c.key.in_(wanted[i:i + 500])))
                found.update((k, (status, room_id)) for k, status, room_id in rows.all())
            # The invitees of the same rooms, for the first send in each (a query per room cost
            # a pooled connection's ping, a transaction and the query: 14 % of the hub's loop
            # in a 5,000-room fan-out).
            open_rooms = sorted(r for status, r in found.values() if r and status != RoomStatus.CLOSED)
            for i in range(0, len(open_rooms), 500):
                for room_id, user in (await conn.execute(_invitees_of(open_rooms[i:i + 500]))).all():
                    invited.setdefault(room_id, set()).add(user)
        now = self.clock.monotonic()
        self._invitees = {r: kept for r, kept in self._invitees.items() if now - kept[0] < INVITEES_FOR}
        self._invitees.update((r, (now, frozenset(invited.get(r, ())))) for r in open_rooms)
        return {key: _room_id_or_error(key, *found.get(key, (None, None))) for key in wanted}

    def membership_changed(self, room_ids: Collection[str]) -> None:
        """What was read of these rooms' invitees is stale: the sync recorded a change there."""
        for room_id in room_ids:
            self._invitees.pop(room_id, None)

    async def invitees(self, room_id: str) -> set[str]:
        """Who the hub invited to `room_id` (or is about to) and has not joined, declined or
        left: with the joined from the homeserver, whom a room key goes to before the hub's
        first send there in a run (`hub.matrix.provision.Provision.load_room`)."""
        kept = self._invitees.pop(room_id, None)
        if kept is not None and self.clock.monotonic() - kept[0] < INVITEES_FOR:
            return set(kept[1])
        async with self.db.engine.connect() as conn:
            return {user for _, user in (await conn.execute(_invitees_of([room_id]))).all()}

    async def kind_of(self, room_id: str) -> RoomKind | None:
        async with self.db.session() as s:
            kind = (await s.execute(select(hub_room_table.c.kind).where(
                (hub_room_table.c.room_id == room_id) & (hub_room_table.c.status != RoomStatus.CLOSED)
            ))).scalar_one_or_none()
        return _KINDS.get(kind, RoomKind.OTHER) if kind else None

    async def is_participant(self, user_id: str) -> bool:
        async with self.db.session() as s:
            return await is_participant(s, user_id)

    async def _say(self, s: AsyncSession, env: Env, room_id: str, markdown: str, dedupe: str) -> None:
        await queue(s, env, Outgoing(RoomMessage.markdown(markdown, room_id=room_id), "room-notice", dedupe))

    # -- alerts ------------------------------------------------------------------------------------

    async def _alert(self, s: AsyncSession, env: Env, text: str, *, dedupe: str) -> None:
        control = self.control_room()
        if not control:
            log.warning("%s", text)
            return
        await queue(s, env, Outgoing(RoomMessage.markdown(text, room_id=control), "alert", dedupe))

    async def _describe(self, s: AsyncSession, room: HubRoom) -> str:
        if room.kind in (HubRoomKind.SPACE, HubRoomKind.LOUNGE) and room.cohort_id is not None:
            cohort = await s.get(Cohort, room.cohort_id)
            return f"the {escape_markdown(cohort.name) if cohort else '?'} {room.kind}"
        if room.kind == HubRoomKind.PAIR and room.pair_id is not None:
            pair = await s.get(Pair, room.pair_id)
            if pair is not None:
                a, b = await s.get(Member, pair.mentor_id), await s.get(Member, pair.mentee_id)
                if a is not None and b is not None:
                    return f"the pair room of {member_markdown(a)} & {member_markdown(b)}"
        if room.kind in (HubRoomKind.DIRECT, HubRoomKind.DM):
            return f"the direct room with {escape_markdown(room.user_id or '?')}"
        return f"room {room.key}"
