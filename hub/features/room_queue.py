"""The hub's rooms and their outbox rows: the ground the membership modules stand on.

Every function here runs inside the caller's transaction: a change and the outbox
rows it causes (room creation, invites, welcomes, emails) commit together or not at
all. Nothing here talks to the homeserver; the rows are carried out by the Matrix
sender's room ops (hub.features.rooms).

Rows for a room the hub owns name it by its stable key (`room_key`). While the room
does not exist yet they queue on the lane ``room:<key>`` behind its creation; once it
exists they queue on its room id, like every other message to that room, so messages
to one room keep their order (`hub.core.membership.room_lane`).

Lookups and writes go through `Env.store` (`hub.core.membership_store.MembershipStore`):
the database for a chat command, a `BatchStore` for a roster import.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from hub.clock import Clock
from hub.config import Settings
from hub.core import membership as core
from hub.core.content_format import html_to_text, one_line
from hub.core.effects import Effect, Email
from hub.core.markup import markdown_to_matrix
from hub.core.membership import Outgoing, RoomKind, RoomStatus, room_lane
from hub.core.membership_store import MembershipRow, MembershipStore
from hub.delivery.effect_writer import EffectWriter
from hub.delivery.outbox import Outbox, OutboxStatus
from hub.email.payload import EmailPayload
from hub.storage.membership_store import SqlMembershipStore
from hub.storage.models import HubRoom, KeyValue, Member, Pair, RoomMember, hub_room_table, outbox_table

__all__ = [
    "Env",
    "Store",
    "add_room",
    "find_room",
    "leave_by_id",
    "load_env",
    "new_room",
    "queue",
    "queue_all",
    "queue_create",
    "queue_email",
    "queue_fix",
    "queue_mail_payload",
    "queue_pending_invites",
    "queue_room_message",
    "queue_room_op",
    "relane",
    "room_added",
    "room_lane",
    "unwant",
    "users_in",
    "want",
]

log = logging.getLogger(__name__)

Store = MembershipStore[AsyncSession, HubRoom, Member, Pair]

_INSTALL_KEY = "cohorts.install"
_SECRET_KEY = "cohorts.video_secret"
_NEW_ROOMS = "hub.new_rooms"  # Session.info: keys of rooms made in this transaction
_DEFERRED = "hub.deferred_invites"  # Session.info: room key -> users to invite in one row


@dataclass(frozen=True)
class Env:
    """What the operations need besides the transaction: settings, time, the outbox, identity, store."""

    outbox: Outbox
    clock: Clock
    settings: Settings
    install: str  # random id of this hub's database: tags its rooms, so another install's are ignored
    secret: bytes  # keys the video-link HMAC
    # Where lookups and writes go: the database (`load_env`), or a roster import's batch.
    store: Store

    @cached_property
    def writer(self) -> EffectWriter:
        return EffectWriter(self.outbox)

    @property
    def prefix(self) -> str:
        return self.settings.matrix.command_prefix

    @property
    def hub_user(self) -> str:
        return self.settings.matrix.user_id

    def now(self) -> float:
        return self.clock.now().timestamp()


async def _kv_get_or_create(s: AsyncSession, key: str, make: Callable[[], str]) -> str:
    row = await s.get(KeyValue, key)
    if row is not None and row.value:
        return row.value
    # Two processes starting together must agree on one value: insert-if-absent, then read.
    values = {"key": key, "value": make()}
    stmt: Any
    if s.bind is not None and s.bind.dialect.name == "postgresql":
        stmt = postgresql.insert(KeyValue).values(**values).on_conflict_do_nothing()
    else:
        stmt = sqlite.insert(KeyValue).values(**values).on_conflict_do_nothing()
    await s.execute(stmt)
    row = await s.get(KeyValue, key, populate_existing=True)
    assert row is not None
    return row.value


async def load_env(s: AsyncSession, outbox: Outbox, clock: Clock, settings: Settings) -> Env:
    install = await _kv_get_or_create(s, _INSTALL_KEY, lambda: uuid.uuid4().hex)
    secret = await _kv_get_or_create(s, _SECRET_KEY, lambda: secrets.token_hex(32))
    return Env(outbox, clock, settings, install, bytes.fromhex(secret), SqlMembershipStore(outbox))


# -- queueing --------------------------------------------------------------------------------


async def queue(s: AsyncSession, env: Env, out: Outgoing) -> bool:
    """Queue one effect through the store (a batch buffers it; its dedupe is checked at the end)."""
    return await env.store.queue(s, env.writer.row(out))


async def queue_all(s: AsyncSession, env: Env, outs: Iterable[Outgoing]) -> None:
    for out in outs:
        await queue(s, env, out)


async def queue_room_op(s: AsyncSession, env: Env, room: HubRoom, effect: Effect, *, kind: str,
                        dedupe_key: str) -> bool:
    """An effect for a hub room, on its lane (`room_lane`)."""
    return await queue(s, env, Outgoing(effect, kind, dedupe_key, room_lane(room)))


async def queue_room_message(
    s: AsyncSession, env: Env, room: HubRoom, markdown: str, *, kind: str, dedupe_key: str,
) -> bool:
    """An m.notice (Markdown rendered to plain + HTML) to a hub room, existing yet or not."""
    return await queue(s, env, core.room_message(room, markdown, kind=kind, dedupe_key=dedupe_key))


async def queue_email(s: AsyncSession, env: Env, to: str, subject: str, markdown: str,
                      *, kind: str, dedupe_key: str) -> bool:
    """The 48-hour reminder email: built by `email_payload` (in the writer) like all mail.

    The subject carries a cohort's name, which is untrusted text: it is made one line
    here (a name with a line break must neither add a header nor stop the welcome). An
    address the payload refuses (only possible for data that bypassed the entry checks)
    skips this one email with a warning; the change that caused it still happens.
    """
    if not env.settings.email.enabled:
        return False
    _, html = markdown_to_matrix(markdown)
    # The plain part from the HTML, not the Markdown: `**Cohort**` must not show its stars.
    email = Email(to=to, subject=one_line(subject), text=html_to_text(html), html=html)
    try:
        row = env.writer.row(Outgoing(email, kind, dedupe_key))
    except ValueError as e:
        log.warning("%s not queued: %s", kind, e)
        return False
    return await env.store.queue(s, row)


async def queue_mail_payload(s: AsyncSession, env: Env, payload: EmailPayload | Mapping[str, Any], *,
                             kind: str, dedupe_key: str) -> bool:
    """An email `email_payload` built already (`hub.features.person_mail`)."""
    return await env.store.queue(s, env.writer.email_row(payload, kind=kind, dedupe_key=dedupe_key))


async def queue_create(s: AsyncSession, env: Env, room: HubRoom) -> bool:
    return await queue(s, env, core.create_room(room))


async def queue_fix(s: AsyncSession, env: Env, room: HubRoom, *, demote: Sequence[str] = ()) -> None:
    """Bring the room's state (name, power levels, links) in line with the database, at send time."""
    await queue(s, env, core.fix_room(room, uuid.uuid4().hex, demote=demote))


