"""What bench/scale.py runs on: a local Synapse (PostgreSQL when one answers), the hub as its own
process (`hub run`), the SMTP sink, the moderator's client and the programme's saved state.

Setup and process handling only; the phases that build and measure are in _scale_build.py and
scale.py. Everything a run needs again later lives in one folder (`--keep`/`--reuse`): Synapse's
data and config, the hub's data dir (its crypto store), the participants' nio stores and
`state.json` (accounts, database names, what has been built).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hub.devserver import free_port
from hub.devserver.synapse import RegisteredUser, SynapseServer

__all__ = ["PG_SERVER", "HubProcess", "State", "analyze_databases", "drop_databases", "hub_config", "load",
           "new_databases", "pg_answers", "rss_mb", "start_sink", "start_synapse", "status_line"]

PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
SLUG = "scale"


def pg_answers() -> bool:
    """PostgreSQL at 127.0.0.1:5432 (the machine's shared server), checked by connecting."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 5432), timeout=1):
        return True
    return False


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB, from /proc."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


@dataclass
class State:
    """The programme in a folder: what was built, with which accounts and databases."""

    folder: Path
    backend: str = "sqlite"
    synapse_db: str | None = None  # PostgreSQL database name, when Synapse runs on PostgreSQL
    hub_db: str = ""  # the hub's database URL
    empty_hub_db: str = ""
    accounts: dict[str, dict[str, str]] = field(default_factory=dict)  # bot, empty, lead
    people: int = 0  # registered p0..p{people-1}
    rooms: int = 0  # pair rooms imported (pairs p2i / p2i+1)
    e2ee: dict[str, dict[str, str]] = field(default_factory=dict)  # localpart -> user, with keys up
    builds: list[dict[str, Any]] = field(default_factory=list)
    runs: int = 0  # measuring runs so far: each digests another week (a week is sent only once)

    @classmethod
    def open(cls, folder: Path) -> State:
        path = folder / "state.json"
        if not path.exists():
            return cls(folder)
        data = json.loads(path.read_text())
        data.pop("folder", None)
        return cls(folder, **data)

    def save(self) -> None:
        data = asdict(self)
        data.pop("folder")
        (self.folder / "state.json").write_text(json.dumps(data, indent=1) + "\n")

    def user(self, name: str) -> RegisteredUser:
        return RegisteredUser(**self.accounts[name])


def _synapse_db_config(name: str) -> dict[str, Any]:
    return {"name": "psycopg2", "args": {"user": "postgres", "host": "127.0.0.1", "port": 5432,
                                         "database": name, "cp_min": 5, "cp_max": 10}}


async def _create_pg(name: str, *, c_collation: bool) -> None:
    import asyncpg

    conn = await asyncpg.connect(f"{PG_SERVER}/postgres")
    try:
        # Synapse refuses a database whose collation is not C (it sorts state keys bytewise).
        extra = " LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0" if c_collation else ""
        await conn.execute(f'CREATE DATABASE "{name}"{extra}')
    finally:
        await conn.close()


async def drop_databases(state: State) -> None:
    """Drop the PostgreSQL databases of a programme that is not kept."""
    if state.backend != "postgresql":
        return
    import asyncpg

    names = [state.synapse_db or "", state.hub_db.rpartition("/")[2], state.empty_hub_db.rpartition("/")[2]]
    conn = await asyncpg.connect(f"{PG_SERVER}/postgres")
    try:
        for name in filter(None, names):
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def analyze_databases(state: State) -> bool:
    """ANALYZE Synapse's and the hub's PostgreSQL databases; False when autovacuum does it.

    This machine's PostgreSQL runs with `autovacuum = off`: after a build of thousands of rooms
    nothing had analyzed Synapse's tables since they were nearly empty, and its auth-chain
    queries planned for that (a 5,000-room fan-out went from 6.6 to 10 rows/s once analyzed).
    A deployment's autovacuum analyzes as tables grow; this does it once, before measuring.
    """
    if state.backend != "postgresql":
        return False
    import asyncpg

    conn = await asyncpg.connect(f"{PG_SERVER}/postgres")
    try:
        if await conn.fetchval("SHOW autovacuum") == "on":
            return False
    finally:
        await conn.close()
    for name in filter(None, [state.synapse_db or "", state.hub_db.rpartition("/")[2]]):
        conn = await asyncpg.connect(f"{PG_SERVER}/{name}")
        try:
            await conn.execute("ANALYZE")
        finally:
            await conn.close()
    return True


async def new_databases(state: State, use_pg: bool) -> None:
    """Fresh databases for a new programme: PostgreSQL for all three, or SQLite files."""
    tag = os.urandom(3).hex()
    if use_pg:
        state.backend = "postgresql"
        state.synapse_db = f"scale_synapse_{tag}"
        await _create_pg(state.synapse_db, c_collation=True)
        for attr in ("hub_db", "empty_hub_db"):
            name = f"scale_{attr}_{tag}"
            await _create_pg(name, c_collation=False)
            setattr(state, attr, f"{PG_SERVER}/{name}")
    else:
        state.hub_db = f"sqlite:///{state.folder / 'hub' / 'hub.db'}"
        state.empty_hub_db = f"sqlite:///{state.folder / 'empty-hub' / 'hub.db'}"


@contextlib.asynccontextmanager
async def start_synapse(state: State) -> AsyncIterator[SynapseServer]:
    """Synapse on the programme's data (rate limits loosened by the devserver, as every benchmark)."""
    extra: dict[str, Any] = {}
    if state.synapse_db:
        extra["database"] = _synapse_db_config(state.synapse_db)
    synapse = SynapseServer(state.folder / "synapse", extra_config=extra)
    await synapse.start(timeout=180)
    try:
        yield synapse
    finally:
        await synapse.stop(timeout=60)


def _slot_day(now: datetime) -> str:
    """A weekday three days off: no scheduled item of the programme falls due during a run."""
    return ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[(now.weekday() + 3) % 7]


def hub_config(state: State, *, name: str, homeserver: str, smtp_port: int, control_room: str,
               with_cohort: bool) -> Path:
    """Write a hub's config.toml (the URL and sink port change every run) and return its path."""
    bot = state.user(name)
    data_dir = state.folder / ("hub" if name == "bot" else "empty-hub")
    data_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    day = _slot_day(now)
    q = json.dumps
    lines = [
        "[hub]", f"data_dir = {q(str(data_dir))}", 'timezone = "UTC"', "catch_up_hours = 1", "",
        "[database]", f"url = {q(state.hub_db if name == 'bot' else state.empty_hub_db)}", "",
        "[matrix]", f"homeserver = {q(homeserver)}", f"user_id = {q(bot.user_id)}",
        f"password = {q(bot.password)}", f"control_room = {q(control_room)}",
        f"moderators = [{q(state.accounts['lead']['user_id'])}]", "",
        "[email]", "enabled = true", 'from = "Scale Hub <hub@example.org>"', 'smtp_host = "127.0.0.1"',
        f"smtp_port = {smtp_port}", 'security = "none"', "connections = 4", "",
        "[web]", 'listen = "127.0.0.1:0"', 'public_url = "http://127.0.0.1"',
        'secret = "scale-bench-not-a-secret"', "",
    ]
    if with_cohort:
        # Started 8+ days ago (week 2 on the first run, a week later on each next one: the digest
        # needs a week it has not sent yet), every slot three
        # days away and no check-ins or reflections: nothing the calendar sends by itself
        # lands in a measurement.
        start = (now - timedelta(days=8 + 7 * (state.runs % 10))).date().isoformat()
        lines += ["[[cohort]]", f'slug = "{SLUG}"', 'name = "Scale"', 'timezone = "UTC"',
                  f'start = "{start}"', "weeks = 12", f'digest = "{day} 03:00"',
                  f'icebreaker = "{day} 03:00"', f'checkin = "{day} 03:00"', "checkin_weeks = []",
                  f'reflection = "{day} 03:00"', "reflection_weeks = []", ""]
    path = data_dir / "config.toml"
    path.write_text("\n".join(lines))
    return path


class HubProcess:
    """`hub run -c FILE` in its own process; its log lines are kept with their arrival times."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[tuple[float, str]] = []
        self.started = 0.0
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        self.lines = []
        self.started = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hub", "run", "-c", str(self.config),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        with self.log_path.open("a") as out:
            out.write(f"--- started {datetime.now(UTC).isoformat()}\n")
            async for raw in self.proc.stderr:
                line = raw.decode(errors="replace").rstrip()
                self.lines.append((time.monotonic(), line))
                out.write(line + "\n")
                out.flush()

    def seen(self, text: str) -> float | None:
        """Seconds from start to the first log line containing `text`, or None."""
        for at, line in self.lines:
            if text in line:
                return at - self.started
        return None

    async def wait_for(self, text: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while (found := self.seen(text)) is None:
            if self.proc is not None and self.proc.returncode is not None:
                raise RuntimeError(f"hub exited ({self.proc.returncode}); see {self.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {text!r} in the hub's log within {timeout:g} s; see {self.log_path}")
            await asyncio.sleep(0.05)
        return found

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 90)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


def start_sink() -> tuple[subprocess.Popen[str], int]:
    """The counting SMTP sink in its own process, on a port of its own."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "hub.devserver.smtp", "--count-only", "--port", str(port)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()
    return proc, port


def status_line(text: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')} load {load()}] {text}", flush=True)
