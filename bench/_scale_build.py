"""Building the programme for bench/scale.py: accounts, the roster through `hub roster import`,
provisioning by the running hub, and participants with real E2EE devices.

Incremental: a folder that holds 200 rooms grows to 1,000 by importing the longer roster (the
import is idempotent: the first 200 pairs are found in place) and letting the hub provision the
new pairs only. Timings of every step go to `state.builds`.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import cpu_seconds
from _scale_env import SLUG, HubProcess, State, status_line
from nio import AsyncClient, AsyncClientConfig, JoinResponse, KeysUploadResponse, SyncResponse
from sqlalchemy import func, select

from hub.devserver.synapse import RegisteredUser, SynapseServer
from hub.storage.db import Database
from hub.storage.models import hub_room_table, outbox_table, room_member_table

__all__ = ["grow", "is_e2ee", "register_accounts", "unsent"]

HEADER = "cohort,role,name,email,matrix_id,timezone,mentor"


def is_e2ee(i: int) -> bool:
    """One person in ten has a real device with keys: one mentor and one mentee in every twenty."""
    return i % 20 in (0, 11)


async def register_accounts(synapse: SynapseServer, state: State, people: int) -> float:
    """The hub's bots, the moderator and people p0..p{people-1}; returns the seconds it took."""
    began = time.perf_counter()
    for name in ("bot", "empty", "lead"):
        if name not in state.accounts:
            user = await synapse.register(f"scale-{name}", secrets.token_urlsafe(12))
            state.accounts[name] = {"user_id": user.user_id, "password": user.password,
                                    "access_token": user.access_token, "device_id": user.device_id}
    gate = asyncio.Semaphore(8)
    done = 0

    async def one(i: int) -> None:
        nonlocal done
        async with gate:
            user = await synapse.register(f"p{i}", f"pw-{i}-{secrets.token_hex(4)}")
        if is_e2ee(i):  # their registration device is the one that gets keys
            state.e2ee[f"p{i}"] = {"user_id": user.user_id, "password": user.password,
                                   "access_token": user.access_token, "device_id": user.device_id,
                                   "keys": ""}
        done += 1
        if done % 1000 == 0:
            status_line(f"registered {done} of {people - state.people}")

    await asyncio.gather(*(one(i) for i in range(state.people, people)))
    state.people = max(state.people, people)
    state.save()
    return time.perf_counter() - began


def roster_csv(people: int, rooms: int) -> str:
    """Pairs (p2i mentor, p2i+1 mentee) for the first 2 x rooms people; the rest unpaired mentees."""
    lines = [HEADER]
    for i in range(people):
        paired = i < 2 * rooms
        role = "mentor" if paired and i % 2 == 0 else "mentee"
        mentor = f"p{i - 1}@example.org" if paired and i % 2 else ""
        lines.append(f"{SLUG},{role},Person {i},p{i}@example.org,@p{i}:localhost,,{mentor}")
    return "\n".join(lines) + "\n"


IGNORED: set[str] = set()  # outbox kinds not waited for (--background-invites: "room-invite")


async def unsent(db: Database) -> int:
    waiting = ("queued", "sending")
    cond: Any = outbox_table.c.status.in_(waiting)
    if IGNORED:
        # Nor the rows queued behind them in their lane (a lounge post waits for the lounge's invites).
        held = select(outbox_table.c.lane).where(outbox_table.c.kind.in_(sorted(IGNORED))
                                                 & outbox_table.c.status.in_(waiting))
        cond = cond & outbox_table.c.kind.not_in(sorted(IGNORED)) & outbox_table.c.lane.not_in(held)
    async with db.session() as s:
        return int((await s.execute(select(func.count()).select_from(outbox_table).where(cond))).scalar_one())


async def pending_invites(db: Database) -> int:
    """Space and lounge memberships still waiting for their invite (the slow part of a big build)."""
    async with db.session() as s:
        return int((await s.execute(select(func.count()).select_from(room_member_table).join(
            hub_room_table, hub_room_table.c.id == room_member_table.c.room_pk).where(
            hub_room_table.c.kind.in_(("space", "lounge")) & (room_member_table.c.state == "pending"))))
            .scalar_one())


