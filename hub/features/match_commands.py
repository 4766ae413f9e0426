"""`!hub match` and `!hub rematch` (PRODUCT.md "Matching"): propose, accept, and a kind way out.

`!hub match SLUG` proposes mentors for the cohort's unpaired mentees
(hub.core.matching, from hub.features.matching_store) and keeps the numbered
lines; `!hub match SLUG accept [N...]` makes the pairs of those lines that are
still valid, through the same `membership.make_pairs` as `!hub pair` and the
roster import (rooms, welcomes, emails), and reports the stale ones.

`!hub rematch` is two commands under one name, told apart by who asks and what
follows: a participant's `!hub rematch [TEXT]` in their direct room reaches the
moderators as "NAME asks for a rematch" plus their own words (like `!hub
support`); a moderator's `!hub rematch SLUG MENTEE` closes the mentee's pair
with the content library's goodbye and proposes a new mentor, never a former
one. Both are counted (without the person) for `!hub report`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.core import content as ct
from hub.core.cohorts import display_name, parse_who, valid_slug
from hub.core.commands import Arg, CommandContext, CommandRegistry, Reply, RoomKind
from hub.core.content_format import escape_markdown
from hub.core.converters import to_slug
from hub.core.effects import Email, RoomMessage
from hub.core.markup import echo
from hub.core.matching import MatchInput, Proposal, allowed, proposal_lines, propose
from hub.core.membership import CLOSED_ROOM, OPEN_PAIR, Outgoing, Role
from hub.delivery.effect_writer import enqueue
from hub.errors import ArgumentError, CommandError
from hub.features.cohort_setup import get_cohort, require_cohort
from hub.features.matching_store import (
    CohortMatch,
    forget_proposal,
    load_cohort_match,
    load_proposal,
    save_proposal,
)
from hub.features.pairs import close_pair, make_pairs
from hub.features.participants import (
    content_cohort,
    content_pair,
    content_person,
    load_cohort_view,
    memberships,
    program_week_of,
    said,
)
from hub.features.people import find_member, member_markdown
from hub.features.ports import Configured, Effects, Membership, Moderators, Programmed, Timed
from hub.features.room_queue import Env, queue, queue_room_op
from hub.storage.models import (
    AuditEntry,
    Cohort,
    HubRoom,
    Member,
    Pair,
    RematchRequest,
    hub_room_table,
    pair_table,
)

__all__ = ["MAX_REMATCH_CHARS", "MAX_SHOWN", "MatchPorts", "match", "proposal_markdown",
           "register_match_commands", "rematch"]

MAX_SHOWN = 60  # proposal lines in one chat answer; `hub match --out` writes them all
MAX_REMATCH_CHARS = 2000
_PRIVATE_PLACES = frozenset({RoomKind.CONTROL, RoomKind.DIRECT})


class MatchPorts(Effects, Membership, Timed, Configured, Moderators, Programmed, Protocol):
    """The transaction, outbox and membership, time, settings, the moderators' room, the program."""


Ctx = CommandContext[MatchPorts]


def proposal_markdown(cm: CohortMatch, proposal: Proposal, prefix: str, *, shown: int = MAX_SHOWN) -> str:
    """The moderators' answer: numbered pairs with why, then the unmatched with a reason."""
    slug = cm.cohort.slug
    inp = cm.input
    if not inp.mentees:
        return f"Every mentee in `{slug}` has a pair; nothing to propose."
    # Only the lines shown are written out: a 2,000-mentee proposal is not all one message.
    shown_part = replace(proposal, pairs=proposal.pairs[:shown], unmatched=proposal.unmatched[:shown])
    lines = proposal_lines(shown_part, lambda k: escape_markdown(cm.label(k)), escape_markdown)
    pairs, unmatched = lines[:len(shown_part.pairs)], lines[len(shown_part.pairs):]
    out = [f"**Proposal for `{slug}`**: {len(proposal.pairs)} of {len(inp.mentees)} unpaired mentees "
           f"matched, {len(proposal.unmatched)} left unmatched."]
    out += pairs
    if len(proposal.pairs) > shown:
        out.append(f"... and {len(proposal.pairs) - shown} more lines (`hub match --cohort {slug} --out "
                   "FILE.csv` lists them all).")
    if unmatched:
        out.append("")
        out += [f"- {line.removeprefix('unmatched: ')}" for line in unmatched]
        if len(proposal.unmatched) > shown:
            out.append(f"- ... and {len(proposal.unmatched) - shown} more unmatched")
    if proposal.pairs:
        out += ["", f"Nothing changes until you accept: `{prefix} match {slug} accept` makes every pair, "
                    f"`{prefix} match {slug} accept 1 3` only those lines."]
    return "\n".join(out)


