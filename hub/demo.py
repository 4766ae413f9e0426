"""`hub demo`: the whole hub on a throwaway homeserver and SMTP sink, a two-week program in a minute.

What it does, in order:

1. starts a local Synapse in a temporary folder (`hub.devserver.SynapseServer`,
   exactly as the tests do) and an SMTP sink writing every email as ``.eml``
   and ``.html`` into ``OUT/mail``;
2. registers the hub's account, 2 moderators, 4 mentors and 3 mentees (a 4th
   mentee is email-only), writes ``OUT/config.toml`` and ``OUT/roster.csv``
   and imports the roster with the real importer;
3. runs the real `hub.service.Hub` on a `ShiftedClock` and plays the cohort's
   calendar: the clock jumps to each item's due instant and the program is
   ticked explicitly (its own scheduler is paused meanwhile), while simulated
   participants (real nio clients with encryption, `hub.devserver.client`)
   chat, set backup plans, answer check-ins and report a dropped call;
4. prints a summary: counts and the emails worth opening; with ``--keep``
   everything stays up until Ctrl-C, and the summary says how to log in with
   any Matrix client.

Nothing here is faked: where a feature is missing from this build the phase
says so instead of printing made-up output.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from zoneinfo import ZoneInfo

from hub.clock import SystemClock

if TYPE_CHECKING:
    from hub.core.calendar import ItemKind

__all__ = ["DEMO_COHORT", "DemoPerson", "ShiftedClock", "describe", "login_lines", "main", "people"]

log = logging.getLogger(__name__)

DEMO_COHORT = "demo"
_ZONE = "Europe/Berlin"
_WEEKS = 2
_SERVER = "localhost"
# Generous per-step bounds: on a loaded 2-core machine an encrypted round trip can take seconds.
_DRAIN_TIMEOUT = 30.0
_REPLY_TIMEOUT = 30.0
_ROOMS_TIMEOUT = 60.0


class ShiftedClock(SystemClock):
    """Real time plus an offset that only grows: time flows, and the demo can jump ahead.

    Unlike `hub.clock.FakeClock`, time keeps moving between jumps, so leases,
    retries and rate-limit pauses behave as in production while the demo moves
    the program from one calendar item to the next. `monotonic` is the real
    one: it measures durations, and a jump is not a duration.
    """

    def __init__(self, start: datetime) -> None:
        self._offset = start.astimezone(UTC) - datetime.now(UTC)

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset

    def monotonic(self) -> float:
        return time.monotonic()

    # `sleep` and `wait` are SystemClock's: real time passes between the demo's jumps.

    def jump_to(self, when: datetime) -> None:
        """Move forward to `when`; never backwards (a no-op if `when` has passed)."""
        gap = when.astimezone(UTC) - self.now()
        if gap > timedelta(0):
            self._offset += gap


@dataclass(frozen=True)
class DemoPerson:
    localpart: str
    name: str
    role: str  # moderator | mentor | mentee
    timezone: str
    mentor: str | None = None  # a mentee's mentor (localpart)
    on_matrix: bool = True
    languages: str = ""  # the roster's matching columns (`;`-separated)
    topics: str = ""

    @property
    def email(self) -> str:
        return f"{self.localpart}@example.org"

    @property
    def user_id(self) -> str:
        return f"@{self.localpart}:{_SERVER}"


def people() -> list[DemoPerson]:
    """The sample cohort: 2 moderators, 4 mentors, 4 mentees (Eve reads email only)."""
    return [
        DemoPerson("lin", "Lin Moreau", "moderator", "Europe/Berlin"),
        DemoPerson("sam", "Sam Osei", "moderator", "Europe/London"),
        DemoPerson("ada", "Ada Okafor", "mentor", "Europe/Berlin"),
        DemoPerson("grace", "Grace Lindqvist", "mentor", "Europe/Stockholm"),
        DemoPerson("alan", "Alan Ferreira", "mentor", "America/Sao_Paulo", languages="en;pt",
                   topics="data;career change"),
        DemoPerson("kat", "Katherine Ng", "mentor", "Asia/Singapore"),
        DemoPerson("ben", "Ben Adeyemi", "mentee", "Europe/Berlin", mentor="ada"),
        DemoPerson("chloe", "Chloé Martin", "mentee", "Europe/Paris", mentor="grace"),
        # No mentor in the roster: the moderators' `!hub match` proposes one (Alan).
        DemoPerson("dev", "Dev Raman", "mentee", "Asia/Kolkata", languages="en;ta", topics="data;product"),
        DemoPerson("eve", "Eve Costa", "mentee", "Europe/Lisbon", mentor="kat", on_matrix=False),
    ]


# -- output ------------------------------------------------------------------------------------


class Progress:
    """One line per step, with a bar for the whole run (plain text: works in CI logs too)."""

    def __init__(self, total: int, out: TextIO) -> None:
        self.total = total
        self.done = 0
        self.out = out
        self.began = time.monotonic()

    def step(self, label: str, detail: str) -> None:
        self.done = min(self.total, self.done + 1)
        filled = round(20 * self.done / self.total)
        bar = "#" * filled + "." * (20 - filled)
        elapsed = time.monotonic() - self.began
        self.line(f"[{bar}] {elapsed:5.1f}s  {label:<30} {detail}")

    def line(self, text: str) -> None:
        print(text, file=self.out, flush=True)


@dataclass
class Tally:
    """What the simulated people did and what they saw back."""

    commands: Counter[str] = field(default_factory=Counter)
    chat: int = 0
    reactions: int = 0  # answers given by tapping the hub's offered reaction
    met: Counter[str] = field(default_factory=Counter)
    checkins: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    report: list[str] = field(default_factory=list)
    digest: str = "not reached"


# -- files ---------------------------------------------------------------------------------------


def _config_text(*, homeserver: str, hub_password: str, smtp_port: int, web_port: int,
                 start: date, moderators: Sequence[str]) -> str:
    webinar_at = (start + timedelta(days=2)).isoformat() + "T17:00"
    mods = ", ".join(f'"{m}"' for m in moderators)
    return f"""\
