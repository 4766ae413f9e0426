"""Answers without typing: a reaction to a prompt, or a reply holding just the option, is its command.

A reaction 🎥 to the "did you meet?" prompt, by a person that prompt asks, runs
`!hub met video` through the same `CommandRunner` as a typed command: the same
record, the same reply (a Matrix reply to the prompt), handled once per event
id, under the same rate limit. While it runs, `answering()` tells the command
which prompt it answers, so it records the prompt's week (not the week of the
tap) and notes the answer as the person's current one (`remember`): a later
different reaction replaces it, and redacting the reaction withdraws it.

Anything else is ignored without a word and without a write: a reaction to
another message, an unknown key, a person the prompt is not for, the hub's own
reactions, a prompt older than `prompts.OPEN_FOR`.

Only the sync handler calls in here, with what the sync showed: no network
work, and a transaction per answer like a command's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from hub.clock import Clock
from hub.core.effects import Outgoing, RoomMessage
from hub.core.homeserver import AnswerEvent, IncomingMessage
from hub.core.limits import Verdict
from hub.delivery.effect_writer import enqueue
from hub.delivery.outbox import Outbox
from hub.features.prompts import (
    CHECKIN,
    COMMANDS,
    MET,
    OPEN_FOR,
    OPTIONS,
    forget_closed,
    option_for_key,
    option_for_text,
)
from hub.inbound import CommandRunner
from hub.storage.db import Database
from hub.storage.models import (
    CheckinAnswer,
    HandledEvent,
    Member,
    Pair,
    Prompt,
    PromptAnswer,
    checkin_answer_table,
    private_checkin_table,
)
from hub.storage.models import prompt_answer_table as A

__all__ = ["Answering", "Answers", "answering", "drop_score", "remember"]

log = logging.getLogger(__name__)
_PRUNE_EVERY = 6 * 3600.0  # seconds between deletions of closed prompts and their answers


@dataclass(frozen=True)
class Answering:
    """The prompt a reaction or reply answers, while the command it stands for runs."""

    prompt_event_id: str
    kind: str
    cohort_id: int | None
    week: int
    answer_event_id: str
    sender: str
    option: str


# Set by `Answers` around the command it runs for a reaction; read by the met and checkin
# commands. A context variable, not an argument: the command runs inside CommandRunner, which
# knows nothing of prompts, and each sync handler call (one task) sees only its own answer.
_ANSWERING: ContextVar[Answering | None] = ContextVar("answering", default=None)


def answering() -> Answering | None:
    """The prompt the running command answers by reaction or reply; None for a typed command."""
    return _ANSWERING.get()


async def remember(s: Any, answer: Answering, at: float) -> str | None:
    """Note `answer` as its sender's current answer to the prompt; returns the option it replaces."""
    current = (await s.execute(select(PromptAnswer).where(
        (A.c.prompt_event_id == answer.prompt_event_id) & (A.c.sender == answer.sender)
    ))).scalar_one_or_none()
    if current is None:
        s.add(PromptAnswer(prompt_event_id=answer.prompt_event_id, sender=answer.sender,
                           answer_event_id=answer.answer_event_id, option=answer.option, at=at))
        return None
    replaced = str(current.option)
    current.answer_event_id, current.option, current.at = answer.answer_event_id, answer.option, at
    return replaced


async def drop_score(s: Any, cohort_id: int | None, week: int, score: int) -> None:
    """Take back one private score. They are kept without the person, so any row alike is the one."""
    T = private_checkin_table
    cohort = T.c.cohort_id.is_(None) if cohort_id is None else T.c.cohort_id == cohort_id
    row = (await s.execute(select(T.c.id).where(cohort & (T.c.week == week) & (T.c.score == score))
                           .limit(1))).scalar_one_or_none()
    if row is not None:
        await s.execute(delete(T).where(T.c.id == row))


