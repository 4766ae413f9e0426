"""The weekly digest on the real tables: at each cohort's digest slot, a lounge post, one email per
opted-in member with an address, and the moderators' weekly report in the control room.

`DigestService.rows` is `ProgramService`'s digest hook: the calendar hands it the
due item and the targets that have not had it yet (lounge by room key, members
by id, already without opted-out and suppressed addresses), and it returns
outbox rows keyed with `calendar.dedupe_key`, so each goes once, ever: a
restart, a catch-up, a second process or `!hub digest send` cannot repeat one.

What goes in is gathered here as plain `hub.core.digest` inputs. Lounge text
comes only from `hub.activity` (lounge rooms only); a pair is a `PairCounts`
(days since its room was last active, plan set or not). Nothing from a pair or
direct room has a way in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from hub import activity
from hub.core import content as ct
from hub.core import digest as dg
from hub.core.calendar import (
    CalendarItem,
    ItemKind,
    ProgramSpec,
    Target,
    TargetKind,
    build_calendar,
    dedupe_key,
)
from hub.core.effects import Outgoing, RoomMessage
from hub.core.membership import MembershipState, PairStatus
from hub.core.ports import Priority
from hub.core.tokens import TokenSigner
from hub.delivery.effect_writer import row_spec
from hub.delivery.outbox import EMAIL
from hub.email.payload import normalize_address
from hub.errors import ContentError
from hub.features.digest_mail import person_payload, store_edition
from hub.features.participants import CohortView, content_cohort, load_cohort_view, room_row
from hub.features.program import ProgramService
from hub.features.program_commands import build_report
from hub.features.program_unsent import Unsent, unsent_alert
from hub.features.subscribers import handles_for, list_id, signing_secret
from hub.program_targets import person_key
from hub.storage.models import Member, room_member_table

__all__ = ["PULSE_DAYS", "DigestService", "Edition", "email_refs"]

log = logging.getLogger(__name__)

PULSE_DAYS = 7  # "lounge messages in the last 7 days", new members, the most-reacted posts


@dataclass(frozen=True, slots=True)
class Edition:
    """One cohort's digest for one week, ready to render for the lounge and for each person."""

    view: CohortView
    issue: dg.DigestIssue
    builder: dg.DigestBuilder


def email_refs(builder: dg.DigestBuilder, issue: dg.DigestIssue,
               mails: Sequence[tuple[dg.Recipient, str, str]], edition: int) -> list[dict[str, Any]]:
    """Outbox rows for (recipient, address, dedupe key): each names `edition` and carries the
    person's part and their unsubscribe token, signed here; the email is rendered when it is
    sent (hub.features.digest_mail), by whichever process claims the row."""
    sign = builder.unsubscribe_token
    return [{"channel": EMAIL, "kind": "digest", "lane": normalize_address(address), "dedupe_key": key,
             "payload": person_payload(edition, address, recipient, sign(issue, recipient))}
            for recipient, address, key in mails]


def _zone(name: str | None, fallback: ZoneInfo) -> ZoneInfo:
    try:
        return ZoneInfo(name) if name else fallback
    except (ValueError, KeyError):
        return fallback


def _plain(text: str | None, fallback: str) -> str:
    # Titles and summaries are shown as written; one that is a template needs
    # a pair to render, so the digest says something generic instead.
    return fallback if not text or "{{" in text or "{%" in text else text


def _digest_due(spec: ProgramSpec | None, week: int) -> datetime | None:
    """When week `week`'s digest is due by the cohort's calendar (None without a calendar)."""
    if spec is None:
        return None
    return next((i.due for i in build_calendar(spec).items if i.kind is ItemKind.DIGEST and i.week == week),
                None)


