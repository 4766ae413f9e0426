"""A live hub for end-to-end tests: its settings against the session's Synapse and SMTP sink, and
running it in-process until the test is done."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from hub.clock import Clock
from hub.config import Settings, settings_from_dict
from hub.devserver.smtp import SmtpSink
from hub.devserver.synapse import RegisteredUser
from hub.service import Hub

__all__ = ["hub_settings", "running_hub", "sink_email"]


def sink_email(sink: SmtpSink, **more: Any) -> dict[str, Any]:
    """The `[email]` table of a hub that mails the test's SMTP sink (plain SMTP on loopback)."""
    return {"enabled": True, "from": "Hub <hub@example.org>", "smtp_host": sink.hostname,
            "smtp_port": sink.port, "security": "none", **more}


def hub_settings(
    *,
    homeserver: str,
    bot: RegisteredUser,
    data_dir: Path,
    moderators: list[str],
    database_url: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Settings:
    data: dict[str, Any] = {
        "hub": {"data_dir": str(data_dir)},
        "database": {"url": database_url or f"sqlite:///{data_dir / 'hub.db'}"},
        "matrix": {
            "homeserver": homeserver,
            "user_id": bot.user_id,
            "password": bot.password,
            "control_room": f"#mods-{secrets.token_hex(4)}:localhost",
            "moderators": moderators,
        },
        "web": {"listen": "127.0.0.1:0", "secret": "test-secret-not-real"},
    }
    for section, values in (extra or {}).items():
        data.setdefault(section, {}).update(values)
    return settings_from_dict(data, base=data_dir, env={})


@contextlib.asynccontextmanager
async def running_hub(settings: Settings, *, clock: Clock | None = None) -> AsyncIterator[Hub]:
    hub = Hub(settings, clock=clock, shutdown_grace=3)
    stop = asyncio.Event()
    task = asyncio.create_task(hub.run(stop))
    ready = asyncio.create_task(hub.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises the start-up failure
    if ready not in done:
        ready.cancel()
        stop.set()
        await task
        raise TimeoutError("hub did not become ready in 30 s")
    try:
        yield hub
    finally:
        stop.set()
        # Shutdown gives in-flight sends 3 s and flushes the last outcomes; generous for
        # a loaded 2-core CI box. (This once timed out when a task cancelled mid-read left
        # a SQLite connection holding the write lock; see db._sqlite_rollback_before_close.)
        await asyncio.wait_for(task, timeout=60)