async def leave_by_id(s: AsyncSession, env: Env, room_id: str, farewell: str | None, *, key: str) -> None:
    """A last notice (if any), then leave: for a room the hub no longer records as anything."""
    await queue_all(s, env, core.leave_room_by_id(room_id, farewell, key=key))


# -- rooms -----------------------------------------------------------------------------------


async def find_room(s: AsyncSession, env: Env, key: str) -> HubRoom | None:
    return await env.store.room(s, key)


async def new_room(
    s: AsyncSession, env: Env, *, key: str, kind: RoomKind, cohort_id: int | None = None,
    pair_id: int | None = None, user_id: str | None = None,
) -> HubRoom:
    room = await add_room(s, env, key=key, kind=kind, cohort_id=cohort_id, pair_id=pair_id,
                          user_id=user_id)
    await s.flush()
    await room_added(s, env, room)
    return room


async def add_room(
    s: AsyncSession, env: Env, *, key: str, kind: RoomKind, cohort_id: int | None = None,
    pair_id: int | None = None, user_id: str | None = None,
) -> HubRoom:
    """The room's row, not flushed yet; `room_added` once it is."""
    room = HubRoom(id=await env.store.new_id(s, hub_room_table.name), key=key, kind=kind,
                   cohort_id=cohort_id, pair_id=pair_id, user_id=user_id, status=RoomStatus.PENDING,
                   created_at=env.now())
    s.add(room)
    return room


async def room_added(s: AsyncSession, env: Env, room: HubRoom) -> None:
    env.store.room_added(room)
    await queue_create(s, env, room)
    # Nobody else can see this room until we commit, so its creation will find every
    # member wanted now (create_room invites them): no invite rows needed for them.
    s.info.setdefault(_NEW_ROOMS, set()).add(room.key)


async def relane(s: AsyncSession, room: HubRoom) -> int:
    """Move rows waiting on the room's key lane to its room-id lane, keeping their order."""
    assert room.room_id is not None
    result = await s.execute(
        update(outbox_table)
        .where((outbox_table.c.lane == f"room:{room.key}") & (outbox_table.c.status == OutboxStatus.QUEUED))
        .values(lane=room.room_id)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def users_in(rows: Iterable[RoomMember], *states: str) -> list[str]:
    return sorted(r.user_id for r in rows if r.state in states)


# -- who is wanted in a room -------------------------------------------------------------------


async def _membership(s: AsyncSession, env: Env, room: HubRoom, user_id: str) -> MembershipRow | None:
    return await env.store.membership(s, room, user_id)


async def want(s: AsyncSession, env: Env, room: HubRoom, user_id: str, *, queue_invite: bool = True) -> bool:
    """Make `user_id` a wanted member of `room`; queue the invite if they are not in it already.

    With `queue_invite=False` the caller queues invites itself (`queue_pending_invites`, in bulk).
    """
    rm = await _membership(s, env, room, user_id)
    state = core.want(None if rm is None else rm.state)
    if state is None:
        return False  # pending, invited, joined, banned: nothing to send
    now = env.now()
    if rm is None:
        await env.store.add_membership(s, room, user_id, now)
    else:
        rm.state, rm.updated_at = state, now
    if room.key in s.info.get(_NEW_ROOMS, ()):
        return True  # its creation invites everyone wanted
    if not queue_invite:
        s.info.setdefault(_DEFERRED, {}).setdefault(room.key, set()).add(user_id)
        return True
    await queue(s, env, core.invite(room, [user_id], uuid.uuid4().hex))
    return True


async def queue_pending_invites(s: AsyncSession, env: Env, room: HubRoom) -> int:
    """One invite row for everyone this transaction wanted in `room` with `queue_invite=False`."""
    users = sorted(s.info.get(_DEFERRED, {}).pop(room.key, ()))
    if users:
        await queue(s, env, core.invite(room, users, uuid.uuid4().hex, bulk=True))
    return len(users)


async def unwant(s: AsyncSession, env: Env, room: HubRoom, user_id: str, reason: str) -> bool:
    rm = await _membership(s, env, room, user_id)
    state, outs = core.unwant(room, None if rm is None else rm.state, user_id, reason, uuid.uuid4().hex)
    if rm is None or state is None:
        return False
    rm.state, rm.updated_at = state, env.now()
    await queue_all(s, env, outs)
    return True

