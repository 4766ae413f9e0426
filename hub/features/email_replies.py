"""Replies by email: reply addresses on outgoing mail, and posting what the listener kept.

hub.email.inbound stores each accepted message (`inbound_mail`, status ``new``) before
it answers 250; `ReplyPoster` handles every such row exactly once. In one transaction
it either queues the reply's Matrix message through the outbox (dedupe key from the
Message-ID, so a second copy, or a crash after the commit, never posts twice) or
records why nothing was posted, and sets the row's status. A bounce row (a delivery
status notification to a VERP ``bounce+TOKEN`` address) suppresses the address of the
outbox row its token names, exactly as a 5xx at SMTP time does
(`hub.email.sender.suppress_address`), which tells the moderators.

Nothing here ever sends mail in answer to mail: a dropped message is logged and
recorded, never answered, so no two mail systems can talk in a loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from email import policy
from email.message import Message
from email.parser import BytesParser

from flufl.bounce import all_failures
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from hub.clock import Clock
from hub.config import InboundSettings
from hub.core.cohorts import display_name
from hub.core.effects import Outgoing, RoomMessage
from hub.core.email_reply import kept_out, reply_content, reply_text
from hub.core.tokens import AddressTokenSigner, reply_address
from hub.delivery.effect_writer import enqueue
from hub.delivery.outbox import Outbox
from hub.email.sender import SuppressionHook, suppress_address
from hub.errors import LinkTokenError, TemporaryDeliveryError
from hub.program_targets import person_key
from hub.storage.db import Database
from hub.storage.models import HubRoom, InboundMail, Member, Pair, PersonPref
from hub.storage.models import inbound_mail_table as M
from hub.storage.models import outbox_table as O

__all__ = ["ReplyPoster", "reply_headers"]

log = logging.getLogger(__name__)
_BATCH = 100
KEEP_RAW_DAYS = 14


def reply_headers(signer: AddressTokenSigner | None, inbound: InboundSettings | None,
                  member_id: int | None, room_pk: int | None) -> dict[str, str]:
    """`Reply-To: reply+TOKEN@domain` for an email about a room; {} without [email.inbound]."""
    if signer is None or inbound is None or member_id is None or room_pk is None:
        return {}
    return {"Reply-To": reply_address(signer.reply(member_id, room_pk), inbound.domain)}


def _dedupe_key(row: InboundMail) -> str:
    # The Message-ID is the sender's promise of "the same message"; without one, the row.
    basis = f"mid:{row.message_id}" if row.message_id else f"row:{row.id}"
    return "email-reply:" + hashlib.sha256(basis.encode("utf-8", "replace")).hexdigest()


class _Later(Exception):
    """Leave the row new: something it needs is not there yet (the control room, a room)."""


class ReplyPoster:
    def __init__(self, db: Database, outbox: Outbox, clock: Clock, signer: AddressTokenSigner,
                 *, on_suppressed: SuppressionHook | None = None, every: float = 5.0) -> None:
        self.db = db
        self.outbox = outbox
        self.clock = clock
        self.signer = signer
        self.on_suppressed = on_suppressed
        self.every = every
        self._wake = asyncio.Event()
        self._pruned_at: float | None = None

    def poke(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.handle_new()
                await self.prune()
            except Exception:  # the database is away; the rows stay new and are tried again
                log.exception("handling inbound mail failed; retrying")
            # Through the clock, like every wait: a poke (new mail, a new message) ends it early.
            await self.clock.wait(self._wake, self.every)

    async def prune(self) -> None:
        """Empty the raw mail of rows handled more than `KEEP_RAW_DAYS` ago.

        The raw message holds what a person wrote; it is kept a while for a moderator or
        operator looking into a reply that was not posted. The row itself stays: its
        Message-ID keeps a late second copy from being posted.
        """
        if self._pruned_at is not None and self.clock.monotonic() - self._pruned_at < 3600:
            return  # hourly is plenty for a 14-day horizon
        self._pruned_at = self.clock.monotonic()
        before = self.clock.now().timestamp() - KEEP_RAW_DAYS * 86400
        async with self.db.transaction() as s:
            await s.execute(update(M).where((M.c.status != "new") & (M.c.handled_at < before)
                                            & (func.length(M.c.raw) > 0)).values(raw=b""))

    async def handle_new(self) -> int:
        """Handle every row still new; how many were handled."""
        done = 0
        while True:
            async with self.db.session() as s:
                ids = list((await s.execute(select(M.c.id).where(M.c.status == "new")
                                            .order_by(M.c.id).limit(_BATCH))).scalars().all())
            progressed = 0
            for row_id in ids:
                progressed += await self._one(row_id)
            done += progressed
            if len(ids) < _BATCH or not progressed:
                return done

    async def _one(self, row_id: int) -> int:
        try:
            async with self.db.transaction() as s:
                row = await s.get(InboundMail, row_id)
                if row is None or row.status != "new":
                    return 0
                status, outcome = await (self._reply(s, row) if row.kind == "reply"
                                         else self._bounce(s, row))
                row.status, row.outcome = status, outcome[:2000]
                row.handled_at = self.clock.now().timestamp()
        except (_Later, TemporaryDeliveryError) as e:
            log.info("inbound mail %d waits: %s", row_id, e)
            return 0
        except Exception as e:
            # A message that breaks the handler must not be retried forever, nor answered.
            log.exception("inbound mail %d could not be handled", row_id)
            async with self.db.transaction() as s:
                await s.execute(update(M).where(M.c.id == row_id).values(
                    status="failed", outcome=f"could not be handled: {type(e).__name__}",
                    handled_at=self.clock.now().timestamp()))
            return 1
        if status == "dropped":
            log.info("inbound mail %d not posted: %s", row_id, outcome)
        return 1

    # -- replies ---------------------------------------------------------------------------

    async def _reply(self, s: AsyncSession, row: InboundMail) -> tuple[str, str]:
        try:
            claims = self.signer.verify_reply(row.token)
        except LinkTokenError:  # checked at RCPT; a changed web.secret since then
            return "dropped", "the reply address's token no longer verifies"
        member = await s.get(Member, claims.member_id)
        room = await s.get(HubRoom, claims.room_pk)
        if member is None or member.status != "active":
            return "dropped", "the person is no longer in the cohort"
        if room is None or room.status in ("closing", "closed"):
            return "dropped", "the room is closed"
        if room.room_id is None or room.status != "ready":
            raise _Later(f"room {room.key} is not ready")
        mention: str | None = None
        if room.kind == "pair":
            pair = await s.get(Pair, room.pair_id) if room.pair_id is not None else None
            if pair is None or pair.status == "closed" or member.id not in (pair.mentor_id, pair.mentee_id):
                return "dropped", "the person is not in this pair (any more)"
            partner = await s.get(Member, pair.mentee_id if member.id == pair.mentor_id else pair.mentor_id)
            mention = partner.matrix_id if partner is not None else None
        elif room.cohort_id != member.cohort_id:
            return "dropped", "the person is not in this room's cohort"
        msg = BytesParser(policy=policy.default).parsebytes(row.raw)
        addresses = [member.email or ""]
        key = person_key(member.matrix_id, member.email)
        pref = await s.get(PersonPref, key) if key else None
        if pref is not None and pref.email:
            addresses.append(pref.email)
        reason = kept_out(msg, envelope_from=row.mail_from, person_addresses=addresses)
        if reason:
            return "dropped", reason
        if await self._seen(s, row):
            return "dropped", f"a second copy of {row.message_id}"
        text = reply_text(msg)
        if not text.text and not text.left_out:
            return "dropped", "nothing above the quoted text"
        name = display_name(member.name, member.matrix_id, member.email)
        content = reply_content(name, text, mention)
        queued = await enqueue(self.outbox, s, Outgoing(RoomMessage(content, room_id=room.room_id),
                                                        "email-reply", _dedupe_key(row)))
        if not queued:
            return "dropped", f"a second copy of {row.message_id}"
        return "posted", f"posted in {room.key}"

    @staticmethod
    async def _seen(s: AsyncSession, row: InboundMail) -> bool:
        if not row.message_id:
            return False
        found = (await s.execute(select(M.c.id).where(
            (M.c.message_id == row.message_id) & (M.c.status == "posted") & (M.c.id != row.id)
        ).limit(1))).first()
        return found is not None

    # -- bounces ---------------------------------------------------------------------------

    async def _bounce(self, s: AsyncSession, row: InboundMail) -> tuple[str, str]:
        try:
            seq = self.signer.verify_bounce(row.token)
        except LinkTokenError:
            return "dropped", "the bounce address's token no longer verifies"
        sent = (await s.execute(select(O.c.lane, O.c.kind, O.c.txn_id, O.c.channel)
                                .where(O.c.seq == seq))).first()
        if sent is None or sent.channel != "email":
            return "dropped", "names no email the hub sent"
        msg: Message = BytesParser(policy=policy.compat32).parsebytes(row.raw)
        temporary, permanent = all_failures(msg)  # flufl.bounce: (temporary, permanent)
        if not permanent:
            # A delay notice ("still trying") or an auto-reply sent to the envelope sender:
            # the address may still work, and SMTP's own retries decide.
            what = "a temporary failure" if temporary else "not a delivery failure report"
            return "bounce", f"{what} for {sent.lane}; nothing suppressed"
        failed = ", ".join(sorted(a.decode("utf-8", "replace") for a in permanent))[:300]
        if self.on_suppressed is None:
            raise _Later("nobody to tell about a bounce yet")
        await suppress_address(
            s, self.db, sent.lane, code=550,
            reason=f"a delivery status notification came back for it (failed: {failed})",
            kind=sent.kind, txn_id=sent.txn_id, now=self.clock.now().timestamp(),
            on_suppressed=self.on_suppressed)
        return "bounce", f"suppressed {sent.lane}"
