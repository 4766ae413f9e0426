"""Cohorts, members, pairs and their rooms in the database, with the outbox rows they cause.

Every function here runs inside the caller's transaction: the change and the
outbox rows it causes (room creation, invites, welcomes, emails) commit
together or not at all. Nothing here talks to the homeserver; the rows are
carried out by the Matrix sender's room ops (hub.features.rooms).

Rows for a room the hub owns name it by its stable key (`room_key`). While
the room does not exist yet they queue on the lane ``room:<key>`` behind its
creation; once it exists they queue on its room id, like every other message
to that room, so messages to one room keep their order.
"""

from __future__ import annotations

import json
import logging
import secrets
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from hub.clock import Clock
from hub.config import Settings
from hub.core.cohorts import (
    MODERATOR_LEVEL,
    RoomSpec,
    Who,
    direct_spec,
    display_name,
    goodbye_text,
    lounge_spec,
    pair_spec,
    pair_welcome,
    room_tag,
    space_spec,
    video_name,
    video_url,
)
from hub.core.content_format import escape_markdown, html_to_text, one_line
from hub.core.markup import echo, markdown_to_matrix
from hub.core.messages import notice_content
from hub.delivery.outbox import EMAIL, MATRIX, Outbox
from hub.email.payload import email_payload, normalize_address
from hub.errors import CommandError
from hub.features import person_mail
from hub.features.membership_batch import NewMembership, current_batch, new_id
from hub.storage.models import (
    Cohort,
    HubRoom,
    KeyValue,
    Member,
    Pair,
    RoomMember,
    cohort_table,
    hub_room_table,
    member_table,
    outbox_table,
    pair_table,
    room_member_table,
)

__all__ = [
    "ACTIVE_PAIR",
    "DM",
    "OPEN",
    "Env",
    "add_member",
    "adopt_direct_room",
    "build_spec",
    "close_pair",
    "cohort_rooms",
    "config_moderators",
    "create_cohort",
    "describe_room",
    "desired_members",
    "drop_direct_room",
    "ensure_direct_room",
    "ensure_pair_room",
    "find_member",
    "find_open_pair",
    "get_cohort",
    "is_participant",
    "load_env",
    "make_pair",
    "member_label",
    "member_markdown",
    "moderators_of",
    "queue_create",
    "queue_email",
    "queue_pending_invites",
    "queue_room_message",
    "queue_room_op",
    "relane",
    "remove_member",
    "require_cohort",
    "room_lane",
    "set_pair_status",
    "sync_config",
    "users_in",
]

log = logging.getLogger(__name__)

OPEN = ("active", "paused")
# The kind of a direct room the person opened and the hub joined (an `is_direct` invite):
# theirs, not the hub's. It is never repaired, tagged or given pair content (module
# "direct rooms" below).
DM = "dm"
ACTIVE_PAIR = "active"
_INSTALL_KEY = "cohorts.install"
_SECRET_KEY = "cohorts.video_secret"
_CONFIG_MODS_KEY = "cohorts.config_moderators"
_NEW_ROOMS = "hub.new_rooms"  # Session.info: keys of rooms made in this transaction
_DEFERRED = "hub.deferred_invites"  # Session.info: room key -> users to invite in one row


@dataclass(frozen=True)
class Env:
    """What the operations need besides the transaction: settings, time, the outbox, identity."""

    outbox: Outbox
    clock: Clock
    settings: Settings
    install: str  # random id of this hub's database: tags its rooms, so another install's are ignored
    secret: bytes  # keys the video-link HMAC

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
    return Env(outbox, clock, settings, install, bytes.fromhex(secret))


# -- rooms and their outbox rows -----------------------------------------------------------


def room_lane(room: HubRoom) -> str:
    """The room id once the room is ready; its key lane (behind its creation) until then."""
    if room.room_id and room.status in ("ready", "closing"):
        return room.room_id
    return f"room:{room.key}"


async def _enqueue(s: AsyncSession, env: Env, *, channel: str, kind: str, lane: str,
                   payload: dict[str, Any], dedupe_key: str) -> bool:
    """`Outbox.enqueue`, or into the open batch's buffer (then True: its dedupe is checked at the end)."""
    b = current_batch(s)
    if b is not None:
        b.queue(env, channel=channel, kind=kind, lane=lane, payload=payload, dedupe_key=dedupe_key)
        return True
    return await env.outbox.enqueue(s, channel=channel, kind=kind, lane=lane, payload=payload,
                                    dedupe_key=dedupe_key)


async def queue_room_op(
    s: AsyncSession, env: Env, room: HubRoom, op: str, payload: dict[str, Any], *,
    kind: str, dedupe_key: str,
) -> bool:
    return await _enqueue(
        s, env, channel=MATRIX, kind=kind, lane=room_lane(room),
        payload={"op": op, "room_key": room.key, **payload}, dedupe_key=dedupe_key,
    )


async def queue_room_message(
    s: AsyncSession, env: Env, room: HubRoom, markdown: str, *, kind: str, dedupe_key: str,
) -> bool:
    """An m.notice (Markdown rendered to plain + HTML) to a hub room, existing yet or not."""
    body, html = markdown_to_matrix(markdown)
    return await queue_room_op(
        s, env, room, "message",
        {"type": "m.room.message", "content": notice_content(body, html)},
        kind=kind, dedupe_key=dedupe_key,
    )


