"""Moderators' program commands: `webinar`, `send`, `announce`, `report`.

`report` shows counts only: nothing said in a pair or direct room, no
individual check-in scores (those are stored without the person anyway).
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.activity import pair_last_active
from hub.core import content as ct
from hub.core.calendar import CalendarItem, ItemKind
from hub.core.commands import Arg, CommandContext, CommandRegistry, Reply
from hub.core.content_format import Url, email_document, html_to_text, one_line
from hub.core.markup import echo, markdown_to_matrix
from hub.core.messages import notice_content
from hub.delivery.outbox import EMAIL
from hub.email.payload import email_payload, normalize_address
from hub.errors import CommandError, ContentError, UsageError
from hub.features.participants import CohortView, load_cohort_view, program_of, program_week_of, room_row
from hub.features.program import ANNOUNCE_DELAY, email_headers, suppressed
from hub.features.subscribers import list_headers
from hub.inbound import Ports
from hub.program_store import SqlProgramState
from hub.program_targets import person_key
from hub.storage.models import (
    WebinarRow,
    checkin_answer_table,
    content_use_table,
    hub_room_table,
    room_member_table,
    webinar_table,
)

__all__ = ["QUIET_DAYS", "CohortReport", "build_report", "register_program_commands"]

QUIET_DAYS = 14
_AT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}$")
_SEND_KINDS = ("icebreaker", "checkin", "reflection")


async def _view(s: AsyncSession, slug: str, prefix: str) -> CohortView:
    view = await load_cohort_view(s, slug.lower())
    if view is None:
        raise CommandError(f"There is no cohort {echo(slug)}. `{prefix} cohort list` shows them.")
    return view


@dataclass
class CohortReport:
    pairs: Counter[str] = field(default_factory=Counter)  # active, paused, quiet
    answers: Counter[str] = field(default_factory=Counter)  # check-in answers by mode
    pending_invites: int = 0
    no_address: int = 0
    opted_out: int = 0
    bounced: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # calendar items missed while down, by kind

    def lines(self, slug: str) -> list[str]:
        p = self.pairs
        modes = ", ".join(f"{m} {self.answers[m]}" for m in ("video", "voice", "text", "notyet"))
        skipped = ", ".join(f"{k} {n}" for k, n in sorted(self.skipped.items())) or "none"
        return [
            f"**Report for `{slug}`** (counts only)",
            f"- Pairs: {p['active']} active, {p['quiet']} of them quiet for {QUIET_DAYS}+ days, "
            f"{p['paused']} paused",
            f"- Check-in answers (\"did you meet?\"): {modes}",
            f"- Invitations not accepted yet: {self.pending_invites}",
            f"- Email: {self.bounced} bounced (suppressed), {self.opted_out} opted out, "
            f"{self.no_address} without an address",
            f"- Scheduled items skipped while the hub was down: {skipped}",
        ]


async def build_report(
    s: AsyncSession, view: CohortView, state: SqlProgramState, now: datetime
) -> CohortReport:
    """The counts behind `!hub report`.

    "Quiet" is judged from what the hub can see without reading anyone's
    messages: no message in the pair room (hub.activity keeps only its time),
    no check-in answer, plan change or pair-room command for
    `QUIET_DAYS` days (and the pair older than that).
    """
    r = CohortReport()
    cutoff = (now - timedelta(days=QUIET_DAYS)).timestamp()
    cid = view.cohort.id
    last_answer = dict((await s.execute(
        select(checkin_answer_table.c.pair_id, func.max(checkin_answer_table.c.answered_at))
        .where(checkin_answer_table.c.cohort_id == cid).group_by(checkin_answer_table.c.pair_id))).all())
    last_said = await pair_last_active(s, cid or 0)  # a time only (hub.activity), never words
    last_command = dict((await s.execute(
        select(content_use_table.c.scope, func.max(content_use_table.c.used_at))
        .where((content_use_table.c.source == "command") & content_use_table.c.scope.like("pair:%"))
        .group_by(content_use_table.c.scope))).all())
    for pv in view.pairs.values():
        r.pairs[pv.pair.status] += 1
        if pv.pair.status != "active":
            continue
        signs = [pv.pair.created_at, last_answer.get(pv.pair.id, 0.0), last_command.get(pv.key, 0.0),
                 last_said.get(pv.pair.id or 0, 0.0)]
        if max(signs) < cutoff:
            r.pairs["quiet"] += 1
    r.answers.update(dict((await s.execute(
        select(checkin_answer_table.c.mode, func.count()).where(checkin_answer_table.c.cohort_id == cid)
        .group_by(checkin_answer_table.c.mode))).all()))
    r.pending_invites = int((await s.execute(
        select(func.count()).select_from(room_member_table)
        .join(hub_room_table, hub_room_table.c.id == room_member_table.c.room_pk)
        .where((hub_room_table.c.status != "closed") & room_member_table.c.state.in_(("pending", "invited"))
               & (hub_room_table.c.cohort_id == cid)))).scalar() or 0)
    addresses: list[str] = []
    for m in view.members.values():
        address = view.address(m)
        if address is None:
            r.no_address += 1
        elif view.email_mode(m) == "off":
            r.opted_out += 1
        else:
            addresses.append(address)
    r.bounced = len(await suppressed(s, addresses))
    r.skipped.update(item.kind for item in await state.skipped(view.cohort.slug))
    return r


def register_program_commands(registry: CommandRegistry) -> None:
    prefix = registry.prefix

    @registry.command("webinar", "schedule a webinar: announcement, email invite (.ics), reminders",
                      Arg("slug"), Arg("at"), Arg("title"), Arg("url", optional=True), moderator_only=True,
                      private_answer=True)
    async def webinar(ctx: CommandContext) -> Reply:
        ports: Ports = ctx.services
        s = ports.session
        program = program_of(ctx)
        usage = f"Usage: `{prefix} webinar SLUG YYYY-MM-DDTHH:MM \"TITLE\" [URL]`"
        raw_at, title, url = str(ctx.args["at"]), one_line(str(ctx.args["title"])), ctx.args.get("url")
        if not _AT.match(raw_at):
            raise UsageError(f"{echo(raw_at)} is not a time like 2027-01-11T17:00. {usage}")
        if not title or len(title) > 200:
            raise UsageError(f"the title must be 1-200 characters. {usage}")
        if url is not None:
            try:
                Url(str(url))
            except ContentError:
                raise UsageError(f"{echo(str(url))} is not an http(s) link. {usage}") from None
        view = await _view(s, str(ctx.args["slug"]), prefix)
        try:
            at = datetime.fromisoformat(raw_at).replace(tzinfo=view.zone)
        except ValueError:
            raise UsageError(f"{echo(raw_at)} is not a real date and time. {usage}") from None
        now = ports.clock.now()
        announce = now + ANNOUNCE_DELAY
        if at <= announce:
            raise CommandError(f"{raw_at} ({view.cohort.timezone}) is in the past; nothing was scheduled.")
        exists = (await s.execute(select(webinar_table.c.id).where(
            (webinar_table.c.cohort_id == view.cohort.id) & (webinar_table.c.at == at.timestamp())))).first()
        if exists is not None:
            raise CommandError(f"`{view.cohort.slug}` already has a webinar at {raw_at}; nothing changed.")
        assert view.cohort.id is not None
        s.add(WebinarRow(cohort_id=view.cohort.id, at=at.astimezone(UTC).timestamp(), title=title,
                         url=str(url) if url else None, created_by=ctx.sender,
                         created_at=now.timestamp(), announce_at=announce.timestamp()))
        # The calendar picks the webinar up at the next tick after the commit; this makes it prompt.
        asyncio.get_running_loop().call_later(ANNOUNCE_DELAY.total_seconds() + 1, program.poke)
        reminders = [label for label, before in (("24 h", 24), ("1 h", 1))
                     if at - timedelta(hours=before) > announce]
        when = ct.format_local_time(at, view.zone)
        return Reply(f"Scheduled \"{title}\" for {when} in `{view.cohort.slug}`. The announcement goes to "
                     "the lounge and by email with an .ics invite within a minute; reminders: "
                     f"{', '.join(reminders) or 'none (too soon)'} before; a follow-up after.")

    @registry.command("send", "send that item now to every active pair room (icebreaker: lounge too)",
                      Arg("what", kind="choice", choices=_SEND_KINDS), Arg("slug"), moderator_only=True,
                      private_answer=True)
    async def send(ctx: CommandContext) -> Reply:
        ports: Ports = ctx.services
        s = ports.session
        program = program_of(ctx)
        view = await _view(s, str(ctx.args["slug"]), prefix)
        now = ports.clock.now()
        kind = ItemKind(str(ctx.args["what"]))
        item = CalendarItem(key=f"{kind.value}:{view.cohort.slug}:send:{ctx.event_id}", kind=kind,
                            cohort=view.cohort.slug, week=program_week_of(view, now) or None, due=now)
        targets = await program.targets_of(item, now)
        rows = await program.rows(s, item, targets, source="send")
        await ports.outbox.enqueue_many(s, rows)
        counts = Counter(str(r["kind"]) for r in rows)
        pairs = sum(1 for t in targets if t.audience.value == "pair")
        parts = [f"{pairs} pair room{'s' if pairs != 1 else ''}"]
        if kind is ItemKind.ICEBREAKER:
            parts.append("the lounge" if counts and len(rows) > pairs else "no lounge (not created yet)")
        if kind is ItemKind.REFLECTION:
            parts.append(f"{counts['program-private-checkin']} private check-ins")
        return Reply(f"Sent the {kind.value} now to {' and '.join(parts)} of `{view.cohort.slug}`.")

    @registry.command("announce", "post in the lounge and email every opted-in member",
                      # Capped where it enters (hub.core.limits.text_too_long): the post must fit an event.
                      Arg("slug"), Arg("markdown", kind="text", maximum=10_000), moderator_only=True,
                      private_answer=True)
    async def announce(ctx: CommandContext) -> Reply:
        ports: Ports = ctx.services
        s = ports.session
        program = program_of(ctx)
        settings = program.settings()
        view = await _view(s, str(ctx.args["slug"]), prefix)
        text = str(ctx.args["markdown"])
        body, html = markdown_to_matrix(text)
        if view.lounge is None:
            raise CommandError(f"`{view.cohort.slug}` has no lounge yet; nothing was sent.")
        rows: list[dict[str, Any]] = [room_row(view.lounge, notice_content(body, html), kind="announce",
                                               dedupe_key=f"announce:{ctx.event_id}:lounge")]
        emailed = 0
        if settings.email.enabled:
            first = (html_to_text(html).splitlines() or [""])[0]
            subject = one_line(f"{view.cohort.name}: {first}")[:120]
            page = email_document(subject, html)
            plain = html_to_text(html)
            wanted = [(m, view.address(m)) for m in view.members.values() if view.email_mode(m) == "all"]
            bounced = await suppressed(s, [a for _, a in wanted if a])
            unsubscribe = await list_headers(s, settings, view.cohort, [k for k in (
                person_key(m.matrix_id, m.email) for m, a in wanted if a) if k], ports.clock.now())
            for member, address in wanted:
                if address is None or address in bounced:
                    continue
                headers = unsubscribe.get(person_key(member.matrix_id, member.email) or "",
                                          email_headers(settings, view.cohort))
                payload = email_payload(to=address, subject=subject, text=plain, html=page,
                                        headers=headers)
                rows.append({"channel": EMAIL, "kind": "announce", "lane": normalize_address(address),
                             "payload": dict(payload), "dedupe_key": f"announce:{ctx.event_id}:{member.id}"})
                emailed += 1
        await ports.outbox.enqueue_many(s, rows)
        return Reply(f"Announced in the `{view.cohort.slug}` lounge and emailed to {emailed} "
                     f"{'person' if emailed == 1 else 'people'}.")

    @registry.command("report", "counts: pairs, check-in answers, invites, email problems, skipped items",
                      Arg("slug"), moderator_only=True, private_answer=True)
    async def report(ctx: CommandContext) -> Reply:
        ports: Ports = ctx.services
        program = program_of(ctx)
        view = await _view(ports.session, str(ctx.args["slug"]), prefix)
        r = await build_report(ports.session, view, program.state, ports.clock.now())
        return Reply("\n".join(r.lines(view.cohort.slug)))
