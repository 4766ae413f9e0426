"""`hub worker`: an extra email sender beside `hub run`, on this machine or another one.

A worker renders and sends the email rows of the shared PostgreSQL outbox, nothing
else. It is the hub's own `Dispatcher` with only the email sender (wired as `hub
run` wires it: `hub.mailer`), so it claims rows with the same one statement,
``UPDATE ... WHERE seq IN (SELECT ... FOR UPDATE SKIP LOCKED)``: any number of
workers and the one `hub run` take disjoint batches of lane heads, and mail to one
address keeps its order. The digest's emails are rendered by whoever claims them
(hub.features.digest_mail), so the rendering spreads over the workers too.

What it leaves to `hub run`: the Matrix side (it never logs in, so it needs no Matrix
password), the calendar, migrations (it waits while the schema is older than its
own and refuses a newer one), and the instance lock (any number of workers may run).
Its alerts (a row failed for good, an address bounced) are outbox rows to the control
room, whose id `hub run` keeps in the database.

Crash safety is the dispatcher's: each worker holds a session advisory lock on its
instance id; when it dies (even `kill -9`) PostgreSQL frees the lock with its
connection, and the next orphan check of any living process (`hub run` or another
worker, every `lease_seconds / 4` = 30 s) requeues the rows it had claimed. Those it
had already handed to the SMTP server go again (email is at least once, each
recipient recorded on its own).

SQLite has no row locks to share a queue with, and a second process on it could only
wait: a worker on SQLite stops at once with a message naming PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from hub.clock import Clock, SystemClock
from hub.config import Settings
from hub.delivery.dispatcher import Dispatcher
from hub.delivery.outbox import EMAIL, Outbox
from hub.email.pool import SmtpPool
from hub.errors import HubError
from hub.features.subscribers import signing_secret
from hub.logs import add_secrets
from hub.mailer import CONTROL_ROOM_KEY, DeliveryAlerts, email_sender, envelope_for, watch_smtp
from hub.storage.db import Database, open_database

__all__ = ["Worker", "check_worker_settings"]

log = logging.getLogger(__name__)


def check_worker_settings(settings: Settings) -> None:
    """Refuse what a worker cannot run on, before anything is opened (HubError: exit 1)."""
    if not settings.database.url.startswith(("postgresql://", "postgres://", "postgresql+asyncpg://")):
        raise HubError("hub worker needs PostgreSQL: workers share the outbox through its row locks "
                       "(FOR UPDATE SKIP LOCKED), which SQLite does not have. Set [database] url to "
                       "the PostgreSQL database `hub run` uses, or run `hub run` alone on SQLite.")
    if not settings.email.enabled:
        raise HubError("hub worker sends email, and [email] enabled is false in this config")


class Worker:
    def __init__(self, settings: Settings, *, clock: Clock | None = None, shutdown_grace: float = 10.0,
                 poll_seconds: float = 5.0) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.shutdown_grace = shutdown_grace
        self.poll_seconds = poll_seconds  # schema and control-room look-ups
        self.db: Database | None = None
        self.pool: SmtpPool | None = None
        self.dispatcher: Dispatcher | None = None
        self.control_room_id: str | None = None
        self.alerts = DeliveryAlerts(self.clock, control_room=lambda: self.control_room_id,
                                     command_prefix=lambda: self.settings.matrix.command_prefix)
        self.ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        s = self.settings
        check_worker_settings(s)
        add_secrets(s.secrets)
        # Never migrates: the schema is `hub run`'s to upgrade, once, not N workers' at once.
        self.db = db = await open_database(s.database.url, migrate=False)
        waited = False
        while await db.pending():
            if not waited:
                log.warning("the database schema is older than this worker's; waiting for `hub run` "
                            "(of this version) to upgrade it")
                waited = True
            await self.clock.sleep(self.poll_seconds)
        outbox = self.alerts.outbox = Outbox(db, self.clock)
        await self._look_up_control_room()
        envelope = None
        if s.email.inbound is not None:  # bounce addresses signed as `hub run` signs them
            async with db.transaction() as tx:
                envelope = envelope_for(s, await signing_secret(tx, s))
        self.pool = SmtpPool(s.email, self.clock)
        sender = email_sender(s, db, self.pool, self.clock, alerts=self.alerts, envelope=envelope)
        self.dispatcher = Dispatcher(db, outbox, self.clock, {EMAIL: sender},
                                     on_failed=self.alerts.report_failure)
        released = await self.dispatcher.open()
        if released:
            log.info("requeued %d rows left in flight by a stopped process", released)
        # The greeting first, as in `hub run`: mail waits until the SMTP server answers.
        self._tasks.append(asyncio.create_task(watch_smtp(self.pool, self.clock), name="smtp-health"))
        self._tasks.append(asyncio.create_task(self.dispatcher.run(), name="dispatcher"))
        self._tasks.append(asyncio.create_task(self.alerts.summarise(), name="alert-summaries"))
        self._tasks.append(asyncio.create_task(self._follow_control_room(), name="control-room"))
        self.ready.set()
        log.info("worker ready: sending email from the outbox as dispatcher instance %s",
                 self.dispatcher.instance)

    async def _look_up_control_room(self) -> None:
        assert self.db is not None
        try:
            self.control_room_id = await self.db.get_state(CONTROL_ROOM_KEY) or self.control_room_id
        except (SQLAlchemyError, OSError) as e:
            log.warning("could not read the control room's id: %s", e)

    async def _follow_control_room(self) -> None:
        # `hub run` may find a new control room (the config changed, a restart): follow it.
        while True:
            await self.clock.sleep(self.poll_seconds * 6)
            await self._look_up_control_room()

    async def run(self, stop: asyncio.Event) -> None:
        """Start, then send until `stop` is set or a part of the worker fails."""
        waiter: asyncio.Task[Any] = asyncio.create_task(stop.wait())
        starting = asyncio.create_task(self.start())
        try:
            await asyncio.wait({starting, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()
            else:  # asked to stop while waiting for the schema
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                return
            done, _ = await asyncio.wait({waiter, *self._tasks}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not waiter:
                    task.result()  # raises what stopped it
                    raise RuntimeError(f"{task.get_name()} stopped unexpectedly")
        finally:
            waiter.cancel()
            await self.stop()

    async def stop(self) -> None:
        """Let in-flight sends finish (bounded), record their outcomes, give back the rest."""
        others = [t for t in self._tasks if t.get_name() != "dispatcher"]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        if self.dispatcher is not None:
            await self.dispatcher.stop(self.shutdown_grace)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.pool is not None:
            await self.pool.close()
        if self.db is not None:
            await self.db.close()
            self.db = None