async def queue_email(s: AsyncSession, env: Env, to: str, subject: str, markdown: str,
                      *, kind: str, dedupe_key: str) -> bool:
    """The 48-hour reminder email: built by `email_payload` like all mail.

    The subject carries a cohort's name, which is untrusted text: it is made one line
    here (a name with a line break must neither add a header nor stop the welcome). An
    address the payload refuses (only possible for data that bypassed the entry checks)
    skips this one email with a warning; the change that caused it still happens.
    """
    if not env.settings.email.enabled:
        return False
    _, html = markdown_to_matrix(markdown)
    try:
        # The plain part from the HTML, not the Markdown: `**Cohort**` must not show its stars.
        payload = email_payload(to=to, subject=one_line(subject), text=html_to_text(html), html=html)
    except ValueError as e:
        log.warning("%s not queued: %s", kind, e)
        return False
    return await _enqueue(
        s, env, channel=EMAIL, kind=kind, lane=normalize_address(payload["to"]),
        payload=dict(payload), dedupe_key=dedupe_key,
    )


async def _new_room(
    s: AsyncSession, env: Env, *, key: str, kind: str, cohort_id: int | None = None,
    pair_id: int | None = None, user_id: str | None = None,
) -> HubRoom:
    room = await _add_room(s, env, key=key, kind=kind, cohort_id=cohort_id, pair_id=pair_id,
                           user_id=user_id)
    await s.flush()
    await _room_added(s, env, room)
    return room


async def _add_room(
    s: AsyncSession, env: Env, *, key: str, kind: str, cohort_id: int | None = None,
    pair_id: int | None = None, user_id: str | None = None,
) -> HubRoom:
    """The room's row, not flushed yet; `_room_added` once it is."""
    room = HubRoom(id=await new_id(s, hub_room_table), key=key, kind=kind, cohort_id=cohort_id,
                   pair_id=pair_id, user_id=user_id, status="pending", created_at=env.now())
    s.add(room)
    return room


async def _room_added(s: AsyncSession, env: Env, room: HubRoom) -> None:
    b = current_batch(s)
    if b is not None:
        b.note_room(room, new=True)
    await queue_create(s, env, room)
    # Nobody else can see this room until we commit, so its creation will find every
    # member wanted now (create_room invites them): no invite rows needed for them.
    s.info.setdefault(_NEW_ROOMS, set()).add(room.key)


async def queue_create(s: AsyncSession, env: Env, room: HubRoom) -> bool:
    # First on the room's key lane: whatever else is queued for the room waits for it.
    return await _enqueue(
        s, env, channel=MATRIX, kind="room-create", lane=f"room:{room.key}",
        payload={"op": "create_room", "room_key": room.key, "generation": room.generation},
        dedupe_key=f"create:{room.key}:{room.generation}",
    )


async def _room(s: AsyncSession, key: str) -> HubRoom | None:
    b = current_batch(s)
    if b is not None:
        known, room = b.room(key)
        if known:
            return room
    room = (await s.execute(select(HubRoom).where(hub_room_table.c.key == key))).scalar_one_or_none()
    if b is not None and room is not None:
        b.note_room(room, new=False)  # keys are unique: a room found stays the answer
    return room


async def _room_member(s: AsyncSession, room: HubRoom, user_id: str) -> RoomMember | NewMembership | None:
    b = current_batch(s)
    if b is not None:
        return (await b.room_members(s, room)).get(user_id)
    return (await s.execute(select(RoomMember).where(
        (room_member_table.c.room_pk == room.id) & (room_member_table.c.user_id == user_id)
    ))).scalar_one_or_none()


async def _want(s: AsyncSession, env: Env, room: HubRoom, user_id: str, *, queue: bool = True) -> bool:
    """Make `user_id` a wanted member of `room`; queue the invite if they are not in it already.

    With `queue=False` the caller queues invites itself (`queue_pending_invites`, in bulk).
    """
    rm = await _room_member(s, room, user_id)
    now = env.now()
    if rm is None:
        assert room.id is not None
        b = current_batch(s)
        if b is not None:
            await b.add_membership(s, room, user_id, now)
        else:
            s.add(RoomMember(room_pk=room.id, user_id=user_id, state="pending", updated_at=now))
    elif rm.state in ("removed", "left"):
        rm.state, rm.updated_at = "pending", now
    else:
        return False  # pending, invited, joined, banned: nothing to send
    if room.key in s.info.get(_NEW_ROOMS, ()):
        return True  # its creation invites everyone wanted
    if not queue:
        s.info.setdefault(_DEFERRED, {}).setdefault(room.key, set()).add(user_id)
        return True
    await queue_room_op(s, env, room, "invite", {"users": [user_id]}, kind="room-invite",
                        dedupe_key=f"invite:{room.key}:{user_id}:{uuid.uuid4().hex}")
    return True


async def queue_pending_invites(s: AsyncSession, env: Env, room: HubRoom) -> int:
    """One invite row for everyone this transaction wanted in `room` with `queue=False`."""
    users = sorted(s.info.get(_DEFERRED, {}).pop(room.key, ()))
    if users:
        await queue_room_op(s, env, room, "invite", {"users": users}, kind="room-invite",
                            dedupe_key=f"invite:{room.key}:bulk:{uuid.uuid4().hex}")
    return len(users)


async def _unwant(s: AsyncSession, env: Env, room: HubRoom, user_id: str, reason: str) -> bool:
    rm = await _room_member(s, room, user_id)
    if rm is None or rm.state in ("removed",):
        return False
    was = rm.state
    rm.state, rm.updated_at = "removed", env.now()
    if was in ("pending", "invited", "joined"):
        await queue_room_op(s, env, room, "kick", {"user": user_id, "reason": reason},
                            kind="room-kick", dedupe_key=f"kick:{room.key}:{user_id}:{uuid.uuid4().hex}")
    return True


