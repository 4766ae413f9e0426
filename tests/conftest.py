"""Shared fixtures: one real Synapse per session, real SMTP, SQLite and PostgreSQL, the content library."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hub.core.content import Library
from hub.core.content_library import load_library
from hub.devserver.synapse import RegisteredUser, SynapseServer

from tests.support.databases import PG_URL
from tests.support.matrix_user import Participant


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


# The shipped content library, loaded once per module: test_content.py and
# test_content_library.py both use it, and loading and checking it takes a while.
@pytest.fixture(scope="module")
def library() -> Library:
    return load_library()
