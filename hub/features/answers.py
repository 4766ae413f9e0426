"""Recording one-click answers (`hub.web_answer`) on the real tables, as the commands record them.

`SqlAnswerStore.record` finds who the link is for (the subscriber handle in
it), checks that the link still applies (the person is active, the pair it
names is still open, the cohort is theirs) and then calls the same record
function as the command: `record_met` for `!hub met`, `record_private_checkin`
for `!hub checkin`. A link that no longer applies changes nothing.

A private check-in is stored without the person (PRODUCT.md), so a second
press of the same week's buttons could not be told from a second person's
answer. The first answer by link leaves a marker (a keyed hash of the link's
person, cohort and week, no score) and later presses are "already answered".
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.core.answers import CHECKIN, MET, Answer, cohort_scope, pair_scope
from hub.core.membership import OPEN_PAIR, MemberStatus
from hub.features.pair_commands import record_met
from hub.features.person_commands import LOW_SCORE, record_private_checkin
from hub.storage.db import Database
from hub.storage.models import Cohort, KeyValue, Member, Pair, Subscriber, member_table, pair_table
from hub.web_answer import Recorded

__all__ = ["SqlAnswerStore", "met_thanks"]



def met_thanks(how: str) -> str:
    """What `!hub met HOW` answers, less anything one can only do in a pair room."""
    if how == "video":
        return ("Thanks, noted: you met on video. That's the best way to build a connection through a "
                "screen. Keep it up!")
    if how == "notyet":
        return ("Thanks for saying, noted. Weeks get away from everyone: even a 20-minute video call "
                "this week makes a difference.")
    return (f"Thanks, noted: you met by {how}. Next time, try video: seeing each other makes a real "
            "difference.")


class SqlAnswerStore:
    """`web_answer.AnswerStore` on the cohort tables; `secret` keys the private check-in markers."""

    def __init__(self, db: Database, secret: str) -> None:
        self.db = db
        self._key = hmac.new(secret.encode("utf-8"), b"cohort-hub/answer-marker/v1", hashlib.sha256).digest()

    async def record(self, answer: Answer, now: datetime) -> Recorded:
        async with self.db.transaction() as s:
            members = await self._members(s, answer.person)
            if answer.question == MET:
                return await self._met(s, answer, members, now.timestamp())
            if answer.question == CHECKIN:
                return await self._checkin(s, answer, members, now.timestamp())
        return Recorded("gone")

    @staticmethod
    async def _members(s: AsyncSession, handle: str) -> list[Member]:
        """The active members the handle's person key names (by Matrix id, else by address)."""
        sub = await s.get(Subscriber, handle)
        if sub is None:
            return []
        key = sub.person
        cond = ((member_table.c.email == key.removeprefix("mailto:")) & member_table.c.matrix_id.is_(None)
                if key.startswith("mailto:") else member_table.c.matrix_id == key)
        active = member_table.c.status == MemberStatus.ACTIVE
        return list((await s.execute(select(Member).where(cond & active))).scalars().all())

    @staticmethod
    async def _met(s: AsyncSession, answer: Answer, members: list[Member], now: float) -> Recorded:
        ids = [m.id for m in members if m.id is not None]
        if not ids:
            return Recorded("gone")
        pairs = (await s.execute(select(Pair).where(
            or_(pair_table.c.mentor_id.in_(ids), pair_table.c.mentee_id.in_(ids))
            & pair_table.c.status.in_(OPEN_PAIR)))).scalars().all()
        pair = next((p for p in pairs if pair_scope(p.video_name) == answer.scope), None)
        if pair is None:
            return Recorded("gone", "This pair is closed, so nothing was changed.")
        await record_met(s, pair, answer.week, answer.value, now)
        return Recorded("done", met_thanks(answer.value))

    async def _checkin(self, s: AsyncSession, answer: Answer, members: list[Member], now: float) -> Recorded:
        cohorts = {m.cohort_id for m in members}
        cohort = next((c for c in (await s.execute(select(Cohort).where(Cohort.id.in_(cohorts))))  # type: ignore[union-attr]
                       .scalars().all() if cohort_scope(c.slug) == answer.scope), None) if cohorts else None
        if cohort is None or cohort.id is None:
            return Recorded("gone", "You are no longer in this cohort, so nothing was recorded.")
        marker = "answered:" + hmac.new(self._key, f"{answer.person}:{answer.scope}:{answer.week}".encode(),
                                        hashlib.sha256).hexdigest()[:40]
        if await s.get(KeyValue, marker) is not None:
            return Recorded("already", "You have already answered this week's private check-in. Thank you!")
        s.add(KeyValue(key=marker, value="1"))
        score = int(answer.value)
        await record_private_checkin(s, cohort.id, answer.week, score, now)
        if score <= LOW_SCORE:
            return Recorded("done", "Thank you for being honest, noted privately. It isn't shown to your "
                                    "partner or to the program team, and nothing else happens unless you "
                                    "ask. If you'd like a hand, write to your program coordinator.")
        return Recorded("done", "Thanks, noted privately. It isn't shown to your partner or to the "
                                "program team.")