async def _queue_fix(s: AsyncSession, env: Env, room: HubRoom, *, demote: Sequence[str] = ()) -> None:
    """Bring the room's state (name, power levels, links) in line with the database, at send time."""
    await queue_room_op(s, env, room, "room_fix", {"demote": list(demote)}, kind="room-fix",
                        dedupe_key=f"fix:{room.key}:{uuid.uuid4().hex}")


# -- cohorts --------------------------------------------------------------------------------


async def get_cohort(s: AsyncSession, slug: str) -> Cohort | None:
    return (await s.execute(select(Cohort).where(cohort_table.c.slug == slug))).scalar_one_or_none()


async def require_cohort(s: AsyncSession, env: Env, slug: str) -> Cohort:
    cohort = await get_cohort(s, slug.lower())
    if cohort is None:
        raise CommandError(f"There is no cohort {echo(slug)}. `{env.prefix} cohort list` shows them.")
    return cohort


async def cohort_rooms(s: AsyncSession, cohort_id: int) -> tuple[HubRoom | None, HubRoom | None]:
    return await _room(s, f"space:{cohort_id}"), await _room(s, f"lounge:{cohort_id}")


def config_moderators(env: Env) -> list[str]:
    return list(env.settings.matrix.moderators)


async def create_cohort(
    s: AsyncSession, env: Env, *, slug: str, name: str, timezone: str, start: date | None,
    weeks: int, source: str,
) -> Cohort:
    """A new cohort with its space and lounge queued for creation (the caller checked the slug)."""
    tz = ZoneInfo(timezone)
    first = start or env.clock.now().astimezone(tz).date()
    cohort = Cohort(slug=slug, name=name, timezone=timezone, start_date=first.isoformat(),
                    weeks=weeks, source=source, created_at=env.now())
    s.add(cohort)
    await s.flush()
    assert cohort.id is not None
    # The space first: the lounge names it in its join rule and parent link.
    space = await _new_room(s, env, key=f"space:{cohort.id}", kind="space", cohort_id=cohort.id)
    lounge = await _new_room(s, env, key=f"lounge:{cohort.id}", kind="lounge", cohort_id=cohort.id)
    for room in (space, lounge):
        for mod in config_moderators(env):
            await _want(s, env, room, mod)
    return cohort


# Distinct from the dispatcher's lock class; one key, since config syncs are rare and short.
_CONFIG_LOCK = (0x48554231, 1)


async def sync_config(s: AsyncSession, env: Env) -> list[str]:
    """Apply `[[cohort]]` and `matrix.moderators` from the config; returns what changed, for the log."""
    if s.bind is not None and s.bind.dialect.name == "postgresql":
        # The running hub and a `hub roster import` may both find a configured cohort missing
        # and create it; under READ COMMITTED one would then fail on the unique slug. Waiting
        # here until the other commits means the lookups below see its rows. (On SQLite the
        # write transaction's BEGIN IMMEDIATE already serialises them.)
        await s.execute(text("SELECT pg_advisory_xact_lock(:c, :i)"),
                        {"c": _CONFIG_LOCK[0], "i": _CONFIG_LOCK[1]})
    changes: list[str] = []
    for c in env.settings.cohorts:
        cohort = await get_cohort(s, c.slug)
        if cohort is None:
            await create_cohort(s, env, slug=c.slug, name=c.name, timezone=c.timezone.key,
                                start=c.start, weeks=c.weeks, source="config")
            changes.append(f"cohort {c.slug} created from the config")
            continue
        if cohort.source != "config":
            continue  # made with `cohort create`; the config only adds, never takes over
        renamed = cohort.name != c.name
        cohort.name, cohort.timezone, cohort.weeks = c.name, c.timezone.key, c.weeks
        if c.start is not None:
            cohort.start_date = c.start.isoformat()
        if renamed:
            assert cohort.id is not None
            for room in await cohort_rooms(s, cohort.id):
                if room is not None:
                    await _queue_fix(s, env, room)
            changes.append(f"cohort {c.slug} renamed to {c.name!r}")
    # Moderators: invited to every cohort's space and lounge at power 50; the
    # previous list is remembered so that removing one from the config is acted on too.
    kv = await s.get(KeyValue, _CONFIG_MODS_KEY)
    before = set(json.loads(kv.value)) if kv is not None and kv.value else set()
    now_mods = set(config_moderators(env))
    added, dropped = now_mods - before, before - now_mods
    if added or dropped:
        touched = 0
        for room in (await s.execute(select(HubRoom).where(
            hub_room_table.c.kind.in_(("space", "lounge")) & (hub_room_table.c.status != "closed")
        ))).scalars():
            assert room.cohort_id is not None
            changed = [await _want(s, env, room, mod) for mod in sorted(added)]
            for mod in sorted(dropped):
                if await find_member(s, room.cohort_id, Who(matrix_id=mod)) is None:
                    changed.append(await _unwant(s, env, room, mod, "no longer a moderator"))
            if any(changed) or dropped:
                # Power levels follow at send time (room_fix reads the moderators then).
                await _queue_fix(s, env, room, demote=sorted(dropped))
                touched += 1
        if touched:
            changes.append(f"moderators: added {sorted(added) or 'none'}, "
                           f"removed {sorted(dropped) or 'none'}")
    value = json.dumps(sorted(now_mods))
    if kv is None:
        s.add(KeyValue(key=_CONFIG_MODS_KEY, value=value))
    else:
        kv.value = value
    return changes