async def match(ctx: Ctx) -> Reply:
    """`!hub match SLUG [accept [N...]]`."""
    ports = ctx.ports
    s, env = ports.session, await ports.membership()
    cohort = await require_cohort(s, env, str(ctx.args["slug"]))
    action, numbers = ctx.args.get("accept"), str(ctx.args.get("lines") or "").split()
    if action is None and numbers:
        raise ArgumentError(f"unexpected {echo(numbers[0])}")
    if action == "accept":
        return Reply(await _accept(s, env, cohort, numbers))
    cm = await load_cohort_match(s, cohort, ports.clock.now())
    proposal = propose(cm.input)
    await save_proposal(s, cohort, proposal, ports.clock.now().timestamp())
    return Reply(proposal_markdown(cm, proposal, env.prefix))


async def _accept(s: AsyncSession, env: Env, cohort: Cohort, numbers: list[str]) -> str:
    lines = await load_proposal(s, cohort)
    if not lines:
        raise CommandError(f"There is no proposal for `{cohort.slug}` to accept; "
                           f"`{env.prefix} match {cohort.slug}` makes one.")
    chosen: list[int] = []
    for word in numbers:
        if not word.isdigit() or not 1 <= int(word) <= len(lines):
            raise ArgumentError(f"{echo(word)} is not a line of the proposal (1 to {len(lines)})")
        if int(word) not in chosen:
            chosen.append(int(word))
    chosen = chosen or list(range(1, len(lines) + 1))
    # Checked again now: people may have been paired, removed or changed since the proposal.
    cm = await load_cohort_match(s, cohort, env.clock.now())
    mentors = {m.key: m for m in cm.input.mentors}
    mentees = {e.key: e for e in cm.input.mentees}
    room = {k: m.room for k, m in mentors.items()}
    valid: list[tuple[int, int, int]] = []
    stale: list[int] = []
    for n in chosen:
        mentor_id, mentee_id = lines[n - 1]
        mentor, mentee = mentors.get(mentor_id), mentees.pop(mentee_id, None)
        if mentor is None or mentee is None or room[mentor_id] <= 0 or not allowed(
                mentor, mentee, cm.input.forbidden):
            stale.append(n)
            continue
        room[mentor_id] -= 1
        valid.append((n, mentor_id, mentee_id))
    results = await make_pairs(s, env, [(cohort, cm.people[a].who, cm.people[b].who) for _, a, b in valid])
    made: list[int] = []
    for (n, _, _), result in zip(valid, results, strict=True):
        (stale if isinstance(result, CommandError) else made).append(n)
    if len(chosen) == len(lines):
        await forget_proposal(s, cohort)
    out = []
    if made:
        out.append(f"Made {len(made)} pair{'s' if len(made) != 1 else ''} in `{cohort.slug}` (line"
                   f"{'s' if len(made) != 1 else ''} {_numbers(made)}): their rooms are being made, they "
                   "are invited and get the welcome; email-only people get their video link by email.")
    if stale:
        which = f"line{'s' if len(stale) != 1 else ''} {_numbers(sorted(stale))}"
        out.append(f"Not made, no longer valid: {which} "
                   "(someone was paired, removed or changed since the proposal). "
                   f"`{env.prefix} match {cohort.slug}` proposes again.")
    return "\n".join(out)


def _numbers(ns: list[int]) -> str:
    return ", ".join(str(n) for n in ns)


