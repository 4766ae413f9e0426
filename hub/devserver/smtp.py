"""An in-process SMTP sink (aiosmtpd) that records mail, with fault injection.

:class:`SmtpSink` accepts every message on 127.0.0.1 and keeps it in memory (and,
optionally, as ``.eml``/``.html`` files for a human to open). Tests can make it
answer RCPT with temporary or permanent failures, and take it down and bring it
back on the same port.

aiosmtpd's ``Controller`` runs its own event loop in a thread, so everything shared
with the caller is guarded by a lock, and waiters in the caller's loop are woken
with ``call_soon_threadsafe``.

Run ``python -m hub.devserver.smtp --port N [--count-only]`` for a sink in its own
process (for benchmarks): it prints ``listening on HOST:PORT`` once ready and the
number of messages received when it gets SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from hub.devserver import free_port

__all__ = ["DataFaultHook", "FaultHook", "MailFaultHook", "ReceivedMail", "SmtpSink"]

FaultHook = Callable[[str, int], "str | None"]
"""``fault(rcpt, attempt) -> reply | None``: ``attempt`` is the number of earlier RCPT
commands for that address (0 on the first). A returned string such as
``"451 4.3.0 try later"`` is sent as the RCPT reply instead of ``250 OK``."""

DataFaultHook = Callable[[tuple[str, ...]], "str | None"]
"""``data_fault(rcpt_tos) -> reply | None``, after the message's final dot: a returned
string such as ``"554 5.7.1 rejected as spam"`` answers DATA instead of ``250``, and the
message is not kept."""

MailFaultHook = Callable[[str], "str | None"]
"""``mail_fault(mail_from) -> reply | None``: a returned string such as
``"550 5.7.1 sender rejected"`` answers MAIL FROM instead of ``250 OK``."""


@dataclass(frozen=True, slots=True)
class ReceivedMail:
    """One message as the sink accepted it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    message: EmailMessage = field(repr=False)

    @property
    def subject(self) -> str:
        return str(self.message.get("Subject", ""))

    @property
    def text(self) -> str | None:
        """The text/plain body, if any."""
        return self._body("plain")

    @property
    def html(self) -> str | None:
        """The text/html body, if any."""
        return self._body("html")

    def _body(self, subtype: str) -> str | None:
        part = self.message.get_body(preferencelist=(subtype,))
        if part is None:
            return None
        assert isinstance(part, EmailMessage)
        content = part.get_content()
        if not isinstance(content, str):
            return None
        # The parser keeps the wire's CRLF line endings; callers compare text.
        return content.replace("\r\n", "\n")


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:60] or "no-subject"


