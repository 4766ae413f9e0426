"""Helpers for the delivery fault tests: rooms made by the hub's account, reading them back,
queueing rows straight into the hub's database, and `hub run` as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nio import (
    AsyncClient,
    JoinResponse,
    MessageDirection,
    RoomCreateResponse,
    RoomMessagesResponse,
    SyncResponse,
)
from sqlalchemy import func, select

from hub.clock import SystemClock
from hub.delivery.outbox import Outbox
from hub.devserver.synapse import RegisteredUser
from hub.storage.db import open_database
from hub.storage.models import outbox_table as T


def raw_client(homeserver: str, user: RegisteredUser) -> AsyncClient:
    """A plain client on the user's registration device (not the hub's own device)."""
    client = AsyncClient(homeserver, user.user_id, device_id=user.device_id)
    client.restore_login(user.user_id, user.device_id, user.access_token)
    return client


async def make_rooms(homeserver: str, bot: RegisteredUser, reader: RegisteredUser, n: int,
                     *, concurrency: int = 8) -> list[str]:
    """`n` unencrypted rooms created by the hub's account, each joined by `reader`."""
    owner = raw_client(homeserver, bot)
    guest = raw_client(homeserver, reader)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> str:
        async with gate:
            made = await owner.room_create(name=f"fan-out {i}", invite=[reader.user_id])
            assert isinstance(made, RoomCreateResponse), made
            joined = await guest.join(made.room_id)
            assert isinstance(joined, JoinResponse), joined
            return str(made.room_id)

    try:
        return list(await asyncio.gather(*(one(i) for i in range(n))))
    finally:
        await owner.close()
        await guest.close()


def fresh_filter() -> dict[str, Any]:
    """A sync filter no earlier request used. Synapse caches a sync response for two
    minutes per (device, since, filter, ...): an initial sync from a second client on
    the same device would get the first one's old position, and history read back
    from it would silently miss everything newer."""
    return {"room": {"timeline": {"limit": 1, "not_senders": [f"@nocache{secrets.token_hex(6)}:invalid"]}}}


async def read_room(client: AsyncClient, room_id: str, sender: str) -> list[str]:
    """Every m.room.message body `sender` posted in the room, oldest first, read by
    paginating the room's history the way a client scrolls back."""
    synced = await client.sync(timeout=0, sync_filter=fresh_filter())
    assert isinstance(synced, SyncResponse), synced
    token = synced.next_batch
    bodies: list[str] = []
    while True:
        resp = await client.room_messages(room_id, start=token, direction=MessageDirection.back,
                                          limit=500)
        assert isinstance(resp, RoomMessagesResponse), resp
        for ev in resp.chunk:
            if ev.sender == sender and ev.source.get("type") == "m.room.message":
                bodies.append(str(ev.source.get("content", {}).get("body", "")))
        if not resp.chunk or not resp.end or resp.end == token:
            break
        token = resp.end
    bodies.reverse()
    return bodies


async def queue_rows(database_url: str, rows: list[dict[str, Any]]) -> int:
    db = await open_database(database_url)
    try:
        async with db.transaction() as s:
            return await Outbox(db, SystemClock()).enqueue_many(s, rows)
    finally:
        await db.close()


async def status_counts(database_url: str) -> dict[str, int]:
    db = await open_database(database_url, migrate=False)
    try:
        async with db.session() as s:
            rows = (await s.execute(select(T.c.status, func.count()).group_by(T.c.status))).all()
        return {status: int(n) for status, n in rows}
    finally:
        await db.close()


def write_config(path: Path, *, homeserver: str, bot: RegisteredUser, data_dir: Path,
                 database_url: str, control_room: str, moderators: list[str],
                 email: dict[str, Any] | None = None) -> Path:
    """A config file for `hub run -c FILE` (TOML is a superset of this JSON-ish subset)."""

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return json.dumps(v)

    sections: dict[str, dict[str, Any]] = {
        "hub": {"data_dir": str(data_dir)},
        "database": {"url": database_url},
        "matrix": {"homeserver": homeserver, "user_id": bot.user_id, "password": bot.password,
                   "control_room": control_room, "moderators": moderators},
        "web": {"listen": "127.0.0.1:0", "secret": "test-secret-not-real"},
    }
    if email:
        sections["email"] = email
    text = "\n".join(
        f"[{name}]\n" + "\n".join(f"{k} = {val(v)}" for k, v in values.items()) + "\n"
        for name, values in sections.items()
    )
    path.write_text(text, encoding="utf-8")
    return path


class HubProcess:
    """`hub run -c FILE` in a subprocess, with its log in a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log_path.open("ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hub", "run", "-c", str(self.config)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
        out.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    async def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, timeout)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


async def wait_for(predicate: Any, timeout: float, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)
