"""Replies by email survive kill -9 between the listener's 250 and the post (issue 13, item 7).

`hub run` is a real subprocess. An email-only member's reply is sent to its listener while a
test connection holds PostgreSQL's EXCLUSIVE lock on the outbox: the listener's write
(`inbound_mail`) goes through and 250 is answered, and the poster, which queues the post in
the outbox, is stuck behind the lock. That is the window the promise is about; the hub is
SIGKILLed in it. After a restart the reply is in the lounge exactly once.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy import select

from hub.config import load_settings
from hub.core.tokens import AddressTokenSigner, reply_address
from hub.devserver.smtp import SmtpSink
from hub.devserver.synapse import SynapseServer
from hub.features.roster import import_file
from hub.storage.db import open_database
from hub.storage.models import hub_room_table, inbound_mail_table, member_table, outbox_table

from tests.support.delivery import HubProcess, raw_client, read_room, wait_for

pytestmark = [pytest.mark.synapse, pytest.mark.slow]

PG_URL = os.environ.get("HUB_TEST_DATABASE_URL", "")
DOMAIN = "hub.example.test"
EVE = "eve@example.org"


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    if not PG_URL:
        pytest.skip("needs HUB_TEST_DATABASE_URL: the window is held open with a PostgreSQL table lock")
    import asyncpg

    name = f"hub_test_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(PG_URL)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    yield f"{PG_URL.rpartition('/')[0]}/{name}"
    conn = await asyncpg.connect(PG_URL)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_kill_after_250_before_posting_posts_once_after_restart(
    synapse: SynapseServer, tmp_path: Path, pg_url: str,
) -> None:
    import asyncpg

    tag = secrets.token_hex(3)
    bot = await synapse.register(f"replyhub{tag}", secrets.token_urlsafe(12))
    port = _free_port()
    with SmtpSink() as sink:
        config = tmp_path / "hub.toml"
        config.write_text(
            f'[hub]\ndata_dir = "{tmp_path / "data"}"\n'
            f'[database]\nurl = "{pg_url}"\n'
            f'[matrix]\nhomeserver = "{synapse.url}"\nuser_id = "{bot.user_id}"\n'
            f'password = "{bot.password}"\ncontrol_room = "#mods-{tag}:localhost"\nmoderators = []\n'
            f'[email]\nenabled = true\nfrom = "Hub <hub@example.org>"\nsmtp_host = "{sink.hostname}"\n'
            f'smtp_port = {sink.port}\nsecurity = "none"\n'
            f'[email.inbound]\nlisten = "127.0.0.1:{port}"\ndomain = "{DOMAIN}"\n'
            f'[web]\nlisten = "127.0.0.1:0"\nsecret = "test-secret-not-real"\n'
            f'[[cohort]]\nslug = "spring"\nname = "Spring 2027"\n', encoding="utf-8")
        hub = HubProcess(config, tmp_path / "hub.log")
        hub.start()
        db = await open_database(pg_url, migrate=False)
        lock: asyncpg.Connection | None = None
        try:
            async def lounge_ready() -> bool:
                try:
                    async with db.session() as s:
                        row = (await s.execute(select(hub_room_table.c.id).where(
                            (hub_room_table.c.kind == "lounge")
                            & (hub_room_table.c.status == "ready")))).first()
                except Exception:  # the hub has not made the tables yet
                    return False
                return row is not None

            await wait_for(lounge_ready, 90, interval=0.5)
            (tmp_path / "roster.csv").write_text(
                f"cohort,role,name,email,matrix_id,timezone,mentor\nspring,mentee,Eve,{EVE},,,\n",
                encoding="utf-8")
            await import_file(load_settings(config, env={}), tmp_path / "roster.csv")
            async with db.session() as s:
                lounge_pk, lounge = (await s.execute(select(hub_room_table.c.id, hub_room_table.c.room_id)
                                                     .where(hub_room_table.c.kind == "lounge"))).one()
                member_id = (await s.execute(select(member_table.c.id)
                                             .where(member_table.c.email == EVE))).scalar_one()
            to = reply_address(AddressTokenSigner("test-secret-not-real").reply(member_id, lounge_pk), DOMAIN)
            msg = EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = f"Eve <{EVE}>", to, "Re: Spring 2027"
            msg["Message-ID"] = make_msgid(domain="example.org")
            msg.set_content("Hello everyone, glad to be here!\n\nOn Mon, Hub wrote:\n> Welcome\n")

            # -- hold the poster behind the outbox lock, get the 250, kill -9 -----------------------
            lock = await asyncpg.connect(pg_url)
            await lock.execute("BEGIN")
            await lock.execute("LOCK TABLE outbox IN EXCLUSIVE MODE")
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
            await smtp.connect()
            await smtp.mail(EVE)
            await smtp.rcpt(to)
            assert (await smtp.data(msg.as_bytes())).code == 250
            await asyncio.sleep(1.0)  # the poster is now waiting on the lock
            hub.kill()
            smtp.close()
            await lock.execute("ROLLBACK")
            await lock.close()
            lock = None
            async with db.session() as s:
                assert (await s.execute(select(inbound_mail_table.c.status))).scalars().all() == ["new"]
                queued = (await s.execute(select(outbox_table.c.seq).where(
                    outbox_table.c.kind == "email-reply"))).all()
            assert queued == []  # killed before the post was queued: only the stored mail exists

            # -- restart: posted exactly once ---------------------------------------------------
            hub.start()
            reader = raw_client(synapse.url, bot)
            try:
                async def posted() -> bool:
                    bodies = await read_room(reader, lounge, bot.user_id)
                    return any("(by email)" in b for b in bodies)

                await wait_for(posted, 90, interval=1.0)
                await asyncio.sleep(3)
                bodies = [b for b in await read_room(reader, lounge, bot.user_id) if "(by email)" in b]
            finally:
                await reader.close()
            assert bodies == ["**Eve** (by email): Hello everyone, glad to be here!"]
            async with db.session() as s:
                assert (await s.execute(select(inbound_mail_table.c.status))).scalars().all() == ["posted"]
            assert await hub.terminate() == 0
        finally:
            if lock is not None:
                await lock.close()
            if hub.alive:
                hub.kill()
            await db.close()