# -- rematch ------------------------------------------------------------------------------------


async def rematch(ctx: Ctx) -> Reply:
    """A participant's `!hub rematch [TEXT]`, or a moderator's `!hub rematch SLUG MENTEE`."""
    ports = ctx.ports
    text = str(ctx.args.get("text") or "")
    words = text.split()
    if ctx.is_moderator and len(words) == 2 and valid_slug(words[0].lower()) and await get_cohort(
            ports.session, words[0].lower()) is not None:
        return await _close_for_rematch(ctx, words[0].lower(), words[1])
    if ctx.room_kind is not RoomKind.DIRECT:
        p = ctx.prefix
        hint = f" Moderators: `{p} rematch SLUG MENTEE` in the control room." if ctx.is_moderator else ""
        raise CommandError(f"`{p} rematch` works in your direct room with the hub, so only the program "
                           f"team sees it; nothing was sent.{hint}")
    return await _ask_for_rematch(ctx, text)


async def _ask_for_rematch(ctx: Ctx, text: str) -> Reply:
    ports = ctx.ports
    control = ports.control_room
    if not control:
        raise CommandError("The moderators' room is not ready yet, so nothing was sent. "
                           "Please try again in a few minutes.")
    mine = [(m, c) for m, c in await memberships(ports.session, ctx.sender)
            if m.role in (Role.MENTOR, Role.MENTEE)]
    if not mine:
        raise CommandError("You're not a mentor or mentee in a cohort, so there is no pair to change.")
    member, cohort = mine[0]
    who = display_name(member.name, ctx.sender, None)
    template = "🔁 **{who} asks for a rematch** ({sender}, {cohort})" + (
        ":\n\n{text}" if text else ".") + ("\n\nTheir partner has not been told. "
                                           "`{prefix} rematch {cohort} MENTEE` closes a pair kindly.")
    plain, html = said(template, who=who, sender=ctx.sender, cohort=cohort.slug, text=text,
                       prefix=ctx.prefix)
    await enqueue(ports.outbox, ports.session, Outgoing(
        RoomMessage.notice(plain, html, room_id=control), "rematch-request", f"rematch:{ctx.event_id}"))
    ports.session.add(RematchRequest(cohort_id=cohort.id, source="participant",
                                     at=ports.clock.now().timestamp()))
    view = await load_cohort_view(ports.session, cohort.slug)
    me = view.member_by_matrix(ctx.sender) if view is not None else None
    if view is None or me is None:
        return Reply("Sent to the program team. Someone will get in touch with you; your partner isn't told.")
    partner = view.partner_of(ctx.sender)
    program = ports.program
    variables = ct.Variables(cohort=content_cohort(view), week=program_week_of(view, ports.clock.now()),
                             person=content_person(view, me),
                             partner=content_person(view, partner) if partner is not None else None)
    item = program.library.pick(ct.Kind.WELCOME, ct.Audience.PERSON, use="rematch")
    rendered = program.library.render(item, variables)
    return Reply(rendered.body, rendered.formatted_body)


