"""The measurements of bench/scale.py that talk to the hub: the moderator's client, pings,
the icebreaker through the hub and through raw nio, the digest.

The hub is watched from outside: replies as the moderator's nio client sees them, and the
outbox rows' status read from the hub's database (read-only), never by hooks in the hub.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _scale_env import HubProcess, State
from nio import (
    AsyncClient,
    AsyncClientConfig,
    RoomMessageText,
    RoomResolveAliasResponse,
    RoomSendResponse,
    SyncResponse,
    UploadFilterResponse,
)
from sqlalchemy import func, select

from hub.devserver.client import SimulatedUser
from hub.devserver.synapse import RegisteredUser
from hub.matrix.sync import sync_filter
from hub.storage.db import Database
from hub.storage.models import hub_room_table, outbox_table

__all__ = ["Moderator", "digest", "icebreaker", "pings", "raw_icebreaker", "settle"]

T = outbox_table


class Moderator(SimulatedUser):
    """The moderator (`matrix.moderators`): a real E2EE nio client that joins the control rooms."""

    def __init__(self, homeserver: str, user: RegisteredUser, store: Path) -> None:
        super().__init__(homeserver, user, store, name="moderator")

    async def room(self, alias: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while True:
            resp = await self.client.room_resolve_alias(alias)
            if isinstance(resp, RoomResolveAliasResponse):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{alias} was not created")
            await asyncio.sleep(0.5)
        room_id = str(resp.room_id)
        await self.wait_until(lambda: self.joined(room_id), timeout)
        return room_id

    async def reply(self, room: str, event: str, timeout: float = 60) -> float:
        """Wait for the hub's reply to `event`; returns its server timestamp minus the command's, in ms."""
        await self.wait_until(lambda: self.reply_to(room, event) is not None, timeout)
        answer = self.reply_to(room, event)
        asked = next((e for e in self.in_room(room) if e.event_id == event), None)
        if answer is None or asked is None:
            return float("nan")
        return float(answer.server_timestamp - asked.server_timestamp)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


async def pings(mod: Moderator, rooms: dict[str, str], n: int) -> dict[str, dict[str, float]]:
    """`!hub ping` n times to each hub, interleaved; round trip as the moderator's client sees it
    (sent -> reply synced) and the hub's turnaround by server timestamps (command -> reply)."""
    trips: dict[str, list[float]] = {name: [] for name in rooms}
    stamps: dict[str, list[float]] = {name: [] for name in rooms}
    for _ in range(n):
        for name, room in rooms.items():
            began = time.perf_counter()
            event = await mod.send(room, "!hub ping")
            stamps[name].append(await mod.reply(room, event))
            trips[name].append(1000 * (time.perf_counter() - began))
            await asyncio.sleep(0.1)
    return {name: {"n": len(v), "p50_ms": _pct(v, 0.5), "p95_ms": _pct(v, 0.95), "max_ms": round(max(v), 1),
                   "mean_ms": round(statistics.fmean(v), 1), "ts_p50_ms": _pct(stamps[name], 0.5),
                   "ts_p95_ms": _pct(stamps[name], 0.95), "over_300_ms": sum(1 for x in v if x > 300)}
            for name, v in trips.items()}


async def settle(mod: Moderator, room: str, *, within: float = 0.5, limit: float = 120.0) -> float:
    """Seconds until a `!hub ping` is answered within `within` s: a hub just started after the
    raw client sent thousands of events from its account spends its first syncs on them."""
    began = time.perf_counter()
    while time.perf_counter() - began < limit:
        sent = time.perf_counter()
        await mod.reply(room, await mod.send(room, "!hub ping"), limit)
        if time.perf_counter() - sent < within:
            break
        await asyncio.sleep(1)
    return round(time.perf_counter() - began, 1)


async def _rows(db: Database, prefix: str, channel: str | None = None) -> tuple[int, int]:
    cond: Any = T.c.dedupe_key.like(f"{prefix}%")
    if channel is not None:
        cond = cond & (T.c.channel == channel)
    async with db.session() as s:
        found = (await s.execute(select(T.c.status, func.count()).where(cond).group_by(T.c.status))).all()
    counts = {str(k): int(v) for k, v in found}
    return sum(counts.values()), counts.get("sent", 0)


