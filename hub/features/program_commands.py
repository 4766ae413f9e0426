"""Moderators' program commands: `webinar`, `send`, `announce`, `report`.

`report` shows counts only: nothing said in a pair or direct room, no
individual check-in scores (those are stored without the person anyway).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.activity import pair_last_active
from hub.core import content as ct
from hub.core.calendar import CalendarItem, ItemKind, TargetKind
from hub.core.commands import Arg, CommandContext, CommandRegistry, Reply
from hub.core.content_format import email_document, html_to_text, one_line
from hub.core.converters import to_datetime, to_title, to_url
from hub.core.effects import Email, Outgoing
from hub.core.markup import echo, markdown_to_matrix
from hub.core.membership import MembershipState, PairStatus, RoomStatus
from hub.core.messages import notice_content
from hub.delivery.effect_writer import row_spec
from hub.errors import CommandError
from hub.features.participants import CohortView, load_cohort_view, program_week_of, room_row
from hub.features.ports import Configured, Effects, Programmed, Store, Timed
from hub.features.program_rows import ANNOUNCE_DELAY, email_headers, suppressed
from hub.features.subscribers import list_headers
from hub.program import ProgramState
from hub.program_targets import person_key
from hub.storage.models import (
    WebinarRow,
    checkin_answer_table,
    content_use_table,
    hub_room_table,
    rematch_request_table,
    room_member_table,
    webinar_table,
)

__all__ = ["QUIET_DAYS", "Announcing", "CohortReport", "ProgramPorts", "Scheduling", "Sending", "announce",
           "build_report", "register_program_commands", "report", "send", "webinar"]

QUIET_DAYS = 14
_SEND_KINDS = ("icebreaker", "checkin", "reflection")


class Scheduling(Store, Timed, Programmed, Protocol):
    """Reading or adding to a cohort's calendar (`webinar`, `report`)."""


class Sending(Effects, Timed, Programmed, Protocol):
    """`send`: a calendar item's rows now, queued in the command's transaction."""


class Announcing(Effects, Timed, Configured, Programmed, Protocol):
    """`announce`: a lounge post and emails (settings say whether email is on; the program
    gives their reply address)."""


class ProgramPorts(Scheduling, Sending, Announcing, Protocol):
    """Everything the program commands use."""


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
    rematch: Counter[str] = field(default_factory=Counter)  # `!hub rematch`: participant | moderator

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
            f"- Rematch requests: {self.rematch['participant']} from participants; "
            f"{self.rematch['moderator']} pairs closed for a rematch",
        ]


async def build_report(
    s: AsyncSession, view: CohortView, state: ProgramState, now: datetime
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
        if pv.pair.status != PairStatus.ACTIVE:
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
        .where((hub_room_table.c.status != RoomStatus.CLOSED)
               & room_member_table.c.state.in_((MembershipState.PENDING, MembershipState.INVITED))
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
    r.rematch.update(dict((await s.execute(
        select(rematch_request_table.c.source, func.count()).where(rematch_request_table.c.cohort_id == cid)
        .group_by(rematch_request_table.c.source))).all()))
    return r


async def webinar(ctx: CommandContext[Scheduling]) -> Reply:
    ports = ctx.ports
    s = ports.session
    program = ports.program
    # Checked by their converters: a local time, a one-line title, an http(s) link or None.
    local: datetime = ctx.args["at"]
    title, url = str(ctx.args["title"]), ctx.args.get("url")
    raw_at = local.isoformat(timespec="minutes")  # as typed: the converter takes only this form
    view = await _view(s, str(ctx.args["slug"]), ctx.prefix)
    at = local.replace(tzinfo=view.zone)
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


async def send(ctx: CommandContext[Sending]) -> Reply:
    ports = ctx.ports
    s = ports.session
    program = ports.program
    view = await _view(s, str(ctx.args["slug"]), ctx.prefix)
    now = ports.clock.now()
    kind = ItemKind(str(ctx.args["what"]))
    item = CalendarItem(key=f"{kind.value}:{view.cohort.slug}:send:{ctx.event_id}", kind=kind,
                        cohort=view.cohort.slug, week=program_week_of(view, now) or None, due=now)
    targets = await program.targets_of(item, now)
    rows = await program.rows(s, item, targets, source="send")
    await ports.outbox.enqueue_many(s, rows)
    counts = Counter(str(r["kind"]) for r in rows)
    pairs = sum(1 for t in targets if t.audience is TargetKind.PAIR)
    parts = [f"{pairs} pair room{'s' if pairs != 1 else ''}"]
    if kind is ItemKind.ICEBREAKER:
        parts.append("the lounge" if counts and len(rows) > pairs else "no lounge (not created yet)")
    if kind is ItemKind.REFLECTION:
        parts.append(f"{counts['program-private-checkin']} private check-ins")
    return Reply(f"Sent the {kind.value} now to {' and '.join(parts)} of `{view.cohort.slug}`.")


async def announce(ctx: CommandContext[Announcing]) -> Reply:
    ports = ctx.ports
    s = ports.session
    settings = ports.settings()
    view = await _view(s, str(ctx.args["slug"]), ctx.prefix)
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
            # Answering an announcement posts in the lounge (replies by email).
            headers = {**headers, **ports.program.reply_to(member.id, view.lounge.id)}
            mail = Email(to=address, subject=subject, text=plain, html=page, headers=headers)
            rows.append(row_spec(Outgoing(mail, "announce", f"announce:{ctx.event_id}:{member.id}")))
            emailed += 1
    await ports.outbox.enqueue_many(s, rows)
    return Reply(f"Announced in the `{view.cohort.slug}` lounge and emailed to {emailed} "
                 f"{'person' if emailed == 1 else 'people'}.")


async def report(ctx: CommandContext[Scheduling]) -> Reply:
    ports = ctx.ports
    program = ports.program
    view = await _view(ports.session, str(ctx.args["slug"]), ctx.prefix)
    r = await build_report(ports.session, view, program.state, ports.clock.now())
    return Reply("\n".join(r.lines(view.cohort.slug)))


def register_program_commands(registry: CommandRegistry) -> None:
    registry.command("webinar", "schedule a webinar: announcement, email invite (.ics), reminders",
                     Arg("slug"), Arg("at", to=to_datetime), Arg("title", to=to_title),
                     Arg("url", optional=True, to=to_url), moderator_only=True,
                     private_answer=True)(webinar)
    registry.command("send", "send that item now to every active pair room (icebreaker: lounge too)",
                     Arg("what", kind="choice", choices=_SEND_KINDS), Arg("slug"), moderator_only=True,
                     private_answer=True)(send)
    registry.command("announce", "post in the lounge and email every opted-in member",
                     # Capped where it enters (hub.core.limits.text_too_long): the post must fit an event.
                     Arg("slug"), Arg("markdown", kind="text", maximum=10_000), moderator_only=True,
                     private_answer=True)(announce)
    registry.command("report", "counts: pairs, check-in answers, invites, email problems, skipped items",
                     Arg("slug"), moderator_only=True, private_answer=True)(report)