class Answers:
    """Turns reactions, replies and redactions seen by the sync into answers to prompts."""

    def __init__(self, db: Database, outbox: Outbox, clock: Clock, runner: CommandRunner,
                 own_user_id: str) -> None:
        self.db = db
        self.outbox = outbox
        self.clock = clock
        self.runner = runner
        self.own_user_id = own_user_id
        self._next_prune = 0.0

    async def on_sync(self, events: Iterable[AnswerEvent]) -> None:
        """One sync's reactions, replies and redactions by others (`hub.matrix.events.answer_events`)."""
        if self.clock.monotonic() >= self._next_prune:
            # Who answered what goes with the prompt once it takes no more answers, even when
            # no later prompt comes (the end of a program) to prune it as it is recorded.
            self._next_prune = self.clock.monotonic() + _PRUNE_EVERY
            async with self.db.transaction() as s:
                await forget_closed(s, self.clock.now().timestamp() - OPEN_FOR.total_seconds())
        for event in events:
            await self.handle(event)

    async def on_event(self, event: AnswerEvent) -> None:
        """One event decrypted late (its room key came after it)."""
        if event.sender != self.own_user_id:
            await self.handle(event)

    async def handle(self, event: AnswerEvent) -> None:
        try:
            if event.kind == "redaction":
                await self._withdraw(event)
            else:
                await self._answer(event)
        except SQLAlchemyError:
            raise  # the database is away: like a command, the batch is handled again after it
        except Exception:
            # A bug here must not stop the sync (and every command with it); nobody gets a traceback.
            log.exception("handling %s %s from %s failed", event.kind, event.event_id, event.sender)

    # -- an answer ---------------------------------------------------------------------------------

    async def _answer(self, ev: AnswerEvent) -> None:
        async with self.db.session() as s:  # read only: what is ignored costs no write
            prompt = await s.get(Prompt, ev.target)
            if prompt is None or prompt.room_id != ev.room_id:
                return
            if prompt.sent_at < self.clock.now().timestamp() - OPEN_FOR.total_seconds():
                return
            option = (option_for_key if ev.kind == "reaction" else option_for_text)(prompt.kind, ev.key)
            if option is None or ev.sender not in await self._asked(s, prompt):
                return
        answer = Answering(prompt_event_id=prompt.event_id, kind=prompt.kind, cohort_id=prompt.cohort_id,
                           week=prompt.week, answer_event_id=ev.event_id, sender=ev.sender, option=option)
        command = IncomingMessage(
            room_id=ev.room_id, event_id=ev.event_id, sender=ev.sender,
            body=f"{self.runner.registry.prefix} {COMMANDS[prompt.kind]} {option}", msgtype="m.text",
            thread_root=None, origin_server_ts=ev.origin_server_ts, encrypted=ev.encrypted,
            # A reaction is acknowledged under the prompt (a reply to a reaction shows as a
            # reply to nothing in most clients); a typed reply, like a command, under itself.
            reply_to=prompt.event_id if ev.kind == "reaction" else None)
        token = _ANSWERING.set(answer)
        try:
            await self.runner.handle(command)
        finally:
            _ANSWERING.reset(token)

    @staticmethod
    async def _asked(s: Any, prompt: Prompt) -> set[str]:
        """Who the prompt is for: the pair of an open pair, or the direct room's person."""
        if prompt.kind == CHECKIN:
            return {prompt.user_id} if prompt.user_id else set()
        pair = await s.get(Pair, prompt.pair_id) if prompt.pair_id is not None else None
        if pair is None or pair.status == "closed":
            return set()
        people = [await s.get(Member, pair.mentor_id), await s.get(Member, pair.mentee_id)]
        return {m.matrix_id for m in people if m is not None and m.matrix_id and m.status == "active"}

    # -- a withdrawal ------------------------------------------------------------------------------

    async def _withdraw(self, ev: AnswerEvent) -> None:
        async with self.db.session() as s:
            mine = (await s.execute(select(PromptAnswer).where(A.c.answer_event_id == ev.target))
                    ).scalar_one_or_none()
        if mine is None or mine.sender != ev.sender:
            return  # not a current answer, or someone else's (a moderator tidying up)
        if self.runner.rate_limiter.check(ev.sender) is Verdict.DROP:
            return
        try:
            async with self.db.transaction() as s:
                if await s.get(HandledEvent, ev.event_id) is not None:
                    return
                s.add(HandledEvent(event_id=ev.event_id, room_id=ev.room_id,
                                   handled_at=self.clock.now().timestamp()))
                mine = (await s.execute(select(PromptAnswer).where(A.c.answer_event_id == ev.target))
                        ).scalar_one_or_none()
                prompt = await s.get(Prompt, mine.prompt_event_id) if mine is not None else None
                if mine is None or prompt is None:
                    return
                text = await _take_back(s, prompt, mine, self.runner.registry.prefix)
                await s.delete(mine)
                reply = RoomMessage.markdown(text, room_id=ev.room_id, reply_to=prompt.event_id)
                await enqueue(self.outbox, s, Outgoing(reply, "reply", f"reply:{ev.event_id}"))
        except IntegrityError:
            return  # another process handled the same redaction first


async def _take_back(s: Any, prompt: Prompt, mine: PromptAnswer, prefix: str) -> str:
    """Undo what the answer recorded, if it is still what counts; the reply that says so."""
    emoji = next((e for e, option in OPTIONS[prompt.kind] if option == mine.option), mine.option)
    if prompt.kind == MET:
        current = (await s.execute(select(CheckinAnswer).where(
            (checkin_answer_table.c.pair_id == prompt.pair_id) & (checkin_answer_table.c.week == prompt.week)
        ))).scalar_one_or_none()
        if current is None or current.mode != mine.option or current.answered_at != mine.at:
            return (f"Noted: you took back your {emoji}. This check-in's answer stays as it was given "
                    "after it.")
        await s.delete(current)
        return (f"Withdrawn: your {emoji} answer to this check-in no longer counts. Tap a reaction "
                f"again (or send `{prefix} met video|voice|text|notyet`) when you have an answer.")
    assert prompt.kind == CHECKIN
    await drop_score(s, prompt.cohort_id, prompt.week, int(mine.option))
    return ("Withdrawn: your private check-in no longer counts. Tap a number again whenever you like; "
            "nobody else sees it either way.")