class DigestService:
    def __init__(self, program: ProgramService, *, control_room: Callable[[], str | None]) -> None:
        self.program = program
        self.control_room = control_room
        self._builders: dict[tuple[str, str, str, str], dg.DigestBuilder] = {}

    # -- inputs ---------------------------------------------------------------------------------

    def _builder(self, secret: str) -> dg.DigestBuilder:
        s = self.program.settings()
        key = (s.web.public_url, secret, s.matrix.user_id, s.matrix.command_prefix)
        if key not in self._builders:  # compiled templates: one builder per configuration
            self._builders[key] = dg.DigestBuilder(
                public_url=s.web.public_url, signer=TokenSigner(secret), hub_user_id=s.matrix.user_id,
                command_prefix=s.matrix.command_prefix)
        return self._builders[key]

    async def _spec(self, slug: str) -> ProgramSpec | None:
        return next((p for p in await self.program.specs() if p.slug == slug), None)

    def _prompts(self, spec: ProgramSpec | None, week: int) -> tuple[dg.Prompt, ...]:
        lib = self.program.library
        # (label, kind, week, fallback summary, what email-only readers see: they get the
        # check-in questions by email with answer links, and cannot type the command)
        wanted: list[tuple[str, ct.Kind, int | None, str, str]] = [
            ("Icebreaker", ct.Kind.ICEBREAKER, week, "A new icebreaker arrives in your pair room.", "")]
        if spec is None or week in spec.checkin_weeks:
            wanted.append(("Check-in", ct.Kind.CHECKIN, None, "Did you meet this week, and how?",
                           "Did you meet this week, and how? The question comes in its own email: "
                           "one click on your answer records it."))
        if spec is None or week in spec.reflection_weeks:
            wanted.append(("Reflection", ct.Kind.REFLECTION, week, "A reflection prompt for you both.", ""))
        out: list[dg.Prompt] = []
        for label, kind, wk, fallback, by_email in wanted:
            try:
                item = lib.pick(kind, ct.Audience.PAIR, week=wk)
            except ContentError:
                continue
            title = _plain(item.title, label)
            # "Icebreaker: three questions" under the label "Icebreaker" would say it twice.
            if title.lower().startswith(label.lower() + ":"):
                title = title[len(label) + 1:].strip() or label
                title = title[:1].upper() + title[1:]  # it now starts the line: "Three questions..."
            out.append(dg.Prompt(label, title, _plain(item.summary, fallback), by_email=by_email))
        return tuple(out)

    def _tip(self, view: CohortView, week: int) -> dg.Tip | None:
        tips = self.program.library.select(ct.Kind.TIP, ct.Audience.COHORT)
        if not tips:
            return None
        rendered = self.program.library.render(tips[(week - 1) % len(tips)],
                                               ct.Variables(cohort=content_cohort(view), week=week))
        return dg.Tip(title=rendered.subject, body=rendered.body)

    def _email_tip(self, view: CohortView, week: int) -> dg.Tip | None:
        """The week's tip for email-only readers: the next one in the rotation that names no command."""
        tips = self.program.library.select(ct.Kind.TIP, ct.Audience.COHORT)
        prefix = self.program.settings().matrix.command_prefix
        for i in range(len(tips)):
            rendered = self.program.library.render(tips[(week - 1 + i) % len(tips)],
                                                   ct.Variables(cohort=content_cohort(view), week=week))
            if prefix not in rendered.subject + rendered.body:
                return dg.Tip(title=rendered.subject, body=rendered.body)
        return None

    async def _pulse(self, s: AsyncSession, view: CohortView, now: datetime) -> dg.CohortPulse:
        lounge = view.lounge
        if lounge is None or not lounge.room_id:
            return dg.CohortPulse()
        since = now - timedelta(days=PULSE_DAYS)
        joined = int((await s.execute(select(func.count()).select_from(room_member_table).where(
            (room_member_table.c.room_pk == lounge.id) & (room_member_table.c.state == MembershipState.JOINED)
            & (room_member_table.c.joined_at >= since.timestamp())))).scalar() or 0)
        names = {m.matrix_id: m.name for m in view.members.values() if m.matrix_id}
        posts = tuple(
            # The roster's name wins over a display name anyone can set to anything.
            dg.LoungePost(p.room_id, p.event_id, names.get(p.sender) or p.sender_name, p.excerpt, p.reactions)
            for p in await activity.top_lounge_posts(s, lounge.room_id, since, dg.TOP_POSTS))
        return dg.CohortPulse(new_members=joined, posts=posts,
                              lounge_messages=await activity.lounge_messages_since(s, lounge.room_id, since))

    async def edition(self, s: AsyncSession, view: CohortView, week: int, now: datetime, *,
                      preview: bool = False) -> Edition:
        """Week `week`'s digest as of `now`.

        A `preview` is of the digest as it will go out: its "upcoming" webinars are those
        after week `week`'s digest slot (or after now, if that is later), so a preview of a
        later week does not list a webinar that will be over by then.
        """
        spec = await self._spec(view.cohort.slug)
        week = max(1, min(week, view.cohort.weeks))
        webinars = spec.webinars if spec else ()
        lounge_id = view.lounge.room_id if view.lounge is not None and view.lounge.room_id else ""
        as_of = max(now, _digest_due(spec, week) or now) if preview else now
        issue = dg.DigestIssue(
            cohort=dg.CohortInfo(view.cohort.slug, view.cohort.name, view.zone, lounge_id),
            week=week, weeks=view.cohort.weeks, generated_at=as_of, prompts=self._prompts(spec, week),
            webinars=webinars, pulse=await self._pulse(s, view, now), tip=self._tip(view, week),
            email_tip=self._email_tip(view, week))
        builder = self._builder(await signing_secret(s, self.program.settings()))
        return Edition(view, issue, builder)

    async def recipients(self, s: AsyncSession, view: CohortView, members: Sequence[Member],
                         now: datetime) -> list[tuple[Member, dg.Recipient]]:
        """Each member as the digest sees them: a handle, a name, a zone, and their pairs as counts."""
        keys = {m.id: person_key(m.matrix_id, m.email) for m in members}
        handles = await handles_for(s, [k for k in keys.values() if k], now)
        last = await activity.pair_last_active(s, view.cohort.id or 0)
        # Each member's active pairs, in one pass over the pairs: asked per member, 10,000
        # people in 5,000 pairs were 50 million looks and a minute of the sync handler.
        pairs_of: dict[int | None, list[dg.PairCounts]] = {}
        for pv in view.pairs.values():
            if pv.pair.status != PairStatus.ACTIVE:
                continue
            counts = dg.PairCounts(
                days_since_active=(max(0, int((now.timestamp() - last[pv.pair.id or 0]) // 86400))
                                   if (pv.pair.id or 0) in last else None),
                backup_plan_set=bool(pv.plan))
            for person in {pv.mentor.id, pv.mentee.id}:
                pairs_of.setdefault(person, []).append(counts)
        out: list[tuple[Member, dg.Recipient]] = []
        for m in members:
            key = keys[m.id]
            if key is None:
                continue
            out.append((m, dg.Recipient(handle=handles[key], name=m.name or "there",
                                        timezone=_zone(m.timezone, view.zone),
                                        pairs=tuple(pairs_of.get(m.id, ())),
                                        on_matrix=m.matrix_id is not None)))
        return out

    # -- the hook -------------------------------------------------------------------------------

    async def rows(self, s: AsyncSession, item: CalendarItem,
                   targets: Sequence[Target]) -> list[dict[str, Any]]:
        """`ProgramService`'s digest hook: outbox rows for the targets that have not had `item`."""
        view = await load_cohort_view(s, item.cohort)
        if view is None:
            return []
        now = self.program.clock.now()
        ed = await self.edition(s, view, item.week or 1, now)
        await activity.prune(s, now)
        out: list[dict[str, Any]] = []
        unsent: list[Unsent] = []
        if view.lounge is not None and any(t.audience is TargetKind.LOUNGE for t in targets):
            target = next(t for t in targets if t.audience is TargetKind.LOUNGE)
            try:
                out.append(room_row(view.lounge, ed.builder.lounge_post(ed.issue).content(), kind="digest",
                                    dedupe_key=dedupe_key(item, target)))
            except Exception as e:
                self.program.leave_out(unsent, item, "the lounge", e)
        out += await self._emails(s, ed, item, [t for t in targets if t.audience is TargetKind.MEMBER], now)
        report = await self.report_row(s, view, now, key=f"{item.key}:report")
        if report is not None:
            out.append(report)
        alert = unsent_alert(self.control_room(), item, unsent)
        return out + ([alert] if alert is not None else [])

    async def _emails(self, s: AsyncSession, ed: Edition, item: CalendarItem, targets: Sequence[Target],
                      now: datetime) -> list[dict[str, Any]]:
        settings = self.program.settings()
        if not settings.email.enabled or not targets:
            return []
        wanted = {int(t.id): t for t in targets}
        members = [m for mid, m in ed.view.members.items() if mid in wanted]
        lid = list_id(settings, ed.view.cohort)
        mails: list[tuple[dg.Recipient, str, str]] = []
        for member, recipient in await self.recipients(s, ed.view, members, now):
            address = ed.view.address(member)
            if address is not None:
                mails.append((recipient, address, dedupe_key(item, wanted[member.id or 0])))
        if not mails:
            return []
        # The week's shared part once; each person's email is rendered when it is sent, and a
        # person it cannot be made for fails their own row then (reported like any failed row).
        edition = await store_edition(s, ed.builder, ed.issue, lid, now.timestamp())
        return email_refs(ed.builder, ed.issue, mails, edition)

    async def report_row(self, s: AsyncSession, view: CohortView, now: datetime, *,
                         key: str) -> dict[str, Any] | None:
        """The moderators' weekly report (counts only) as a control-room row."""
        room = self.control_room()
        if not room:
            return None
        report = await build_report(s, view, self.program.state, now)
        lines = report.lines(view.cohort.slug)
        lines[0] = f"**Weekly report for `{view.cohort.slug}`** (counts only)"
        # Interactive: a moderator's reply to `!hub digest send` queues behind it in the control
        # room's lane, and as bulk it waited for all 10,000 emails of the fan-out it reports.
        notice = Outgoing(RoomMessage.markdown("\n".join(lines), room_id=room), "digest-report", key)
        return {**row_spec(notice), "priority": Priority.INTERACTIVE}

