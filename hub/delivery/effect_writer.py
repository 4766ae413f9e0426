"""The one place effects become outbox rows: channel, lane, payload and dedupe key.

Features decide *what* happens (`hub.core.effects`, often via a transition in
`hub.core.membership`); this module decides how it is queued, so every Matrix and
email payload the hub writes is built by `Effect.to_payload()` and every email by
`email_payload` (which refuses what could break a header), whoever queued it.

Lanes: a row for a hub room goes on the lane its transition chose (the room id, or
``room:<key>`` while the room does not exist); a row by room id on that id; an email
on its recipient's normalised address, so mails to one person keep their order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from hub.core.effects import Effect, Email, LeaveRoom, Outgoing, PinPlan, RoomMessage, StateEvent
from hub.core.ports import Queue
from hub.delivery.outbox import EMAIL, MATRIX, Outbox
from hub.email.payload import Attachment, EmailPayload, email_payload, normalize_address

__all__ = ["EffectWriter", "email_row_payload", "enqueue", "enqueue_all", "row_spec"]

Tx = TypeVar("Tx")


def email_row_payload(effect: Email) -> EmailPayload:
    """The effect's payload as `email_payload` builds it; ValueError if it refuses a field."""
    attachments: list[Attachment] | None = None
    if effect.attachments:
        attachments = [Attachment(**a) for a in effect.attachments]  # type: ignore[typeddict-item]
    return email_payload(to=effect.to, subject=effect.subject, text=effect.text, html=effect.html,
                         to_name=effect.to_name, headers=dict(effect.headers) if effect.headers else None,
                         attachments=attachments)


def _default_lane(effect: Effect) -> str:
    if isinstance(effect, Email):
        return normalize_address(effect.to)
    if isinstance(effect, (RoomMessage, StateEvent)):
        if effect.room_id is not None:
            return effect.room_id
        return f"room:{effect.room_key}"
    if isinstance(effect, (LeaveRoom, PinPlan)):
        return effect.room_id
    return f"room:{effect.room_key}"


def row_spec(out: Outgoing, *, not_before: float | None = None) -> dict[str, Any]:
    """What `Outbox.enqueue_many` takes for `out` (a fan-out builds many; ValueError for a bad email)."""
    effect = out.effect
    if isinstance(effect, Email):
        payload: dict[str, Any] = dict(email_row_payload(effect))
        channel, lane = EMAIL, out.lane or normalize_address(payload["to"])
    else:
        payload, channel, lane = effect.to_payload(), MATRIX, out.lane or _default_lane(effect)
    spec: dict[str, Any] = {"channel": channel, "kind": out.kind, "lane": lane, "payload": payload,
                            "dedupe_key": out.dedupe_key}
    if not_before is not None:
        spec["not_before"] = not_before
    return spec


async def enqueue(queue: Queue[Tx], tx: Tx, out: Outgoing, *, not_before: float | None = None) -> bool:
    """Queue one effect on a `Queue` port (a command's outbox); False if its dedupe key was queued before."""
    return await queue.enqueue(tx, **row_spec(out, not_before=not_before))


async def enqueue_all(queue: Queue[Tx], tx: Tx, outs: Iterable[Outgoing]) -> int:
    """Queue effects in one go (a fan-out); how many were new."""
    return await queue.enqueue_many(tx, [row_spec(o) for o in outs])


class EffectWriter:
    """Queues effects on an `Outbox`, in the caller's transaction."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def row(self, out: Outgoing, *, not_before: float | None = None) -> dict[str, Any]:
        """The outbox row for `out` (for `Outbox.insert_new`/`enqueue_many`); ValueError for a bad email."""
        spec = row_spec(out, not_before=not_before)
        return self.outbox.row(channel=spec["channel"], kind=out.kind, lane=spec["lane"],
                               payload=spec["payload"], dedupe_key=out.dedupe_key, not_before=not_before)

    def email_row(self, payload: EmailPayload | Mapping[str, Any], *, kind: str, dedupe_key: str,
                  not_before: float | None = None) -> dict[str, Any]:
        """The row of an email `email_payload` built already (`hub.features.person_mail`'s welcomes)."""
        return self.outbox.row(channel=EMAIL, kind=kind, lane=normalize_address(payload["to"]),
                               payload=dict(payload), dedupe_key=dedupe_key, not_before=not_before)

    async def write(self, s: AsyncSession, out: Outgoing, *, not_before: float | None = None) -> bool:
        """Queue one effect; False if its dedupe key was queued before."""
        inserted = await self.outbox.insert_new(s, [self.row(out, not_before=not_before)])
        self.outbox.notify_after_commit(s)
        return bool(inserted)

    async def write_all(self, s: AsyncSession, outs: Iterable[Outgoing]) -> int:
        """Queue effects in order (rows whose dedupe key exists are skipped); how many were given."""
        rows = [self.row(o) for o in outs]
        if not rows:
            return 0
        await self.outbox.insert_new(s, rows)
        self.outbox.notify_after_commit(s)
        return len(rows)

    async def write_email(self, s: AsyncSession, payload: EmailPayload | Mapping[str, Any], *, kind: str,
                          dedupe_key: str, not_before: float | None = None) -> bool:
        inserted = await self.outbox.insert_new(
            s, [self.email_row(payload, kind=kind, dedupe_key=dedupe_key, not_before=not_before)])
        self.outbox.notify_after_commit(s)
        return bool(inserted)
