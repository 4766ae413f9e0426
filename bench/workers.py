"""Email workers: a 20,000-recipient digest sent by `hub run` alone, then with 1 and 2 `hub worker`s.

Everything runs as an operator would run it, each in its own process: a local Synapse, `hub run`
(its dispatcher claims email rows beside its Matrix ones), `hub worker -c` processes on the same
config, and the SMTP sink (`python -m hub.devserver.smtp --count-only`), on a fresh PostgreSQL
database. A cohort of 20,000 email-only people is written once with bulk INSERTs. Each round
starts its workers, then fans out one week's digest from this process the way `!hub digest SLUG
send` does (`ProgramService.rows` with the hub's `DigestService`: one edition, one reference row
per person, one transaction), and is timed from the fan-out's start until every row is recorded
as sent; each process's CPU is read from /proc over the round. The raw side, in the same run:
aiosmtplib `sendmail` of the same 20,000 messages (rendered and built beforehand, not timed)
over the same number of connections as one hub process, from this process.

Run: `python bench/workers.py [--recipients 20000] [--rounds 0,1,2] [--database-url URL]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from _common import (
    FROM,
    cpu_seconds,
    prebuild,
    raw_smtp,
    scratch_database,
    start_sink,
    stop_sink,
    synapse_at,
)
from sqlalchemy import func, insert, select, text

from hub.clock import SystemClock
from hub.config import Settings, load_settings
from hub.core.calendar import CalendarItem, ItemKind
from hub.core.tokens import new_handle
from hub.delivery.outbox import Outbox
from hub.devserver import free_port
from hub.features.cohort_setup import create_cohort
from hub.features.digest import DigestService
from hub.features.digest_mail import DigestMail
from hub.features.program import ProgramService
from hub.features.room_queue import load_env
from hub.storage.db import Database, open_database
from hub.storage.models import member_table, subscriber_table
from hub.storage.models import outbox_table as T

__all__ = ["main"]

SLUG = "big"


def write_config(base: Path, homeserver: str, bot_id: str, url: str, smtp_port: int,
                 connections: int) -> Path:
    path = base / "config.toml"
    path.write_text(f"""
[hub]
data_dir = "./data"
[database]
url = "{url}"
[matrix]
homeserver = "{homeserver}"
user_id = "{bot_id}"
password = "${{HUB_MATRIX_PASSWORD}}"
control_room = "#bench-mods:localhost"
[email]
enabled = true
from = "{FROM}"
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
security = "none"
connections = {connections}
[web]
listen = "127.0.0.1:{free_port()}"
public_url = "https://hub.example.org"
secret = "bench-secret-not-real"
""", encoding="utf-8")
    return path


class Proc:
    def __init__(self, args: list[str], env: dict[str, str], log: Path, ready: str) -> None:
        self.log, self.ready = log, ready
        with log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "hub", *args], env=env, stdout=out,
                                         stderr=subprocess.STDOUT)

    async def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.ready not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.log.name}: not ready\n{self.log.read_text()[-2000:]}")
            await asyncio.sleep(0.2)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    async def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(self.proc.wait, 60)


@dataclass
class Round:
    workers: int
    fan_out: float
    total: float
    cpu: dict[str, float]
    load: tuple[float, float, float]


async def populate(db: Database, settings: Settings, n: int) -> None:
    clock = SystemClock()
    async with db.transaction() as s:
        env = await load_env(s, Outbox(db, clock), clock, settings)
        cohort = await create_cohort(s, env, slug=SLUG, name="Big Cohort", timezone="Europe/Berlin",
                                     start=date.today() + timedelta(days=60), weeks=12, source="command")
        now = clock.now().timestamp()
        # Their unsubscribe handles too, as after their first digest: every round then fans out
        # the steady weekly way (the first digest also makes 20,000 handles, timed by no round).
        for i in range(0, n, 5000):
            await s.execute(insert(subscriber_table), [
                {"handle": new_handle(), "person": f"mailto:p{j}@example.org", "created_at": now}
                for j in range(i, min(n, i + 5000))])
        for i in range(0, n, 5000):
            await s.execute(insert(member_table), [
                {"cohort_id": cohort.id, "role": "mentee" if j % 2 else "mentor", "name": f"Person {j}",
                 "email": f"p{j}@example.org", "status": "active", "created_at": now}
                for j in range(i, min(n, i + 5000))])


async def fan_out(db: Database, settings: Settings, week: int) -> int:
    """`!hub digest big send` for `week`, as the command does it; how many emails it queued."""
    clock = SystemClock()
    outbox = Outbox(db, clock)
    program = ProgramService(db=db, outbox=outbox, clock=clock, settings=lambda: settings)
    program.digest = DigestService(program, control_room=lambda: None).rows
    item = CalendarItem(key=f"digest:{SLUG}:w{week}", kind=ItemKind.DIGEST, cohort=SLUG, week=week,
                        due=clock.now())
    async with db.transaction() as s:
        rows = await program.rows(s, item, await program.targets_of(item, clock.now()), source="send")
        await outbox.enqueue_many(s, rows)
    return sum(1 for r in rows if r["channel"] == "email")


async def last_seq(db: Database) -> int:
    async with db.session() as s:
        return int((await s.execute(select(func.max(T.c.seq)))).scalar() or 0)


async def unsent(db: Database, after: int) -> int:
    """The round's rows not sent yet: an index range of (status, ...) rows, cheap however long the
    outbox's history (a count of sent rows by dedupe key scanned the whole table each time)."""
    async with db.session() as s:
        return int((await s.execute(select(func.count()).select_from(T).where(
            T.c.status.in_(("queued", "sending")) & (T.c.seq > after)))).scalar() or 0)


