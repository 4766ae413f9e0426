"""Waiting for a peer that does not answer yet: the homeserver or the SMTP server at start.

A service started before its homeserver (both restarted by one reboot, say) or
while the mail server is down must not exit with a traceback: `hub run` tries
again with backoff (1, 2, 4 ... 60 s), one log line per try naming the URL and
the reason, and goes on as soon as the peer answers. `hub check` does not wait:
it reports the same `UnreachableError` once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import TypeVar

from hub.clock import Clock
from hub.errors import UnreachableError

__all__ = ["MAX_WAIT", "describe_network_error", "retry_delay", "until_reachable"]

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_WAIT = 60.0


def retry_delay(failures: int, cap: float = MAX_WAIT) -> float:
    """Seconds to wait after the `failures`-th failed try in a row: 1, 2, 4, ... `cap`.

    No jitter: one process waits for one peer, so there is no herd to spread, and an
    operator reading the log sees the schedule they expect.
    """
    return float(min(cap, 2 ** min(max(failures, 1) - 1, 30)))


def describe_network_error(error: BaseException) -> str:
    """A failed connection in a few words: "connection refused", "DNS lookup failed (...)".

    Libraries wrap the socket's error (aiohttp's ClientConnectorError, aiosmtplib's
    SMTPConnectError), so the chain is followed to the first error that says what happened.
    """
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, socket.gaierror):
            return f"DNS lookup failed ({e.strerror or e})"
        if isinstance(e, ConnectionRefusedError) or getattr(e, "errno", None) == errno.ECONNREFUSED:
            return "connection refused"
        if isinstance(e, TimeoutError | asyncio.TimeoutError):
            return "timed out"
        if isinstance(e, ssl.SSLError):
            return f"TLS failed ({e.reason or e})"
        inner = getattr(e, "os_error", None)  # aiohttp keeps the socket's error here
        if isinstance(inner, BaseException):
            e = inner
            continue
        if isinstance(e, OSError) and e.errno is not None and e.strerror:
            return e.strerror.lower()
        e = e.__cause__ or e.__context__
    text = str(error)
    if "Errno 111" in text or "Connection refused" in text:  # "Multiple exceptions: ..." (IPv4 and IPv6)
        return "connection refused"
    return f"{error.__class__.__name__}: {text}" if text else error.__class__.__name__


async def until_reachable(
    attempt: Callable[[], Awaitable[T]],
    clock: Clock,
    *,
    on_wait: Callable[[float], None] | None = None,
    cap: float = MAX_WAIT,
) -> T:
    """`attempt()`'s result, trying again with backoff for as long as it raises UnreachableError.

    `on_wait(seconds)` is told each wait before it starts (the SMTP pool holds mail meanwhile).
    Any other error ends the wait: a wrong password does not cure itself.
    """
    failures = 0
    last: UnreachableError | None = None
    while True:
        try:
            result = await attempt()
        except UnreachableError as e:
            failures, last = failures + 1, e
            delay = retry_delay(failures, cap)
            log.warning("cannot reach %s at %s (%s); trying again in %d s", e.what, e.url, e.reason, delay)
            if on_wait is not None:
                on_wait(delay)
            await clock.sleep(delay)
            continue
        if last is not None:
            log.info("%s at %s answers (after %d failed %s)", last.what, last.url, failures,
                     "try" if failures == 1 else "tries")
        return result
