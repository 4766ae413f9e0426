"""The hub's own SMTP listener (`[email.inbound]`): replies and bounces, kept before 250.

The operator's MTA forwards ``reply+*@domain`` and ``bounce+*@domain`` here (README,
"Replies by email"). Everything decided at SMTP time is decided by the envelope and
the size, so a refusal reaches the sending MTA, which tells its user:

* RCPT: an address that is not ``reply+TOKEN`` / ``bounce+TOKEN`` at our domain, or a
  token whose signature does not hold, is refused with 550 and nothing is stored.
* DATA: more than ``max_size_kb`` is refused with 552 (also announced in EHLO SIZE and
  checked against ``MAIL FROM ... SIZE=``).
* Otherwise the raw message is written to ``inbound_mail`` and committed, and only then
  is 250 answered: a crash after the answer loses nothing, a crash before it makes the
  sender try again. What the message says (who sent it, whether it is an auto-reply) is
  judged afterwards by hub.features.email_replies, never in the SMTP conversation, and
  nothing is ever sent back: no answer, no loop.

The server runs on the hub's own event loop (not aiosmtpd's threaded Controller), so
the database engine and clock are the hub's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import insert
from sqlalchemy.exc import SQLAlchemyError

from hub.clock import Clock
from hub.config import InboundSettings
from hub.core.tokens import AddressTokenSigner, address_token
from hub.errors import LinkTokenError
from hub.storage.db import Database
from hub.storage.models import inbound_mail_table as M

__all__ = ["InboundHandler", "InboundServer"]

log = logging.getLogger(__name__)


class InboundHandler:
    """aiosmtpd handler: checks the envelope, stores accepted mail, wakes the poster."""

    def __init__(self, db: Database, signer: AddressTokenSigner, domain: str, clock: Clock,
                 *, max_bytes: int, on_stored: Callable[[], None] = lambda: None) -> None:
        self.db = db
        self.signer = signer
        self.domain = domain
        self.clock = clock
        self.max_bytes = max_bytes
        self.on_stored = on_stored
        self._pending: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def _store(self, values: dict[str, Any]) -> None:
        """Commit one message's row; returns once it is durable, raises if it is not.

        Group commit: messages arriving while a commit is under way wait for the next one,
        which writes them all in one transaction. Ten MTA connections at once are then one
        writer, not ten competing for SQLite's write lock, and each still hears 250 only
        after its own row is committed.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((values, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending(), name="inbound-mail-writer")
        await future

    async def _write_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                async with self.db.transaction() as s:
                    await s.execute(insert(M), [values for values, _ in batch])
            except BaseException as e:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e if isinstance(e, Exception) else OSError("stopped"))
                if not isinstance(e, Exception):
                    raise
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        found = address_token(address, self.domain)
        if found is None:
            return "550 5.1.1 No such address here"
        kind, token = found
        try:
            if kind == "reply":
                self.signer.verify_reply(token)
            else:
                self.signer.verify_bounce(token)
        except LinkTokenError:
            # No detail: whoever probes tokens learns nothing from the answer.
            return "550 5.1.1 This reply address is not valid"
        if envelope.rcpt_tos:
            # One stored row is one message for one token; the sending MTA sends the rest
            # again, one at a time (RFC 5321 4.5.3.1.10: 452 is "try again later").
            return "452 4.5.3 One recipient per message, please"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        if not isinstance(raw, bytes):
            raw = str(raw).encode("utf-8", "surrogateescape")
        if len(raw) > self.max_bytes:  # aiosmtpd's own limit answers first; this is a backstop
            return "552 5.3.4 Message too big for this address"
        if not envelope.rcpt_tos:
            return "503 5.5.1 No valid recipient"
        found = address_token(envelope.rcpt_tos[0], self.domain)
        assert found is not None  # checked at RCPT
        kind, token = found
        headers = BytesHeaderParser(policy=compat32).parsebytes(raw[:65536])
        message_id = str(headers.get("Message-ID", "") or "").strip()[:400] or None
        mail_from = str(envelope.mail_from or "")[:320]
        try:
            await self._store(dict(kind=kind, token=token.lower(), mail_from=mail_from,
                                   message_id=message_id, raw=raw,
                                   received_at=self.clock.now().timestamp(), status="new"))
        except (SQLAlchemyError, OSError) as e:
            log.warning("could not store an inbound %s (asked the sender to retry): %s", kind, e)
            return "451 4.3.0 Temporary failure, please try again later"
        self.on_stored()
        return "250 2.0.0 Accepted"


class InboundServer:
    """Binds the listener on `[email.inbound] listen`; `start` and `stop` with the hub."""

    def __init__(self, settings: InboundSettings, handler: InboundHandler) -> None:
        self.settings = settings
        self.handler = handler
        self._server: asyncio.base_events.Server | None = None

    @property
    def bound_port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    def _protocol(self) -> SMTP:
        return SMTP(self.handler, data_size_limit=self.handler.max_bytes, enable_SMTPUTF8=True,
                    hostname=self.settings.domain, ident="Cohort Hub", timeout=120)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self.settings.host, self.settings.port)
        log.info("accepting replies by email on %s:%d for %s", self.settings.host, self.bound_port,
                 self.settings.domain)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            try:
                # Real time on purpose: this bounds how long remote SMTP clients take to hang
                # up (wait_closed waits for their connections), which no hub clock drives; on a
                # FakeClock the bound would pass at once and cut a test's own client off.
                await asyncio.wait_for(self._server.wait_closed(), 5)
            except TimeoutError:
                pass
            self._server = None