# Written by `hub demo`: a working config for the throwaway homeserver and SMTP sink.
# The passwords below are for that throwaway homeserver only; real configs take
# secrets from the environment (`${{HUB_MATRIX_PASSWORD}}`), see config.example.toml.

[hub]
data_dir = "./data"
timezone = "{_ZONE}"

[database]
url = "sqlite:///./data/hub.db"

[matrix]
homeserver = "{homeserver}"
user_id = "@hub:{_SERVER}"
password = "{hub_password}"
control_room = "#moderators:{_SERVER}"
moderators = [{mods}]
encrypt_pair_rooms = true

[email]
enabled = true
from = "Cohort Hub demo <hub@example.org>"
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
security = "none"

[web]
listen = "127.0.0.1:{web_port}"
public_url = "http://127.0.0.1:{web_port}"
secret = "{secrets.token_urlsafe(24)}"

[[cohort]]
slug = "{DEMO_COHORT}"
name = "Demo cohort"
timezone = "{_ZONE}"
start = "{start.isoformat()}"
weeks = {_WEEKS}
checkin_weeks = [1]
reflection_weeks = [2]
webinar = {{ at = "{webinar_at}", title = "Kick-off", url = "https://meet.jit.si/cohort-hub-demo-kickoff" }}
"""


def _roster_text(cast: Sequence[DemoPerson]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["cohort", "role", "name", "email", "matrix_id", "timezone", "mentor", "languages", "topics"])
    by_local = {p.localpart: p for p in cast}
    for p in cast:
        mentor = by_local[p.mentor].user_id if p.mentor else ""
        w.writerow([DEMO_COHORT, p.role, p.name, p.email, p.user_id if p.on_matrix else "", p.timezone,
                    mentor, p.languages, p.topics])
    return buf.getvalue()


def _prepare_out(out: Path) -> None:
    """Start from a clean slate, but only remove what the demo itself writes."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("mail", "data", "clients"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("config.toml", "roster.csv", "demo.log"):
        (out / name).unlink(missing_ok=True)


def _log_to_file(path: Path) -> logging.Handler:
    """Everything goes to OUT/demo.log; the terminal only shows errors, so the progress stays readable."""
    from hub.logs import secret_filter

    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(secret_filter)
    root = logging.getLogger()
    for h in root.handlers:
        h.setLevel(logging.ERROR)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


def highlights(mail_dir: Path) -> list[Path]:
    """The first email of each kind (same subject shape), in the order they were sent."""
    seen: set[str] = set()
    out: list[Path] = []
    for eml in sorted(mail_dir.glob("*.eml")):
        # "017-reminder-kick-off-starts-in-24-hours" -> "reminder-kick-off-starts-in-hours": the
        # subject without numbers (times, dates) and time-zone names, i.e. its first five words.
        shape = "-".join(w for w in eml.stem.split("-")[1:] if not w.isdigit())
        shape = "-".join(shape.split("-")[:5])
        if shape not in seen:
            seen.add(shape)
            out.append(eml)
    return out


