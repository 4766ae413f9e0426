"""Moderators' cohort commands: cohort create|list|show, add, remove, pair, unpair, pause, resume.

Each handler checks its input completely before changing anything, and runs
in the command's transaction (hub.inbound), so a refusal or an error leaves
the database and the outbox exactly as they were. People (WHO, MENTOR,
MENTEE) and the new cohort's SLUG are checked by their declared converters
(hub.core.converters) before a handler runs.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.core.cohorts import Who, parse_who, video_url
from hub.core.commands import Arg, CommandContext, CommandRegistry, Reply
from hub.core.content_format import escape_markdown
from hub.core.converters import to_slug, to_who
from hub.core.markup import echo
from hub.core.membership import MembershipState, MemberStatus, PairStatus, Role, RoomKind, RoomStatus
from hub.core.names import check_name
from hub.core.zones import find_zone
from hub.errors import ArgumentError, CommandError, UsageError
from hub.features.cohort_setup import create_cohort, get_cohort, require_cohort
from hub.features.members import add_member, remove_member
from hub.features.pairs import close_pair, find_open_pair, make_pair, set_pair_status
from hub.features.people import member_label, member_markdown
from hub.features.ports import Membership, Store
from hub.features.room_queue import Env
from hub.storage.models import (
    Cohort,
    HubRoom,
    Member,
    cohort_table,
    hub_room_table,
    member_table,
    pair_table,
    room_member_table,
)

__all__ = ["add", "cohort_create", "cohort_list", "cohort_show", "pair", "pause", "register_cohorts",
           "remove", "resume", "unpair"]

ROLE = Arg("role", kind="choice", choices=tuple(Role))

Ctx = CommandContext[Membership]


def _options(text: str | None, allowed: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for word in (text or "").split():
        key, sep, value = word.partition("=")
        if not sep or key.lower() not in allowed or not value:
            options = ", ".join(k + "=" for k in allowed)
            raise ArgumentError(f"unexpected {echo(word)} (options: {options})")
        out[key.lower()] = value
    return out


async def _count(s: AsyncSession, stmt: Any) -> int:
    return int((await s.execute(stmt)).scalar() or 0)


async def cohort_create(ctx: Ctx) -> Reply:
    s, env = ctx.ports.session, await ctx.ports.membership()
    slug, prefix = str(ctx.args["slug"]), ctx.prefix
    try:
        name = check_name(str(ctx.args["name"]), "NAME")
    except ValueError as e:
        raise ArgumentError(str(e)) from None
    opts = _options(ctx.args.get("options"), ("tz", "start", "weeks"))
    tz = opts.get("tz", env.settings.hub.timezone.key)
    if find_zone(tz) is None:
        raise UsageError(f"{echo('tz=' + tz)} is not a known time zone (like Europe/Berlin).")
    start: date | None = None
    if "start" in opts:
        try:
            start = date.fromisoformat(opts["start"])
        except ValueError:
            raise UsageError(f"{echo('start=' + opts['start'])} is not a date YYYY-MM-DD.") from None
    weeks = 12
    if "weeks" in opts:
        if not opts["weeks"].isdigit() or not 1 <= int(opts["weeks"]) <= 104:
            raise UsageError(f"{echo('weeks=' + opts['weeks'])} must be a whole number from 1 to 104.")
        weeks = int(opts["weeks"])
    if await get_cohort(s, slug) is not None:
        raise CommandError(f"Cohort `{slug}` exists already; `{prefix} cohort show {slug}`.")
    cohort = await create_cohort(s, env, slug=slug, name=name, timezone=tz, start=start,
                                    weeks=weeks, source="command")
    return Reply(
        f"Created cohort **{name}** (`{slug}`): starts {cohort.start_date}, {weeks} weeks, "
        f"time zone {tz}. Its space and lounge are being made; moderators are invited. "
        f"Next: `{prefix} add {slug} mentor|mentee WHO`."
    )


async def cohort_list(ctx: CommandContext[Store]) -> Reply:
    s, prefix = ctx.ports.session, ctx.prefix
    cohorts = (await s.execute(select(Cohort).order_by(cohort_table.c.slug))).scalars().all()
    if not cohorts:
        return Reply(f"No cohorts yet. `{prefix} cohort create SLUG \"NAME\"` makes one.")
    members: dict[int | None, int] = dict((await s.execute(
        select(member_table.c.cohort_id, func.count()).where(member_table.c.status == MemberStatus.ACTIVE)
        .group_by(member_table.c.cohort_id))).all())
    pairs: dict[int | None, int] = dict((await s.execute(
        select(pair_table.c.cohort_id, func.count()).where(pair_table.c.status != PairStatus.CLOSED)
        .group_by(pair_table.c.cohort_id))).all())
    lines = [f"{len(cohorts)} cohorts:"]
    for c in cohorts:
        lines.append(f"- `{c.slug}` **{escape_markdown(c.name)}**: starts {c.start_date}, "
                     f"{c.weeks} weeks, {members.get(c.id, 0)} members, {pairs.get(c.id, 0)} pairs")
    return Reply("\n".join(lines))


async def cohort_show(ctx: Ctx) -> Reply:
    s, env = ctx.ports.session, await ctx.ports.membership()
    cohort = await require_cohort(s, env, str(ctx.args["slug"]))
    assert cohort.id is not None
    roles: dict[str, int] = dict((await s.execute(
        select(member_table.c.role, func.count())
        .where((member_table.c.cohort_id == cohort.id) & (member_table.c.status == MemberStatus.ACTIVE))
        .group_by(member_table.c.role))).all())
    email_only = await _count(s, select(func.count()).select_from(member_table).where(
        (member_table.c.cohort_id == cohort.id) & (member_table.c.status == MemberStatus.ACTIVE)
        & member_table.c.matrix_id.is_(None)))
    by_status: dict[str, int] = dict((await s.execute(
        select(pair_table.c.status, func.count()).where(pair_table.c.cohort_id == cohort.id)
        .group_by(pair_table.c.status))).all())
    rooms = (await s.execute(
        select(HubRoom).where(hub_room_table.c.cohort_id == cohort.id))).scalars().all()
    pending = await _count(s, select(func.count()).select_from(room_member_table).join(
        hub_room_table, hub_room_table.c.id == room_member_table.c.room_pk).where(
        (hub_room_table.c.cohort_id == cohort.id)
        & room_member_table.c.state.in_((MembershipState.PENDING, MembershipState.INVITED))))

    def where(kind: str) -> str:
        for r in rooms:
            if r.kind == kind:
                return r.room_id or "being created"
        return "none"

    waiting = sum(1 for r in rooms
                  if r.kind == RoomKind.PAIR and r.room_id is None and r.status != RoomStatus.CLOSED)
    lines = [
        f"**{escape_markdown(cohort.name)}** (`{cohort.slug}`), from the {cohort.source}",
        f"Starts {cohort.start_date}, {cohort.weeks} weeks, time zone {cohort.timezone}",
        f"Space: {where('space')} · Lounge: {where('lounge')}",
        f"Members: {roles.get('mentor', 0)} mentors, {roles.get('mentee', 0)} mentees, "
        f"{roles.get('moderator', 0)} moderators ({email_only} by email only)",
        f"Pairs: {by_status.get('active', 0)} active, {by_status.get('paused', 0)} paused, "
        f"{by_status.get('closed', 0)} closed" + (f"; {waiting} rooms being created" if waiting else ""),
        f"Invitations not yet accepted: {pending}",
    ]
    return Reply("\n".join(lines))


async def add(ctx: Ctx) -> Reply:
    s, env = ctx.ports.session, await ctx.ports.membership()
    who: Who = ctx.args["who"]
    name_words: list[str] = []
    email: str | None = None
    for word in (ctx.args.get("name_and_email") or "").split(" "):
        if word.lower().startswith("email="):
            try:
                email = parse_who(word[6:]).email
            except ValueError:
                email = None
            if email is None:
                raise ArgumentError(f"{echo(word[6:])} is not an email address")
        elif word:
            name_words.append(word)
    if who.email and email and email != who.email:
        raise UsageError(f"WHO is already the address {who.email}; email= would be a second one.")
    name = " ".join(name_words)
    if name:
        try:
            check_name(name, "NAME")
        except ValueError as e:
            raise ArgumentError(str(e)) from None
    cohort = await require_cohort(s, env, str(ctx.args["slug"]))
    role = str(ctx.args["role"])
    member, outcome = await add_member(s, env, cohort, role, who, name=name, email=email)
    label = member_label(member)
    if outcome == "unchanged":
        return Reply(f"{label} ({who}) is already a {role} in `{cohort.slug}`; nothing changed.")
    if member.matrix_id:
        how = "invited to the cohort's space and lounge"
        if role == Role.MODERATOR:
            how += " with power level 50"
    else:
        how = ("email-only: gets a welcome email, the digest and announcements"
               if env.settings.email.enabled else "email-only (email is off in the config)")
    verb = "Added" if outcome == "added" else "Updated"
    return Reply(f"{verb} {label} as a {role} in `{cohort.slug}`: {how}.")


async def remove(ctx: Ctx) -> Reply:
    s, env = ctx.ports.session, await ctx.ports.membership()
    who: Who = ctx.args["who"]
    cohort = await require_cohort(s, env, str(ctx.args["slug"]))
    member, closed = await remove_member(s, env, cohort, who)
    extra = f"; {closed} pair{'s' if closed != 1 else ''} closed" if closed else ""
    return Reply(f"Removed {member_markdown(member)} from `{cohort.slug}`{extra}.")


async def _people(ctx: Ctx) -> tuple[AsyncSession, Env, Cohort, Who, Who]:
    s, env = ctx.ports.session, await ctx.ports.membership()
    cohort = await require_cohort(s, env, str(ctx.args["slug"]))
    return s, env, cohort, ctx.args["mentor"], ctx.args["mentee"]


async def pair(ctx: Ctx) -> Reply:
    s, env, cohort, mentor, mentee = await _people(ctx)
    p, created = await make_pair(s, env, cohort, mentor, mentee)
    a, b = await s.get(Member, p.mentor_id), await s.get(Member, p.mentee_id)
    assert a is not None and b is not None
    names = f"{member_markdown(a)} & {member_markdown(b)}"
    if not created:
        return Reply(f"{names} are already a pair in `{cohort.slug}`; nothing changed.")
    if a.matrix_id or b.matrix_id:
        room = "their private room is being made; they are invited and get the welcome"
    else:
        room = "neither has a Matrix id, so they get their video link by email"
    link = video_url(env.settings.video.base_url, p.video_name)
    return Reply(f"Paired {names} in `{cohort.slug}`: {room}. Video link: {link}")


async def unpair(ctx: Ctx) -> Reply:
    s, env, cohort, mentor, mentee = await _people(ctx)
    p = await find_open_pair(s, env, cohort, mentor, mentee)
    await close_pair(s, env, p)
    return Reply(f"Closed the pair {mentor} & {mentee} in `{cohort.slug}`. The hub says goodbye and "
                 "leaves their room; the history stays with them.")


async def pause(ctx: Ctx) -> Reply:
    s, env, cohort, mentor, mentee = await _people(ctx)
    p = await find_open_pair(s, env, cohort, mentor, mentee)
    if not await set_pair_status(s, env, p, PairStatus.PAUSED):
        return Reply(f"{mentor} & {mentee} are already paused; nothing changed.")
    return Reply(f"Paused {mentor} & {mentee}: no scheduled content until "
                 f"`{ctx.prefix} resume {cohort.slug} {mentor} {mentee}`.")


async def resume(ctx: Ctx) -> Reply:
    s, env, cohort, mentor, mentee = await _people(ctx)
    p = await find_open_pair(s, env, cohort, mentor, mentee)
    if not await set_pair_status(s, env, p, PairStatus.ACTIVE):
        return Reply(f"{mentor} & {mentee} are not paused; nothing changed.")
    return Reply(f"Resumed {mentor} & {mentee}: scheduled content starts again.")


def register_cohorts(registry: CommandRegistry) -> None:
    registry.command(
        "cohort create", "create a cohort with its space and lounge",
        Arg("slug", to=to_slug), Arg("name"), Arg("options", kind="rest", optional=True),
        moderator_only=True, private_answer=True,
    )(cohort_create)
    registry.command("cohort list", "all cohorts with their numbers", moderator_only=True,
                     private_answer=True)(cohort_list)
    registry.command("cohort show", "a cohort's rooms, people and pairs", Arg("slug"),
                     moderator_only=True, private_answer=True)(cohort_show)
    registry.command(
        "add", "add a person to a cohort (WHO is a Matrix id or an email address)",
        Arg("slug"), ROLE, Arg("who", to=to_who), Arg("name_and_email", kind="rest", optional=True),
        moderator_only=True, private_answer=True,
    )(add)
    registry.command("remove", "remove a person from a cohort (their pairs close)",
                     Arg("slug"), Arg("who", to=to_who), moderator_only=True, private_answer=True)(remove)
    for name, summary, handler in (
        ("pair", "pair a mentor with a mentee: their private room and video link", pair),
        ("unpair", "close a pair: goodbye in their room, then the hub leaves", unpair),
        ("pause", "stop scheduled content for a pair", pause),
        ("resume", "restart scheduled content for a paused pair", resume),
    ):
        registry.command(name, summary, Arg("slug"), Arg("mentor", to=to_who), Arg("mentee", to=to_who),
                         moderator_only=True, private_answer=True)(handler)