async def _all_sent(db: Database, prefix: str, began: float, timeout: float,
                    channel: str | None = None) -> tuple[float, int]:
    deadline = time.monotonic() + timeout
    while True:
        total, sent = await _rows(db, prefix, channel)
        if total and sent == total:
            return time.monotonic() - began, total
        if time.monotonic() > deadline:
            raise TimeoutError(f"{sent} of {total} rows {prefix}* sent")
        await asyncio.sleep(0.2)


def _spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    # py-spy comes with the venv (pip install py-spy), not necessarily on PATH.
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    fmt = "raw" if out.suffix == ".txt" else "speedscope"  # raw: collapsed stacks, for grep and sums
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", "50", "--format", fmt,
                             "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def icebreaker(hub: HubProcess, db: Database, mod: Moderator, room: str, slug: str, *,
                     profile: Path | None, pairs_only: bool = False) -> dict[str, Any]:
    """`!hub send icebreaker SLUG`: seconds until every row is sent, the moderator's reply, and a
    `!hub ping` sent one second into the fan-out (does an interactive reply wait behind it?)."""
    spy = _spy(hub.pid, profile) if profile else None
    began = time.monotonic()
    event = await mod.send(room, f"!hub send icebreaker {slug}")

    async def reply() -> float:
        await mod.reply(room, event, 1800)
        return time.monotonic() - began

    async def ping_during() -> float:
        await asyncio.sleep(1)
        sent = time.monotonic()
        ping = await mod.send(room, "!hub ping")
        await mod.reply(room, ping, 1800)
        return time.monotonic() - sent

    replied, pinged = asyncio.create_task(reply()), asyncio.create_task(ping_during())
    # Pair rooms only, when the lounge's lane is held by its invites (--background-invites).
    prefix = f"icebreaker:{slug}:send:{event}:" + ("pair:" if pairs_only else "")
    await _all_sent(db, prefix, began, 3600)
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    asked = _asked_at(mod, room, event)
    rows, queued, sent = await _times(db, prefix)
    fanout = sent - asked
    return {"event": event, "rows": rows, "queued_s": round(queued - asked, 2), "fanout_s": round(fanout, 2),
            "per_s": round(rows / fanout, 1),
            "reply_s": round(await replied, 2), "ping_during_s": round(await pinged, 2)}


async def raw_icebreaker(homeserver: str, state: State, db: Database, event: str,
                         concurrency: int = 16, pairs_only: bool = False,
                         ping: tuple[Moderator, str, int] | None = None) -> dict[str, Any]:
    """The same events to the same rooms with plain nio `room_send`, from the hub's own device (its
    token, device id and crypto store; the hub is stopped meanwhile), 16 in flight as the
    dispatcher. Untimed first: the initial sync and the key query the hub also does at start.

    With `ping` (the moderator, the control room, n): then n `!hub ping` answered by that raw
    client, syncing with the hub's filter and replying "pong" as soon as it sees the command: the
    same account in the same rooms, so Synapse's cost of a sync for an account in 5,000 rooms is
    in it as it is in the hub's, and the difference from the hub's pings is the hub's own."""
    token, device = await db.get_state("matrix.access_token"), await db.get_state("matrix.device_id")
    assert token and device
    async with db.session() as s:
        payloads = [json.loads(p) for p in (await s.execute(select(T.c.payload).where(
            T.c.dedupe_key.like(f"icebreaker:%:send:{event}:{'pair:' if pairs_only else ''}%")))).scalars()]
        ids = dict((await s.execute(select(hub_room_table.c.key, hub_room_table.c.room_id))).all())
    sends = [(p.get("room_id") or ids[p["room_key"]], p["type"], p["content"]) for p in payloads]
    user = state.accounts["bot"]["user_id"]
    client = AsyncClient(homeserver, user, device_id=device, store_path=str(state.folder / "hub" / "crypto"),
                         config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False,
                                                  max_limit_exceeded=0, max_timeouts=0, request_timeout=60))
    client.restore_login(user, device, token)
    try:
        began = time.perf_counter()
        # The hub's own sync filter (lazy-loaded members, only the state types it reads), as the hub
        # syncs since issue 17: an unfiltered full-state initial sync of 2,000 rooms and a space and
        # lounge of 4,000 had not ended after 5 min. nio's room_send loads a room's members
        # (joined_members) before its first encrypted send, as the hub does (Provision.load_room).
        wanted = sync_filter(user)
        uploaded = await client.upload_filter(presence=wanted["presence"],
                                              account_data=wanted["account_data"], room=wanted["room"])
        assert isinstance(uploaded, UploadFilterResponse), uploaded
        synced = await client.sync(timeout=0, sync_filter=uploaded.filter_id)
        assert isinstance(synced, SyncResponse), synced
        if client.should_query_keys:
            await client.keys_query()
        prepare = time.perf_counter() - began
        queue: asyncio.Queue[tuple[str, str, dict[str, Any]]] = asyncio.Queue()
        for item in sends:
            queue.put_nowait(item)

        async def worker() -> None:
            while not queue.empty():
                room_id, kind, content = queue.get_nowait()
                resp = await client.room_send(room_id, kind, content, ignore_unverified_devices=True)
                assert isinstance(resp, RoomSendResponse), resp

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
        answered: dict[str, dict[str, float]] = {}
        if ping is not None:
            mod, room, n = ping
            responder = asyncio.create_task(_answer_pings(client, uploaded.filter_id, room, mod.user_id))
            try:
                answered = await pings(mod, {"raw": room}, n)
            finally:
                responder.cancel()
                await asyncio.gather(responder, return_exceptions=True)
    finally:
        await client.close()
    return {"rows": len(sends), "send_s": round(elapsed, 2), "per_s": round(len(sends) / elapsed, 1),
            "untimed_sync_and_keys_s": round(prepare, 1), **({"pings": answered["raw"]} if answered else {})}


