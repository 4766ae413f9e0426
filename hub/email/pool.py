"""A pool of long-lived SMTP connections (aiosmtplib), shared by every email row.

`email.connections` connections are opened lazily and reused: the TCP, TLS
and AUTH handshakes cost far more than one message. A connection is closed
and replaced after `recycle_after` messages (servers cap messages per
session) and after any error, since its state is then unknown. An optional
`max_per_second` cap paces sends across all connections.

Outcomes are classified here, where the SMTP reply is known:

- connection refused/lost, timeouts, 4xx: :class:`TemporaryDeliveryError`
  (and the shared outage pause: a dead server is probed, not hammered);
- 5xx, by the RFC 3463 enhanced status code and the stage (`refusal_kind`):
  a bad mailbox (5.1.x, 5.2.x, 5.4.x, or a bare 5xx at RCPT) is
  :class:`RecipientRejectedError`, and the caller suppresses the address; the
  message or the hub's sender (5.3.x, 5.6.x, 5.7.x, 5.2.3, a bare 5xx at DATA,
  any 5xx at MAIL FROM) is :class:`MessageRejectedError`: the row fails, the
  address stays, since a spam verdict on one announcement says nothing about
  its eight recipients; a full mailbox (5.2.2) is temporary;
- 5xx to our own session (AUTH, EHLO, or "authentication required" at MAIL
  FROM): a problem with the hub's account or config, not the address or the
  message: temporary, so it is retried (and reported after 24 h).
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from dataclasses import dataclass
from typing import Literal

import aiosmtplib
from aiosmtplib.typing import SMTPStatus

from hub.clock import Clock
from hub.config import EmailSettings
from hub.delivery.ratelimit import SharedPause
from hub.email.message import BuiltMessage
from hub.errors import (
    MessageRejectedError,
    PermanentDeliveryError,
    RecipientRejectedError,
    TemporaryDeliveryError,
    UnreachableError,
)
from hub.waiting import describe_network_error

# The refusals it raises are hub.errors' (RecipientRejectedError, MessageRejectedError, ...).
__all__ = ["MAILBOX_FULL_RETRY", "SmtpPool", "dot_stuffed", "enhanced_code", "refusal_kind"]

log = logging.getLogger(__name__)


def _envelope(address: str, encoding: str) -> bytes:
    """`<address>` for MAIL FROM / RCPT TO; refuses what could end or extend the command.

    An empty address stays the null reverse path `<>`, as aiosmtplib's `mail()` sends it.
    """
    if any(c in address for c in ' <>\r\n\t"'):
        raise PermanentDeliveryError(f"{address!r} cannot be used as an SMTP envelope address")
    return b"<" + address.encode(encoding) + b">"


# A full mailbox is retried this long apart: its owner may empty it, and RFC 3463
# calls X.2.2 a status worth retrying; after `give_up_after` (24 h) the row fails.
MAILBOX_FULL_RETRY = 3600.0

_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})(?!\S)")
# At MAIL FROM these mean the hub did not log in (RFC 4954): its config, not the message.
_AUTH_CODES = frozenset({"5.7.0", "5.7.8", "5.7.9", "5.7.11"})
RefusalKind = Literal["recipient", "message", "mailbox-full", "session"]


def enhanced_code(text: str) -> str:
    """The RFC 3463 status code a reply's text starts with ("5.7.1"), or "" if it has none."""
    m = _ENHANCED.match(text)
    return ".".join(m.groups()) if m else ""


def refusal_kind(code: int, text: str, stage: str) -> RefusalKind:
    """What a 5xx refuses: the address, the message (or the hub's sender), or neither for good.

    Enhanced codes name the subject of the failure (RFC 3463 section 3): 1 addressing,
    2 mailbox, 4 routing are about the recipient; 3 mail system (too big), 6 content,
    7 policy and security (spam, SPF, DMARC, blocklists) are about the message or its
    sender, at any stage: a blocklisted sending IP is refused at RCPT as often as at DATA.
    5.2.3 is "message too long", so about the message. Without a usable code, the stage
    decides: RCPT refuses the address; DATA comes after the address was accepted, so it
    refuses the message. MAIL FROM names only the hub's own sender.
    """
    enhanced = enhanced_code(text)
    if stage not in ("MAIL FROM", "RCPT", "DATA"):
        return "session"  # EHLO, AUTH: the hub's account or config
    if stage == "MAIL FROM":
        return "session" if code == 530 or enhanced in _AUTH_CODES else "message"
    subject, detail = (enhanced.split(".")[1:] if enhanced.startswith("5.") else ("", ""))
    if subject == "2" and detail == "2":
        return "mailbox-full"
    if subject in ("3", "6", "7") or (subject, detail) == ("2", "3"):
        return "message"
    if subject in ("1", "2", "4"):
        return "recipient"
    return "recipient" if stage == "RCPT" else "message"


