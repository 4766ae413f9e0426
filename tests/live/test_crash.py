"""Acceptance 1 and shutdown: `hub run` killed mid-dispatch, restarted, nothing lost or doubled.

The hub runs as a real subprocess (`python -m hub run -c FILE`) against the real
Synapse and an aiosmtpd sink; it is SIGKILLed at three different moments of
the same fan-out, then restarted. Rooms are read back through the client API.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from hub.devserver.smtp import SmtpSink
from hub.devserver.synapse import RegisteredUser, SynapseServer
from hub.email.payload import email_payload
from hub.storage.db import open_database
from hub.storage.models import outbox_table as T

from tests.support.databases import backends
from tests.support.delivery import (
    HubProcess,
    make_rooms,
    queue_rows,
    raw_client,
    read_room,
    wait_for,
    write_config,
)
from tests.support.live_hub import sink_email

pytestmark = [pytest.mark.synapse, pytest.mark.slow]

ROOMS = 50
ADDRESSES = 200


Fanout = tuple[RegisteredUser, RegisteredUser, list[str], Path]


@pytest.fixture(scope="module")
async def fanout(synapse: SynapseServer, tmp_path_factory: pytest.TempPathFactory) -> Fanout:
    """The hub's account, a reader, 50 rooms, and the hub's data dir: one account serves
    every test here, so its cross-signing keys (kept in the data dir) are shared too."""
    tag = secrets.token_hex(3)
    bot = await synapse.register(f"crashhub{tag}", secrets.token_urlsafe(12))
    reader = await synapse.register(f"crashreader{tag}", secrets.token_urlsafe(12))
    rooms = await make_rooms(synapse.url, bot, reader, ROOMS)
    return bot, reader, rooms, tmp_path_factory.mktemp("crash-hub-data")


def _chat_rows(rooms: list[str], tag: str) -> list[dict[str, Any]]:
    return [
        dict(channel="matrix", kind="test", lane=room, dedupe_key=f"{tag}:{room}",
             payload={"op": "message", "room_id": room, "type": "m.room.message",
                      "content": {"msgtype": "m.notice", "body": f"{tag} {i}"}})
        for i, room in enumerate(rooms)
    ]


def _email_rows(tag: str, n: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        to = f"{tag}-{i}@example.org"
        rows.append(dict(channel="email", kind="test", lane=to, dedupe_key=f"{tag}:{to}",
                         payload=dict(email_payload(to=to, subject=f"{tag} {i}",
                                                    text="digest body\n" * 200))))
    return rows


def _config(tmp_path: Path, synapse: SynapseServer, fanout: Fanout, url: str,
            sink: SmtpSink, **email: Any) -> Path:
    return write_config(
        tmp_path / "config.toml", homeserver=synapse.url, bot=fanout[0], data_dir=fanout[3],
        database_url=url, control_room=f"#mods-{secrets.token_hex(4)}:localhost", moderators=[],
        email=sink_email(sink, connections=4, **email),
    )


async def _counts(db: Any) -> dict[str, int]:
    async with db.session() as s:
        rows = (await s.execute(select(T.c.status, func.count()).group_by(T.c.status))).all()
    return {status: int(n) for status, n in rows}


@pytest.mark.parametrize("backend", backends())
async def test_sigkill_three_times_then_exactly_once_chat_at_least_once_email(
    synapse: SynapseServer, fanout: Fanout,
    database_urls: dict[str, str], backend: str, tmp_path: Path,
) -> None:
    bot, reader, rooms, _ = fanout
    url = database_urls[backend]
    tag = f"crash-{backend}-{secrets.token_hex(3)}"
    total = ROOMS + ADDRESSES
    assert await queue_rows(url, _chat_rows(rooms, tag) + _email_rows(tag, ADDRESSES)) == total
    with SmtpSink() as sink:
        # A send-rate cap stretches the fan-out over a few seconds, so the kills land mid-way.
        hub = HubProcess(_config(tmp_path, synapse, fanout, url, sink, max_per_second=100),
                         tmp_path / "hub.log")
        db = await open_database(url, migrate=False)
        moments: list[tuple[int, dict[str, int], int]] = []
        try:
            for threshold in (1, total * 2 // 5, total * 3 // 4):
                hub.start()
                seen: dict[str, int] = {}

                async def reached(threshold: int = threshold, seen: dict[str, int] = seen) -> bool:
                    assert hub.alive, hub.log()[-3000:]
                    seen.update(await _counts(db))
                    return seen.get("sent", 0) >= threshold

                await wait_for(reached, timeout=90, interval=0.005)
                hub.kill()
                moments.append((threshold, dict(seen), sink.count))
            hub.start()

            async def all_sent() -> bool:
                assert hub.alive, hub.log()[-3000:]
                return (await _counts(db)).get("sent", 0) == total

            await wait_for(all_sent, timeout=120, interval=0.1)
            assert await hub.terminate() == 0, hub.log()[-3000:]
        finally:
            if hub.alive:
                hub.kill()
            await db.close()
        mails = sink.messages

    client = raw_client(synapse.url, reader)
    try:
        copies = {room: [b for b in await read_room(client, room, bot.user_id) if b.startswith(tag)]
                  for room in rooms}
    finally:
        await client.close()
    per_address = Counter(rcpt for m in mails for rcpt in m.rcpt_tos if rcpt.startswith(tag))
    duplicates = {a: n for a, n in per_address.items() if n > 1}
    print(f"\ncrash test ({backend}): kills at "
          + "; ".join(f"sent>={t} (db {c}, sink {n})" for t, c, n in moments)
          + f"\n  chat: {sum(len(v) for v in copies.values())} messages in {ROOMS} rooms; "
          f"email: {sum(per_address.values())} deliveries to {len(per_address)} addresses, "
          f"{sum(duplicates.values()) - len(duplicates)} duplicate(s) {sorted(duplicates.values())}")
    wrong = {r: b for r, b in copies.items() if len(b) != 1}
    if wrong:
        db = await open_database(url, migrate=False)
        async with db.session() as s:
            rows = (await s.execute(select(T).where(T.c.lane.in_(list(wrong))))).all()
        await db.close()
        client = raw_client(synapse.url, reader)
        seen_events = [await client.room_get_event(r.lane, r.result) for r in rows]
        await client.close()
        pytest.fail(f"rooms without exactly one copy: {wrong}; their rows: {rows}; "
                    f"events: {[getattr(e, 'event', e) for e in seen_events]}")
    assert sorted(copies[r][0] for r in rooms) == sorted(f"{tag} {i}" for i in range(ROOMS))
    assert len(per_address) == ADDRESSES
    # Each kill landed with work still to do (and mail still to send)...
    assert all(c.get("sent", 0) < total and n < ADDRESSES for _, c, n in moments)
    if backend == "postgresql":
        # ...and with sends in flight (claims are rows there; on SQLite they are in memory).
        assert all(c.get("sending", 0) > 0 for _, c, _ in moments)


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_sigterm_finishes_in_flight_sends_and_exits_0(
    synapse: SynapseServer, fanout: Fanout,
    database_urls: dict[str, str], backend: str, tmp_path: Path, unique: Callable[[str], str],
) -> None:
    _, _, rooms, _ = fanout
    url = database_urls[backend]
    tag = unique("term-")
    assert await queue_rows(url, _chat_rows(rooms, tag) + _email_rows(tag, ADDRESSES)) == ROOMS + ADDRESSES
    with SmtpSink() as sink:
        hub = HubProcess(_config(tmp_path, synapse, fanout, url, sink, max_per_second=50),
                         tmp_path / "hub.log")
        db = await open_database(url, migrate=False)
        try:
            hub.start()
            seen: dict[str, int] = {}

            async def busy() -> bool:
                assert hub.alive, hub.log()[-3000:]
                seen.update(await _counts(db))
                return seen.get("sent", 0) >= 20

            await wait_for(busy, timeout=90, interval=0.005)
            code = await hub.terminate(timeout=30)
            after = await _counts(db)
        finally:
            if hub.alive:
                hub.kill()
            await db.close()
        delivered = Counter(r for m in sink.messages for r in m.rcpt_tos)
    log = hub.log()
    assert code == 0, log[-3000:]
    assert "stopped cleanly" in log
    # Nothing was left half-done: every row is either recorded as sent or still queued.
    assert after.get("sending", 0) == 0, after
    assert after.get("queued", 0) > 0, "SIGTERM came too late to test anything"
    # What the database says was sent is exactly what arrived, once each.
    db = await open_database(url, migrate=False)
    async with db.session() as s:
        sent_mail = set((await s.execute(select(T.c.lane).where(
            (T.c.channel == "email") & (T.c.status == "sent")))).scalars().all())
    await db.close()
    assert set(delivered) == sent_mail and all(n == 1 for n in delivered.values())
    print(f"\nSIGTERM after {seen.get('sent', 0)} sent: exit {code}, "
          f"{after.get('sent', 0)} sent, {after.get('queued', 0)} left queued")
