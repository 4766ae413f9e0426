"""hub.matrix.device_tracking: whose device lists nio follows, saved and restored around runs.

A real nio `Olm` on a real store and real databases (SQLite and PostgreSQL); what matters is
whom nio will query (`users_for_key_query`) and whom it counts as current (`tracked_users`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from nio import AsyncClient
from nio.crypto import Olm

from hub.clock import FakeClock
from hub.matrix.crypto_store import HubCryptoStore
from hub.matrix.device_tracking import PENDING_KEY, TRACKED_KEY, DeviceTracking
from hub.storage.db import Database, open_database

from tests.support.databases import backends

BOTH = pytest.mark.parametrize("backend", backends())
ADA, BO, CY, DEE = "@ada:x", "@bo:x", "@cy:x", "@dee:x"


def _client(tmp_path: Path, name: str) -> Any:
    (tmp_path / name).mkdir()
    olm = Olm("@hub:x", "HUB", HubCryptoStore("@hub:x", "HUB", str(tmp_path / name)))
    return SimpleNamespace(olm=olm)  # DeviceTracking reads the client's `olm` only


@contextlib.asynccontextmanager
async def _database(url: str) -> AsyncIterator[tuple[Database, FakeClock]]:
    db = await open_database(url)
    try:
        yield db, FakeClock(datetime(2027, 3, 1, tzinfo=UTC))
    finally:
        await db.close()


def _tracking(client: Any, db: Database, clock: FakeClock) -> DeviceTracking:
    return DeviceTracking(cast(AsyncClient, client), db, clock, save_every=60.0)


@BOTH
async def test_a_run_follows_whom_the_last_one_followed_and_queries_who_was_waiting(
    database_urls: dict[str, str], backend: str, tmp_path: Path,
) -> None:
    async with _database(database_urls[backend]) as (db, clock):
        first = _client(tmp_path, "first")
        tracking = _tracking(first, db, clock)
        first.olm.tracked_users.update({ADA, BO, CY})
        first.olm.users_for_key_query.add(CY)  # CY's devices changed; not queried yet
        async with db.transaction() as s:  # what the sync loop does with every position
            await db.set_state("sync.next_batch", "s1", s)
            await tracking.with_position(s)
        await tracking.save_if_due(force=True)  # at stop
        assert await db.get_state(PENDING_KEY) == '["@cy:x"]'

        second = _client(tmp_path, "second")  # the next run: nio tracks nobody
        restored = await _tracking(second, db, clock).restore()

        assert restored == 2
        assert second.olm.tracked_users == {ADA, BO}  # their keys are current: no query
        assert second.olm.users_for_key_query == {CY}  # the change seen before the stop


@BOTH
async def test_waiting_users_are_saved_only_with_the_position_and_the_set_now_and_then(
    database_urls: dict[str, str], backend: str, tmp_path: Path,
) -> None:
    async with _database(database_urls[backend]) as (db, clock):
        client = _client(tmp_path, "hub")
        tracking = _tracking(client, db, clock)
        client.olm.users_for_key_query.add(ADA)
        with pytest.raises(RuntimeError):
            async with db.transaction() as s:
                await tracking.with_position(s)
                raise RuntimeError("the position's transaction failed")
        # The position was not saved, so neither is what waits with it (a crash now replays
        # the batch, and its changes come again).
        assert await db.get_state(PENDING_KEY) is None

        client.olm.tracked_users.update({ADA, BO})
        await tracking.save_if_due()
        assert await db.get_state(TRACKED_KEY) is None  # not due yet: 60 s
        clock.advance(61)
        await tracking.save_if_due()
        assert await db.get_state(TRACKED_KEY) == '["@bo:x"]'  # ADA waits for a query: not current


async def test_device_list_changes_queue_followed_users_and_left_users_are_no_longer_followed(
    tmp_path: Path,
) -> None:
    """nio itself takes a change only for members of rooms it has loaded in this run."""
    async with _database(f"sqlite:///{tmp_path / 'hub.db'}") as (db, clock):
        client = _client(tmp_path, "hub")
        client.olm.tracked_users.update({ADA, BO})
        tracking = _tracking(client, db, clock)
        tracking.note_changes(changed=[ADA, DEE], left=[BO])
        assert client.olm.users_for_key_query == {ADA}  # DEE is nobody the hub follows
        assert client.olm.tracked_users == {ADA}


async def test_a_mangled_saved_list_means_querying_everyone_again(tmp_path: Path) -> None:
    async with _database(f"sqlite:///{tmp_path / 'hub.db'}") as (db, clock):
        await db.set_state(TRACKED_KEY, "[not json")
        await db.set_state(PENDING_KEY, '{"@ada:x": 1}')
        client = _client(tmp_path, "hub")
        assert await _tracking(client, db, clock).restore() == 0
        assert client.olm.tracked_users == set() and client.olm.users_for_key_query == set()