# -- members --------------------------------------------------------------------------------


async def find_member(
    s: AsyncSession, cohort_id: int, who: Who, *, active_only: bool = True
) -> Member | None:
    if not (who.matrix_id or who.email):
        return None
    b = current_batch(s)
    if b is not None and b.covers(cohort_id):
        return b.find_member(cohort_id, who, active_only=active_only)
    conds = []
    if who.matrix_id:
        conds.append(member_table.c.matrix_id == who.matrix_id)
    if who.email:
        conds.append(member_table.c.email == who.email.lower())
    q = select(Member).where((member_table.c.cohort_id == cohort_id) & or_(*conds))
    if active_only:
        q = q.where(member_table.c.status == "active")
    rows = (await s.execute(q.order_by(member_table.c.id))).scalars().all()
    return rows[0] if rows else None


def member_label(m: Member) -> str:
    return display_name(m.name, m.matrix_id, m.email)


def member_markdown(m: Member) -> str:
    """The member's name for a Markdown reply: shown as typed, never as formatting or a link."""
    return escape_markdown(member_label(m))


async def is_participant(s: AsyncSession, user_id: str) -> bool:
    row = (await s.execute(select(member_table.c.id).where(
        (member_table.c.matrix_id == user_id) & (member_table.c.status == "active")
    ).limit(1))).first()
    return row is not None


async def add_member(
    s: AsyncSession, env: Env, cohort: Cohort, role: str, who: Who, *, name: str = "",
    email: str | None = None, matrix_id: str | None = None, timezone: str | None = None,
    queue_invites: bool = True,
) -> tuple[Member, str]:
    """Add (or reactivate, or update) a member; returns it and "added" | "updated" | "unchanged".

    `who` finds an existing member; `email`/`matrix_id` complete a person named
    by the other one (a roster row with both). With `queue_invites=False` the
    cohort rooms' invites are left to the caller (`queue_pending_invites`).
    """
    assert cohort.id is not None
    mx = who.matrix_id or matrix_id
    mail = (who.email or email or "").lower() or None
    existing = await find_member(s, cohort.id, Who(matrix_id=mx, email=mail), active_only=False)
    outcome = "unchanged"
    if existing is not None and existing.status == "active" and existing.role != role:
        raise CommandError(
            f"{who} is already a {existing.role} in {cohort.slug}; "
            f"`{env.prefix} remove {cohort.slug} {who}` first to change their role."
        )
    fresh_email = False
    b = current_batch(s)
    if existing is None:
        member = Member(id=await new_id(s, member_table), cohort_id=cohort.id, role=role,
                        name=name.strip()[:200], email=mail, matrix_id=mx, timezone=timezone,
                        status="active", created_at=env.now())
        s.add(member)
        outcome, gained_matrix, fresh_email = "added", mx is not None, True
    else:
        member = existing
        gained_matrix = False
        if member.status != "active":
            member.status, member.removed_at, member.role = "active", None, role
            outcome, gained_matrix, fresh_email = "added", member.matrix_id is not None, True
        for attr, value in (("name", name.strip()[:200] or None), ("timezone", timezone)):
            if value and getattr(member, attr) != value:
                setattr(member, attr, value)
                outcome = "updated" if outcome == "unchanged" else outcome
        if mail and member.email is None:
            member.email, outcome = mail, ("updated" if outcome == "unchanged" else outcome)
        if mx and member.matrix_id is None:
            member.matrix_id, gained_matrix = mx, True
            outcome = "updated" if outcome == "unchanged" else outcome
    if b is None:
        await s.flush()
    else:
        # In a batch the row waits for the next flush: one INSERT for many people instead of a
        # round trip each (its id is the batch's on SQLite, the flush's on PostgreSQL).
        b.note_member(member)
    if gained_matrix and member.matrix_id:
        for room in await cohort_rooms(s, cohort.id):
            if room is not None:
                await _want(s, env, room, member.matrix_id, queue=queue_invites)
                if role == "moderator":
                    await _queue_fix(s, env, room)
        # Someone who only had email may now be reachable in their pair room.
        for pair in await _open_pairs_of(s, member):
            await ensure_pair_room(s, env, pair)
    if fresh_email and member.matrix_id is None and member.email:
        await _queue_welcome(s, env, member, cohort)
    return member, outcome


# -- an email-only participant's welcome ------------------------------------------------------
# One welcome each, from the content library, sent complete: paired in the same transaction
# (a roster import, `!hub add` then `!hub pair` is two), the queued welcome is rebuilt with the
# pairing and video call; paired later, they get a short pairing notice instead, never a
# second welcome. Only these functions queue them (hub.features.person_mail builds them).

_WELCOMES = "hub.welcomes"  # Session.info: member id -> dedupe key of their welcome queued here


async def _queue_welcome(s: AsyncSession, env: Env, member: Member, cohort: Cohort) -> None:
    if not env.settings.email.enabled or member.email is None:
        return
    if member.id is None:
        await s.flush()  # the id names the email's dedupe key
    try:
        payload = await person_mail.welcome_payload(s, env.settings, member, cohort, env.clock.now())
    except ValueError as e:  # an address or name no header can carry (data that bypassed the checks)
        log.warning("welcome email not queued: %s", e)
        return
    # A fresh key each time someone is (re)added: a person added again after leaving is welcomed again.
    key = f"welcome-email:{member.id}:{uuid.uuid4().hex}"
    await _enqueue(s, env, channel=EMAIL, kind="welcome-email", lane=normalize_address(payload["to"]),
                   payload=payload, dedupe_key=key)
    s.info.setdefault(_WELCOMES, {})[member.id] = key