def describe(kind: ItemKind, targets: int, *, pairs: int) -> str:
    """One calendar item's line in the progress output: where it went, as `AUDIENCES` sends it.

    Each text names the lounge, pair rooms, direct rooms and email exactly when the item goes
    there (a test compares them with `hub.core.calendar.AUDIENCES`).
    """
    from hub.core.calendar import ItemKind

    texts: dict[ItemKind, str] = {
        ItemKind.LAUNCH: f"welcome in the lounge and {pairs} pair rooms, with video links "
                         "and the backup-plan prompt",
        ItemKind.WEBINAR_ANNOUNCE: "kick-off webinar announced: lounge post, emails with an .ics invite",
        ItemKind.WEBINAR_REMINDER_24H: "webinar reminder (24 h): lounge, each pair room, the direct room "
                                        "of anyone in no active pair, and email",
        ItemKind.WEBINAR_REMINDER_1H: "webinar reminder (1 h): lounge, each pair room, the direct room "
                                       "of anyone in no active pair, and email",
        ItemKind.WEBINAR_FOLLOWUP: "webinar follow-up in the lounge",
        ItemKind.ICEBREAKER: "icebreaker to each pair room and the lounge",
        ItemKind.CHECKIN: "\"did you meet, and how?\" in each pair room",
        ItemKind.REFLECTION: "reflection prompt in pair rooms, private 1-5 check-in in direct rooms",
        ItemKind.DIGEST: "weekly digest: lounge post and emails",
    }
    return f"{texts.get(kind, str(kind))} ({targets} target{'s' if targets != 1 else ''})"


def login_lines(*, keep: bool, homeserver: str, user: str, password: str, room: str) -> list[str]:
    """How to look around in a Matrix client; an address and a password only while they work."""
    if not keep:
        # Without --keep the homeserver and its accounts are deleted as the demo ends: its
        # address and a password would only send the reader to a server that is gone.
        return ["The throwaway homeserver and its accounts are deleted as the demo ends. To look around "
                "in a Matrix client, run `hub demo --keep`: it prints an address and a moderator's "
                "password that work until you press Ctrl-C."]
    return ["Look around with any Matrix client (e.g. Element Web or desktop: \"Sign in\", edit the "
            "homeserver):",
            f"  homeserver  {homeserver}",
            f"  user        {user}   (moderator)",
            f"  password    {password}",
            f"  then open the room \"{room}\" and send `!hub help`."]


# -- the run ---------------------------------------------------------------------------------------


