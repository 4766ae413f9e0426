"""Prompts that take answers by reaction: which they are, their options, and recording them once sent.

PRODUCT.md "Answering without typing": the "did you meet, and how?" check-in
in pair rooms and the private 1-5 check-in in direct rooms offer their answers
as reactions the hub adds itself, so one tap in any client answers.

A prompt's event id exists only once the homeserver has taken it, so the
Matrix sender calls `PromptRecorder.sent` right after: it records the prompt
(room, whom it asks, kind, week) and queues the hub's own option reactions as
outbox rows on the prompt's lane, behind it, with stable keys. A crash before
that commits makes the dispatcher send the prompt again with its transaction
id; the homeserver answers with the same event id and this runs again.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.clock import Clock
from hub.core.effects import Outgoing, RoomMessage
from hub.delivery.dispatcher import Claimed
from hub.delivery.effect_writer import enqueue_all
from hub.delivery.outbox import Outbox
from hub.features.participants import CohortView, program_week_of
from hub.storage.db import Database
from hub.storage.models import Cohort, HubRoom, Prompt, hub_room_table, outbox_table
from hub.storage.models import prompt_answer_table as A
from hub.storage.models import prompt_table as P

__all__ = [
    "CHECKIN",
    "COMMANDS",
    "MET",
    "OPEN_FOR",
    "OPTIONS",
    "PROMPT_KINDS",
    "PromptRecorder",
    "forget_closed",
    "option_for_key",
    "option_for_text",
]

log = logging.getLogger(__name__)

MET = "met"  # "did you meet, and how?" in a pair room; answers `!hub met`
CHECKIN = "checkin"  # the private 1-5 check-in in a direct room; answers `!hub checkin`
COMMANDS = {MET: "met", CHECKIN: "checkin"}  # the command each kind of prompt stands for
# In the order the hub adds them (and clients show them): reaction key -> the command's argument.
OPTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    MET: (("🎥", "video"), ("📞", "voice"), ("💬", "text"), ("⏳", "notyet")),
    CHECKIN: tuple((f"{n}\ufe0f\u20e3", str(n)) for n in range(1, 6)),
}
# The outbox kinds of the prompts (hub.features.program) -> the kind of answer they take.
PROMPT_KINDS = {"program-checkin": MET, "program-private-checkin": CHECKIN}
# A prompt takes answers this long; later reactions change nothing (a newer prompt has come by
# then), and its rows are deleted: who answered a private check-in what is not kept for good.
OPEN_FOR = timedelta(days=14)
_OPTION_KIND = "prompt-option"
# A scheduled item's key carries its week ("checkin:spring:w2:pair:17", hub.core.calendar);
# one sent with `!hub send` does not ("checkin:spring:send:$ev:pair:17").
_WEEK_IN_KEY = re.compile(r"^[a-z0-9-]+:[^:]+:w(\d+):")
_WORDS = {"not yet": "notyet", "not-yet": "notyet"}


def _bare(key: str) -> str:
    """A key without variation selectors or spaces: clients differ in sending "1️⃣" or "1⃣"."""
    return "".join(ch for ch in unicodedata.normalize("NFC", key)
                   if ch not in "\ufe0e\ufe0f" and not ch.isspace())


def option_for_key(kind: str, key: str) -> str | None:
    """The option a reaction key stands for on a prompt of `kind`; None for any other key."""
    bare = _bare(key)
    return next((option for emoji, option in OPTIONS.get(kind, ()) if _bare(emoji) == bare), None)


def option_for_text(kind: str, text: str) -> str | None:
    """The option a reply holding just that (`video`, `not yet`, `4`, or the emoji) stands for."""
    word = " ".join(text.split()).strip(" .!").lower()
    word = _WORDS.get(word, word)
    if any(option == word for _, option in OPTIONS.get(kind, ())):
        return word
    return option_for_key(kind, word) if word else None


def week_in_key(dedupe_key: str | None) -> int | None:
    """The program week a scheduled item's outbox key names; None for one sent by command."""
    found = _WEEK_IN_KEY.match(dedupe_key or "")
    return int(found.group(1)) if found else None


def _week_of(payload: dict[str, Any], dedupe_key: str | None) -> int | None:
    """The week a prompt asks about: its payload says (hub.features.program_rows.prompt_row), or its key."""
    about = payload.get("prompt")
    week = about.get("week") if isinstance(about, dict) else None
    return week if isinstance(week, int) and week > 0 else week_in_key(dedupe_key)


class PromptRecorder:
    """The Matrix sender's hook for sent messages: records prompts and queues their options."""

    def __init__(self, db: Database, outbox: Outbox, clock: Clock) -> None:
        self.db = db
        self.outbox = outbox
        self.clock = clock

    async def sent(self, row: Claimed, payload: dict[str, Any], event_id: str) -> None:
        kind = PROMPT_KINDS.get(row.kind)
        if kind is None:
            return
        room_id = str(payload.get("room_id", ""))
        async with self.db.transaction() as s:
            if await s.get(Prompt, event_id) is not None:
                return  # a resend after a crash: recorded, options queued
            room = (await s.execute(select(HubRoom).where(hub_room_table.c.room_id == room_id))
                    ).scalar_one_or_none()
            if room is None:
                log.warning("a %s prompt was sent to %s, which is not a hub room; it takes no answers",
                            kind, room_id)
                return
            key = (await s.execute(select(outbox_table.c.dedupe_key).where(outbox_table.c.seq == row.seq))
                   ).scalar_one_or_none()
            cohort = await self._cohort(s, room, key)
            now = self.clock.now()
            week = _week_of(payload, key)
            if week is None:
                # Queued without its week: the week it is sent in, as `!hub met` would say.
                week = program_week_of(CohortView(cohort, None), now) if cohort is not None else 0
            s.add(Prompt(event_id=event_id, room_id=room_id, kind=kind,
                         cohort_id=cohort.id if cohort is not None else None,
                         pair_id=room.pair_id if kind == MET else None,
                         user_id=room.user_id if kind == CHECKIN else None,
                         week=week, sent_at=now.timestamp()))
            # In order, on the prompt's lane: behind it, and shown in this order by clients. In
            # clear even in an encrypted room (nio's room_send, like Element Web): an encrypted
            # event in a two-person room notifies (.m.rule.encrypted_room_one_to_one), five
            # times for the private check-in, and the options say nothing about anyone.
            await enqueue_all(self.outbox, s, [
                Outgoing(RoomMessage({"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id,
                                                       "key": emoji}}, room_id=room_id, type="m.reaction"),
                         _OPTION_KIND, f"{_OPTION_KIND}:{event_id}:{i}", row.lane)
                for i, (emoji, _) in enumerate(OPTIONS[kind])])
            await forget_closed(s, now.timestamp() - OPEN_FOR.total_seconds())

    @staticmethod
    async def _cohort(s: AsyncSession, room: HubRoom, key: str | None) -> Cohort | None:
        if room.cohort_id is not None:
            return await s.get(Cohort, room.cohort_id)
        # A direct room belongs to a person, not a cohort: the item's key names it.
        slug = (key or "").split(":")[1] if (key or "").count(":") >= 2 else ""
        return (await s.execute(select(Cohort).where(Cohort.slug == slug))  # type: ignore[arg-type]
                ).scalar_one_or_none()


async def forget_closed(s: AsyncSession, before: float) -> None:
    """Delete prompts no longer taking answers, and who answered them what."""
    old = select(P.c.event_id).where(P.c.sent_at < before)
    await s.execute(delete(A).where(A.c.prompt_event_id.in_(old)))
    await s.execute(delete(P).where(P.c.sent_at < before))
