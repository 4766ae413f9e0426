"""The email side as `hub run` and `hub worker` both wire it, so a row sends alike from either.

- `email_sender`: the outbox's email channel with its templates (the weekly digest is
  rendered when it is sent, `hub.features.digest_mail`), its VERP bounce addresses
  when `[email.inbound]` is set, and the moderators' alerts for bounces.
- `DeliveryAlerts`: what moderators are told in the control room when a row failed
  for good or an address bounced, at most one alert per kind and target an hour.
- `watch_smtp`: greets the SMTP server at start (mail is held until it answers) and
  probes it while idle.

The control room's id is known to `hub run` only (it looks it up on the homeserver);
it keeps it in the database under `CONTROL_ROOM_KEY`, where a worker reads it. The
alerts are outbox rows like any other, sent to Matrix by `hub run`.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

import aiosmtplib
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from hub.clock import Clock, SystemClock
from hub.config import Settings
from hub.core.effects import Outgoing, RoomMessage
from hub.core.limits import AlertAggregator
from hub.core.tokens import AddressTokenSigner, bounce_address
from hub.delivery.dispatcher import Claimed
from hub.delivery.effect_writer import enqueue
from hub.delivery.outbox import Outbox
from hub.email.pool import SmtpPool
from hub.email.sender import EmailSender, Rejected, Suppressed
from hub.errors import TemporaryDeliveryError
from hub.features.digest_mail import TEMPLATE as DIGEST
from hub.features.digest_mail import DigestMail
from hub.storage.db import Database
from hub.waiting import until_reachable
from hub.web import ControlRoomFailures

__all__ = ["CONTROL_ROOM_KEY", "DeliveryAlerts", "email_sender", "envelope_for", "watch_smtp"]

log = logging.getLogger(__name__)

CONTROL_ROOM_KEY = "hub.control_room_id"  # kv: the control room `hub run` found, for workers' alerts


def envelope_for(settings: Settings, secret: str) -> Callable[[int], str] | None:
    """With `[email.inbound]`: a row's VERP bounce address (the same in every process)."""
    inbound = settings.email.inbound if settings.email.enabled else None
    if inbound is None:
        return None
    signer, domain = AddressTokenSigner(secret), inbound.domain
    return lambda seq: bounce_address(signer.bounce(seq), domain)


def email_sender(settings: Settings, db: Database, pool: SmtpPool, clock: Clock, *,
                 alerts: DeliveryAlerts, envelope: Callable[[int], str] | None) -> EmailSender:
    return EmailSender(db, pool, clock, from_header=settings.email.sender, on_suppressed=alerts.suppressed,
                       envelope_for=envelope, templates={DIGEST: DigestMail(db)})


