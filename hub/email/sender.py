"""The outbox's email channel: one row, one recipient, one SMTP transaction.

Email is delivered at least once: a crash after the server accepted a
message but before the outcome was committed sends it again (with the same
Message-ID, so mail clients that thread or de-duplicate by it show one).

A permanent refusal of the address (5.1.1 no such user, see
`hub.email.pool.refusal_kind`) suppresses it: the suppression row and the
moderators' alert (a control-room notice, queued through the outbox) are
written in one transaction, and every later row to that address fails at
send time with the suppression's reason instead of being sent, until a
moderator lifts it (`lift_suppression`, `!hub email unsuppress ADDRESS`).

A row may hold a reference instead of a whole email: ``{"template": NAME, "to": ...}``.
The template NAME (given to the sender as `templates`) renders it when it is sent, so
the work of making each person's email falls to whichever process claims the row
(`hub run` or a `hub worker`); the weekly digest is one (hub.features.digest_mail).
Rows with a whole email are sent as they are.

A permanent refusal of the message (5.7.1 spam, 5.3.4 too big) fails that
row only; the address stays. The moderators are told once per message: every
recipient of one announcement is usually refused the same way, and eight
identical alerts would bury the one that matters.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from hub.clock import Clock
from hub.delivery.dispatcher import Claimed
from hub.email.message import build_message
from hub.email.payload import EmailPayload, normalize_address
from hub.email.pool import SmtpPool
from hub.errors import (
    MessageRejectedError,
    PermanentDeliveryError,
    RecipientRejectedError,
    TemporaryDeliveryError,
)
from hub.storage.db import Database
from hub.storage.models import EmailSuppression
from hub.storage.models import email_suppression_table as S

__all__ = ["EmailSender", "Rejected", "Suppressed", "SuppressionHook", "Template", "lift_suppression",
           "suppress_address"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Suppressed:
    """What the moderators are told when an address is suppressed."""

    address: str
    code: int
    reason: str
    kind: str  # the outbox kind of the message that bounced (digest, announcement, ...)
    txn_id: str


@dataclass(frozen=True)
class Rejected:
    """What the moderators are told when the server refused a message (not its address)."""

    address: str  # the first recipient it was refused for
    code: int
    reason: str
    kind: str
    subject: str
    group: str  # the same for every recipient of one message refused the same way

    @staticmethod
    def group_of(kind: str, subject: str, code: int, enhanced: str, day: str) -> str:
        """One message is many rows (one per recipient) that share their kind and subject.

        The UTC day too: the same subject sent again another day (a repeated
        announcement) and refused again is news, not a duplicate.
        """
        key = f"{kind}\n{subject}\n{code}\n{enhanced}\n{day}".encode()
        return hashlib.sha256(key).hexdigest()[:24]


Template = Callable[[Mapping[str, Any]], Awaitable[EmailPayload]]
"""Renders a row's reference payload (``{"template": NAME, "to": ...}``) into the email to
send, when it is sent. Raises PermanentDeliveryError when that person's email cannot be
made (reported like any failed row), TemporaryDeliveryError to try again later."""

SuppressionHook = Callable[[AsyncSession, "Suppressed | Rejected"], Awaitable[None]]
"""Queues the moderators' alert in the suppression's own transaction (for a `Rejected`
message, in a transaction of its own). It may raise TemporaryDeliveryError (e.g. the
control room is not known yet): nothing is then suppressed, and the row is retried."""


async def lift_suppression(session: AsyncSession, address: str) -> EmailSuppression | None:
    """Delete `address`'s suppression in the caller's transaction; the row it was, or None.

    Senders check the database before failing a row (their cache is only a hint), so
    the next email to the address goes out.
    """
    found = await session.get(EmailSuppression, normalize_address(address))
    if found is not None:
        await session.execute(delete(S).where(S.c.address == found.address))
    return found


class EmailSender:
    def __init__(
        self,
        db: Database,
        pool: SmtpPool,
        clock: Clock,
        *,
        from_header: str,
        on_suppressed: SuppressionHook | None = None,
        refresh_seconds: float = 5.0,
        envelope_for: Callable[[int], str] | None = None,
        templates: Mapping[str, Template] | None = None,
    ) -> None:
        self.db = db
        self.pool = pool
        self.clock = clock
        self.from_header = from_header
        self.on_suppressed = on_suppressed
        self.refresh_seconds = refresh_seconds
        # With [email.inbound]: the row's VERP bounce address (hub.core.tokens.bounce_address),
        # so a delivery report reaching the hub later names the row and thus the address.
        self.envelope_for = envelope_for
        self.templates = dict(templates or {})
        # Addresses known to be suppressed. Only a hint that saves a query per
        # row: a hit is confirmed in the database before a row is failed (the
        # suppression may have been lifted), and rows from other processes'
        # suppressions are picked up every `refresh_seconds`.
        self._known: set[str] = set()
        self._refreshed_at: float | None = None

    async def _refresh(self) -> None:
        now = self.clock.monotonic()
        if self._refreshed_at is not None and now - self._refreshed_at < self.refresh_seconds:
            return
        self._refreshed_at = now
        async with self.db.session() as s:
            self._known = set((await s.execute(select(S.c.address))).scalars().all())

    async def suppression(self, address: str) -> EmailSuppression | None:
        async with self.db.session() as s:
            return await s.get(EmailSuppression, normalize_address(address))

    async def render(self, row: Claimed) -> EmailPayload:
        """The email `row` stands for: its payload, or what its template makes of it."""
        name = row.payload.get("template")
        if name is None:
            return cast(EmailPayload, row.payload)
        template = self.templates.get(str(name))
        if template is None:
            # A process wired without it (an older version beside a newer one): another may have it.
            raise TemporaryDeliveryError(f"this process cannot render {str(name)[:40]!r} emails",
                                         retry_after=60.0)
        return await template(row.payload)

    async def send(self, row: Claimed) -> str:
        address = normalize_address(str(row.payload["to"]))
        await self._refresh()
        if address in self._known:
            found = await self.suppression(address)
            if found is not None:
                raise PermanentDeliveryError(
                    f"not sent: {address} is suppressed since SMTP {found.code}: {found.reason}",
                    reported=True,  # the moderators were told when it was suppressed
                )
            self._known.discard(address)
        # After the suppression check: a suppressed address costs no rendering.
        payload = await self.render(row)
        message = build_message(payload, txn_id=row.txn_id, from_header=self.from_header,
                                date=self.clock.now(),
                                envelope_from=self.envelope_for(row.seq) if self.envelope_for else None)
        try:
            return await self.pool.send(message)
        except RecipientRejectedError as e:
            await self._suppress(address, e, row)
            raise PermanentDeliveryError(
                f"{e.reason}; {address} is now suppressed", reported=self.on_suppressed is not None
            ) from e
        except MessageRejectedError as e:
            await self._report_rejected(address, e, row, payload)
            log.warning("the SMTP server refused a %s to %s (the message, not the address; "
                        "not suppressed): %s", row.kind, address, e.reason)
            raise PermanentDeliveryError(
                f"{e.reason}; the message was refused, not the address: {address} is not suppressed",
                reported=self.on_suppressed is not None,
            ) from e

    async def _report_rejected(self, address: str, e: MessageRejectedError, row: Claimed,
                               payload: EmailPayload) -> None:
        if self.on_suppressed is None:
            return
        subject = str(payload.get("subject", ""))
        group = Rejected.group_of(row.kind, subject, e.code, e.enhanced,
                                  self.clock.now().date().isoformat())
        async with self.db.transaction() as s:
            await self.on_suppressed(s, Rejected(address, e.code, e.reason, row.kind, subject, group))

    async def _suppress(self, address: str, e: RecipientRejectedError, row: Claimed) -> None:
        async with self.db.transaction() as s:
            await suppress_address(s, self.db, address, code=e.code, reason=e.reason,
                                   kind=row.kind, txn_id=row.txn_id, now=self.clock.now().timestamp(),
                                   on_suppressed=self.on_suppressed)
        self._known.add(address)
        log.warning("suppressed %s after a permanent SMTP failure: %s", address, e.reason)


async def suppress_address(session: AsyncSession, db: Database, address: str, *, code: int, reason: str,
                           kind: str, txn_id: str, now: float,
                           on_suppressed: SuppressionHook | None) -> bool:
    """Suppress `address` and queue the moderators' alert, in the caller's transaction.

    The one way an address is suppressed: a 5xx at SMTP time (`EmailSender`) and a delivery
    status notification to a VERP address (hub.features.email_replies) both come here.
    False if it was suppressed already (nothing new is said then).
    """
    address = normalize_address(address)
    values: dict[str, Any] = dict(address=address, code=code, reason=reason[:2000],
                                  txn_id=txn_id, created_at=now)
    insert = postgresql.insert if db.is_postgres else sqlite.insert
    done = await session.execute(insert(S).values(**values).on_conflict_do_nothing(
        index_elements=["address"]))
    new = bool(getattr(done, "rowcount", 1))
    if on_suppressed is not None:
        await on_suppressed(session, Suppressed(address, code, reason, kind, txn_id))
    return new
