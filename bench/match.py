"""Matching: 2,000 unpaired mentees x 1,000 mentors, the whole `!hub match` proposal, from the
database to the text, in parts; and its quality against a greedy pass.

Set-up (not timed): a cohort with 1,000 mentors (capacity 1-3) and 2,000 mentees, random
languages (1-2 of 6 for mentees, 1-3 for mentors), topics (1-3 of 20, 1-4), time zones (12
zones, DST-correct), 2 % of people with an `avoid`, and 200 former (closed) pairs, written with
Core bulk INSERTs. Hub side, the parts the command runs one after another:
`hub.features.matching_store.load_cohort_match` (three SELECTs and the matcher's input),
`hub.core.matching.cost_matrix` (numpy), `solve` (scipy's `linear_sum_assignment` on that
matrix) and `hub.features.match_commands.proposal_markdown` (the chat answer). The raw library
in the same run: `linear_sum_assignment` alone on the very same cost matrix, and on a random
2,000 x 1,000 matrix (the issue's yardstick, about 0.1 s). Quality: `hub.core.matching.greedy`
(first come, first served in roster order) on the same input: matched, summed score, shared
topics, mean hours apart.

Run: `python bench/match.py [--mentees 2000] [--mentors 1000] [--runs 3] [--database-url URL]`;
given a PostgreSQL URL, the run works in a fresh database it makes on that server and drops.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from _common import backend_name, scratch_database
from scipy.optimize import linear_sum_assignment
from sqlalchemy import insert

from hub.clock import SystemClock
from hub.config import settings_from_dict
from hub.core.matching import Proposal, cost_matrix, greedy, solve
from hub.delivery.outbox import Outbox
from hub.features.cohort_setup import create_cohort
from hub.features.match_commands import proposal_markdown
from hub.features.matching_store import load_cohort_match
from hub.features.room_queue import load_env
from hub.storage.db import Database, open_database
from hub.storage.models import Cohort, member_table, pair_table

__all__ = ["main"]

LANGS = ("en", "de", "fr", "es", "pt", "it")
TOPICS = tuple(f"topic {i}" for i in range(20))
ZONES = ("America/Los_Angeles", "America/New_York", "America/Sao_Paulo", "Europe/London", "Europe/Berlin",
         "Africa/Lagos", "Asia/Kolkata", "Asia/Singapore", "Asia/Tokyo", "Australia/Sydney", "UTC",
         "Pacific/Auckland")


async def populate(db: Database, cohort: Cohort, mentees: int, mentors: int, rng: random.Random) -> None:
    assert cohort.id is not None
    now = time.time()
    rows: list[dict[str, Any]] = []
    for j in range(mentors):
        rows.append({"cohort_id": cohort.id, "role": "mentor", "name": f"Mentor {j}",
                     "email": f"mentor{j}@example.org", "matrix_id": f"@mentor{j}:example.org",
                     "timezone": rng.choice(ZONES), "status": "active", "created_at": now,
                     "languages": ";".join(rng.sample(LANGS, rng.randint(1, 3))),
                     "topics": ";".join(rng.sample(TOPICS, rng.randint(1, 4))),
                     "capacity": rng.randint(1, 3), "avoid": None})
    for i in range(mentees):
        avoid = f"@mentor{rng.randrange(mentors)}:example.org" if rng.random() < 0.02 else None
        rows.append({"cohort_id": cohort.id, "role": "mentee", "name": f"Mentee {i}",
                     "email": f"mentee{i}@example.org", "matrix_id": f"@mentee{i}:example.org",
                     "timezone": rng.choice(ZONES), "status": "active", "created_at": now,
                     "languages": ";".join(rng.sample(LANGS, rng.randint(1, 2))),
                     "topics": ";".join(rng.sample(TOPICS, rng.randint(1, 3))),
                     "capacity": None, "avoid": avoid})
    async with db.transaction() as s:
        await s.execute(insert(member_table), rows)
        ids = {r.email: r.id for r in (await s.execute(
            member_table.select().where(member_table.c.cohort_id == cohort.id))).all()}
        former = [{"cohort_id": cohort.id, "mentor_id": ids[f"mentor{rng.randrange(mentors)}@example.org"],
                   "mentee_id": ids[f"mentee{rng.randrange(mentees)}@example.org"], "status": "closed",
                   "video_name": f"v{k}", "created_at": now, "closed_at": now} for k in range(200)]
        await s.execute(insert(pair_table), former)


def quality(p: Proposal) -> str:
    topics = sum(len(x.shared_topics) for x in p.pairs)
    hours = statistics.fmean(x.hours_apart for x in p.pairs) if p.pairs else 0.0
    return (f"{len(p.pairs)} matched, score {p.score:,}, {topics} shared topics, "
            f"{hours:.2f} h apart on average")


async def run(args: argparse.Namespace) -> None:
    rng = random.Random(14)
    with tempfile.TemporaryDirectory() as tmp:
        async with scratch_database(Path(tmp), args.database_url) as url:
            settings = settings_from_dict({
                "hub": {"data_dir": tmp}, "database": {"url": url},
                "matrix": {"homeserver": "https://matrix.example.org", "user_id": "@hub:example.org",
                           "password": "x"}}, base=Path(tmp), env={})
            db = await open_database(url)
            try:
                clock = SystemClock()
                async with db.transaction() as s:
                    env = await load_env(s, Outbox(db, clock), clock, settings)
                    cohort = await create_cohort(s, env, slug="bench", name="Bench", timezone="UTC",
                                                    start=None, weeks=12, source="command")
                await populate(db, cohort, args.mentees, args.mentors, rng)
                now = datetime(2027, 3, 1, 12, tzinfo=UTC)
                parts: dict[str, list[float]] = {k: [] for k in
                                                  ("load", "cost", "solve", "text", "whole", "bare")}
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    async with db.session() as s:
                        cm = await load_cohort_match(s, cohort, now)
                    t1 = time.perf_counter()
                    costs = cost_matrix(cm.input)
                    t2 = time.perf_counter()
                    proposal = solve(cm.input, costs)
                    t3 = time.perf_counter()
                    text = proposal_markdown(cm, proposal, "!hub")
                    t4 = time.perf_counter()
                    for k, v in zip(("load", "cost", "solve", "text", "whole"),
                                    (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), strict=True):
                        parts[k].append(v)
                    b0 = time.perf_counter()
                    linear_sum_assignment(costs.matrix.copy())
                    parts["bare"].append(time.perf_counter() - b0)
                random_matrix = np.random.default_rng(14).random((args.mentees, args.mentors))
                r0 = time.perf_counter()
                linear_sum_assignment(random_matrix)
                yardstick = time.perf_counter() - r0
                g0 = time.perf_counter()
                first_come = greedy(cm.input)
                greedy_s = time.perf_counter() - g0
            finally:
                await db.close()
    best = {k: min(v) for k, v in parts.items()}
    load = os.getloadavg()
    print(f"backend {backend_name(args.database_url)}: {args.mentees} mentees x {args.mentors} mentors "
          f"({costs.matrix.shape[1]} seats in the matrix, {len(cm.input.forbidden)} forbidden pairs); "
          f"best of {args.runs}, load average {load[0]:.2f} {load[1]:.2f}")
    print(f"  whole proposal {best['whole']:.3f} s (runs: {', '.join(f'{x:.3f}' for x in parts['whole'])}): "
          f"loading {best['load']:.3f}, cost matrix {best['cost']:.3f}, solving {best['solve']:.3f}, "
          f"text {best['text']:.3f} ({len(text):,} characters)")
    print(f"  raw: linear_sum_assignment on the same matrix {best['bare']:.3f} s; on a random "
          f"{args.mentees} x {args.mentors} matrix {yardstick:.3f} s")
    print(f"  assignment: {quality(proposal)}")
    print(f"  greedy:     {quality(first_come)} ({greedy_s:.3f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mentees", type=int, default=2000)
    parser.add_argument("--mentors", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database-url", help="a PostgreSQL server URL (default: SQLite in a temp folder)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
