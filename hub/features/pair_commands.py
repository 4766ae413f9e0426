"""Pair-room commands: the backup plan, a dropped call, the video link, icebreakers, check-in answers.

What a pair says stays in its room: these commands store only the plan (the
pair's own words, shown only in their room and their own emails) and a
check-in *mode*; nothing here reaches the moderators.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.core import content as ct
from hub.core.cohorts import display_name, video_url
from hub.core.commands import Arg, CommandContext, CommandRegistry, Reply, RoomKind
from hub.core.effects import Email, Outgoing, PinPlan, RoomMessage
from hub.core.membership import RoomKind as HubRoomKind
from hub.core.messages import Mention
from hub.core.ports import Priority
from hub.delivery.effect_writer import enqueue, row_spec
from hub.errors import ArgumentError, CommandError
from hub.features.participants import (
    CohortView,
    PairView,
    content_cohort,
    content_pair,
    load_cohort_view,
    local_midnight,
    pair_of_room,
    program_week_of,
    record_use,
    said,
    used_items,
    uses_since,
)
from hub.features.ports import Configured, Effects, Programmed, Store, Timed
from hub.features.program_rows import email_headers, mentions, suppressed
from hub.features.reactions import answering, remember
from hub.storage.models import (
    CheckinAnswer,
    Cohort,
    HubRoom,
    Pair,
    PairPlan,
    checkin_answer_table,
    hub_room_table,
)

__all__ = ["ICEBREAKERS_PER_DAY", "MAX_PLAN", "PairContent", "PairPorts", "PlanPorts", "call", "dropped",
           "icebreaker", "met", "plan_clear", "plan_set", "plan_show", "record_met", "register_pair_commands"]

ICEBREAKERS_PER_DAY = 3
MAX_PLAN = 1000  # characters: a plan is a few sentences, and it is pinned and emailed
PAIR = frozenset({RoomKind.PAIR})


class PairContent(Store, Timed, Configured, Programmed, Protocol):
    """What renders the program's content for a pair: its cohort and week, the video link, the library."""


class PlanPorts(Effects, Timed, Protocol):
    """Saving or clearing a plan: a row, and the message and pin queued with it."""


class PairPorts(PairContent, Effects, Protocol):
    """Everything the pair-room commands use (`dropped` needs all of it)."""


async def record_met(s: AsyncSession, pair: Pair, week: int, how: str, now: float) -> None:
    """Record a pair's answer to week `week`'s "did you meet, and how?" (the latest wins).

    The one way an answer is stored: `!hub met HOW` and an email answer link
    (hub.features.answers) both call this.
    """
    assert pair.id is not None
    answer = (await s.execute(select(CheckinAnswer).where(
        (checkin_answer_table.c.pair_id == pair.id) & (checkin_answer_table.c.week == week)
    ))).scalar_one_or_none()
    if answer is None:
        s.add(CheckinAnswer(pair_id=pair.id, cohort_id=pair.cohort_id, week=week, mode=how, answered_at=now))
    else:
        answer.mode, answer.answered_at = how, now


def _reply(rendered: ct.Rendered, note: str = "", *, for_people: Sequence[Mention] = ()) -> Reply:
    if not note:
        return Reply(rendered.body, rendered.formatted_body, mentions=tuple(for_people))
    plain, html = said(note)
    return Reply(f"{rendered.body}\n\n{plain}", f"{rendered.formatted_body}\n{html}",
                 mentions=tuple(for_people))


def _pair_vars(ctx: CommandContext[PairContent], view: CohortView, pv: PairView) -> ct.Variables:
    return ct.Variables(cohort=content_cohort(view), week=program_week_of(view, ctx.ports.clock.now()),
                        pair=content_pair(view, pv, ctx.ports.settings().video.base_url))


async def _video_nudge(ctx: CommandContext[PairContent], s: AsyncSession, view: CohortView,
                       pv: PairView) -> ct.Rendered:
    """The next video nudge for this pair (they rotate, so a pair does not read the same one twice)."""
    program = ctx.ports.program
    used = await used_items(s, [pv.key], ct.Kind.VIDEO.value)
    chosen = program.library.pick(ct.Kind.VIDEO, ct.Audience.PAIR, use="nudge", used=used.get(pv.key, []))
    record_use(s, pv.key, ct.Kind.VIDEO.value, chosen.id, "command", ctx.ports.clock.now())
    return program.library.render(chosen, _pair_vars(ctx, view, pv))