async def sent(db: Database, after: int) -> int:
    async with db.session() as s:
        return int((await s.execute(select(func.count()).select_from(T).where(
            (T.c.status == "sent") & (T.c.seq > after) & (T.c.channel == "email")))).scalar() or 0)


async def pg_backends(db: Database) -> dict[int, float]:
    """CPU so far of each PostgreSQL backend serving this database (all processes' connections)."""
    async with db.session() as s:
        pids = (await s.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"))
                ).scalars().all()
    return {int(pid): cpu_seconds(int(pid)) for pid in pids}


async def all_sent(db: Database, after: int) -> None:
    # Twice a second: each look is a few ms of PostgreSQL's CPU, which the senders share.
    while True:
        if not await unsent(db, after):
            return
        await asyncio.sleep(0.5)


async def raw_messages(db: Database, week: int) -> list[Any]:
    """The round's messages, rendered as the hub renders them, built with fresh Message-IDs."""
    render = DigestMail(db)
    async with db.session() as s:
        payloads = [json.loads(p) for p in (await s.execute(select(T.c.payload).where(
            T.c.dedupe_key.like(f"digest:{SLUG}:w{week}:%") & (T.c.channel == "email")))).scalars().all()]
    return prebuild([await render(p) for p in payloads])


def tracebacks(base: Path) -> None:
    text = "".join(p.read_text(errors="replace") for p in base.glob("*.log"))
    if "Traceback" in text:
        print("a process logged a traceback:\n" + text[max(0, text.index("Traceback") - 500):][:3000])