async def ready_pair_rooms(db: Database) -> int:
    async with db.session() as s:
        return int((await s.execute(select(func.count()).select_from(hub_room_table).where(
            (hub_room_table.c.kind == "pair") & (hub_room_table.c.status == "ready")))).scalar_one())


async def grow(synapse: SynapseServer, state: State, hub: HubProcess, config: Path, db: Database,
               people: int, rooms: int) -> dict[str, Any]:
    """Import the roster up to `people`/`rooms` into the running hub and wait until it is provisioned."""
    new_rooms = rooms - state.rooms
    csv = state.folder / "roster.csv"
    csv.write_text(roster_csv(people, rooms))
    c0, s0, h0 = time.perf_counter(), cpu_seconds(_pid(synapse)), cpu_seconds(hub.pid)
    # The hub's own import, as an operator runs it, beside the running hub.
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "hub", "roster", "import", str(csv),
                                                    "-c", str(config)], capture_output=True, text=True)
    imported = time.perf_counter() - c0
    if done.returncode:
        raise RuntimeError(f"roster import failed: {done.stderr[-2000:]}")
    status_line(f"roster import {imported:.1f} s: {done.stdout.strip()}")
    last, rooms_ready = time.perf_counter(), None
    while True:
        await asyncio.sleep(2)
        left, ready = await unsent(db), await ready_pair_rooms(db)
        if ready >= rooms and rooms_ready is None:
            # The pair rooms, apart from the space's and lounge's invites of everyone (one row
            # each, which take much longer in rooms of thousands).
            rooms_ready = time.perf_counter() - c0
        if left == 0 and ready >= rooms:
            break
        if time.perf_counter() - last > 30:
            last = time.perf_counter()
            status_line(f"provisioning: {ready} of {rooms} pair rooms ready, {left} outbox rows unsent")
    provisioned = time.perf_counter() - c0
    state.rooms = max(state.rooms, rooms)
    state.save()
    return {"rooms_added": new_rooms, "import_s": round(imported, 2), "provision_s": round(provisioned, 1),
            "rooms_per_s": round(new_rooms / provisioned, 2) if new_rooms else None,
            "pair_rooms_ready_s": round(rooms_ready or provisioned, 1),
            "synapse_cpu_s": round(cpu_seconds(_pid(synapse)) - s0, 1),
            "hub_cpu_s": round(cpu_seconds(hub.pid) - h0, 1)}


def _pid(synapse: SynapseServer) -> int | None:
    process = getattr(synapse, "_process", None)  # the devserver's child; bench-only peek
    return process.pid if process is not None else None


async def devices(homeserver: str, state: State) -> tuple[int, float]:
    """Each E2EE person (with a pair room by now) uploads device keys and one-time keys with nio,
    then joins what the hub invited them to (space, lounge, pair room) and goes offline: the
    hub must then query their keys and share room keys with them, as with real participants."""
    todo = [(name, u) for name, u in state.e2ee.items()
            if not u.get("keys") and int(name[1:]) < 2 * state.rooms]
    gate = asyncio.Semaphore(6)
    began = time.perf_counter()

    async def one(name: str, info: dict[str, str]) -> None:
        user = RegisteredUser(info["user_id"], info["password"], info["access_token"], info["device_id"])
        store = state.folder / "devices" / name
        store.mkdir(parents=True, exist_ok=True)
        client = AsyncClient(homeserver, user.user_id, device_id=user.device_id, store_path=str(store),
                             config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False))
        client.restore_login(user.user_id, user.device_id, user.access_token)
        async with gate:
            try:
                uploaded = await client.keys_upload()
                assert isinstance(uploaded, KeysUploadResponse), uploaded
                resp = await client.sync(timeout=0, full_state=True)
                assert isinstance(resp, SyncResponse), resp
                for room_id in resp.rooms.invite:
                    joined = await client.join(room_id)
                    assert isinstance(joined, JoinResponse), joined
                joins = len(resp.rooms.invite)
                info["keys"] = f"{uploaded.signed_curve25519_count} one-time keys, {joins} joins"
            finally:
                await client.close()

    await asyncio.gather(*(one(n, u) for n, u in todo))
    state.save()
    return len(todo), time.perf_counter() - began