class _Handler:
    """aiosmtpd handler hooks; runs in the controller's thread."""

    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        # Enforced here rather than with aiosmtpd's auth_required, which warns
        # (UserWarning + log) on every connection when TLS is not also required.
        if self._sink.credentials is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        mail_fault = self._sink.mail_fault
        reply = mail_fault(address) if mail_fault is not None else None
        if reply is not None:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self._sink._rcpt(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data_fault = self._sink.data_fault
        reply = data_fault(tuple(envelope.rcpt_tos)) if data_fault is not None else None
        if reply is not None:
            return reply
        content = envelope.original_content or envelope.content or b""
        raw = content if isinstance(content, bytes) else content.encode("utf-8")
        self._sink._deliver(envelope.mail_from or "", tuple(envelope.rcpt_tos), raw)
        return "250 Message accepted for delivery"


class _Controller(Controller):
    """Remembers live sessions so stop() can drop them like a real outage would."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Weak: a benchmark opens many connections; closed ones must not pile up.
        self.sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()

    def factory(self) -> SMTP:
        # Same as Controller.factory(), which is untyped.
        smtp = SMTP(self.handler, **self.SMTP_kwargs)
        self.sessions.add(smtp)
        return smtp

    async def drop_sessions(self) -> None:
        for smtp in list(self.sessions):
            transport = getattr(smtp, "transport", None)
            if transport is not None:
                transport.abort()
        self.sessions.clear()


class SmtpSink:
    """Plain-SMTP server on 127.0.0.1 that records everything it accepts.

    ``port=None`` picks a free port once, at construction, so :meth:`stop` then
    :meth:`start` comes back on the same port. ``store=False`` keeps no messages in
    memory; with no ``out_dir`` or ``on_message`` either, mail is only counted, not
    parsed (for benchmarks). ``credentials=(user, password)`` makes AUTH PLAIN/LOGIN
    mandatory, without TLS, to exercise a client's login path.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        hostname: str = "127.0.0.1",
        out_dir: Path | None = None,
        fault: FaultHook | None = None,
        data_fault: DataFaultHook | None = None,
        mail_fault: MailFaultHook | None = None,
        store: bool = True,
        credentials: tuple[str, str] | None = None,
        on_message: Callable[[ReceivedMail], None] | None = None,
        on_raw: Callable[[tuple[str, ...], bytes], None] | None = None,
    ) -> None:
        self.hostname = hostname
        self.port = port if port is not None else free_port(hostname)
        self.out_dir = out_dir
        self.fault: FaultHook | None = fault
        """Consulted for every RCPT; may be replaced while the sink runs."""
        self.data_fault: DataFaultHook | None = data_fault
        """Consulted for every message at the end of DATA; may be replaced while the sink runs."""
        self.mail_fault: MailFaultHook | None = mail_fault
        """Consulted for every MAIL FROM; may be replaced while the sink runs."""
        self.store = store
        self.credentials = credentials
        self.on_message = on_message
        """Called with each accepted message, in the SMTP server's thread."""
        self.on_raw = on_raw
        """Called with each accepted message's recipients and bytes, unparsed (cheap: for a test
        that counts thousands), in the SMTP server's thread."""
        self._lock = threading.Lock()
        self._messages: list[ReceivedMail] = []
        self._count = 0
        self._attempts: dict[str, int] = {}
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._controller: _Controller | None = None

    # -- state shared with the controller thread ------------------------------------

    @property
    def messages(self) -> list[ReceivedMail]:
        """A snapshot of the messages received so far, oldest first."""
        with self._lock:
            return list(self._messages)

    @property
    def count(self) -> int:
        """Messages accepted so far (also counted when ``store`` is False)."""
        with self._lock:
            return self._count

    def attempts(self, rcpt: str) -> int:
        """How many RCPT commands named ``rcpt`` so far (case-insensitive)."""
        with self._lock:
            return self._attempts.get(rcpt.lower(), 0)

    def clear(self) -> None:
        """Forget received messages and RCPT attempt counts (not the file numbering)."""
        with self._lock:
            self._messages.clear()
            self._attempts.clear()
            self._count = 0

    def _rcpt(self, address: str) -> str | None:
        key = address.lower()
        with self._lock:
            attempt = self._attempts.get(key, 0)
            self._attempts[key] = attempt + 1
        hook = self.fault
        return hook(address, attempt) if hook is not None else None

    def _deliver(self, mail_from: str, rcpt_tos: tuple[str, ...], raw: bytes) -> None:
        if self.on_raw is not None:
            self.on_raw(rcpt_tos, raw)
        mail: ReceivedMail | None = None
        on_message = self.on_message
        if self.store or self.out_dir is not None or on_message is not None:
            message = email.message_from_bytes(raw, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            mail = ReceivedMail(mail_from, rcpt_tos, raw, message)
        with self._lock:
            self._count += 1
            number = self._count
            if mail is not None and self.store:
                self._messages.append(mail)
            ready = [w for w in self._waiters if w[0] <= self._count]
            for waiter in ready:
                self._waiters.remove(waiter)
        if mail is not None and self.out_dir is not None:
            self._write_files(number, mail)
        if mail is not None and on_message is not None:
            on_message(mail)
        for _, loop, future in ready:
            # The waiter's loop may have been closed (test finished) meanwhile.
            if not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, future)

    def _write_files(self, number: int, mail: ReceivedMail) -> None:
        assert self.out_dir is not None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{number:03d}-{_slug(mail.subject)}"
        (self.out_dir / f"{stem}.eml").write_bytes(mail.raw)
        html = mail.html
        if html is not None:
            (self.out_dir / f"{stem}.html").write_text(html, encoding="utf-8")

    # An explicit timeout (ASYNC109) because every caller wants one and the error
    # message reports how many messages did arrive.
    async def wait_for(self, count: int, timeout: float = 10) -> list[ReceivedMail]:  # noqa: ASYNC109
        """Wait until at least ``count`` messages have arrived; return them all.

        Counts since construction (or :meth:`clear`). Raises :class:`TimeoutError`
        saying how many did arrive.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiter = (count, loop, future)
        with self._lock:
            if self._count >= count:
                return list(self._messages)
            self._waiters.append(waiter)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise TimeoutError(f"expected {count} message(s) within {timeout:g}s, got {self.count}") from None
        finally:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return self.messages

    # -- lifecycle --------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> None:
        """Start listening (again). Blocks briefly until the server answers."""
        if self._controller is not None:
            raise RuntimeError(f"SMTP sink already running on {self.hostname}:{self.port}")
        kwargs: dict[str, Any] = {}
        if self.credentials is not None:
            kwargs.update(authenticator=self._authenticate, auth_require_tls=False)
        # A new Controller every time: a stopped one has closed its event loop.
        controller = _Controller(
            _Handler(self),
            hostname=self.hostname,
            port=self.port,
            server_hostname="sink.localhost",
            ident="Cohort Hub SMTP sink",
            **kwargs,
        )
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        """Stop listening and drop open connections, like a crashed mail server."""
        controller = self._controller
        if controller is None:
            return
        self._controller = None
        # aiosmtpd's stop() only cancels tasks; abort the sockets too so clients
        # with an open session see the outage instead of hanging.
        asyncio.run_coroutine_threadsafe(controller.drop_sessions(), controller.loop).result(5)
        controller.stop()

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        assert self.credentials is not None
        ok = (
            isinstance(auth_data, LoginPassword)
            and (
                auth_data.login.decode("utf-8"),
                auth_data.password.decode("utf-8"),
            )
            == self.credentials
        )
        # handled=False: let aiosmtpd send the 235/535 reply itself.
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<SmtpSink {self.hostname}:{self.port} {state}, {self.count} received>"


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _main(argv: list[str] | None = None) -> int:
    import argparse
    import signal

    parser = argparse.ArgumentParser(
        prog="python -m hub.devserver.smtp",
        description="Run an SMTP sink on 127.0.0.1 until SIGTERM/SIGINT.",
    )
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--count-only",
        action="store_true",
        help="do not parse or print each message, only count them",
    )
    parser.add_argument("--out-dir", type=Path, default=None, help="write .eml/.html files here")
    args = parser.parse_args(argv)

    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def show(mail: ReceivedMail) -> None:
        print(f"{mail.mail_from} -> {', '.join(mail.rcpt_tos)}: {mail.subject}", flush=True)

    # Never store: a benchmark may push hundreds of thousands of messages through.
    sink = SmtpSink(
        port=args.port,
        hostname=args.host,
        out_dir=args.out_dir,
        store=False,
        on_message=None if args.count_only else show,
    )
    sink.start()
    print(f"listening on {sink.hostname}:{sink.port}", flush=True)
    stopping.wait()
    sink.stop()
    print(sink.count, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
