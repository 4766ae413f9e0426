"""Shared fixtures: one real Synapse per session, real SMTP, SQLite and PostgreSQL, the content library."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hub.clock import Clock
from hub.config import Settings, settings_from_dict
from hub.core.content import Library
from hub.core.content_library import load_library
from hub.devserver.smtp import SmtpSink
from hub.devserver.synapse import RegisteredUser, SynapseServer
from hub.service import Hub

from matrix_user import Participant

PG_URL = os.environ.get("HUB_TEST_DATABASE_URL")


@pytest.fixture(scope="session")
async def synapse(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SynapseServer]:
    server = SynapseServer(tmp_path_factory.mktemp("synapse"))
    await server.start()
    print(f"\nSynapse started in {server.startup_seconds:.2f}s at {server.url}")
    yield server
    await server.stop()


@pytest.fixture
def unique() -> Callable[[str], str]:
    def make(prefix: str) -> str:
        return f"{prefix}{secrets.token_hex(4)}"

    return make


@pytest.fixture
async def register(synapse: SynapseServer, unique: Callable[[str], str]) -> Callable[..., Any]:
    async def make(prefix: str = "user", password: str | None = None) -> RegisteredUser:
        return await synapse.register(unique(prefix), password or secrets.token_urlsafe(12))

    return make


@pytest.fixture
async def participant(
    synapse: SynapseServer, register: Callable[..., Any], tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    made: list[Participant] = []

    async def make(prefix: str = "user") -> Participant:
        user = await register(prefix)
        p = Participant(synapse.url, user, tmp_path / f"store-{user.user_id[1:].split(':')[0]}")
        await p.start()
        made.append(p)
        return p

    yield make
    for p in made:
        await p.stop()


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


@pytest.fixture
async def database_urls(tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """A fresh SQLite file and, when HUB_TEST_DATABASE_URL is set, a fresh PostgreSQL database."""
    urls = {"sqlite": f"sqlite:///{tmp_path / 'storage.db'}"}
    created: str | None = None
    if PG_URL:
        import asyncpg

        name = f"hub_test_{secrets.token_hex(6)}"
        conn = await asyncpg.connect(PG_URL)
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()
        created = name
        base, _, _ = PG_URL.rpartition("/")
        urls["postgresql"] = f"{base}/{name}"
    yield urls
    if created:
        import asyncpg

        conn = await asyncpg.connect(PG_URL)
        await conn.execute(f'DROP DATABASE IF EXISTS "{created}" WITH (FORCE)')
        await conn.close()


def backends() -> list[str]:
    """Storage tests run on SQLite always and on PostgreSQL when configured (CI sets it)."""
    if PG_URL:
        return ["sqlite", "postgresql"]
    if os.environ.get("CI"):
        raise RuntimeError("CI must set HUB_TEST_DATABASE_URL so storage tests run on PostgreSQL")
    return ["sqlite"]


# The shipped content library, loaded once per module: test_content.py and
# test_content_library.py both use it, and loading and checking it takes a while.
@pytest.fixture(scope="module")
def library() -> Library:
    return load_library()