async def _queue_pair_mail(s: AsyncSession, env: Env, me: Member, partner: Member, cohort: Cohort,
                           pair: Pair) -> None:
    """`me` (email-only) was just paired: complete their welcome if it is still in this transaction."""
    if not env.settings.email.enabled or me.email is None:
        return
    now = env.clock.now()
    welcome = s.info.get(_WELCOMES, {}).pop(me.id, None)
    try:
        if welcome is not None:
            payload = await person_mail.welcome_payload(s, env.settings, me, cohort, now, partner=partner,
                                                        video_name=pair.video_name)
        else:
            payload = await person_mail.paired_payload(s, env.settings, me, partner, cohort,
                                                       pair.video_name, now)
    except ValueError as e:
        log.warning("pairing email not queued: %s", e)
        return
    if welcome is not None:
        b = current_batch(s)
        replaced = b.replace(welcome, payload) if b is not None else \
            await person_mail.replace_queued(s, welcome, payload)
        if replaced:
            return
    await _enqueue(s, env, channel=EMAIL, kind="pair-email", lane=normalize_address(payload["to"]),
                   payload=payload, dedupe_key=f"pair-email:{pair.id}:{me.id}")


async def remove_member(s: AsyncSession, env: Env, cohort: Cohort, who: Who) -> tuple[Member, int]:
    """Remove a member: their open pairs close, they leave the space and lounge.

    Returns the member and how many pairs were closed.
    """
    assert cohort.id is not None
    member = await find_member(s, cohort.id, who)
    if member is None:
        raise CommandError(f"{who} is not a member of {cohort.slug}.")
    member.status, member.removed_at = "removed", env.now()
    closed = 0
    for pair in await _open_pairs_of(s, member):
        await close_pair(s, env, pair)
        closed += 1
    if member.matrix_id and member.matrix_id not in config_moderators(env):
        for room in await cohort_rooms(s, cohort.id):
            if room is not None:
                await _unwant(s, env, room, member.matrix_id, f"removed from {cohort.name}")
                if member.role == "moderator":
                    await _queue_fix(s, env, room, demote=[member.matrix_id])
    return member, closed


# -- pairs ------------------------------------------------------------------------------------


async def _open_pairs_of(s: AsyncSession, member: Member) -> list[Pair]:
    b = current_batch(s)
    if b is not None and b.covers(member.cohort_id):
        return [p for p in b.pairs_of(member) if p.status in OPEN]
    q = select(Pair).where(
        ((pair_table.c.mentor_id == member.id) | (pair_table.c.mentee_id == member.id))
        & pair_table.c.status.in_(OPEN)
    ).order_by(pair_table.c.id)
    return list((await s.execute(q)).scalars().all())


async def find_open_pair(s: AsyncSession, env: Env, cohort: Cohort, mentor: Who, mentee: Who) -> Pair:
    assert cohort.id is not None
    a = await find_member(s, cohort.id, mentor)
    b = await find_member(s, cohort.id, mentee)
    if a is None or b is None:
        missing = mentor if a is None else mentee
        raise CommandError(f"{missing} is not a member of {cohort.slug}.")
    pair = (await s.execute(select(Pair).where(
        (pair_table.c.mentor_id == a.id) & (pair_table.c.mentee_id == b.id)
        & pair_table.c.status.in_(OPEN)
    ))).scalar_one_or_none()
    if pair is None:
        raise CommandError(f"{mentor} and {mentee} are not a pair in {cohort.slug}.")
    return pair


async def make_pair(s: AsyncSession, env: Env, cohort: Cohort, mentor: Who, mentee: Who) -> tuple[Pair, bool]:
    """Pair a mentor with a mentee; (pair, False) if exactly this pair exists already."""
    [result] = await make_pairs(s, env, [(cohort, mentor, mentee)])
    if isinstance(result, CommandError):
        raise result
    return result


async def make_pairs(
    s: AsyncSession, env: Env, requests: Sequence[tuple[Cohort, Who, Who]],
) -> list[tuple[Pair, bool] | CommandError]:
    """`make_pair` for each (cohort, mentor, mentee), in order; per request its result or its error.

    The same rows as one `make_pair` after another (a request sees the pairs made by those
    before it), written with a few INSERTs for all of them: the people's rows (if added in
    this batch and not flushed yet), then the pairs, then their rooms, since each needs the
    ids of the one before. The outbox rows come in the same order as one call after another.
    """
    results: list[tuple[Pair, bool] | CommandError | None] = []  # None: a new pair, made below
    plans: list[tuple[int, Cohort, Member, Member]] = []  # (request index, cohort, mentor, mentee)
    planned: dict[int, tuple[int, Member]] = {}  # id(mentee) -> (request index, mentor), this call
    repeats: dict[int, int] = {}  # request index -> the earlier request here that pairs the same two
    for i, (cohort, mentor, mentee) in enumerate(requests):
        try:
            a, b = await _pair_checks(s, env, cohort, mentor, mentee)
            earlier = planned.get(id(b))
            if earlier is not None:
                if earlier[1] is not a:
                    raise _already_paired(env, mentee, earlier[1])
                repeats[i] = earlier[0]
                results.append(None)
                continue
            current = await _open_pair_of_mentee(s, cohort, b)
            if current is not None:
                if current.mentor_id != a.id:
                    raise _already_paired(env, mentee, await s.get(Member, current.mentor_id))
                results.append((current, False))
                continue
        except CommandError as e:
            results.append(e)
            continue
        planned[id(b)] = (i, a)
        plans.append((i, cohort, a, b))
        results.append(None)
    if not plans:
        return _resolved(results, repeats)
    # Rows that new ones refer to are written first: the ORM orders a flush's INSERTs by
    # table only along relationships, which these models do not declare. In a batch this
    # writes the people added so far (one INSERT for all of them) and gives them their ids.
    await s.flush()
    made: list[tuple[Pair, Member, Member, Cohort]] = []
    for i, cohort, a, b in plans:
        assert cohort.id is not None and a.id is not None and b.id is not None
        pair = Pair(id=await new_id(s, pair_table), cohort_id=cohort.id, mentor_id=a.id, mentee_id=b.id,
                    status=ACTIVE_PAIR, video_name=video_name(env.secret, secrets.token_hex(16)),
                    created_at=env.now())
        s.add(pair)
        results[i] = (pair, True)
        made.append((pair, a, b, cohort))
    await s.flush()  # the pairs' ids name their rooms
    cache = current_batch(s)
    for pair, _, _, cohort in made:
        if cache is not None and cache.covers(cohort.id):
            cache.note_pair(pair)
    rooms = await _prepare_pair_rooms(s, env, [pair for pair, *_ in made])
    for (pair, a, b, cohort), room in zip(made, rooms, strict=True):
        if room is not None:
            await _finish_pair_room(s, env, room)
        for me, partner in ((a, b), (b, a)):
            if me.matrix_id is None and me.email:
                await _queue_pair_mail(s, env, me, partner, cohort, pair)
    return _resolved(results, repeats)


