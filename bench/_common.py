"""What the benchmarks share: the SMTP sink and raw sender, the hub's email machinery, a local
Synapse with a running `Hub`, Matrix clients and process CPU. Setup only: what each benchmark
measures stays in its own script."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosmtplib
from nio import AsyncClient, AsyncClientConfig
from sqlalchemy import func, select

from hub.clock import SystemClock
from hub.config import EmailSettings, Settings, settings_from_dict
from hub.delivery.dispatcher import Dispatcher
from hub.delivery.outbox import EMAIL, Outbox
from hub.devserver.synapse import RegisteredUser, SynapseServer
from hub.email.message import BuiltMessage, build_message
from hub.email.payload import EmailPayload
from hub.email.pool import SmtpPool
from hub.email.sender import EmailSender
from hub.features.digest_mail import TEMPLATE as DIGEST
from hub.features.digest_mail import DigestMail
from hub.service import Hub
from hub.storage.db import Database, open_database
from hub.storage.models import outbox_table as T

FROM = "Mentoring Hub <hub@example.org>"


@asynccontextmanager
async def scratch_database(folder: Path, server_url: str | None) -> AsyncIterator[str]:
    """The database a run works in: a SQLite file in `folder`; or, given a PostgreSQL URL, a
    fresh database made on that server and dropped afterwards. So a run never counts rows an
    earlier one left, and leaves none behind in the database it was pointed at (runs that
    worked in a shared `test` database once left 4,000 sent rows there, which skewed the next)."""
    if not server_url:
        yield f"sqlite:///{folder / 'hub.db'}"
        return
    import asyncpg  # PostgreSQL only

    name = f"hub_bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield f"{server_url.rpartition('/')[0]}/{name}"
    finally:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def backend_name(database_url: str | None) -> str:
    return "postgresql" if database_url else "sqlite"


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process (Linux /proc), to show where the time goes."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


# -- email ------------------------------------------------------------------------------------


def start_sink() -> tuple[subprocess.Popen[str], int]:
    """The SMTP sink in its own process (its CPU is not the client's); returns it and its port."""
    proc = subprocess.Popen([sys.executable, "-m", "hub.devserver.smtp", "--count-only"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, int(line.strip().rsplit(":", 1)[1])


def stop_sink(proc: subprocess.Popen[str]) -> int:
    """Stop the sink; returns how many messages it received."""
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    return int(out.strip().splitlines()[-1])


def prebuild(payloads: Sequence[EmailPayload]) -> list[BuiltMessage]:
    now = datetime.now(UTC)
    return [build_message(p, txn_id=secrets.token_hex(16), from_header=FROM, date=now) for p in payloads]


async def raw_smtp(port: int, messages: Sequence[BuiltMessage], connections: int) -> tuple[float, float]:
    """Plain aiosmtplib `sendmail` of pre-built messages over `connections` reused connections.

    Returns (seconds, process CPU seconds) for the sending alone.
    """
    queue: asyncio.Queue[BuiltMessage] = asyncio.Queue()
    for m in messages:
        queue.put_nowait(m)
    clients = [aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
               for _ in range(connections)]
    for c in clients:
        await c.connect()

    async def worker(client: aiosmtplib.SMTP) -> None:
        while not queue.empty():
            m = queue.get_nowait()
            await client.sendmail(m.envelope_from, [m.recipient], m.data)

    began, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(c) for c in clients))
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    for c in clients:
        await c.quit()
    return elapsed, cpu


@dataclass
class EmailRig:
    """The hub's email path as `hub run` wires it: outbox, dispatcher, `EmailSender` (with the digest's
    template, rendered when sent), `SmtpPool`."""

    db: Database
    outbox: Outbox
    pool: SmtpPool
    dispatcher: Dispatcher
    task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, port: int, connections: int) -> EmailRig:
        db = await open_database(url)
        clock = SystemClock()
        outbox = Outbox(db, clock)
        settings = EmailSettings(enabled=True, sender=FROM, smtp_host="127.0.0.1", smtp_port=port,
                                 security="none", connections=connections)
        pool = SmtpPool(settings, clock)
        sender = EmailSender(db, pool, clock, from_header=FROM, templates={DIGEST: DigestMail(db)})
        dispatcher = Dispatcher(db, outbox, clock, {EMAIL: sender})
        await dispatcher.open()
        return cls(db, outbox, pool, dispatcher)

    def start(self) -> None:
        self.task = asyncio.create_task(self.dispatcher.run())

    async def sent(self, n: int) -> None:
        """Until `n` rows are sent and their outcomes committed."""
        while True:
            await asyncio.sleep(0.02)
            if self.dispatcher.sent_count >= n:
                break
        await self.dispatcher.flush()  # counted only once recorded in the database

    async def close(self, *, tag: str, expect: int) -> None:
        """Stop everything; checks that `expect` rows keyed `bench:TAG:...` are recorded as sent."""
        await self.dispatcher.stop()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.pool.close()
        async with self.db.session() as s:
            sent = (await s.execute(select(func.count()).select_from(T).where(
                (T.c.status == "sent") & T.c.dedupe_key.like(f"bench:{tag}:%")))).scalar()
        await self.db.close()
        assert sent == expect, f"{sent} of {expect} recorded as sent"


# -- Matrix -----------------------------------------------------------------------------------


def matrix_client(url: str, user: RegisteredUser, *, store: Path | None = None) -> AsyncClient:
    """A plain nio client on the user's registration device; encrypted when given a store."""
    config = AsyncClientConfig(encryption_enabled=store is not None, max_limit_exceeded=0,
                               max_timeouts=0, store_sync_tokens=False)
    if store is not None:
        store.mkdir(parents=True, exist_ok=True)
    client = AsyncClient(url, user.user_id, device_id=user.device_id,
                         store_path=str(store) if store is not None else "", config=config)
    client.restore_login(user.user_id, user.device_id, user.access_token)
    return client


def hub_settings(base: Path, homeserver: str, bot: RegisteredUser, database_url: str) -> Settings:
    return settings_from_dict({
        "hub": {"data_dir": str(base / "hub")},
        "database": {"url": database_url},
        "matrix": {"homeserver": homeserver, "user_id": bot.user_id, "password": bot.password,
                   "control_room": "#bench-mods:localhost"},
        "web": {"listen": "127.0.0.1:0"},
    }, base=base, env={})


@asynccontextmanager
async def synapse_at(base: Path) -> AsyncIterator[SynapseServer]:
    """A local Synapse (rate limits loosened by the devserver) for the length of the block."""
    synapse = SynapseServer(base / "synapse")
    await synapse.start()
    try:
        yield synapse
    finally:
        await synapse.stop()


@asynccontextmanager
async def running_hub(settings: Settings) -> AsyncIterator[Hub]:
    """A running `Hub` (sync loop, dispatcher and all), ready when the block starts."""
    hub = Hub(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(hub.run(stop))
    await asyncio.wait_for(hub.ready.wait(), 120)
    try:
        yield hub
    finally:
        stop.set()
        await task


def runs(values: Sequence[float], scale: float = 1.0) -> list[Any]:
    return [round(scale * v, 2) for v in values]