async def plan_show(ctx: CommandContext[Store]) -> Reply:
    ports = ctx.ports
    _, pv = await pair_of_room(ports.session, ctx.room_id)
    if not pv.plan:
        return Reply(f"No backup plan yet. Agree one together, then save it with "
                     f"`{ctx.prefix} plan set TEXT`, e.g. `{ctx.prefix} plan set If the call drops, "
                     "the mentor phones the mentee`.")
    plain, html = said("**Your backup plan:**\n\n{plan}\n\n"
                       f"If a call fails, `{ctx.prefix} dropped` posts it with quick fixes and emails it "
                       "to you both.", plan=pv.plan)
    return Reply(plain, html)


async def plan_set(ctx: CommandContext[PlanPorts]) -> Reply:
    text = " ".join(str(ctx.args["text"]).split("\n")).strip()
    if len(text) > MAX_PLAN:
        raise ArgumentError(f"That plan is {len(text)} characters; please keep it under {MAX_PLAN}")
    ports = ctx.ports
    s = ports.session
    _, pv = await pair_of_room(s, ctx.room_id)
    assert pv.pair.id is not None
    key = f"plan:{ctx.event_id}"
    now = ports.clock.now().timestamp()
    plan = await s.get(PairPlan, pv.pair.id)
    if plan is None:
        s.add(PairPlan(pair_id=pv.pair.id, text=text, set_at=now, message_key=key))
    else:
        plan.text, plan.set_at, plan.message_key = text, now, key
    who = display_name(None, ctx.sender, None)
    plain, html = said("📌 **Our backup plan** for when a call fails:\n\n{plan}\n\n"
                       f"Saved by {{who}}. `{ctx.prefix} dropped` brings it back, also by email.",
                       plan=text, who=who)
    # The plan message is what gets pinned; the pin row waits for its event id (same lane).
    plan_message = RoomMessage.notice(plain, html, room_id=ctx.room_id)
    await enqueue(ports.outbox, s, Outgoing(plan_message, "plan", key))
    await enqueue(ports.outbox, s, Outgoing(PinPlan(ctx.room_id, pv.pair.id, key), "plan-pin",
                                            f"pin:{ctx.event_id}"))
    return Reply(f"Saved. Your backup plan is pinned in this room; `{ctx.prefix} plan` shows it and "
                 f"`{ctx.prefix} dropped` brings it back when a call fails.")


async def plan_clear(ctx: CommandContext[PlanPorts]) -> Reply:
    ports = ctx.ports
    s = ports.session
    _, pv = await pair_of_room(s, ctx.room_id)
    plan = await s.get(PairPlan, pv.pair.id)
    if plan is None or not plan.text:
        return Reply("There is no backup plan to clear; nothing changed.")
    plan.text, plan.message_key, plan.set_at = "", None, ports.clock.now().timestamp()
    await enqueue(ports.outbox, s, Outgoing(PinPlan(ctx.room_id, plan.pair_id, None), "plan-pin",
                                            f"pin:{ctx.event_id}"))
    return Reply(f"Backup plan cleared and unpinned. Save a new one with `{ctx.prefix} plan set TEXT`.")


async def dropped(ctx: CommandContext[PairPorts]) -> Reply:
    ports = ctx.ports
    s = ports.session
    program = ctx.ports.program
    view, pv = await pair_of_room(s, ctx.room_id)
    item = program.library.pick(ct.Kind.PLAN, ct.Audience.PAIR, use="dropped")
    rendered = program.library.render(item, _pair_vars(ctx, view, pv))
    # The plan is for the partner (the one who typed this is looking at it): it notifies them.
    partner = mentions(*(m for m in (pv.mentor, pv.mentee) if m.matrix_id != ctx.sender))
    settings = ctx.ports.settings()
    if not settings.email.enabled:
        return _reply(rendered, for_people=partner)
    people = [(m, view.address(m)) for m in (pv.mentor, pv.mentee)]
    bounced = await suppressed(s, [a for _, a in people if a])
    rows: list[dict[str, Any]] = []
    for member, address in people:
        if address is None or address in bounced:
            continue
        # Answering the plan mail posts in the pair room (replies by email).
        reply_to = program.reply_to(member.id, pv.room.id if pv.room is not None else None)
        mail = Email(to=address, subject=rendered.subject, text=rendered.email_text, html=rendered.email_html,
                     to_name=display_name(member.name, member.matrix_id, member.email),
                     headers={**email_headers(settings, view.cohort), **reply_to})
        rows.append(row_spec(Outgoing(mail, "plan-dropped", f"dropped:{ctx.event_id}:{member.id}")))
    # Two people are waiting for the plan right now: ahead of any fan-out in progress.
    await ports.outbox.enqueue_many(s, rows, priority=Priority.INTERACTIVE)
    if len(rows) == 2:
        note = "_Also emailed to you both, in case the chat is what's down._"
    elif rows:
        note = "_Also emailed to one of you (the other has no working address on file)._"
    else:
        note = "_No email sent: neither of you has a working address on file._"
    return _reply(rendered, note, for_people=partner)


