"""Logging: one line per event, and secrets never printed.

A filter on the root handler replaces every known secret (config passwords,
tokens, the web secret, the database password, the access token the
homeserver gave us) with ``***`` in the final message text and arguments, so
a secret that reaches a log call by accident (an exception's repr, a URL)
still does not reach the output.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterable

__all__ = ["SecretFilter", "add_secrets", "configure_logging", "secret_filter"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class SecretFilter(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._secrets: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def add(self, secrets: Iterable[str]) -> None:
        with self._lock:
            # Longest first so a secret containing another is hidden whole.
            merged = set(self._secrets) | {s for s in secrets if s and len(s) >= 4}
            self._secrets = tuple(sorted(merged, key=len, reverse=True))

    def redact(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                text = text.replace(s, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg = self.redact(message)
        record.args = None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


secret_filter = SecretFilter()


def add_secrets(secrets: Iterable[str]) -> None:
    secret_filter.add(secrets)


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.addFilter(secret_filter)
    for h in list(root.handlers):
        if getattr(h, "_hub", False):
            root.removeHandler(h)
    handler._hub = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # nio logs every request at INFO, including URLs; keep it to warnings.
    # Alembic says "Context impl SQLiteImpl" at every open; hub.storage.db logs one line per upgrade.
    for noisy in ("nio", "peewee", "aiosqlite", "asyncio", "apscheduler", "mail.log", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