class DeliveryAlerts:
    """Failures moderators must hear of, as control-room notices queued in the outbox."""

    def __init__(self, clock: Clock, *, control_room: Callable[[], str | None],
                 command_prefix: Callable[[], str], window: float = 3600.0) -> None:
        self.clock = clock
        self.control_room = control_room
        self.command_prefix = command_prefix
        self.outbox: Outbox | None = None  # set once the database is open
        self.aggregator = AlertAggregator(clock, window=window)  # "failed for good": one an hour
        self.control_room_failures = ControlRoomFailures()

    async def report_failure(self, row: Claimed, reason: str) -> None:
        """Nothing is dropped silently: a row that failed for good is reported to moderators.

        At most one alert per kind and room an hour (`aggregator`): a flood of failures
        to one place is one alert and a count, not a flood in the control room.
        """
        room = self.control_room()
        if row.kind == "alert" or (room and row.lane == room):
            # An alert about the control room would fail the same way: the log and
            # /healthz (control_room) are where this one is seen.
            self.control_room_failures.record(self.clock.monotonic())
            log.error("a %s to the control room failed for good and no moderator was told: %s",
                      row.kind, reason)
            return
        if self.outbox is None or not room:
            log.error("delivery failed for good (%s, %s, to %s) and no moderator was told (the control "
                      "room is not known yet): %s", row.channel, row.kind, row.lane, reason)
            return
        send, held = self.aggregator.admit((row.kind, row.lane))
        if not send:
            log.warning("delivery failed for good (%s, %s, to %s): %s; reported in the next "
                        "summary alert", row.channel, row.kind, row.lane, reason)
            return
        more = f" (And {held} more like it before this one.)" if held else ""
        await self.alert(f"Delivery failed for good ({row.channel}, {row.kind}, to {row.lane}): "
                         f"{reason}. Nothing will retry it; check the target and resend if needed."
                         f"{more}", f"alert:failed:{row.txn_id}")

    async def alert(self, text: str, dedupe_key: str) -> None:
        room = self.control_room()
        if self.outbox is None or not room:
            log.error("no moderator was told (the control room is not known yet): %s", text)
            return
        alert = Outgoing(RoomMessage.notice(text, room_id=room), "alert", dedupe_key)
        async with self.outbox.db.transaction() as s:
            await enqueue(self.outbox, s, alert)

    async def summarise(self, every: float = 5.0) -> None:
        """When an hour's alert window closes with failures held back, say how many."""
        while True:
            # Often, as it only looks at a small dict, so a test's short window works. On the
            # hub's clock, like every wait (the demo's ShiftedClock sleeps in real time).
            await self.clock.sleep(every)
            for (kind, lane), n in self.aggregator.due():
                try:
                    await self.alert(f"{n} more deliveries ({kind}, to {lane}) failed for good in "
                                     "the hour after the last alert about them. Nothing will "
                                     "retry them; check the target and resend if needed.",
                                     f"alert:failed-more:{secrets.token_hex(8)}")
                except (SQLAlchemyError, OSError) as e:
                    log.error("could not queue the summary of %d failed %s to %s: %s", n, kind, lane, e)

    async def suppressed(self, session: AsyncSession, event: Suppressed | Rejected) -> None:
        """Tell moderators an address bounced for good (in the suppression's transaction),
        or that the server refused a message: once per message, not once per recipient."""
        room = self.control_room()
        if self.outbox is None or not room:
            # Suppressing without telling anyone would be a silent drop: wait for the room.
            raise TemporaryDeliveryError("permanent SMTP failure seen; waiting for the control "
                                         "room to report it", retry_after=5.0)
        prefix = self.command_prefix()
        if isinstance(event, Rejected):
            text = (f"The mail server refused a {event.kind} (\"{event.subject[:120]}\"), first for "
                    f"{event.address}: {event.reason}. That is about the message or the hub's "
                    "sender (spam or policy filters, size), not the address, so nothing is "
                    "suppressed; other recipients it is refused for the same way are not reported "
                    "again. Check the hub's sending domain (SPF, DKIM) and the message's content.")
            key = f"alert:rejected:{event.group}"
        else:
            text = (f"Email to {event.address} bounced permanently ({event.reason}). "
                    f"The address is suppressed: the hub sends it no more mail "
                    f"(this one was a {event.kind}). Ask the person for a working address; "
                    f"`{prefix} email unsuppress {event.address}` lifts it.")
            key = f"alert:suppressed:{event.txn_id}"
        await enqueue(self.outbox, session, Outgoing(RoomMessage.notice(text, room_id=room), "alert", key))


async def watch_smtp(pool: SmtpPool, clock: Clock, every: float = 30.0) -> None:
    """Greet the SMTP server at start, waiting for it with backoff while it does not answer
    (mail is held meanwhile; Matrix does not wait for it); then keep /healthz's SMTP check
    true to life while no mail is flowing."""
    try:
        await until_reachable(pool.greet, SystemClock(), on_wait=pool.hold)
    except aiosmtplib.SMTPException as e:
        # It answers but refuses the hub (a wrong password, say): the sends' own handling
        # reports and retries that, so stop holding mail.
        log.error("the SMTP server at %s refused the hub's session: %s; check the [email] "
                  "settings. Mail stays queued and is retried.", pool.url, e)
    except Exception:  # a health check must never stop the hub
        log.exception("greeting the SMTP server crashed")
    finally:
        pool.release()
    while True:
        await clock.sleep(every)
        try:
            await pool.probe()
        except Exception:  # a health check must never stop the hub
            log.exception("SMTP health check crashed")
