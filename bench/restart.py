"""Restart with a sync token: what restarting a hub in many rooms costs, before and after issue 17.

Builds a programme on a local Synapse through a running hub: one cohort (space, lounge)
and `--pairs` pair rooms of registered people (without devices; they never join), each
with its encrypted welcome. Then restarts `hub run` as a process of its own, again and
again, behind a recording proxy in front of Synapse (hub.devserver.proxy): alternately
the code before issue 17 (`--before DIR`, a checkout whose first sync of every run asked
for full state and whose room check read every room at once after start) and this
checkout. For each restart: the bytes of the first sync's answer, the time from spawning
the process to the answer of a `!hub ping` the moderator sent at that moment (read by the
moderator's own E2EE client), the GET /state requests until then, and the time until the
room check's first pass has ended, with the hub's and Synapse's CPU until then.
Run: `python bench/restart.py --pairs 300 --before /tmp/before-17`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _common import cpu_seconds, synapse_at
from provision_pairs import quiet, register_people

from hub.config import Settings, settings_from_dict
from hub.core.cohorts import Who
from hub.devserver.client import SimulatedUser
from hub.devserver.proxy import RecordingProxy
from hub.devserver.synapse import RegisteredUser
from hub.features.cohort_setup import create_cohort
from hub.features.members import add_member
from hub.features.pairs import make_pair
from hub.features.room_queue import load_env
from hub.service import Hub

__all__ = ["main"]

HERE = Path(__file__).resolve().parent.parent  # this checkout: the "after" code
ALIAS = "#bench-mods:localhost"
# The log line that ends the room check's pass: "checked N rooms" now, "reconciled N rooms" before.
CHECK_DONE = ("checked ", "reconciled ")


@dataclass
class Restart:
    code: str
    first_sync_bytes: int
    full_state: bool
    ready_s: float  # spawn to "hub ready" in its log: after the first sync and the control room
    ping_s: float
    state_reads_before_ping: int
    check_s: float
    state_reads: int
    hub_cpu: float
    synapse_cpu: float
    load: str


def settings_for(base: Path, homeserver: str, bot: RegisteredUser, mod: str) -> Settings:
    return settings_from_dict({
        "hub": {"data_dir": str(base / "hub")},
        "database": {"url": f"sqlite:///{base / 'hub' / 'hub.db'}"},
        "matrix": {"homeserver": homeserver, "user_id": bot.user_id, "password": bot.password,
                   "control_room": ALIAS, "moderators": [mod]},
        "web": {"listen": "127.0.0.1:0"},
    }, base=base, env={})


def write_config(base: Path, homeserver: str, bot: RegisteredUser, mod: str) -> Path:
    path = base / "config.toml"
    path.write_text(f"""[hub]