class Demo:
    def __init__(self, out: Path, keep: bool, stream: TextIO) -> None:
        self.out = out.resolve()
        self.keep = keep
        self.stream = stream
        self.cast = people()
        self.tally = Tally()
        self.users: dict[str, object] = {}
        self.progress = Progress(1, stream)
        self._cleanup: list[Callable[[], Awaitable[None]]] = []

    # Imports are deferred: `hub --help` must not need the demo extra (Synapse, aiosmtpd).
    async def run(self) -> None:
        from hub.devserver.smtp import SmtpSink
        from hub.devserver.synapse import SynapseServer

        _prepare_out(self.out)
        self._log = _log_to_file(self.out / "demo.log")
        p = self.progress
        p.line(f"Cohort Hub demo: a throwaway homeserver and mail sink, a {_WEEKS}-week cohort played "
               f"in about a minute.\nOutput folder: {self.out}")

        sink = SmtpSink(out_dir=self.out / "mail")
        sink.start()
        self._cleanup.append(lambda: asyncio.to_thread(sink.stop))
        tmp = tempfile.TemporaryDirectory(prefix="hub-demo-")
        self._cleanup.append(lambda: asyncio.to_thread(tmp.cleanup))
        synapse = SynapseServer(Path(tmp.name) / "synapse")
        self._cleanup.append(lambda: synapse.stop())
        # Homeserver, accounts, roster, rooms, about 12 calendar instants and 4 scripted moments,
        # report, summary; made exact once the calendar is known.
        p.total = 23
        await synapse.start()
        self.synapse = synapse
        p.step("homeserver", f"Synapse on {synapse.url} ({synapse.startup_seconds:.1f}s); mail sink on "
                             f"127.0.0.1:{sink.port}")
        await self._accounts(synapse)
        await self._configure(sink.port)
        await self._import()
        await self._start_hub()
        await self._match()
        await self._wait_rooms()
        await self._play()
        await self._report()
        await self._summary()
        if self.keep:
            assert self.hub.program is not None
            # The program is over; the normal scheduler takes over again, as in `hub run`.
            await self.hub.program.start()
            p.line("\nRunning until Ctrl-C (--keep).")
            await asyncio.Event().wait()

    async def close(self) -> None:
        for step in reversed(self._cleanup):
            try:
                await step()
            except Exception:
                log.exception("demo clean-up step failed")
        self._cleanup.clear()
        logging.getLogger().removeHandler(self._log) if hasattr(self, "_log") else None

    # -- set-up ----------------------------------------------------------------------------------

    async def _accounts(self, synapse: object) -> None:
        from hub.devserver.client import SimulatedUser
        from hub.devserver.synapse import RegisteredUser, SynapseServer

        assert isinstance(synapse, SynapseServer)
        self.hub_user: RegisteredUser = await synapse.register("hub", secrets.token_urlsafe(16))
        self.passwords: dict[str, str] = {}
        registered = await asyncio.gather(*(
            synapse.register(p.localpart, self.passwords.setdefault(p.localpart, secrets.token_urlsafe(9)))
            for p in self.cast if p.on_matrix))
        sims: dict[str, SimulatedUser] = {}
        for user in registered:
            person = next(p for p in self.cast if p.user_id == user.user_id)
            sims[person.localpart] = SimulatedUser(synapse.url, user, self.out / "clients" / person.localpart,
                                                   name=person.name.split()[0])
        await asyncio.gather(*(s.start() for s in sims.values()))
        self.sims = sims

        async def stop_sims() -> None:
            await asyncio.gather(*(s.stop() for s in sims.values()), return_exceptions=True)

        self._cleanup.append(stop_sims)
        mods = sum(p.role == "moderator" for p in self.cast)
        mentors = sum(p.role == "mentor" for p in self.cast)
        mentees = [p for p in self.cast if p.role == "mentee"]
        self.progress.step("accounts", f"@hub, {mods} moderators, {mentors} mentors, "
                           f"{sum(p.on_matrix for p in mentees)} mentees on Matrix; "
                           f"{sum(not p.on_matrix for p in mentees)} mentee by email only")

    async def _configure(self, smtp_port: int) -> None:
        from hub.config import load_settings
        from hub.core.calendar import ProgramSpec, build_calendar
        from hub.devserver import free_port

        zone = ZoneInfo(_ZONE)
        # The program lies in the recent past and the clock catches up with real time at the end:
        # the lounge chat (real timestamps on the homeserver) then falls inside the last week.
        start = datetime.now(zone).date() - timedelta(days=7 * _WEEKS)
        self.web_port = free_port()
        config = self.out / "config.toml"
        config.write_text(_config_text(
            homeserver=self.synapse.url, hub_password=self.hub_user.password, smtp_port=smtp_port,
            web_port=self.web_port, start=start,
            moderators=[p.user_id for p in self.cast if p.role == "moderator"]), encoding="utf-8")
        config.chmod(0o600)
        # The real loader: the demo's config is validated like anyone's.
        self.settings = load_settings(config, env={})
        spec = ProgramSpec.from_settings(self.settings.cohorts[0], start=start)
        self.calendar = build_calendar(spec)
        self.clock = ShiftedClock(self.calendar.launch.due - timedelta(minutes=30))
        self.zone = zone
        self.start = start

    async def _import(self) -> None:
        from hub.core.roster import decode_roster, parse_roster
        from hub.features.roster import apply_roster
        from hub.storage.db import open_database

        path = self.out / "roster.csv"
        path.write_text(_roster_text(self.cast), encoding="utf-8")
        roster = parse_roster(decode_roster(path.read_bytes()))
        db = await open_database(self.settings.database.url)
        try:
            # `hub roster import` minus the file handling, so it can run on the demo's clock.
            report = await apply_roster(db, self.settings, roster, clock=self.clock)
        finally:
            await db.close()
        self.progress.step("roster", f"{path.name}: {report.summary()}")

    async def _start_hub(self) -> None:
        from hub.service import Hub

        hub = Hub(self.settings, clock=self.clock, shutdown_grace=3)
        stop = asyncio.Event()
        task = asyncio.create_task(hub.run(stop), name="hub")

        async def stop_hub() -> None:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, timeout=20)

        self._cleanup.append(stop_hub)
        ready = asyncio.create_task(hub.ready.wait())
        done, _ = await asyncio.wait({task, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            ready.cancel()
            task.result()  # raises the start-up failure
            raise RuntimeError("the hub stopped during start-up; see demo.log")
        if ready not in done:
            ready.cancel()
            raise RuntimeError("the hub did not become ready within 60 s; see demo.log")
        self.hub = hub
        assert hub.program is not None
        # The demo moves the clock and ticks the program itself, one calendar instant at a time.
        await hub.program.stop()

    async def _match(self) -> None:
        """Lin lets the hub propose a mentor for the unpaired mentee, and accepts it."""
        control = self.hub.control_room_id
        assert control is not None
        lin = self.sims["lin"]
        await lin.wait_until(lambda: lin.joined(control), _ROOMS_TIMEOUT)
        proposal = await self._ask("lin", control, f"!hub match {DEMO_COHORT}")
        line = next((x for x in proposal.splitlines() if x.startswith("1. ")), None)
        accepted = await self._ask("lin", control, f"!hub match {DEMO_COHORT} accept")
        if line is None or "Made 1 pair" not in accepted:
            raise RuntimeError(f"the match was not proposed and accepted: {proposal} / {accepted}")
        self.progress.step("matching", f"Lin's `!hub match {DEMO_COHORT}` proposes {line[3:]}; "
                                       "`accept` makes the pair")

    async def _wait_rooms(self) -> None:
        from sqlalchemy import select

        from hub.core.membership import RoomStatus
        from hub.storage.models import HubRoom, cohort_table, hub_room_table, member_table, pair_table

        db = self.hub.db
        assert db is not None
        deadline = time.monotonic() + _ROOMS_TIMEOUT
        while True:
            async with db.session() as s:
                cohort_id = (await s.execute(select(cohort_table.c.id).where(
                    cohort_table.c.slug == DEMO_COHORT))).scalar_one()
                # (pair id, the mentor's Matrix id)
                pairs = [(int(pid), str(mxid)) for pid, mxid in (await s.execute(
                    select(pair_table.c.id, member_table.c.matrix_id)
                    .join(member_table, member_table.c.id == pair_table.c.mentor_id)
                    .where(pair_table.c.cohort_id == cohort_id))).all()]
                rooms = {r.key: r for r in (await s.execute(select(HubRoom).where(
                    hub_room_table.c.cohort_id == cohort_id))).scalars().all()}
            wanted = [f"space:{cohort_id}", f"lounge:{cohort_id}", *(f"pair:{pid}" for pid, _ in pairs)]
            if all(k in rooms and rooms[k].status == RoomStatus.READY and rooms[k].room_id for k in wanted):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the cohort's rooms were not created in time; see demo.log")
            await asyncio.sleep(0.3)
        self.lounge = str(rooms[f"lounge:{cohort_id}"].room_id)
        # mentor localpart -> pair room id
        self.pair_rooms = {mxid.split(":")[0][1:]: str(rooms[f"pair:{pid}"].room_id) for pid, mxid in pairs}
        control = self.hub.control_room_id
        assert control is not None
        self.control = control
        everyone = [(sim, self.lounge) for sim in self.sims.values()]
        everyone += [(self.sims[m], r) for m, r in self.pair_rooms.items()]
        everyone += [(self.sims[p.localpart], control) for p in self.cast if p.role == "moderator"]
        await asyncio.gather(*(sim.wait_until(lambda s=sim, r=room: s.joined(r), _ROOMS_TIMEOUT)  # type: ignore[misc]
                               for sim, room in everyone))
        mentees = {p.mentor: p for p in self.cast if p.role == "mentee" and p.on_matrix}
        await asyncio.gather(*(self.sims[mentees[m].localpart].wait_until(
            lambda s=self.sims[mentees[m].localpart], r=room: s.joined(r), _ROOMS_TIMEOUT)  # type: ignore[misc]
            for m, room in self.pair_rooms.items() if m in mentees))
        encrypted = "end-to-end encrypted " if self.settings.matrix.encrypt_pair_rooms else ""
        self.progress.step("rooms", f"space, lounge, {len(self.pair_rooms)} {encrypted}pair rooms and the "
                                    "moderators' control room; everyone on Matrix joined")

    # -- the program -------------------------------------------------------------------------------

    async def _play(self) -> None:
        # Scripted moments between calendar items, at local program times (day 0 = launch day).
        script: list[tuple[datetime, str, Callable[[], Awaitable[str]]]] = [
            (self._at(0, "09:40"), "backup plans", self._plans),
            (self._at(0, "11:15"), "lounge chat", self._hello),
            (self._at(3, "09:30"), "lounge chat", self._after_webinar),
            (self._at(10, "18:05"), "dropped call", self._dropped),
        ]
        groups: dict[datetime, list[ItemKind]] = {}
        for item in self.calendar.items:
            groups.setdefault(item.due, []).append(item.kind)
        timeline: list[tuple[datetime, str, Callable[[], Awaitable[str]]]] = list(script)
        for due, kinds in groups.items():
            timeline.append((due, " + ".join(k.value for k in kinds), self._ticker(kinds)))
        timeline.sort(key=lambda t: t[0])
        self.progress.total = self.progress.done + len(timeline) + 2
        for when, label, action in timeline:
            self.clock.jump_to(when)
            try:
                detail = await action()
            except (TimeoutError, RuntimeError) as e:
                detail = f"incomplete: {e}"
                self.tally.problems.append(f"{label}: {e}")
            await self._drain()
            self.progress.step(f"{self._label(when)} {label}"[:40], detail)
        # The clock stays at the end of the program (and keeps running from there): the report
        # then describes the cohort as it stands after its second week.

    def _at(self, day: int, hhmm: str) -> datetime:
        hour, minute = (int(x) for x in hhmm.split(":"))
        local = datetime.combine(self.start + timedelta(days=day), datetime.min.time(), tzinfo=self.zone)
        return local.replace(hour=hour, minute=minute).astimezone(UTC)

    def _label(self, when: datetime) -> str:
        local = when.astimezone(self.zone)
        week = (local.date() - self.start).days // 7 + 1
        return f"wk{week} {local:%a %H:%M}"

    def _ticker(self, kinds: Sequence[object]) -> Callable[[], Awaitable[str]]:
        async def tick() -> str:
            from hub.core.calendar import ItemKind

            program = self.hub.program
            assert program is not None
            report = await program.runner.tick()
            await self._drain()
            parts: list[str] = []
            for item, targets in report.emitted:
                parts.append(self._describe(item.kind, targets))
            detail = "; ".join(parts) or "nothing due"
            if ItemKind.CHECKIN in kinds:
                detail += "; " + await self._met()
                detail += "; " + await self._answer_by_email()
            if ItemKind.REFLECTION in kinds:
                detail += "; " + await self._reflect()
            if ItemKind.DIGEST in kinds:
                detail = self._digest_line(detail)
            return detail

        return tick

    def _describe(self, kind: ItemKind, targets: int) -> str:
        return describe(kind, targets, pairs=len(self.pair_rooms))

    def _digest_line(self, detail: str) -> str:
        program = self.hub.program
        available = (program is not None and program.digest is not None) or \
            self.hub.registry.get("digest") is not None
        if not available:
            self.tally.digest = "not available in this build"
            return "digest: not available in this build (the digest integration is not wired in yet)"
        self.tally.digest = "sent"
        return detail

    async def _drain(self) -> None:
        """Wait until everything due has left the outbox, so each step's effects are visible."""
        assert self.hub.outbox is not None
        # Twice in a row: a sent reply can make the next row (a pin, an invite) right after.
        try:
            async with asyncio.timeout(_DRAIN_TIMEOUT):
                await self.hub.outbox.wait_until_drained(due_only=True, settle=2)
        except TimeoutError:
            self.tally.problems.append(f"outbox not drained within {_DRAIN_TIMEOUT:g}s")

    async def _ask(self, who: str, room: str, command: str) -> str:
        sim = self.sims[who]
        self.tally.commands[command.split()[1]] += 1
        return await sim.ask(room, command, timeout=_REPLY_TIMEOUT)  # type: ignore[attr-defined, no-any-return]

    async def _tap(self, who: str, room: str, key: str) -> str:
        """Answer the hub's latest prompt in `room` by tapping its reaction `key`, as in Element."""
        self.tally.reactions += 1
        return await self.sims[who].tap(room, key, timeout=_REPLY_TIMEOUT)  # type: ignore[attr-defined, no-any-return]

    async def _say(self, who: str, room: str, text: str) -> None:
        await self.sims[who].send(room, text)  # type: ignore[attr-defined]
        self.tally.chat += 1

    async def _plans(self) -> str:
        plans = {
            "ada": "If the call drops, Ada phones Ben on +49 30 5550 1234 and we carry on by phone.",
            "grace": "Switch to the Element mobile app; if that fails too, we reschedule by email.",
            "alan": "Dev rejoins from his phone's hotspot; after 10 minutes we move to text here.",
            "kat": "Katherine emails Eve a new time the same day.",
        }
        replies = await asyncio.gather(*(self._ask(m, room, f"!hub plan set {plans[m]}")
                                         for m, room in self.pair_rooms.items()))
        pinned = sum("pinned" in r for r in replies)
        return f"each mentor answers the prompt with `!hub plan set ...` ({pinned} plans pinned)"

    async def _hello(self) -> str:
        lines = [("ben", "Hi all! Ben here, first time being mentored. Excited 👋"),
                 ("grace", "Welcome everyone. Tip: put your pair's video link in your calendar invite."),
                 ("dev", "Hello from Chennai! Anyone else learning Rust this spring?"),
                 ("chloe", "Moi aussi, hello! Looking forward to the kick-off on Wednesday.")]
        for who, text in lines:
            await self._say(who, self.lounge, text)
        return f"{len(lines)} people say hello in the lounge"

    async def _after_webinar(self) -> str:
        await self._say("ada", self.lounge, "Thanks for the kick-off, the breakout rooms were great.")
        await self._say("chloe", self.lounge, "+1, and the recording link in the follow-up helped.")
        return "2 lounge posts about the kick-off"

    async def _met(self) -> str:
        from hub.features.prompts import MET, OPTIONS

        answers = [("ada", "ben", "video"), ("grace", "chloe", "voice"), ("alan", "dev", "text"),
                   ("kat", None, "notyet")]
        key = {option: emoji for emoji, option in OPTIONS[MET]}
        # Nobody types `!hub met`: each pair taps one of the reactions the hub put on the question.
        replies = await asyncio.gather(*(
            self._tap(mentee or mentor, self.pair_rooms[mentor], key[mode])
            for mentor, mentee, mode in answers))
        for (_, _, mode), _reply in zip(answers, replies, strict=True):
            self.tally.met[mode] += 1
        nudged = sum("video" in r.lower() for (_, _, mode), r in zip(answers, replies, strict=True)
                     if mode == "text")
        return (f"answers by reaction: {', '.join(f'{m} {n}' for m, n in self.tally.met.items())}; "
                f"the text-only pair got {'a nudge towards video' if nudged else 'no nudge'}")

    async def _answer_by_email(self) -> str:
        """The email-only mentee answers with the link in her check-in email, as in a browser."""
        import email
        import email.policy
        import re

        import aiohttp

        person = next(p for p in self.cast if not p.on_matrix)
        first = person.name.split()[0]
        text = None
        for path in sorted((self.out / "mail").glob("*.eml"), reverse=True):  # her newest question
            msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if person.email in str(msg["To"]) and "meet this week" in str(msg["Subject"]):
                body = msg.get_body(preferencelist=("plain",))
                content = body.get_content() if body is not None else None  # type: ignore[attr-defined]
                text = content.replace("\r\n", "\n") if isinstance(content, str) else None
                break
        link = re.search(r"\* Not yet this week\n  (\S+/answer/\S+)", text or "")
        if link is None:
            raise RuntimeError(f"{first}'s check-in email with its answer links did not arrive")
        async with aiohttp.ClientSession() as http:
            async with http.get(link.group(1)) as resp:  # the confirm page: records nothing yet
                asked = resp.status == 200 and "Record my answer" in await resp.text()
            async with http.post(link.group(1)) as resp:  # the page's button
                noted = resp.status == 200 and "noted" in await resp.text()
        if not (asked and noted):
            raise RuntimeError(f"{first}'s answer link did not work")
        return (f"{first} (email only) got the question by email and answered \"not yet\" with its "
                "link: a confirm page, then recorded")

    async def _reflect(self) -> str:
        from sqlalchemy import select

        from hub.core.membership import RoomKind, RoomStatus
        from hub.storage.models import HubRoom, hub_room_table

        db = self.hub.db
        assert db is not None
        scores = {"ada": 5, "ben": 4, "grace": 4, "chloe": 4, "alan": 3, "dev": 2, "kat": 4}
        deadline = time.monotonic() + _ROOMS_TIMEOUT
        rooms: dict[str, str] = {}
        while len(rooms) < len(scores) and time.monotonic() < deadline:
            async with db.session() as s:
                found = (await s.execute(select(HubRoom).where(hub_room_table.c.kind == RoomKind.DIRECT))
                         ).scalars().all()
            rooms = {str(r.user_id).split(":")[0][1:]: str(r.room_id) for r in found
                     if r.status == RoomStatus.READY and r.room_id and r.user_id}
            if len(rooms) < len(scores):
                await asyncio.sleep(0.3)
        from hub.features.prompts import CHECKIN, OPTIONS

        key = {option: emoji for emoji, option in OPTIONS[CHECKIN]}
        replies = await asyncio.gather(*(self._tap(who, rooms[who], key[str(score)])
                                         for who, score in scores.items() if who in rooms))
        self.tally.checkins = [scores[w] for w in scores if w in rooms]
        guided = sum("private guide" in r for r in replies)
        return (f"{len(replies)} private check-ins answered by tapping 1️⃣-5️⃣ (scores stay private); "
                f"{guided} low score{'s' if guided != 1 else ''} got the reflection guide and the "
                "offer of `!hub support`")

    async def _dropped(self) -> str:
        reply = await self._ask("ben", self.pair_rooms["ada"], "!hub dropped")
        await self._say("ben", self.pair_rooms["ada"], "Calling you now on the phone!")
        shown = "the pinned plan" if "phones Ben" in reply else "a reply without the plan"
        return f"Ben's call drops: `!hub dropped` shows {shown} and tips, and emails both of them"

    async def _report(self) -> None:
        reply = await self._ask("lin", self.control, f"!hub report {DEMO_COHORT}")
        self.tally.report = [line for line in reply.splitlines() if line.strip()]
        self.progress.step("moderators' report", f"Lin sends `!hub report {DEMO_COHORT}` in the control room")

    # -- the summary -------------------------------------------------------------------------------

    async def _summary(self) -> None:
        from sqlalchemy import func, select

        from hub.delivery.outbox import OutboxStatus
        from hub.storage.models import outbox_table as T

        db = self.hub.db
        assert db is not None
        async with db.session() as s:
            sent = T.c.status == OutboxStatus.SENT
            rows = (await s.execute(select(T.c.channel, T.c.kind, func.count()).where(sent)
                                    .group_by(T.c.channel, T.c.kind))).all()
        messages = sum(int(n) for ch, kind, n in rows if ch == "matrix" and not str(kind).startswith("room-"))
        mail_dir = self.out / "mail"
        emails = sorted(mail_dir.glob("*.eml"))
        p = self.progress
        p.step("summary", "done")
        t = self.tally
        p.line("")
        p.line(f"What happened ({_WEEKS} program weeks in {time.monotonic() - p.began:.0f} s):")
        p.line(f"  - {len(self.cast)} people in cohort `{DEMO_COHORT}`, {len(self.pair_rooms)} pairs, "
               f"1 lounge, 1 space")
        p.line(f"  - {messages} Matrix messages and room actions by the hub; {sum(t.commands.values())} "
               f"commands and {t.reactions} reactions from participants answered; {t.chat} chat messages")
        p.line(f"  - \"did you meet?\" answered by reaction: "
               f"{', '.join(f'{m} {n}' for m, n in t.met.items()) or 'no answers'}; "
               f"{len(t.checkins)} private check-ins, also by reaction")
        p.line(f"  - digest: {t.digest}")
        p.line(f"  - {len(emails)} emails")
        for line in t.report:
            plain = line.replace("**", "").replace("`", "")
            p.line(f"    {plain.lstrip('- ')}" if plain.startswith("-") else f"  - {plain}")
        for problem in t.problems:
            p.line(f"  ! {problem}")
        p.line("")
        p.line(f"Emails (.eml to open in a mail program, .html for a browser): {mail_dir}")
        for eml in highlights(mail_dir):
            p.line(f"  {eml}")
        p.line(f"Config and roster used: {self.out / 'config.toml'}, {self.out / 'roster.csv'}; "
               f"log: {self.out / 'demo.log'}")
        p.line("")
        lin = next(c for c in self.cast if c.localpart == "lin")
        for line in login_lines(keep=self.keep, homeserver=self.synapse.url, user=lin.user_id,
                                password=self.passwords["lin"], room=self.settings.matrix.control_room):
            p.line(line)


def main(out: Path, *, keep: bool = False, stream: TextIO | None = None) -> int:
    """Run the demo; Ctrl-C (or SIGTERM) stops everything cleanly and exits 0."""
    return asyncio.run(_main(out, keep, stream or sys.stdout))


async def _main(out: Path, keep: bool, stream: TextIO) -> int:
    import importlib.util

    missing = [m for m in ("synapse", "aiosmtpd") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"hub demo needs the demo extra ({', '.join(missing)} missing): "
              "pip install -e '.[demo]'", file=sys.stderr)
        return 1
    demo = Demo(out, keep, stream)
    task = asyncio.current_task()
    assert task is not None
    interrupted = False

    def on_signal() -> None:
        nonlocal interrupted
        if not interrupted:
            interrupted = True
            task.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        await demo.run()
        return 0
    except asyncio.CancelledError:
        if not interrupted:
            raise
        task.uncancel()
        print("\nStopping the demo...", file=stream, flush=True)
        return 0
    except Exception as e:
        log.exception("demo failed")
        print(f"hub demo: {e}", file=sys.stderr)
        return 1
    finally:
        await demo.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