def _resolved(
    results: list[tuple[Pair, bool] | CommandError | None], repeats: dict[int, int],
) -> list[tuple[Pair, bool] | CommandError]:
    """A request repeating an earlier one of the same call gets its pair, as already existing."""
    out: list[tuple[Pair, bool] | CommandError] = []
    for i, r in enumerate(results):
        if r is None:
            earlier = out[repeats[i]]
            assert not isinstance(earlier, CommandError)
            r = (earlier[0], False)
        out.append(r)
    return out


async def _pair_checks(
    s: AsyncSession, env: Env, cohort: Cohort, mentor: Who, mentee: Who,
) -> tuple[Member, Member]:
    assert cohort.id is not None
    a = await find_member(s, cohort.id, mentor)
    b = await find_member(s, cohort.id, mentee)
    add = f"`{env.prefix} add {cohort.slug} ROLE WHO` first"
    if a is None:
        raise CommandError(f"{mentor} is not a member of {cohort.slug}; {add}.")
    if b is None:
        raise CommandError(f"{mentee} is not a member of {cohort.slug}; {add}.")
    if a.role != "mentor":
        raise CommandError(f"{mentor} is a {a.role} in {cohort.slug}, not a mentor.")
    if b.role != "mentee":
        raise CommandError(f"{mentee} is a {b.role} in {cohort.slug}, not a mentee.")
    return a, b


def _already_paired(env: Env, mentee: Who, other: Member | None) -> CommandError:
    return CommandError(
        f"{mentee} is already paired with {member_markdown(other) if other else 'another mentor'}; "
        f"`{env.prefix} unpair` them first."
    )


async def _open_pair_of_mentee(s: AsyncSession, cohort: Cohort, mentee: Member) -> Pair | None:
    cache = current_batch(s)
    if cache is not None and cache.covers(cohort.id):
        return next((p for p in cache.pairs_of(mentee)
                     if p.mentee_id == mentee.id and p.status in OPEN), None)
    if mentee.id is None:
        await s.flush()
    return (await s.execute(select(Pair).where(
        (pair_table.c.mentee_id == mentee.id) & pair_table.c.status.in_(OPEN)
    ))).scalar_one_or_none()


async def _pair_people(s: AsyncSession, pair: Pair) -> tuple[Member, Member, Cohort]:
    mentor = await s.get(Member, pair.mentor_id)
    mentee = await s.get(Member, pair.mentee_id)
    cohort = await s.get(Cohort, pair.cohort_id)
    assert mentor is not None and mentee is not None and cohort is not None
    return mentor, mentee, cohort


@dataclass(frozen=True)
class _PairRoom:
    pair: Pair
    room: HubRoom
    new: bool
    mentor: Member
    mentee: Member
    cohort: Cohort


async def ensure_pair_room(s: AsyncSession, env: Env, pair: Pair) -> HubRoom | None:
    """The pair's room (queued for creation if new), with its members wanted and its welcome queued.

    No room for a pair where neither person has a Matrix id: they meet by the
    emailed link. The room appears as soon as one of them gets a Matrix id.
    """
    [prepared] = await _prepare_pair_rooms(s, env, [pair])
    if prepared is None:
        return None
    await _finish_pair_room(s, env, prepared)
    return prepared.room


async def _prepare_pair_rooms(s: AsyncSession, env: Env, pairs: Sequence[Pair]) -> list[_PairRoom | None]:
    """Each pair's room, found or added (one INSERT for all new ones); None where it gets none."""
    out: list[_PairRoom | None] = []
    for pair in pairs:
        mentor, mentee, cohort = await _pair_people(s, pair)
        if not (mentor.matrix_id or mentee.matrix_id) or pair.status not in OPEN:
            out.append(None)
            continue
        key = f"pair:{pair.id}"
        room = await _room(s, key)
        new = room is None
        if room is None:
            room = await _add_room(s, env, key=key, kind="pair", cohort_id=cohort.id, pair_id=pair.id)
        out.append(_PairRoom(pair, room, new, mentor, mentee, cohort))
    if any(p is not None and p.new for p in out):
        await s.flush()
    return out