async def _answer_pings(client: AsyncClient, filter_id: str, room: str, moderator: str) -> None:
    """A bot in plain nio: long-poll with the hub's filter, answer each `!hub ping` with a "pong"
    notice in reply, as the hub does (what the hub also does, recording the event and queueing
    the reply through its outbox, is the difference measured)."""
    while True:
        resp = await client.sync(timeout=30_000, sync_filter=filter_id)
        if not isinstance(resp, SyncResponse):
            await asyncio.sleep(0.5)
            continue
        joined = resp.rooms.join.get(room)
        for ev in joined.timeline.events if joined is not None else []:
            if isinstance(ev, RoomMessageText) and ev.sender == moderator and ev.body == "!hub ping":
                sent = await client.room_send(room, "m.room.message", {
                    "msgtype": "m.notice", "body": "pong",
                    "m.relates_to": {"m.in_reply_to": {"event_id": ev.event_id}}},
                    ignore_unverified_devices=True)
                assert isinstance(sent, RoomSendResponse), sent


def _asked_at(mod: Moderator, room: str, event: str) -> float:
    """The command's server timestamp (s): the hub's rows carry times on the same machine's clock."""
    asked = next(e for e in mod.in_room(room) if e.event_id == event)
    return float(asked.server_timestamp) / 1000


async def _times(db: Database, prefix: str, *, channel: str | None = None) -> tuple[int, float, float]:
    """(rows, last queued, last sent) of the rows whose dedupe key starts with `prefix`."""
    cond: Any = T.c.dedupe_key.like(f"{prefix}%")
    if channel is not None:
        cond = cond & (T.c.channel == channel)
    async with db.session() as s:
        n, queued, sent = (await s.execute(select(func.count(), func.max(T.c.created_at),
                                                  func.max(T.c.sent_at)).where(cond))).one()
    return int(n), float(queued or 0), float(sent or 0)


async def digest(db: Database, mod: Moderator, room: str, slug: str) -> dict[str, Any]:
    """`!hub digest SLUG send`: seconds from the command (its server timestamp) until every email
    row is queued (rendered, in the command's transaction) and until the last is recorded as
    sent through the sink; the moderator's reply as the client saw it."""
    began = time.monotonic()
    event = await mod.send(room, f"!hub digest {slug} send")
    await mod.reply(room, event, 1800)
    replied = time.monotonic() - began
    answer = mod.reply_to(room, event)
    said = str(getattr(answer, "body", ""))
    week = re.search(r"week (\d+)'s digest", said, re.IGNORECASE)
    if week is None or "already" in said:
        return {"reply_s": round(replied, 2), "emails": 0, "reply": said[:200]}
    prefix = f"digest:{slug}:w{week.group(1)}:"
    await _all_sent(db, prefix, began, 3600, channel="email")
    asked = _asked_at(mod, room, event)
    emails, queued, sent = await _times(db, prefix, channel="email")
    return {"emails": emails, "queued_s": round(queued - asked, 2), "all_sent_s": round(sent - asked, 2),
            "emails_per_s": round(emails / max(sent - queued, 1e-6), 1), "reply_s": round(replied, 2)}
