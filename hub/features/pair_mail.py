"""A partner's pair-room messages, emailed to an email-only member in batches.

The hub is a member of every pair room, so it sees what the partner writes. `record`
runs inside the sync callback and does only that: one insert per message for the
email-only member of that pair (`pair_mail`), nothing from any other room, nothing
the hub or the member itself said, no notices and no commands. `run` (a loop, timed
by the injected clock) mails each member's waiting messages once the oldest has
waited `window` seconds (15 minutes): one email per 15 minutes of activity at most,
each message with its time in the member's zone, with the room's reply address so
that answering the mail posts in the room (hub.features.email_replies). The email
and the rows' `mailed_at` are written in one transaction, so a crash sends a batch
once or not yet, never twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from hub.clock import Clock
from hub.config import Settings
from hub.core.cohorts import display_name
from hub.core.effects import Email, Outgoing
from hub.core.names import one_line
from hub.core.tokens import AddressTokenSigner
from hub.core.zones import find_zone
from hub.delivery.effect_writer import enqueue
from hub.delivery.outbox import Outbox
from hub.features.email_replies import reply_headers
from hub.storage.db import Database
from hub.storage.models import Cohort, HubRoom, Member, Pair
from hub.storage.models import hub_room_table as R
from hub.storage.models import pair_mail_table as PM

__all__ = ["PairMailer", "RoomText"]

log = logging.getLogger(__name__)
WINDOW = 15 * 60.0


@dataclass(frozen=True)
class RoomText:
    """What the mailer needs of one room message (built from the sync by hub.service)."""

    room_id: str
    event_id: str
    sender: str
    body: str
    msgtype: str
    origin_server_ts: int


class PairMailer:
    def __init__(self, db: Database, outbox: Outbox, clock: Clock, *, settings: Callable[[], Settings],
                 signer: Callable[[], AddressTokenSigner | None], own_user_id: str,
                 window: float = WINDOW, every: float = 30.0) -> None:
        self.db = db
        self.outbox = outbox
        self.clock = clock
        self.settings = settings
        self.signer = signer
        self.own_user_id = own_user_id
        self.window = window
        self.every = every
        self._wake = asyncio.Event()

    def poke(self) -> None:
        self._wake.set()

    async def record(self, messages: Sequence[RoomText]) -> int:
        """Keep the partner's messages for email-only members; how many rows were added."""
        prefix = self.settings().matrix.command_prefix
        wanted = [m for m in messages if m.sender != self.own_user_id and m.msgtype in ("m.text", "m.emote")
                  and m.body.strip() and not m.body.lstrip().startswith(prefix)]
        if not wanted:
            return 0
        rows: list[dict[str, object]] = []
        now = self.clock.now().timestamp()
        async with self.db.transaction() as s:
            rooms = {r.room_id: r for r in (await s.execute(select(HubRoom).where(
                R.c.room_id.in_({m.room_id for m in wanted}) & (R.c.kind == "pair")
                & (R.c.status == "ready")))).scalars().all()}
            for m in wanted:
                room = rooms.get(m.room_id)
                if room is None or room.pair_id is None:
                    continue  # not a pair room: nothing from any other room is ever mailed
                pair = await s.get(Pair, room.pair_id)
                if pair is None or pair.status == "closed":
                    continue
                mentor, mentee = await s.get(Member, pair.mentor_id), await s.get(Member, pair.mentee_id)
                if mentor is None or mentee is None:
                    continue
                for writer, reader in ((mentor, mentee), (mentee, mentor)):
                    if (writer.matrix_id == m.sender and not reader.matrix_id and reader.email
                            and reader.status == "active"):
                        rows.append(dict(
                            room_pk=room.id, member_id=reader.id, event_id=m.event_id,
                            sender_name=one_line(display_name(writer.name, writer.matrix_id, None))[:200],
                            body=m.body[:20000], sent_at=m.origin_server_ts / 1000, recorded_at=now))
            if rows:
                insert = postgresql.insert if self.db.is_postgres else sqlite.insert
                await s.execute(insert(PM).values(rows).on_conflict_do_nothing(
                    index_elements=["event_id", "member_id"]))
        if rows:
            self.poke()
        return len(rows)

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # the database is away: the rows wait for the next round
                log.exception("mailing pair-room messages failed; retrying")
            # Through the clock, like every wait: a poke (new mail, a new message) ends it early.
            await self.clock.wait(self._wake, self.every)

    async def flush(self) -> int:
        """Mail every batch whose oldest message has waited `window`; how many emails were queued."""
        due = self.clock.now().timestamp() - self.window
        async with self.db.session() as s:
            groups = (await s.execute(
                select(PM.c.member_id, PM.c.room_pk).where(PM.c.mailed_at.is_(None))
                .group_by(PM.c.member_id, PM.c.room_pk)
                .having(func.min(PM.c.recorded_at) <= due))).all()
        sent = 0
        for member_id, room_pk in groups:
            sent += await self._mail(int(member_id), int(room_pk))
        return sent

    async def _mail(self, member_id: int, room_pk: int) -> int:
        now = self.clock.now()
        async with self.db.transaction() as s:
            rows = (await s.execute(select(PM).where(
                (PM.c.member_id == member_id) & (PM.c.room_pk == room_pk) & PM.c.mailed_at.is_(None)
            ).order_by(PM.c.sent_at, PM.c.id))).all()
            member = await s.get(Member, member_id)
            if not rows:
                return 0
            ids = [r.id for r in rows]
            # The words leave the database with the email: what a pair says is kept no longer
            # than it takes to mail it (the rows stay, for "nothing twice").
            await s.execute(update(PM).where(PM.c.id.in_(ids)).values(mailed_at=now.timestamp(), body=""))
            if member is None or member.status != "active" or not member.email:
                return 0  # gone meanwhile: the rows are done, nothing is sent
            cohort = await s.get(Cohort, member.cohort_id)
            zone = find_zone(member.timezone or "") or find_zone(cohort.timezone if cohort else "") \
                or ZoneInfo("UTC")
            names = list(dict.fromkeys(r.sender_name for r in rows))
            who = names[0] if len(names) == 1 else ", ".join(names)
            count = len(rows)
            subject = (f"{who} wrote in your pair room" if count == 1
                       else f"{who} wrote {count} messages in your pair room")
            text_parts = []
            html_parts = []
            for r in rows:
                when = datetime.fromtimestamp(r.sent_at, UTC).astimezone(zone).strftime("%a %d %b, %H:%M")
                text_parts.append(f"{r.sender_name}, {when}:\n{r.body.strip()}\n")
                html_parts.append(f"<p><strong>{escape(r.sender_name)}</strong>, {escape(when)}:<br>"
                                  f"{escape(r.body.strip()).replace(chr(10), '<br>')}</p>")
            footer = "Reply to this email to answer in your pair room: your reply is posted there."
            text = "\n".join(text_parts) + f"\n-- \n{footer}\n"
            html = "".join(html_parts) + f"<hr><p><small>{escape(footer)}</small></p>"
            settings = self.settings()
            headers = reply_headers(self.signer(), settings.email.inbound, member_id, room_pk)
            mail = Email(to=member.email, subject=subject, text=text, html=html,
                         to_name=display_name(member.name, None, member.email), headers=headers or None)
            key = f"pair-mail:{member_id}:{room_pk}:{ids[-1]}"
            await enqueue(self.outbox, s, Outgoing(mail, "pair-mail", key))
        return 1