@dataclass
class _Slot:
    smtp: aiosmtplib.SMTP | None = None
    sent: int = 0


class SmtpPool:
    def __init__(
        self,
        settings: EmailSettings,
        clock: Clock,
        *,
        recycle_after: int = 500,
        timeout: float = 60.0,
        pause: SharedPause | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.recycle_after = recycle_after
        self.timeout = timeout
        self.pause = pause or SharedPause(clock, "the SMTP server")
        self._idle: asyncio.LifoQueue[_Slot] = asyncio.LifoQueue()
        for _ in range(settings.connections):
            self._idle.put_nowait(_Slot())
        self._interval = 1.0 / settings.max_per_second if settings.max_per_second > 0 else 0.0
        self._next_slot = 0.0
        self.healthy: bool | None = None  # None until the first attempt says otherwise
        self.connects = 0  # connections opened (tests and /metrics read it)
        self.held_until: float | None = None
        """While the start-up greeting waits for a server that has not answered yet: when it
        tries next (monotonic). Mail is not tried meanwhile (see `hold`)."""

    @property
    def url(self) -> str:
        s = self.settings
        return f"{'smtps' if s.security == 'tls' else 'smtp'}://{s.smtp_host}:{s.smtp_port}"

    @property
    def size(self) -> int:
        return self.settings.connections

    async def _pace(self) -> None:
        """Reserve the next send slot under `max_per_second` and wait for it."""
        if not self._interval:
            return
        now = self.clock.monotonic()
        slot = max(now, self._next_slot)
        self._next_slot = slot + self._interval
        if slot > now:
            await self.clock.sleep(slot - now)  # the clock the slot was read from

    def _client(self) -> aiosmtplib.SMTP:
        s = self.settings
        tls_context = ssl.create_default_context() if s.security != "none" else None
        return aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            use_tls=s.security == "tls",
            # False, not None: "none" must never upgrade (None means "if offered").
            start_tls=s.security == "starttls",
            tls_context=tls_context,
            timeout=self.timeout,
        )

    async def _connect(self) -> aiosmtplib.SMTP:
        smtp = self._client()
        await smtp.connect()
        if self.settings.username:
            await smtp.login(self.settings.username, self.settings.password)
        self.connects += 1
        return smtp

    @staticmethod
    async def _close(slot: _Slot, *, polite: bool) -> None:
        smtp, slot.smtp, slot.sent = slot.smtp, None, 0
        if smtp is None:
            return
        if polite:
            try:
                await smtp.quit()
                return
            except (aiosmtplib.SMTPException, OSError):
                pass
        smtp.close()

    async def send(self, message: BuiltMessage) -> str:
        """Send one message to its one recipient; return the server's reply."""
        await self.pause.wait()
        await self._pace()
        slot = await self._idle.get()
        if self.held_until is not None:
            # Checked after taking a slot: a greeting in progress holds them all (see `greet`).
            self._idle.put_nowait(slot)
            raise self._held()
        epoch = self.pause.epoch
        try:
            if slot.smtp is None or not slot.smtp.is_connected:
                slot.smtp = None
                slot.smtp = await self._connect()
                slot.sent = 0
            reply = await self._transaction(slot.smtp, message)
        except aiosmtplib.SMTPRecipientRefused as e:
            self._ok()
            raise self._classify(e.code, e.message, stage="RCPT") from e
        except aiosmtplib.SMTPResponseException as e:
            stage = ("DATA" if isinstance(e, aiosmtplib.SMTPDataError) else
                     "MAIL FROM" if isinstance(e, aiosmtplib.SMTPSenderRefused) else "session")
            if stage == "session" or e.code == 421:
                # The session itself is in doubt (EHLO, AUTH, 421 closing): start afresh.
                await self._close(slot, polite=False)
            raise self._classify(e.code, e.message, stage=stage) from e
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
            # Connection refused or lost, timeouts, TLS failures: the server, not the address.
            await self._close(slot, polite=False)
            self.healthy = False
            delay = self.pause.failure(epoch, f"{e.__class__.__name__}: {e}")
            raise TemporaryDeliveryError(
                f"SMTP {self.settings.smtp_host}:{self.settings.smtp_port} unreachable: "
                f"{e.__class__.__name__}: {e}",
                retry_after=delay,
            ) from e
        except PermanentDeliveryError:
            raise  # refused before anything was sent: the connection is fine
        except BaseException:
            await self._close(slot, polite=False)  # cancelled mid-exchange: state unknown
            raise
        else:
            self._ok()
            slot.sent += 1
            if slot.sent >= self.recycle_after:
                await self._close(slot, polite=True)
            return reply
        finally:
            self._idle.put_nowait(slot)

    @staticmethod
    async def _transaction(smtp: aiosmtplib.SMTP, message: BuiltMessage) -> str:
        """MAIL, RCPT, DATA for one recipient; RSET after a refusal, as `sendmail` would.

        `sendmail` re-validates both addresses and re-scans the whole message to
        size it; the message was built here, CRLF throughout, so its length is
        its size. MAIL and RCPT go through `execute_command` rather than `mail()`
        and `rcpt()`, which run each address through the stdlib's address parser
        again: the addresses were checked when the row was queued, and
        `_envelope` refuses anything that could break out of the command.
        """
        if smtp.last_ehlo_response is None:
            await smtp.ehlo()  # the extensions decide the options below
        options = [b"SIZE=%d" % len(message.data)] if smtp.supports_extension("size") else []
        if message.smtputf8:
            if not smtp.supports_extension("smtputf8"):
                raise PermanentDeliveryError(
                    f"{message.recipient} needs SMTPUTF8, which the SMTP server does not offer")
            options.append(b"SMTPUTF8")
        encoding = "utf-8" if message.smtputf8 else "ascii"
        # Both checked before MAIL: a refusal after it would leave the session mid-transaction.
        mail_from = b"FROM:" + _envelope(message.envelope_from, encoding)
        rcpt_to = b"TO:" + _envelope(message.recipient, encoding)
        try:
            reply = await smtp.execute_command(b"MAIL", mail_from, *options)
            if reply.code != SMTPStatus.completed:
                raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, message.envelope_from)
            reply = await smtp.execute_command(b"RCPT", rcpt_to)
            if reply.code not in (SMTPStatus.completed, SMTPStatus.will_forward):
                raise aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, message.recipient)
            response = await _data(smtp, message.data)
        except aiosmtplib.SMTPResponseException:
            try:
                await smtp.rset()
            except (aiosmtplib.SMTPException, OSError):
                pass  # the caller closes a connection whose state is unknown
            raise
        return response.message

    def _ok(self) -> None:
        self.healthy = True
        self.pause.success()

    def _classify(self, code: int, text: str, *, stage: str) -> Exception:
        reason = f"SMTP {code} at {stage}: {text}".strip()
        kind = refusal_kind(code, text, stage) if 500 <= code < 600 else None
        if kind == "recipient":
            return RecipientRejectedError(reason, code=code)
        if kind == "message":
            return MessageRejectedError(reason, code=code, enhanced=enhanced_code(text))
        if kind == "mailbox-full":
            return TemporaryDeliveryError(reason, retry_after=MAILBOX_FULL_RETRY)
        if kind == "session":
            log.error("the SMTP server refused the hub's own session (%s); check the email "
                      "settings. Mail stays queued and is retried.", reason)
            return TemporaryDeliveryError(reason, retry_after=300.0)
        return TemporaryDeliveryError(reason)

    def _held(self) -> TemporaryDeliveryError:
        # Put back without a try: the greeting's own log line says why, once per try.
        # At most 10 s, like an outage pause, so mail follows soon after the server is back.
        left = (self.held_until or 0.0) - self.clock.monotonic()
        return TemporaryDeliveryError(
            f"waiting for the SMTP server at {self.url}, which has not answered since the hub "
            "started", retry_after=min(max(left, 0.0), 10.0) + 0.5)

    async def greet(self) -> None:
        """Connect one idle connection (EHLO, STARTTLS, AUTH) and keep it for the first mail.

        Raises UnreachableError when the server does not answer (refused, no DNS, timed
        out, a 4xx greeting); a server that answers but refuses the hub's login raises
        aiosmtplib's error, since waiting will not cure a wrong password.

        Every idle connection is borrowed meanwhile (without waiting: the greeting starts
        before the dispatcher), so a send at start waits for the greeting's outcome instead
        of racing it with an attempt, and a log line, of its own.
        """
        slot = await self._idle.get()
        others = [self._idle.get_nowait() for _ in range(self._idle.qsize())]
        try:
            if slot.smtp is not None and slot.smtp.is_connected:
                await slot.smtp.noop()
            else:
                slot.smtp = None
                slot.smtp = await self._connect()
                slot.sent = 0
        except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected, OSError,
                TimeoutError) as e:  # SMTPTimeoutError is a TimeoutError
            await self._close(slot, polite=False)
            self.healthy = False
            raise UnreachableError("the SMTP server", self.url, describe_network_error(e)) from None
        except BaseException:
            await self._close(slot, polite=False)
            raise
        finally:
            for other in others:
                self._idle.put_nowait(other)
            self._idle.put_nowait(slot)  # last in, first out: the first mail uses this connection
        self.healthy = True
        self.held_until = None

    def hold(self, seconds: float) -> None:
        """The start-up greeting failed and tries again in `seconds`: hold mail until then."""
        self.held_until = self.clock.monotonic() + seconds

    def release(self) -> None:
        """Stop holding mail: the greeting is over, whatever its outcome."""
        self.held_until = None

    async def probe(self) -> bool:
        """Check the server answers (for /healthz when idle): borrow a slot and NOOP or connect."""
        if self._idle.empty():
            return bool(self.healthy)  # every connection is busy sending: that is an answer
        slot = await self._idle.get()
        try:
            if slot.smtp is not None and slot.smtp.is_connected:
                await slot.smtp.noop()
            else:
                slot.smtp = await self._connect()
                slot.sent = 0
            self.healthy = True
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
            log.warning("SMTP health check failed: %s: %s", e.__class__.__name__, e)
            await self._close(slot, polite=False)
            self.healthy = False
        finally:
            self._idle.put_nowait(slot)
        return self.healthy

    async def close(self) -> None:
        """QUIT every idle connection (in-flight ones are closed by their senders)."""
        slots: list[_Slot] = []
        while not self._idle.empty():
            slots.append(self._idle.get_nowait())
        await asyncio.gather(*(self._close(s, polite=True) for s in slots), return_exceptions=True)
        for s in slots:
            self._idle.put_nowait(s)


