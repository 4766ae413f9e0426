"""A SQLite database locked by another writer no longer stops the hub.

Another process (a long roster import, an operator's sqlite3 shell) holds the write lock
past the busy timeout while a moderator's command arrives. The hub once stopped on the
"database is locked" its sync handler got, and answered nothing until restarted. Now it
backs off, asks for the same changes again, and answers once the lock is gone: the
moderator's client sees one "pong", not two, and the hub is still running.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nio import RoomMessageNotice

from hub.storage import db as hub_db

from tests.support.live_hub import hub_settings, running_hub

pytestmark = pytest.mark.synapse

HELD = 4.0  # seconds the other writer holds the lock: far past the busy timeout below


async def test_a_command_that_meets_a_locked_database_is_answered_once_the_lock_is_gone(
    register: Callable[..., Any], participant: Callable[..., Any], synapse: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(hub_db, "SQLITE_BUSY_MS", 200)
    bot = await register("hub")
    mod = await participant("lead")
    settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub",
                            moderators=[mod.user_id])
    async with running_hub(settings) as hub:
        control = hub.control_room_id
        assert control is not None and hub.sync is not None
        await mod.wait_joined(control, mod.user_id, timeout=30)
        assert await mod.ask(control, "!hub ping") == "pong"

        other = sqlite3.connect(settings.database.url.removeprefix("sqlite:///"), timeout=30,
                                isolation_level=None, check_same_thread=False)
        # The write lock, as a writer in another process holds it; taken from a thread, so the
        # hub can end a transaction it is in (taken on the loop, it waited 30 s and failed).
        await asyncio.to_thread(other.execute, "BEGIN IMMEDIATE")
        try:
            sent = await mod.send(control, "!hub ping")
            await asyncio.sleep(HELD)
        finally:
            other.execute("ROLLBACK")
            other.close()
        released = time.monotonic()
        reply = await mod.wait_for_reply(control, sent, timeout=30)
        assert isinstance(reply, RoomMessageNotice) and reply.body == "pong", reply
        answered_after = time.monotonic() - released
        # Still running and syncing: a third command is answered as usual.
        assert await mod.ask(control, "!hub ping") == "pong"
    assert any("handling a sync failed (database: database is locked); handling it again" in r.getMessage()
               for r in caplog.records), "the lock was never met: the test proved nothing"
    pongs = [e for e in mod.in_room(control) if isinstance(e, RoomMessageNotice) and e.body == "pong"]
    assert len(pongs) == 3, [e.body for e in pongs]
    assert answered_after < 20