data_dir = "{base / 'hub'}"
[database]
url = "sqlite:///{base / 'hub' / 'hub.db'}"
[matrix]
homeserver = "{homeserver}"
user_id = "{bot.user_id}"
password = "${{HUB_MATRIX_PASSWORD}}"
control_room = "{ALIAS}"
moderators = ["{mod}"]
[web]
listen = "127.0.0.1:0"
""", encoding="utf-8")
    return path


async def build(settings: Settings, people: list[str], moderator: SimulatedUser) -> str:
    """The programme, through a running hub: returns the control room's id."""
    hub = Hub(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(hub.run(stop))
    await asyncio.wait_for(hub.ready.wait(), 120)
    try:
        assert hub.db is not None and hub.outbox is not None and hub.control_room_id
        control = hub.control_room_id
        async with hub.db.transaction() as s:
            env = await load_env(s, hub.outbox, hub.clock, hub.settings)
            # Starting in a month: no launch-day messages while measuring.
            start = (datetime.now(UTC) + timedelta(days=30)).date()
            cohort = await create_cohort(s, env, slug="bench", name="Bench", timezone="UTC", start=start,
                                         weeks=12, source="command")
            for i, user in enumerate(people):
                await add_member(s, env, cohort, "mentor" if i % 2 == 0 else "mentee", Who(matrix_id=user),
                                 name=f"Person {i}")
            for i in range(0, len(people), 2):
                await make_pair(s, env, cohort, Who(matrix_id=people[i]), Who(matrix_id=people[i + 1]))
        await quiet(hub, timeout=3600)
        await moderator.wait_until(lambda: moderator.joined(control), 60)
        return control
    finally:
        stop.set()
        await task


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def log_lines(log: Path) -> list[str]:
    return log.read_text(errors="replace").splitlines() if log.exists() else []


def spawn(code: Path, config: Path, password: str, log: Path) -> subprocess.Popen[bytes]:
    """`hub run` with the `hub` package of `code`, its output to `log`."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HUB_MATRIX_PASSWORD": password,
           "PYTHONPATH": str(code)}
    log.write_text("")
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "hub", "run", "-c", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=code)


def seconds_to(lines: list[str], text: str, since: float) -> float:
    """When the first log line containing `text` was written, in seconds after `since` (epoch)."""
    for line in lines:
        if text in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp() - since
    return float("nan")


async def restart(code: Path, config: Path, password: str, proxy: RecordingProxy, moderator: SimulatedUser,
                  control: str, log: Path, synapse_pid: int | None) -> Restart:
    proxy.clear()
    load = load_average()
    synapse_cpu = cpu_seconds(synapse_pid)
    began, wall = time.monotonic(), time.time()
    proc = spawn(code, config, password, log)
    try:
        asked = await moderator.send(control, "!hub ping")
        await moderator.wait_until(lambda: moderator.reply_to(control, asked) is not None, 300)
        ping = time.monotonic() - began
        deadline = time.monotonic() + 3600
        while not any(word in line and " rooms: " in line for line in log_lines(log) for word in CHECK_DONE):
            if proc.poll() is not None:
                raise RuntimeError(f"the hub exited {proc.returncode}:\n{log_lines(log)[-40:]}")
            if time.monotonic() > deadline:
                raise TimeoutError("the room check did not end")
            await asyncio.sleep(0.2)
        check = time.monotonic() - began
        hub_cpu, synapse_cpu = cpu_seconds(proc.pid), cpu_seconds(synapse_pid) - synapse_cpu
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 60)
    syncs = proxy.matching("GET", "/_matrix/client/v3/sync")
    reads = proxy.matching("GET", r"/_matrix/client/v3/rooms/[^/]+/state")
    return Restart(
        code=str(code), first_sync_bytes=syncs[0].size, full_state=syncs[0].query.get("full_state") == "true",
        ready_s=seconds_to(log_lines(log), "hub ready as", wall),
        ping_s=ping, state_reads_before_ping=sum(1 for e in reads if e.began <= began + ping),
        check_s=check, state_reads=len(reads), hub_cpu=hub_cpu, synapse_cpu=synapse_cpu,
        load=f"{load} → {load_average()}")


async def run(args: argparse.Namespace) -> None:
    codes = ([args.before] if args.before else []) + [HERE]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        async with synapse_at(base) as synapse, RecordingProxy(synapse.url) as proxy:
            bot = await synapse.register("benchhub", secrets.token_urlsafe(12))
            mod_user = await synapse.register("benchmod", secrets.token_urlsafe(12))
            moderator = SimulatedUser(synapse.url, mod_user, base / "mod-store", name="moderator")
            await moderator.start()
            began = time.perf_counter()
            people = await register_people(synapse, 2 * args.pairs)
            control = await build(settings_for(base, synapse.url, bot, mod_user.user_id), people, moderator)
            print(f"built {args.pairs} pair rooms (+ space, lounge, control room) for {len(people)} "
                  f"people in {time.perf_counter() - began:.0f} s")
            config = write_config(base, proxy.url, bot, mod_user.user_id)
            process = getattr(synapse, "_process", None)  # the devserver's child; bench-only peek
            pid = process.pid if process is not None else None
            results: list[Restart] = []
            for r in range(args.runs):
                order = codes if r % 2 == 0 else list(reversed(codes))
                for code in order:
                    await asyncio.sleep(5)  # let the last run's stop settle
                    results.append(await restart(code, config, bot.password, proxy, moderator, control,
                                                 base / "hub.log", pid))
                    x, name = results[-1], "before" if code != HERE else "after "
                    print(f"  {name}: first sync {x.first_sync_bytes:>9,} B (full_state={x.full_state}), "
                          f"ready {x.ready_s:5.2f} s, ping answered {x.ping_s:5.2f} s "
                          f"({x.state_reads_before_ping} GET /state before), room check done "
                          f"{x.check_s:6.1f} s ({x.state_reads} GET /state), CPU hub {x.hub_cpu:.1f} s, "
                          f"synapse {x.synapse_cpu:.1f} s, load {x.load}")
            await moderator.stop()
    print(f"\nrestart of a hub in {args.pairs} pair rooms (+3), SQLite, {args.runs} runs each:")
    for code in codes:
        mine = [x for x in results if x.code == str(code)]
        name = "before" if code != HERE else "after"
        print(f"  {name:6}: first sync {min(x.first_sync_bytes for x in mine):,}-"
              f"{max(x.first_sync_bytes for x in mine):,} B; ready {[round(x.ready_s, 2) for x in mine]} s; "
              f"ping {[round(x.ping_s, 2) for x in mine]} s; "
              f"room check done {[round(x.check_s, 1) for x in mine]} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--before", default=None, type=lambda p: Path(p).resolve(),
                        help="a checkout of the hub before issue 17 (its `hub` package is run)")
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