async def _close_for_rematch(ctx: Ctx, slug: str, mentee_text: str) -> Reply:
    ports = ctx.ports
    s, env = ports.session, await ports.membership()
    if ctx.room_kind not in _PRIVATE_PLACES:
        # Its answer names people; unlike declared moderator commands it cannot be redirected.
        raise CommandError(f"`{env.prefix} rematch {slug} MENTEE` works in the control room; "
                           "nothing was changed.")
    try:
        who = parse_who(mentee_text)
    except ValueError:
        raise ArgumentError(f"{echo(mentee_text)} is neither a Matrix id nor an email address "
                            f"(`{env.prefix} rematch SLUG MENTEE`)") from None
    cohort = await require_cohort(s, env, slug)
    assert cohort.id is not None
    mentee = await find_member(s, env, cohort.id, who)
    if mentee is None or mentee.role != Role.MENTEE:
        raise CommandError(f"{who} is not a mentee in `{slug}`; nothing was changed.")
    pair = (await s.execute(select(Pair).where(
        (pair_table.c.mentee_id == mentee.id) & pair_table.c.status.in_(OPEN_PAIR)))).scalar_one_or_none()
    if pair is None:
        raise CommandError(f"{who} has no pair in `{slug}` to close; `{env.prefix} match {slug}` proposes "
                           "a mentor.")
    mentor = await s.get(Member, pair.mentor_id)
    assert mentor is not None
    await _goodbye(ctx, s, env, cohort, pair)
    await close_pair(s, env, pair)
    now = ports.clock.now()
    s.add(RematchRequest(cohort_id=cohort.id, source="moderator", at=now.timestamp()))
    # Not a declared moderator command (the name is shared with the participants'), so the
    # runner does not audit it: the action is recorded here like theirs.
    s.add(AuditEntry(at=now.timestamp(), actor=ctx.sender, room_id=ctx.room_id,
                     command=f"{env.prefix} rematch {slug} {who}"[:1000], outcome="ok"))
    await s.flush()
    cm = await load_cohort_match(s, cohort, now)
    only = MatchInput(tuple(e for e in cm.input.mentees if e.key == mentee.id), cm.input.mentors,
                      cm.input.forbidden)
    proposal = propose(only)
    await save_proposal(s, cohort, proposal, now.timestamp())
    closed = (f"Closed the pair {member_markdown(mentor)} & {member_markdown(mentee)} in `{slug}` "
              "with a kind goodbye to both; the hub leaves their room.")
    cm.input = only
    return Reply(f"{closed}\n\n{proposal_markdown(cm, proposal, env.prefix)}")


async def _goodbye(ctx: Ctx, s: AsyncSession, env: Env, cohort: Cohort, pair: Pair) -> None:
    """The content library's goodbye to both, before `close_pair`.

    In the pair room it is queued under the same dedupe key as close_pair's plain goodbye,
    so that one is then a no-op: the room gets exactly one goodbye, this kind one.
    """
    view = await load_cohort_view(s, cohort.slug)
    pv = view.pairs.get(f"pair:{pair.id}") if view is not None else None
    if view is None or pv is None:
        return
    program = ctx.ports.program
    variables = ct.Variables(cohort=content_cohort(view), week=program_week_of(view, env.clock.now()),
                             pair=content_pair(view, pv, env.settings.video.base_url))
    item = program.library.pick(ct.Kind.WELCOME, ct.Audience.PAIR, use="goodbye")
    rendered = program.library.render(item, variables)
    key = f"pair:{pair.id}"
    room = (await s.execute(select(HubRoom).where(hub_room_table.c.key == key))).scalar_one_or_none()
    if room is not None and room.status not in CLOSED_ROOM and room.room_id is not None:
        goodbye = RoomMessage.notice(rendered.body, rendered.formatted_body, room_key=room.key)
        await queue_room_op(s, env, room, goodbye,
                               kind="pair-goodbye", dedupe_key=f"goodbye:{room.key}:{room.generation}")
    for person in (pv.mentor, pv.mentee):
        address = view.address(person)
        if person.matrix_id is None and address and env.settings.email.enabled:
            mail = Email(to=address, subject=rendered.subject, text=rendered.email_text,
                         html=rendered.email_html)
            await queue(s, env, Outgoing(mail, "rematch-goodbye", f"rematch-goodbye:{pair.id}:{person.id}"))


def register_match_commands(registry: CommandRegistry) -> None:
    registry.command(
        "match", "propose mentors for a cohort's unpaired mentees; accept makes the pairs of the last "
                 "proposal (all, or lines N...)",
        Arg("slug", to=to_slug), Arg("accept", kind="choice", choices=("accept",), optional=True),
        Arg("lines", kind="rest", optional=True), moderator_only=True, private_answer=True,
    )(match)
    registry.command(
        "rematch", "ask the program team privately for a different mentor or mentee (only these words "
                   "reach them); moderators: rematch SLUG MENTEE closes the pair kindly and proposes anew",
        Arg("text", kind="text", optional=True, maximum=MAX_REMATCH_CHARS),
    )(rematch)
