"""The program wired together: specs from the cohorts, the emitter, the scheduler, the plan pin.

`ProgramService` is what `hub.service.Hub` holds as ``hub.program``:

* `specs()`: every cohort in the database as a `ProgramSpec` — a configured
  cohort (`[[cohort]]`) with its configured slots, one made with
  `!hub cohort create` with the default slots — plus the webinars scheduled
  with `!hub webinar`;
* `emit`/`rows`: renders the content for each (item, target) and queues the
  outbox rows, with keys derived from `calendar.dedupe_key`; the scheduled
  calendar and `!hub send` both go through it;
* the `TickScheduler` (started after the first sync, stopped on shutdown);
* the handler of the `PinPlan` effect (``pin_plan`` rows): pins a pair's plan
  message once it is sent, since its event id only exists then, through the
  homeserver port (`hub.core.homeserver.Homeserver`): its errors are classified
  and a 429 pauses every send, like any Matrix write.

The parts that are not the service (the default spec, `prompt_row`, the .ics,
the List-Id headers, the suppression check) are in `hub.features.program_rows`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.clock import Clock
from hub.config import CohortSettings, Settings
from hub.core import content as ct
from hub.core.answers import CHECKIN, MET
from hub.core.calendar import (
    DIRECT_FOR_UNPAIRED,
    CalendarItem,
    ItemKind,
    ProgramSpec,
    Target,
    TargetKind,
    Webinar,
    dedupe_key,
)
from hub.core.content_library import load_library
from hub.core.effects import Email, Outgoing, PinPlan
from hub.core.homeserver import Homeserver
from hub.core.membership import PairStatus
from hub.delivery.dispatcher import Claimed
from hub.delivery.effect_writer import row_spec
from hub.delivery.outbox import Outbox, OutboxStatus
from hub.email.payload import Attachment
from hub.errors import PermanentDeliveryError, TemporaryDeliveryError
from hub.features import person_mail
from hub.features.direct_rooms import ensure_direct_room
from hub.features.participants import (
    CohortView,
    PairView,
    content_cohort,
    content_pair,
    content_person,
    load_cohort_view,
    record_use,
    room_row,
    used_items,
)
from hub.features.people import member_label
from hub.features.program_rows import (
    ROTATING,
    STARTS_IN,
    WEBINAR_USE,
    DigestHook,
    default_spec,
    email_headers,
    mentions,
    prompt_row,
    webinar_ics,
)
from hub.features.program_unsent import Unsent, is_transient, reason_of, unsent_alert
from hub.features.room_queue import load_env
from hub.features.subscribers import list_headers
from hub.program import ProgramRunner, target_set
from hub.program_store import SqlProgramState
from hub.program_targets import SqlTargets, person_key
from hub.scheduling import TickScheduler
from hub.storage.db import Database
from hub.storage.models import (
    Cohort,
    PairPlan,
    WebinarRow,
    outbox_table,
)

__all__ = ["ProgramService"]

log = logging.getLogger(__name__)


class ProgramService:
    def __init__(
        self,
        *,
        db: Database,
        outbox: Outbox,
        clock: Clock,
        settings: Callable[[], Settings],
        library: ct.Library | None = None,
        digest: DigestHook | None = None,
        control_room: Callable[[], str | None] = lambda: None,
        homeserver: Homeserver | None = None,
    ) -> None:
        self.db = db
        self.homeserver = homeserver  # for pinning plans (`pin_plan`); None where nothing is sent
        # Where an item that could not be made for someone is reported (hub.features.program_unsent).
        self.control_room = control_room
        self.outbox = outbox
        self.clock = clock
        self.settings = settings
        s = settings()
        self.library = library or load_library(s.content.path, command_prefix=s.matrix.command_prefix)
        self.digest = digest
        self.targets = SqlTargets(db)
        self.state = SqlProgramState(db, clock)
        self.runner = ProgramRunner(
            specs=self.specs, targets=self.targets, emit=self.emit, state=self.state, clock=clock,
            catch_up=timedelta(hours=s.hub.catch_up_hours),
        )
        self.scheduler: TickScheduler | None = None
        # (member id, hub room id) -> the Reply-To header of an email about that room; set by
        # hub.service when [email.inbound] is configured (hub.features.email_replies).
        self.reply_headers: Callable[[int | None, int | None], dict[str, str]] = lambda member, room: {}

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.scheduler is None:
            self.scheduler = TickScheduler(self.runner.on_tick, clock=self.clock)
            self.scheduler.start()

    async def stop(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.stop()
            self.scheduler = None

    def reply_to(self, member_id: int | None, room_pk: int | None) -> dict[str, str]:
        """The Reply-To header of an email to a member about a room (replies by email)."""
        return self.reply_headers(member_id, room_pk)

    def poke(self) -> None:
        if self.scheduler is not None:
            self.scheduler.poke()

    async def tick_now(self) -> None:
        """A tick now, returning when it is done (no-op before `start`)."""
        if self.scheduler is not None:
            await self.scheduler.tick_now()

    # -- specs ----------------------------------------------------------------------------------

    async def specs(self) -> list[ProgramSpec]:
        configured: dict[str, CohortSettings] = {c.slug: c for c in self.settings().cohorts}
        async with self.db.session() as s:
            cohorts = (await s.execute(select(Cohort).order_by(Cohort.id))).scalars().all()  # type: ignore[arg-type]
            rows = (await s.execute(select(WebinarRow))).scalars().all()
        by_cohort: dict[int, list[Webinar]] = {}
        for w in rows:
            by_cohort.setdefault(w.cohort_id, []).append(Webinar(
                datetime.fromtimestamp(w.at, UTC), w.title, w.url,
                announce_at=datetime.fromtimestamp(w.announce_at, UTC)))
        specs: list[ProgramSpec] = []
        for c in cohorts:
            extra = by_cohort.get(c.id or 0, [])
            conf = configured.get(c.slug) if c.source == "config" else None
            try:
                if conf is not None:
                    own = {w.id for w in ProgramSpec.from_settings(
                        conf, start=date.fromisoformat(c.start_date)).webinars}
                    spec = ProgramSpec.from_settings(conf, start=date.fromisoformat(c.start_date),
                                                     webinars=[w for w in extra if w.id not in own])
                else:
                    spec = default_spec(c, extra)
            except ValueError as e:
                log.error("cohort %s has no usable program calendar: %s", c.slug, e)
                continue
            specs.append(spec)
        return specs

    async def targets_of(self, item: CalendarItem, now: datetime) -> list[Target]:
        """Everyone `item` is for right now (what a tick would use; `!hub send`)."""
        out: list[Target] = []
        for audience in item.audiences:
            out += await target_set(self.targets, item.cohort, item, audience, now)
        return out

    # -- emitting -------------------------------------------------------------------------------

    async def emit(self, item: CalendarItem, targets: Sequence[Target]) -> None:
        try:
            async with self.db.transaction() as s:
                rows = await self.rows(s, item, targets, source="schedule")
                await self.outbox.enqueue_many(s, rows)
        except Exception as e:
            if is_transient(e):
                raise  # the tick fails and the next one retries this item
            # Retrying cannot cure it and would hold back everything after it in the
            # calendar: the item is skipped, and the moderators are told once.
            log.exception("%s could not be made; skipped it and told the moderators", item.key)
            alert = unsent_alert(self.control_room(), item, [Unsent(
                f"all {len(targets)} recipient{'s' if len(targets) != 1 else ''}", reason_of(e))],
                everything=True)
            if alert is not None:
                async with self.db.transaction() as s:
                    await self.outbox.enqueue_many(s, [alert])

    async def rows(self, s: AsyncSession, item: CalendarItem, targets: Sequence[Target], *,
                   source: str) -> list[dict[str, Any]]:
        """Outbox rows for `item` to each target that has not had it, in the caller's transaction.

        Targets whose key is already in the outbox are skipped *before* anything
        is decided for them, so a re-emit neither advances a rotation nor makes a room.
        """
        keys = {t: dedupe_key(item, t) for t in targets}
        done: set[str] = set()
        wanted = list(keys.values())
        for i in range(0, len(wanted), 500):
            done.update((await s.execute(select(outbox_table.c.dedupe_key).where(
                outbox_table.c.dedupe_key.in_(wanted[i:i + 500])))).scalars().all())
        todo = [t for t in targets if keys[t] not in done]
        if not todo:
            return []
        if item.kind is ItemKind.DIGEST:
            return await self.digest(s, item, todo) if self.digest is not None else []
        view = await load_cohort_view(s, item.cohort)
        if view is None:
            return []
        out: list[dict[str, Any]] = []
        unsent: list[Unsent] = []
        week = item.week or 0
        for audience in (TargetKind.LOUNGE, TargetKind.PAIR, TargetKind.DIRECT, TargetKind.MEMBER):
            group = [t for t in todo if t.audience is audience]
            if not group:
                continue
            if audience is TargetKind.LOUNGE:
                try:
                    out += await self._lounge(s, view, item, group[0], keys[group[0]], week, source)
                except Exception as e:
                    self.leave_out(unsent, item, "the lounge", e)
            elif audience is TargetKind.PAIR:
                out += await self._pairs(s, view, item, group, keys, week, source, unsent)
            elif audience is TargetKind.DIRECT:
                out += await self._direct(s, view, item, group, keys, week, unsent)
            else:
                out += await self._members(s, view, item, group, keys, week, unsent)
        if any(t.audience is TargetKind.PAIR for t in todo):
            out += await self._email_questions(s, view, item, week, unsent)
        alert = unsent_alert(self.control_room(), item, unsent)
        return out + ([alert] if alert is not None else [])

    @staticmethod
    def leave_out(unsent: list[Unsent], item: CalendarItem, who: str, e: Exception) -> None:
        """Record that `item` is not made for `who` (re-raising what a retry can cure).

        Callers render before they write (a rotation, a direct room), so what is
        left out has changed nothing in the transaction.
        """
        if is_transient(e):
            raise e
        log.warning("%s: not made for %s: %r", item.key, who, e)
        unsent.append(Unsent(who, reason_of(e)))

    def _vars(self, view: CohortView, week: int, **more: Any) -> ct.Variables:
        return ct.Variables(cohort=content_cohort(view), week=week, **more)

    def _webinar(self, item: CalendarItem, zone: str) -> ct.WebinarView:
        w = item.webinar
        assert w is not None
        return ct.WebinarView.in_zone(w.title, w.at, zone, url=w.url, starts_in=STARTS_IN.get(item.kind, ""))

    async def _lounge(self, s: AsyncSession, view: CohortView, item: CalendarItem, target: Target,
                      key: str, week: int, source: str) -> list[dict[str, Any]]:
        if view.lounge is None:
            return []
        lib = self.library
        variables = self._vars(view, week)
        if item.kind is ItemKind.LAUNCH:
            chosen = lib.pick(ct.Kind.WELCOME, ct.Audience.COHORT, use="greeting")
        elif item.kind is ItemKind.ICEBREAKER:
            used = await used_items(s, [view.lounge.key], ct.Kind.ICEBREAKER.value)
            chosen = lib.next_icebreaker(ct.Audience.COHORT, used.get(view.lounge.key, []),
                                         week=week or None)
            record_use(s, view.lounge.key, ct.Kind.ICEBREAKER.value, chosen.id, source, self.clock.now())
        elif item.kind in WEBINAR_USE:
            chosen = lib.pick(ct.Kind.WEBINAR, ct.Audience.COHORT, use=WEBINAR_USE[item.kind])
            variables = self._vars(view, week, webinar=self._webinar(item, view.cohort.timezone))
        else:
            return []
        rendered = lib.render(chosen, variables)
        return [room_row(view.lounge, rendered.matrix_content(), kind=f"program-{item.kind.value}",
                         dedupe_key=key)]

    async def _pairs(self, s: AsyncSession, view: CohortView, item: CalendarItem, group: list[Target],
                     keys: dict[Target, str], week: int, source: str,
                     unsent: list[Unsent]) -> list[dict[str, Any]]:
        rotating = ROTATING.get(item.kind)
        used = await used_items(s, [t.id for t in group], rotating.value) if rotating is not None else {}
        out: list[dict[str, Any]] = []
        now = self.clock.now()
        for t in group:
            pv = view.pairs.get(t.id)
            if pv is None or pv.room is None:
                continue
            try:
                out += self._pair_rows(s, view, item, pv, t.id, keys[t], week, source, used.get(t.id, []),
                                       now)
            except Exception as e:
                self.leave_out(unsent, item, f"the pair room of {member_label(pv.mentor)} & "
                                             f"{member_label(pv.mentee)}", e)
        return out

    def _pair_rows(self, s: AsyncSession, view: CohortView, item: CalendarItem, pv: PairView, scope: str,
                   key: str, week: int, source: str, used: list[str],
                   now: datetime) -> list[dict[str, Any]]:
        lib = self.library
        assert pv.room is not None
        variables = self._vars(view, week, pair=content_pair(view, pv, self.settings().video.base_url))
        kind = f"program-{item.kind.value}"
        # Prompts ask the pair to do something, so they notify both (the welcome only informs).
        people = mentions(pv.mentor, pv.mentee)
        if item.kind is ItemKind.LAUNCH:
            launch = lib.pick(ct.Kind.WELCOME, ct.Audience.PAIR, use="launch")
            rows = [room_row(pv.room, lib.render(launch, variables).matrix_content(),
                             kind=kind, dedupe_key=key)]
            if not pv.plan:
                prompt = lib.pick(ct.Kind.PLAN, ct.Audience.PAIR, use="prompt")
                rows.append(prompt_row(pv.room, lib.render(prompt, variables), people,
                                       kind="program-plan-prompt", dedupe_key=f"{key}:plan", week=week))
            return rows
        rotating = ROTATING.get(item.kind)
        if rotating is not None:
            chosen = lib.pick(rotating, ct.Audience.PAIR, week=week or None, used=used)
        elif item.kind is ItemKind.CHECKIN:
            chosen = lib.pick(ct.Kind.CHECKIN, ct.Audience.PAIR)
        elif item.kind in DIRECT_FOR_UNPAIRED:
            # The lounge's reminder says nothing only true there; the time is the pair's own
            # when both live in one zone, else the cohort's (as in the lounge).
            zones = {content_person(view, m).timezone for m in (pv.mentor, pv.mentee)}
            zone = zones.pop() if len(zones) == 1 else view.cohort.timezone
            chosen = lib.pick(ct.Kind.WEBINAR, ct.Audience.COHORT, use=WEBINAR_USE[item.kind])
            variables = self._vars(view, week, webinar=self._webinar(item, zone))
        else:
            return []
        row = prompt_row(pv.room, lib.render(chosen, variables), people, kind=kind, dedupe_key=key, week=week)
        if rotating is not None:  # only once it rendered: a pair left out keeps its place in the rotation
            record_use(s, scope, rotating.value, chosen.id, source, now)
        return [row]

    async def _direct(self, s: AsyncSession, view: CohortView, item: CalendarItem, group: list[Target],
                      keys: dict[Target, str], week: int, unsent: list[Unsent]) -> list[dict[str, Any]]:
        reminder = item.kind in DIRECT_FOR_UNPAIRED
        if item.kind is not ItemKind.REFLECTION and not reminder:
            return []
        env = await load_env(s, self.outbox, self.clock, self.settings())
        chosen = (self.library.pick(ct.Kind.WEBINAR, ct.Audience.COHORT, use=WEBINAR_USE[item.kind])
                  if reminder else self.library.pick(ct.Kind.CHECKIN, ct.Audience.PERSON))
        kind = f"program-{item.kind.value}" if reminder else "program-private-checkin"
        out: list[dict[str, Any]] = []
        for t in group:
            member = view.member_by_matrix(t.id)
            if member is None:
                continue
            partner = view.partner_of(t.id)
            try:
                person = content_person(view, member)
                variables = (self._vars(view, week, webinar=self._webinar(item, person.timezone))
                             if reminder else
                             self._vars(view, week, person=person,
                                        partner=content_person(view, partner) if partner else None))
                rendered = self.library.render(chosen, variables)
            except Exception as e:
                self.leave_out(unsent, item, f"{member_label(member)} ({t.id})", e)
                continue
            # Made only once the message rendered: a person left out gets no room for nothing.
            room = await ensure_direct_room(s, env, t.id)
            out.append(prompt_row(room, rendered, mentions(member), kind=kind, dedupe_key=keys[t], week=week))
        return out

    async def _members(self, s: AsyncSession, view: CohortView, item: CalendarItem, group: list[Target],
                       keys: dict[Target, str], week: int, unsent: list[Unsent]) -> list[dict[str, Any]]:
        settings = self.settings()
        if not settings.email.enabled or item.kind not in WEBINAR_USE or item.webinar is None:
            return []
        chosen = self.library.pick(ct.Kind.WEBINAR, ct.Audience.COHORT, use=WEBINAR_USE[item.kind])
        headers = email_headers(settings, view.cohort)
        w = item.webinar
        ics: list[Attachment] | None = None
        if item.kind is ItemKind.WEBINAR_ANNOUNCE:
            # Same UID in every copy: calendars treat them as one event, updated not duplicated.
            uid = f"{view.cohort.slug}-{w.id}@{headers['List-Id'].rsplit('<', 1)[1].rstrip('>')}"
            ics = [{"filename": "invite.ics", "content_type": "text/calendar; method=PUBLISH",
                    "text": webinar_ics(uid=uid, title=w.title, at=w.at, url=w.url,
                                        cohort=view.cohort.name, now=self.clock.now())}]
        out: list[dict[str, Any]] = []
        people = [m for m in (view.members.get(int(t.id)) for t in group) if m is not None]
        unsubscribe = await list_headers(s, settings, view.cohort, [k for k in (
            person_key(m.matrix_id, m.email) for m in people) if k], self.clock.now())
        for t in group:
            member = view.members.get(int(t.id))
            address = view.address(member) if member is not None else None
            # "weekly" means the digest only; "off" is filtered by the targets already.
            if member is None or address is None or view.email_mode(member) != "all":
                continue
            try:
                person = content_person(view, member)
                variables = self._vars(view, week, webinar=self._webinar(item, person.timezone))
                rendered = self.library.render(chosen, variables)
                # A webinar invite is about the cohort's lounge: a reply is posted there.
                reply_to = self.reply_to(member.id, view.lounge.id if view.lounge else None)
                mail = Email(to=address, subject=rendered.subject, text=rendered.email_text,
                             html=rendered.email_html, to_name=person.name,
                             headers={**unsubscribe.get(person_key(member.matrix_id, member.email) or "",
                                                        headers), **reply_to},
                             attachments=ics)
                row = row_spec(Outgoing(mail, f"program-{item.kind.value}", keys[t]))
            except Exception as e:
                self.leave_out(unsent, item, f"{member_label(member)} <{address}>", e)
                continue
            out.append(row)
        return out

    async def _email_questions(self, s: AsyncSession, view: CohortView, item: CalendarItem, week: int,
                               unsent: list[Unsent]) -> list[dict[str, Any]]:
        """Email-only participants get the check-in questions by email, with one-click answers.

        "Did you meet, and how?" with the pair rooms' check-in, the private 1-5 check-in
        with the direct rooms' (reflection weeks): what the others answer by command.
        """
        question = {ItemKind.CHECKIN: MET, ItemKind.REFLECTION: CHECKIN}.get(item.kind)
        if question is None:
            return []
        active = [(pv.pair.id or 0, pv.pair.video_name, pv.mentor, pv.mentee)
                  for pv in view.pairs.values() if pv.pair.status == PairStatus.ACTIVE]
        people = [m for _, _, a, b in active for m in (a, b)]
        rows, left_out = await person_mail.question_rows(
            s, self.settings(), self.library, cohort=view.cohort, pairs=active,
            members_mode={m.id or 0: view.email_mode(m) for m in people},
            addresses={m.id or 0: view.address(m) for m in people},
            question=question, week=week, key=item.key, now=self.clock.now())
        for member, address, e in left_out:
            self.leave_out(unsent, item, f"{member_label(member)} <{address}>", e)
        return rows

    # -- the pinned backup plan -------------------------------------------------------------------

    async def pin_plan(self, row: Claimed, e: PinPlan) -> str:
        """Pin the pair's plan message (or unpin the old one, for `plan clear`).

        Runs after the plan message on the same lane, so its event id is in the
        outbox by now. Other pins in the room (the people's own) are kept.
        """
        room_id, pair_id, key = e.room_id, e.pair_id, e.message_key
        async with self.db.session() as s:
            plan = await s.get(PairPlan, pair_id)
            sent = (await s.execute(select(outbox_table.c.status, outbox_table.c.result).where(
                outbox_table.c.dedupe_key == key))).first() if key else None
        if plan is None or plan.message_key != key:
            return "superseded"  # a newer `plan set`/`plan clear` has its own pin row
        new_id: str | None = None
        if key:
            if sent is None or sent.status == OutboxStatus.FAILED:
                raise PermanentDeliveryError("the plan message was not sent, so there is nothing to pin")
            if sent.status != OutboxStatus.SENT or not sent.result:
                raise TemporaryDeliveryError("the plan message is not sent yet", retry_after=1.0)
            new_id = str(sent.result)
        pins = [e for e in await self._pins(room_id) if e not in (plan.event_id, new_id)]
        if new_id:
            pins.insert(0, new_id)
        event_id = await self._put_pins(room_id, pins)
        async with self.db.transaction() as s:
            current = await s.get(PairPlan, pair_id)
            if current is not None and current.message_key == key:
                current.event_id = new_id
        return event_id

    async def _pins(self, room_id: str) -> list[str]:
        if self.homeserver is None:
            raise TemporaryDeliveryError("no homeserver to pin the plan on", retry_after=5.0)
        content = await self.homeserver.state_content(room_id, "m.room.pinned_events") or {}
        pinned = content.get("pinned", [])
        return [e for e in pinned if isinstance(e, str)] if isinstance(pinned, list) else []

    async def _put_pins(self, room_id: str, pins: list[str]) -> str:
        if self.homeserver is None:
            raise TemporaryDeliveryError("no homeserver to pin the plan on", retry_after=5.0)
        return await self.homeserver.put_state(room_id, "m.room.pinned_events", "", {"pinned": pins})