async def _finish_pair_room(s: AsyncSession, env: Env, p: _PairRoom) -> None:
    """Queue a prepared room's creation (if new), its members' invites and the welcome, in that order."""
    if p.new:
        await _room_added(s, env, p.room)
    for user in (m.matrix_id for m in (p.mentor, p.mentee)):
        if user:
            await _want(s, env, p.room, user)
    link = video_url(env.settings.video.base_url, p.pair.video_name)
    text = pair_welcome(mentor=member_label(p.mentor), mentee=member_label(p.mentee), cohort=p.cohort.name,
                        link=link, prefix=env.prefix)
    await queue_room_message(s, env, p.room, text, kind="pair-welcome",
                             dedupe_key=f"welcome:{p.room.key}:{p.room.generation}")


async def close_pair(s: AsyncSession, env: Env, pair: Pair) -> None:
    """Close a pair: goodbye in its room, then the hub leaves; the people keep the history."""
    pair.status, pair.closed_at = "closed", env.now()
    room = await _room(s, f"pair:{pair.id}")
    if room is None or room.status in ("closing", "closed"):
        return
    _, _, cohort = await _pair_people(s, pair)
    if room.status == "pending" and room.room_id is None:
        # Not created yet: make sure it never is (its create row finds it closed).
        room.status = "closed"
        return
    await queue_room_message(s, env, room, goodbye_text(cohort.name), kind="pair-goodbye",
                             dedupe_key=f"goodbye:{room.key}:{room.generation}")
    await queue_room_op(s, env, room, "leave", {}, kind="room-leave",
                        dedupe_key=f"leave:{room.key}:{room.generation}")
    room.status = "closing"


async def set_pair_status(s: AsyncSession, env: Env, pair: Pair, status: str) -> bool:
    """Pause or resume scheduled content for a pair; False if it already was so."""
    if pair.status == status:
        return False
    pair.status = status
    pair.paused_at = env.now() if status == "paused" else None
    return True


# -- direct rooms -------------------------------------------------------------------------------


# A person's direct room is one row, key `direct:<user>`, whoever made the room: the hub
# (kind "direct", created when first needed) or the person (kind `DM`, adopted when they
# open a direct chat with the hub). The newest one the person opened wins, since they
# chose it: the hub says goodbye in the one it replaces and leaves it. An adopted room
# the hub gives up (someone else joined, the person left, the hub was removed) is closed,
# and the next private message makes a room of the hub's own again.


async def ensure_direct_room(s: AsyncSession, env: Env, user_id: str) -> HubRoom:
    """The person's direct room: the one they opened, else the hub's own (queued the first time).

    Messages for it may be queued right away with `queue_room_message`: they
    wait for the room.
    """
    key = f"direct:{user_id}"
    room = await _room(s, key)
    if room is None:
        room = await _new_room(s, env, key=key, kind="direct", user_id=user_id)
        await _want(s, env, room, user_id)
    elif room.kind == DM and room.status == "closed":
        # The chat they opened was given up: the hub makes one of its own (a new generation).
        room.kind, room.room_id, room.status, room.ready_at = "direct", None, "pending", None
        room.generation += 1
        rows = await s.execute(select(RoomMember).where(room_member_table.c.room_pk == room.id))
        for rm in rows.scalars():
            rm.state, rm.invited_at, rm.joined_at, rm.updated_at = "pending", None, None, env.now()
        await _room_added(s, env, room)
        await _want(s, env, room, user_id)
    return room


async def adopt_direct_room(s: AsyncSession, env: Env, user_id: str, room_id: str) -> tuple[bool, str | None]:
    """Record `room_id`, a direct chat `user_id` opened with the hub, as their direct room.

    The caller has checked that it is one (the person made it, the two of them only).
    Returns (adopted, the room id it replaces, which the caller says goodbye in and
    leaves); not adopted when the room is already recorded as something else.
    """
    key = f"direct:{user_id}"
    taken = (await s.execute(select(hub_room_table.c.key).where(hub_room_table.c.room_id == room_id))
             ).scalar_one_or_none()
    if taken is not None and taken != key:
        return False, None
    room = await _room(s, key)
    now = env.now()
    old: str | None = None
    if room is None:
        room = HubRoom(id=await new_id(s, hub_room_table), key=key, kind=DM, user_id=user_id,
                       room_id=room_id, status="ready", created_at=now, ready_at=now)
        s.add(room)
        await s.flush()
    else:
        if room.room_id == room_id and room.status == "ready" and room.kind == DM:
            return True, None
        if room.room_id and room.room_id != room_id and room.status != "closed":
            old = room.room_id
        # A new generation: a creation still queued for the hub's own room is superseded.
        room.generation += 1
        room.kind, room.room_id, room.status, room.ready_at, room.problem = DM, room_id, "ready", now, None
    rm = (await s.execute(select(RoomMember).where(
        (room_member_table.c.room_pk == room.id) & (room_member_table.c.user_id == user_id)
    ))).scalar_one_or_none()
    if rm is None:
        assert room.id is not None
        s.add(RoomMember(room_pk=room.id, user_id=user_id, state="joined", joined_at=now, updated_at=now))
    else:
        rm.state, rm.joined_at, rm.updated_at = "joined", now, now
    # Messages waiting for a room of the hub's own that was never made go here instead.
    await relane(s, room)
    return True, old