async def run(args: argparse.Namespace) -> None:
    n = args.recipients
    pythonpath = os.pathsep.join(p for p in sys.path if p)
    sink, port = start_sink()
    rounds: list[Round] = []
    raw: tuple[float, float] = (0.0, 0.0)
    sizes: list[int] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp)
            async with scratch_database(base, args.database_url) as url, synapse_at(base) as synapse:
                bot = await synapse.register("hub", "bench-password-not-real")
                config = write_config(base, synapse.url, bot.user_id, url, port, args.connections)
                env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": pythonpath,
                       "HUB_MATRIX_PASSWORD": bot.password}
                settings = load_settings(config, env=env)
                db = await open_database(url)
                began = time.perf_counter()
                await populate(db, settings, n)
                print(f"{n} people written in {time.perf_counter() - began:.1f} s", flush=True)
                hub = Proc(["run", "-c", str(config)], env, base / "hub.log", "hub ready as")
                await hub.wait_ready()
                synapse_pid = synapse.pid
                for week, k in enumerate(args.rounds, start=1):
                    workers = [Proc(["worker", "-c", str(config)], {**env, "HUB_MATRIX_PASSWORD": ""},
                                    base / f"worker{week}-{i}.log", "worker ready") for i in range(k)]
                    for w in workers:
                        await w.wait_ready()
                    procs = {"hub run": hub, **{f"worker {i + 1}": w for i, w in enumerate(workers)}}
                    cpu0 = {name: p.cpu() for name, p in procs.items()}
                    cpu0["sink"], cpu0["synapse"] = cpu_seconds(sink.pid), cpu_seconds(synapse_pid)
                    cpu0["bench (fan-out)"] = time.process_time()
                    pg0 = await pg_backends(db)
                    after = await last_seq(db)
                    began = time.perf_counter()
                    queued = await fan_out(db, settings, week)
                    fanned = time.perf_counter() - began
                    assert queued == n, queued
                    await all_sent(db, after)
                    total = time.perf_counter() - began
                    assert await sent(db, after) >= n
                    cpu = {name: p.cpu() - cpu0[name] for name, p in procs.items()}
                    cpu["sink"] = cpu_seconds(sink.pid) - cpu0["sink"]
                    cpu["synapse"] = cpu_seconds(synapse_pid) - cpu0["synapse"]
                    cpu["bench (fan-out)"] = time.process_time() - cpu0["bench (fan-out)"]
                    # Backends that ended during the round are not counted (the pools keep theirs).
                    pg1 = await pg_backends(db)
                    cpu["postgresql"] = sum(c - pg0.get(pid, 0.0) for pid, c in pg1.items())
                    rounds.append(Round(k, fanned, total, cpu, os.getloadavg()))
                    print(f"hub + {k} workers: {total:.2f} s ({n / total:.0f}/s), fan-out {fanned:.2f} s; "
                          f"CPU {', '.join(f'{a} {b:.1f} s' for a, b in cpu.items())}; "
                          f"load {os.getloadavg()}", flush=True)
                    for w in workers:
                        await w.stop()
                messages = await raw_messages(db, 1)
                sizes = [len(m.data) for m in messages[:50]]
                raw = await raw_smtp(port, messages, args.connections)
                await hub.stop()
                await db.close()
                tracebacks(base)
    finally:
        received = stop_sink(sink)
    kib = f"{min(sizes) / 1024:.1f}-{max(sizes) / 1024:.1f} KiB"
    print(f"\nworkers: {n}-recipient digest ({kib} per message), "
          f"PostgreSQL outbox, {args.connections} SMTP connections per process, sink in its own process; "
          f"{os.cpu_count()} CPUs")
    print(f"  raw aiosmtplib, pre-built, {args.connections} connections: {raw[0]:.2f} s  "
          f"{n / raw[0]:5.0f}/s; CPU per email {1000 * raw[1] / n:.2f} ms")
    for r in rounds:
        who = f"hub run + {r.workers} worker{'s' if r.workers != 1 else ''}"
        senders = sum(c for name, c in r.cpu.items() if name.startswith(("hub", "worker")))
        ratio = r.total / raw[0]
        print(f"  {who}: {r.total:6.2f} s  {n / r.total:5.0f}/s  "
              f"(fan-out {r.fan_out:.2f} s; load after {r.load[0]:.2f})  ratio to raw {ratio:.2f}; "
              f"CPU per email: senders {1000 * senders / n:.2f} ms, sink {1000 * r.cpu['sink'] / n:.2f} ms, "
              f"PostgreSQL {1000 * r.cpu['postgresql'] / n:.2f} ms")
    print(f"  sink received {received} (expected {(len(rounds) + 1) * n})")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--recipients", type=int, default=20000)
    parser.add_argument("--rounds", type=lambda v: [int(x) for x in v.split(",")], default=[0, 1, 2],
                        help="workers beside hub run in each round, in order (default 0,1,2)")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--database-url", default=os.environ.get("HUB_TEST_DATABASE_URL"),
                        help="a PostgreSQL server (workers need it); default $HUB_TEST_DATABASE_URL")
    args = parser.parse_args()
    if not (args.database_url or "").startswith(("postgresql://", "postgres://")):
        parser.error("hub worker needs PostgreSQL: pass --database-url postgresql://...")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