def dot_stuffed(data: bytes) -> bytes | None:
    """`data` as DATA carries it (RFC 5321 4.5.2), or None if its line ends are not all CRLF.

    The same bytes as aiosmtplib's `data()` produces, without its two regex passes
    over the whole message: one to rewrite every line end, one to double leading
    dots. For a 20 KB digest those cost about 0.2 ms, a sixth of what the hub's
    dispatcher spends on a message. `build_message` writes CRLF throughout, so the
    line ends only need checking (`bytes.count` is a memchr, not a regex), and the
    dots a `bytes.replace`.
    """
    crlf = data.count(b"\r\n")
    if crlf != data.count(b"\n") or crlf != data.count(b"\r") or not data.endswith(b"\r\n"):
        return None
    stuffed = data.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


async def _data(smtp: aiosmtplib.SMTP, data: bytes) -> aiosmtplib.SMTPResponse:
    """DATA with the message's own CRLFs, through aiosmtplib's public command API.

    A message with other line ends (none that `build_message` makes) takes
    `smtp.data`, which normalises them. The reply's flag is safe without the
    protocol's lock: `read_response` arms it before the loop can deliver the
    server's answer, and a pool slot's connection has one user at a time.
    """
    stuffed = dot_stuffed(data)
    protocol = smtp.protocol
    if stuffed is None or protocol is None:
        return await smtp.data(data)
    start = await smtp.execute_command(b"DATA")
    if start.code != SMTPStatus.start_input:
        raise aiosmtplib.SMTPDataError(start.code, start.message)
    protocol.write(stuffed + b".\r\n")
    reply = await protocol.read_response(timeout=smtp.timeout)
    if reply.code != SMTPStatus.completed:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)
    return reply