async def drop_direct_room(s: AsyncSession, env: Env, room: HubRoom, farewell: str | None) -> None:
    """Stop using an adopted direct room: a last word (if any), then the hub leaves it.

    Both go by room id: the row is closed at once, so nothing private is sent there
    again and commands there stop being direct-room commands.
    """
    assert room.kind == DM and room.room_id is not None
    room.status = "closed"
    await leave_by_id(s, env, room.room_id, farewell, key=f"{room.key}:{room.generation}")


async def leave_by_id(s: AsyncSession, env: Env, room_id: str, farewell: str | None, *, key: str) -> None:
    """A last notice (if any), then leave: for a room the hub no longer records as anything."""
    if farewell:
        body, html = markdown_to_matrix(farewell)
        await _enqueue(s, env, channel=MATRIX, kind="room-farewell", lane=room_id,
                       payload={"op": "message", "room_id": room_id, "type": "m.room.message",
                                "content": notice_content(body, html)},
                       dedupe_key=f"farewell:{key}:{room_id}")
    await _enqueue(s, env, channel=MATRIX, kind="room-leave", lane=room_id,
                   payload={"op": "leave_room", "room_id": room_id}, dedupe_key=f"leave:{key}:{room_id}")


async def describe_room(s: AsyncSession, room_id: str) -> str:
    """A room as moderators know it ("the Spring 2027 lounge", "a pair room"), for notices."""
    row = (await s.execute(select(hub_room_table.c.kind, cohort_table.c.name)
                           .select_from(hub_room_table)
                           .outerjoin(cohort_table, cohort_table.c.id == hub_room_table.c.cohort_id)
                           .where(hub_room_table.c.room_id == room_id))).first()
    if row is None:
        return "a room the hub was invited to"
    kind, cohort = row
    if cohort and kind in ("lounge", "space"):
        return f"the {escape_markdown(one_line(cohort))} {kind}"
    return {"pair": "a pair room", "direct": "a direct room", DM: "a direct room"}.get(kind, "a room")


# -- what a room should be ------------------------------------------------------------------------


async def moderators_of(s: AsyncSession, env: Env, cohort_id: int) -> dict[str, int]:
    mods = {m: MODERATOR_LEVEL for m in config_moderators(env)}
    rows = (await s.execute(select(member_table.c.matrix_id).where(
        (member_table.c.cohort_id == cohort_id) & (member_table.c.role == "moderator")
        & (member_table.c.status == "active") & member_table.c.matrix_id.is_not(None)
    ))).scalars().all()
    mods.update({m: MODERATOR_LEVEL for m in rows if m})
    mods.pop(env.hub_user, None)
    return mods


async def desired_members(s: AsyncSession, env: Env, room: HubRoom) -> set[str]:
    """Who should be in the room (besides the hub) according to the database."""
    wanted: set[str] = set()
    if room.kind in ("space", "lounge") and room.cohort_id is not None:
        rows = (await s.execute(select(member_table.c.matrix_id).where(
            (member_table.c.cohort_id == room.cohort_id) & (member_table.c.status == "active")
            & member_table.c.matrix_id.is_not(None)
        ))).scalars().all()
        wanted = {r for r in rows if r} | set(config_moderators(env))
    elif room.kind == "pair" and room.pair_id is not None:
        pair = await s.get(Pair, room.pair_id)
        if pair is not None and pair.status in OPEN:
            mentor, mentee, _ = await _pair_people(s, pair)
            wanted = {m.matrix_id for m in (mentor, mentee) if m.matrix_id}
    elif room.kind == "direct" and room.user_id:
        wanted = {room.user_id}
    wanted.discard(env.hub_user)
    return wanted


async def build_spec(s: AsyncSession, env: Env, room: HubRoom) -> tuple[RoomSpec, dict[str, list[str]]]:
    """The room as the database says it should be, and (for a space) its children with their via."""
    tag = room_tag(env.install, room.key, room.generation)
    server = env.hub_user.split(":", 1)[1]
    children: dict[str, list[str]] = {}
    if room.kind in ("space", "lounge"):
        assert room.cohort_id is not None
        cohort = await s.get(Cohort, room.cohort_id)
        assert cohort is not None
        mods = await moderators_of(s, env, room.cohort_id)
        space, lounge = await cohort_rooms(s, room.cohort_id)
        if room.kind == "space":
            if lounge is not None and lounge.room_id and lounge.status != "closed":
                children[lounge.room_id] = [server]
            return space_spec(room.key, cohort.name, mods, tag), children
        parent = space.room_id if space is not None else None
        return lounge_spec(room.key, cohort.name, parent, mods, tag, env.prefix), children
    if room.kind == "pair":
        assert room.pair_id is not None
        pair = await s.get(Pair, room.pair_id)
        assert pair is not None
        mentor, mentee, _ = await _pair_people(s, pair)
        link = video_url(env.settings.video.base_url, pair.video_name)
        return pair_spec(room.key, member_label(mentor), member_label(mentee), link,
                         encrypted=env.settings.matrix.encrypt_pair_rooms, tag=tag,
                         prefix=env.prefix), children
    return direct_spec(room.key, tag), children


async def relane(s: AsyncSession, room: HubRoom) -> int:
    """Move rows waiting on the room's key lane to its room-id lane, keeping their order."""
    assert room.room_id is not None
    result = await s.execute(
        update(outbox_table)
        .where((outbox_table.c.lane == f"room:{room.key}") & (outbox_table.c.status == "queued"))
        .values(lane=room.room_id)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def users_in(rows: Iterable[RoomMember], *states: str) -> list[str]:
    return sorted(r.user_id for r in rows if r.state in states)
