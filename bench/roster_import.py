"""Roster import: 10,000 CSV rows (5,000 mentor/mentee pairs) into one cohort, hub vs plain SQLAlchemy Core.

Hub side: `hub.features.roster.apply_roster` on the parsed file, the path `hub roster import`
takes (one transaction: members, pairs, pair rooms, room members, the outbox rows for the
rooms' creation, welcomes and invites). Then the same file again: the idempotent re-import,
which finds everything in place and writes nothing. Raw side: the same rows written with
SQLAlchemy Core bulk INSERTs (executemany, RETURNING for the ids) in one transaction, into an
empty cohort, with no lookups at all: the floor for this work. Both sides render the same
welcome (Markdown to HTML, `hub.core.markup`) and derive the same video link, since those are
part of the rows. Each side gets a cohort of its own, made beforehand (space, lounge) and not
timed; the counts of what each wrote are compared at the end. Every person has a Matrix id.

Prints both times, ms per row and the ratio, the re-import's time, and the load average
(the machine is shared: compare figures taken at similar load).
Run: `python bench/roster_import.py [--rows 10000] [--database-url URL]`; given a PostgreSQL
URL, the run works in a fresh database it makes on that server and drops afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _common import scratch_database
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.clock import SystemClock
from hub.config import Settings, settings_from_dict
from hub.core.cohorts import pair_welcome, video_name, video_url
from hub.core.markup import markdown_to_matrix
from hub.core.roster import parse_roster
from hub.delivery.outbox import Outbox
from hub.features.cohort_setup import create_cohort
from hub.features.room_queue import load_env
from hub.features.roster import apply_roster
from hub.matrix.events import notice_content
from hub.storage.db import Database, open_database
from hub.storage.models import (
    Cohort,
    hub_room_table,
    member_table,
    outbox_table,
    pair_table,
    room_member_table,
)

__all__ = ["main"]

HEADER = "cohort,role,name,email,matrix_id,timezone,mentor"


def roster_csv(slug: str, rows: int) -> str:
    """Half mentors, half mentees; each mentee names their mentor by email (the brief's file)."""
    lines = [HEADER]
    for i in range(rows // 2):
        lines.append(f"{slug},mentor,Mentor {i},mentor{i}@example.org,@mentor{i}:example.org,Europe/Berlin,")
        lines.append(f"{slug},mentee,Mentee {i},mentee{i}@example.org,@mentee{i}:example.org,,"
                     f"mentor{i}@example.org")
    return "\n".join(lines) + "\n"


async def new_cohort(db: Database, settings: Settings, slug: str) -> Cohort:
    """A cohort with its space and lounge queued, as `cohort create` makes it (not timed)."""
    clock = SystemClock()
    async with db.transaction() as s:
        env = await load_env(s, Outbox(db, clock), clock, settings)
        return await create_cohort(s, env, slug=slug, name=f"Bench {slug}", timezone="UTC",
                                      start=None, weeks=12, source="command")


def _outbox_row(now: float, *, kind: str, lane: str, payload: dict[str, Any], dedupe_key: str,
                ) -> dict[str, Any]:
    return dict(txn_id=uuid.uuid4().hex, dedupe_key=dedupe_key, channel="matrix", kind=kind, lane=lane,
                payload=json.dumps(payload, separators=(",", ":"), ensure_ascii=False), status="queued",
                attempts=0, not_before=now, created_at=now)


async def _insert_returning(
    s: AsyncSession, table: Any, key: Any, rows: list[dict[str, Any]],
) -> dict[Any, int]:
    """Bulk INSERT ... RETURNING key, id; the rows may come back in any order, hence the key."""
    result = await s.execute(insert(table).returning(key, table.c.id), rows)
    return {k: int(i) for k, i in result.all()}


async def raw_import(s: AsyncSession, settings: Settings, cohort: Cohort, rows: int, secret: bytes) -> float:
    """The rows the hub writes for this file into an empty cohort, with Core bulk INSERTs only.

    Returns the seconds spent rendering the welcomes (Markdown to HTML), which both sides do.
    """
    assert cohort.id is not None
    cid, now, rendering = cohort.id, time.time(), 0.0
    rooms = {r.kind: r for r in (await s.execute(
        select(hub_room_table.c.id, hub_room_table.c.key, hub_room_table.c.kind)
        .where(hub_room_table.c.cohort_id == cid))).all()}
    people: list[dict[str, Any]] = []
    for i in range(rows // 2):
        for role, tz in (("mentor", "Europe/Berlin"), ("mentee", None)):
            people.append(dict(cohort_id=cid, role=role, name=f"{role.title()} {i}",
                               email=f"{role}{i}@example.org", matrix_id=f"@{role}{i}:example.org",
                               timezone=tz, status="active", created_at=now))
    ids = await _insert_returning(s, member_table, member_table.c.email, people)
    pairs: list[dict[str, Any]] = [
        dict(cohort_id=cid, mentor_id=ids[f"mentor{i}@example.org"],
             mentee_id=ids[f"mentee{i}@example.org"], status="active",
             video_name=video_name(secret, secrets.token_hex(16)), created_at=now)
        for i in range(rows // 2)]
    pair_ids = await _insert_returning(s, pair_table, pair_table.c.mentee_id, pairs)
    keys = [f"pair:{pair_ids[p['mentee_id']]}" for p in pairs]
    room_ids = await _insert_returning(s, hub_room_table, hub_room_table.c.key, [
        dict(key=key, kind="pair", generation=1, status="pending", cohort_id=cid,
             pair_id=pair_ids[p["mentee_id"]], created_at=now) for key, p in zip(keys, pairs, strict=True)])
    memberships = [dict(room_pk=rooms[kind].id, user_id=p["matrix_id"], state="pending", updated_at=now)
                   for p in people for kind in ("space", "lounge")]
    outbox = []
    base_url, prefix = settings.video.base_url, settings.matrix.command_prefix
    for i, (key, p) in enumerate(zip(keys, pairs, strict=True)):
        mentor, mentee = people[2 * i], people[2 * i + 1]
        memberships += [dict(room_pk=room_ids[key], user_id=m["matrix_id"], state="pending", updated_at=now)
                        for m in (mentor, mentee)]
        outbox.append(_outbox_row(now, kind="room-create", lane=f"room:{key}", dedupe_key=f"create:{key}:1",
                                  payload={"op": "create_room", "room_key": key, "generation": 1}))
        text = pair_welcome(mentor=mentor["name"], mentee=mentee["name"], cohort=cohort.name,
                            link=video_url(base_url, p["video_name"]), prefix=prefix)
        t = time.perf_counter()
        body, html = markdown_to_matrix(text)
        rendering += time.perf_counter() - t
        outbox.append(_outbox_row(now, kind="pair-welcome", lane=f"room:{key}", dedupe_key=f"welcome:{key}:1",
                                  payload={"op": "message", "room_key": key, "type": "m.room.message",
                                           "content": notice_content(body, html)}))
    for kind in ("space", "lounge"):
        room = rooms[kind]
        outbox.append(_outbox_row(now, kind="room-invite", lane=f"room:{room.key}",
                                  dedupe_key=f"invite:{room.key}:bulk:{uuid.uuid4().hex}",
                                  payload={"op": "invite", "room_key": room.key,
                                           "users": sorted(p["matrix_id"] for p in people)}))
    await s.execute(insert(room_member_table), memberships)
    await s.execute(insert(outbox_table), outbox)
    return rendering


async def counts(db: Database, cohort_id: int) -> dict[str, int]:
    """What one side wrote for its cohort (the outbox rows on its rooms' lanes)."""
    rooms = select(hub_room_table.c.id).where(hub_room_table.c.cohort_id == cohort_id)
    async with db.session() as s:
        keys = [f"room:{k}" for k in (await s.execute(select(hub_room_table.c.key).where(
            hub_room_table.c.cohort_id == cohort_id))).scalars()]

        async def count(table: Any, cond: Any) -> int:
            return int((await s.execute(select(func.count()).select_from(table).where(cond))).scalar_one())

        return {
            "members": await count(member_table, member_table.c.cohort_id == cohort_id),
            "pairs": await count(pair_table, pair_table.c.cohort_id == cohort_id),
            "rooms": len(keys),
            "room_members": await count(room_member_table, room_member_table.c.room_pk.in_(rooms)),
            "outbox": await count(outbox_table, outbox_table.c.lane.in_(keys)),
        }


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with scratch_database(Path(tmp), args.database_url) as url:
            settings = settings_from_dict({
                "hub": {"data_dir": tmp},
                "database": {"url": url},
                "matrix": {"homeserver": "https://matrix.example.org", "user_id": "@hub:example.org",
                           "password": "not-used", "moderators": ["@lead:example.org"]},
            }, base=Path(tmp), env={})
            db = await open_database(url)
            try:
                tag = secrets.token_hex(2)
                n = args.rows
                # Raw first: the hub's side then runs on tables that are not smaller than raw's were.
                raw_cohort = await new_cohort(db, settings, f"raw-{tag}")
                async with db.transaction() as s:
                    secret = (await load_env(s, Outbox(db, SystemClock()), SystemClock(), settings)).secret
                print(f"{load()} before the raw side")
                markdown_to_matrix("**warm-up**: the first call loads the Markdown extensions")
                began = time.perf_counter()
                async with db.transaction() as s:
                    rendering = await raw_import(s, settings, raw_cohort, n, secret)
                raw = time.perf_counter() - began

                hub_cohort = await new_cohort(db, settings, f"hub-{tag}")
                text = roster_csv(hub_cohort.slug, n)
                began = time.perf_counter()
                roster = parse_roster(text)
                parsed = time.perf_counter() - began
                print(f"{load()} before the hub side")
                began = time.perf_counter()
                report = await apply_roster(db, settings, roster)
                hub = time.perf_counter() - began
                print(f"  {report.summary()}")
                began = time.perf_counter()
                again = await apply_roster(db, settings, roster)
                reimport = time.perf_counter() - began
                print(f"  {again.summary()}")
                assert raw_cohort.id is not None and hub_cohort.id is not None
                raw_counts, hub_counts = await counts(db, raw_cohort.id), await counts(db, hub_cohort.id)
            finally:
                await db.close()
    backend = "postgresql" if args.database_url else "sqlite"
    print(f"roster import: {n} rows ({n // 2} pairs), one transaction, {backend}; {load()} after")
    print(f"  plain SQLAlchemy Core: {raw:6.2f} s  {1000 * raw / n:6.2f} ms/row")
    print(f"  hub apply_roster:      {hub:6.2f} s  {1000 * hub / n:6.2f} ms/row   (target <= 3 ms/row)")
    print(f"  hub re-import (same file, nothing to do): {reimport:.2f} s  {1000 * reimport / n:.2f} ms/row")
    print(f"  parsing the CSV (hub.core.roster, not in the times above): {parsed:.2f} s")
    print(f"  ratio hub/raw: {hub / raw:.2f}")
    print(f"  of which rendering the {n // 2} welcomes (hub.core.markup, both sides): {rendering:.2f} s "
          f"({1000 * rendering / n:.2f} ms/row)")
    print(f"  rows written: raw {raw_counts}")
    print(f"                hub {hub_counts}")
    if raw_counts != hub_counts:
        raise SystemExit("the two sides wrote different numbers of rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000, help="CSV rows, half mentors, half mentees")
    parser.add_argument("--database-url", default=None,
                        help="a scratch PostgreSQL database; default: a temporary SQLite file")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