async def call(ctx: CommandContext[PairContent]) -> Reply:
    ports = ctx.ports
    view, pv = await pair_of_room(ports.session, ctx.room_id)
    return _reply(await _video_nudge(ctx, ports.session, view, pv))


async def icebreaker(ctx: CommandContext[PairContent]) -> Reply:
    ports = ctx.ports
    s = ports.session
    program = ctx.ports.program
    now = ports.clock.now()
    variables: ct.Variables
    if ctx.room_kind is RoomKind.PAIR:
        view, pv = await pair_of_room(s, ctx.room_id)
        scope, audience, variables = pv.key, ct.Audience.PAIR, _pair_vars(ctx, view, pv)
    else:
        lounge = (await s.execute(select(HubRoom).where(
            (hub_room_table.c.room_id == ctx.room_id) & (hub_room_table.c.kind == HubRoomKind.LOUNGE)
        ))).scalar_one_or_none()
        cohort_view = None
        if lounge is not None and lounge.cohort_id is not None:
            cohort = await s.get(Cohort, lounge.cohort_id)
            cohort_view = await load_cohort_view(s, cohort.slug) if cohort is not None else None
        if lounge is None or cohort_view is None:
            raise CommandError("This lounge's cohort is gone, so there are no icebreakers here.")
        scope, audience = lounge.key, ct.Audience.COHORT
        variables = ct.Variables(cohort=content_cohort(cohort_view),
                                 week=program_week_of(cohort_view, now))
    zone = variables.cohort.timezone
    today = await uses_since(s, scope, ct.Kind.ICEBREAKER.value, "command",
                             local_midnight(now, ZoneInfo(zone)))
    if today >= ICEBREAKERS_PER_DAY:
        raise CommandError(f"This room has had {ICEBREAKERS_PER_DAY} extra icebreakers today, the daily "
                           "limit. Take your time with the last one; more tomorrow.")
    used = await used_items(s, [scope], ct.Kind.ICEBREAKER.value)
    chosen = program.library.next_icebreaker(audience, used.get(scope, []), week=variables.week or None)
    record_use(s, scope, ct.Kind.ICEBREAKER.value, chosen.id, "command", now)
    return _reply(program.library.render(chosen, variables))


async def met(ctx: CommandContext[PairContent]) -> Reply:
    ports = ctx.ports
    s = ports.session
    view, pv = await pair_of_room(s, ctx.room_id)
    assert pv.pair.id is not None and view.cohort.id is not None
    now = ports.clock.now()
    # Answered by reaction or reply to a prompt (hub.features.reactions): that prompt's week.
    by_reaction = answering()
    week = by_reaction.week if by_reaction is not None else program_week_of(view, now)
    how = str(ctx.args["how"])
    await record_met(s, pv.pair, week, how, now.timestamp())
    if by_reaction is not None:
        await remember(s, by_reaction, now.timestamp())  # what a redaction then withdraws
    link = video_url(ctx.ports.settings().video.base_url, pv.pair.video_name)
    if how == "video":
        return Reply("Thanks, noted: you met on video. That's the best way to build a connection "
                     "through a screen. Keep it up!")
    if how == "notyet":
        plain, html = said("Thanks for saying, noted. Weeks get away from everyone. Since you're both "
                           "here, why not pick a 20-minute slot now? Your call link: {link}", link=link)
        return Reply(plain, html)
    return _reply(await _video_nudge(ctx, s, view, pv),
                  f"Thanks, noted: you met by {how}. Next time, try video: seeing each other "
                  "makes a real difference.")


def register_pair_commands(registry: CommandRegistry) -> None:
    registry.command("plan", "show your backup plan for when a call fails", where=PAIR)(plan_show)
    # Capped where it enters (hub.core.limits.text_too_long): the plan is posted, pinned and mailed.
    registry.command("plan set", "save and pin your backup plan", Arg("text", kind="text", maximum=2000),
                     where=PAIR)(plan_set)
    registry.command("plan clear", "remove your backup plan", where=PAIR)(plan_clear)
    registry.command("dropped", "the call failed: your backup plan, quick fixes, and an email to you both",
                     where=PAIR)(dropped)
    registry.command("call", "your video link, with a nudge to use video", where=PAIR)(call)
    registry.command("icebreaker", f"another icebreaker (at most {ICEBREAKERS_PER_DAY} a day per room)",
                     where=frozenset({RoomKind.PAIR, RoomKind.LOUNGE}))(icebreaker)
    registry.command("met", "answer this week's check-in: did you meet, and how?",
                     Arg("how", kind="choice", choices=("video", "voice", "text", "notyet")), where=PAIR)(met)


