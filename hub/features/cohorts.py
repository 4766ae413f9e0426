"""Moderators' cohort commands: cohort create|list|show, add, remove, pair, unpair, pause, resume.

Each handler checks its input completely before changing anything, and runs
in the command's transaction (hub.inbound), so a refusal or an error leaves
the database and the outbox exactly as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.core.cohorts import Who, parse_who, valid_slug, video_url
from hub.core.commands import Arg, CommandContext, CommandRegistry, Handler, Reply
from hub.core.content_format import escape_markdown
from hub.core.markup import echo
from hub.core.membership import PairStatus
from hub.core.names import check_name
from hub.core.zones import find_zone
from hub.errors import CommandError, UsageError
from hub.features.cohort_setup import create_cohort, get_cohort, require_cohort
from hub.features.members import add_member, remove_member
from hub.features.pairs import close_pair, find_open_pair, make_pair, set_pair_status
from hub.features.people import member_label, member_markdown
from hub.features.room_queue import Env, load_env
from hub.inbound import Ports
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

__all__ = ["register_cohorts"]

ROLE = Arg("role", kind="choice", choices=("mentor", "mentee", "moderator"))


async def _env(ctx: CommandContext) -> tuple[AsyncSession, Env]:
    ports: Ports = ctx.services
    settings = ports.app.settings
    return ports.session, await load_env(ports.session, ports.outbox, ports.clock, settings)


def _usage(registry: CommandRegistry, name: str) -> str:
    spec = registry.get(name)
    return f"Usage: `{spec.usage(registry.prefix)}`" if spec else ""


def _who(registry: CommandRegistry, name: str, value: str) -> Who:
    try:
        return parse_who(value)
    except ValueError:
        spec = registry.get(name)
        usage = f" Usage: `{spec.usage(registry.prefix)}`" if spec else ""
        # parse_who's own message repeats the value as typed; the reply quotes it as code.
        what = ("is not a Matrix id (like @name:example.org)" if value.strip().startswith("@")
                else "is neither a Matrix id (@name:server) nor an email address")
        raise UsageError(f"{echo(value)} {what}.{usage}") from None


def _options(
    registry: CommandRegistry, name: str, text: str | None, allowed: tuple[str, ...]
) -> dict[str, str]:
    spec = registry.get(name)
    usage = f" Usage: `{spec.usage(registry.prefix)}`" if spec else ""
    out: dict[str, str] = {}
    for word in (text or "").split():
        key, sep, value = word.partition("=")
        if not sep or key.lower() not in allowed or not value:
            options = ", ".join(k + "=" for k in allowed)
            raise UsageError(f"unexpected {echo(word)} (options: {options}).{usage}")
        out[key.lower()] = value
    return out


async def _count(s: AsyncSession, stmt: Any) -> int:
    return int((await s.execute(stmt)).scalar() or 0)


def register_cohorts(registry: CommandRegistry) -> None:
    prefix = registry.prefix

    @registry.command(
        "cohort create", "create a cohort with its space and lounge",
        Arg("slug"), Arg("name"), Arg("options", kind="rest", optional=True),
        moderator_only=True, private_answer=True,
    )
    async def cohort_create(ctx: CommandContext) -> Reply:
        s, env = await _env(ctx)
        slug = str(ctx.args["slug"]).lower()
        if not valid_slug(slug):
            raise UsageError(f"{echo(slug)} is not a cohort slug: lowercase letters, digits and -, "
                             f"like winter-2027. {_usage(registry, 'cohort create')}")
        try:
            name = check_name(str(ctx.args["name"]), "NAME")
        except ValueError as e:
            raise UsageError(f"{e}. {_usage(registry, 'cohort create')}") from None
        opts = _options(registry, "cohort create", ctx.args.get("options"), ("tz", "start", "weeks"))
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

    @registry.command("cohort list", "all cohorts with their numbers", moderator_only=True,
                      private_answer=True)
    async def cohort_list(ctx: CommandContext) -> Reply:
        s, _ = await _env(ctx)
        cohorts = (await s.execute(select(Cohort).order_by(cohort_table.c.slug))).scalars().all()
        if not cohorts:
            return Reply(f"No cohorts yet. `{prefix} cohort create SLUG \"NAME\"` makes one.")
        members: dict[int | None, int] = dict((await s.execute(
            select(member_table.c.cohort_id, func.count()).where(member_table.c.status == "active")
            .group_by(member_table.c.cohort_id))).all())
        pairs: dict[int | None, int] = dict((await s.execute(
            select(pair_table.c.cohort_id, func.count()).where(pair_table.c.status != "closed")
            .group_by(pair_table.c.cohort_id))).all())
        lines = [f"{len(cohorts)} cohorts:"]
        for c in cohorts:
            lines.append(f"- `{c.slug}` **{escape_markdown(c.name)}**: starts {c.start_date}, "
                         f"{c.weeks} weeks, {members.get(c.id, 0)} members, {pairs.get(c.id, 0)} pairs")
        return Reply("\n".join(lines))

    @registry.command("cohort show", "a cohort's rooms, people and pairs", Arg("slug"),
                      moderator_only=True, private_answer=True)
    async def cohort_show(ctx: CommandContext) -> Reply:
        s, env = await _env(ctx)
        cohort = await require_cohort(s, env, str(ctx.args["slug"]))
        assert cohort.id is not None
        roles: dict[str, int] = dict((await s.execute(
            select(member_table.c.role, func.count())
            .where((member_table.c.cohort_id == cohort.id) & (member_table.c.status == "active"))
            .group_by(member_table.c.role))).all())
        email_only = await _count(s, select(func.count()).select_from(member_table).where(
            (member_table.c.cohort_id == cohort.id) & (member_table.c.status == "active")
            & member_table.c.matrix_id.is_(None)))
        by_status: dict[str, int] = dict((await s.execute(
            select(pair_table.c.status, func.count()).where(pair_table.c.cohort_id == cohort.id)
            .group_by(pair_table.c.status))).all())
        rooms = (await s.execute(
            select(HubRoom).where(hub_room_table.c.cohort_id == cohort.id))).scalars().all()
        pending = await _count(s, select(func.count()).select_from(room_member_table).join(
            hub_room_table, hub_room_table.c.id == room_member_table.c.room_pk).where(
            (hub_room_table.c.cohort_id == cohort.id)
            & room_member_table.c.state.in_(("pending", "invited"))))

        def where(kind: str) -> str:
            for r in rooms:
                if r.kind == kind:
                    return r.room_id or "being created"
            return "none"

        waiting = sum(1 for r in rooms if r.kind == "pair" and r.room_id is None and r.status != "closed")
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

    @registry.command(
        "add", "add a person to a cohort (WHO is a Matrix id or an email address)",
        Arg("slug"), ROLE, Arg("who"), Arg("name_and_email", kind="rest", optional=True),
        moderator_only=True, private_answer=True,
    )
    async def add(ctx: CommandContext) -> Reply:
        s, env = await _env(ctx)
        who = _who(registry, "add", str(ctx.args["who"]))
        name_words: list[str] = []
        email: str | None = None
        for word in (ctx.args.get("name_and_email") or "").split(" "):
            if word.lower().startswith("email="):
                try:
                    email = parse_who(word[6:]).email
                except ValueError:
                    email = None
                if email is None:
                    raise UsageError(f"{echo(word[6:])} is not an email address. {_usage(registry, 'add')}")
            elif word:
                name_words.append(word)
        if who.email and email and email != who.email:
            raise UsageError(f"WHO is already the address {who.email}; email= would be a second one.")
        name = " ".join(name_words)
        if name:
            try:
                check_name(name, "NAME")
            except ValueError as e:
                raise UsageError(f"{e}. {_usage(registry, 'add')}") from None
        cohort = await require_cohort(s, env, str(ctx.args["slug"]))
        role = str(ctx.args["role"])
        member, outcome = await add_member(s, env, cohort, role, who, name=name, email=email)
        label = member_label(member)
        if outcome == "unchanged":
            return Reply(f"{label} ({who}) is already a {role} in `{cohort.slug}`; nothing changed.")
        if member.matrix_id:
            how = "invited to the cohort's space and lounge"
            if role == "moderator":
                how += " with power level 50"
        else:
            how = ("email-only: gets a welcome email, the digest and announcements"
                   if env.settings.email.enabled else "email-only (email is off in the config)")
        verb = "Added" if outcome == "added" else "Updated"
        return Reply(f"{verb} {label} as a {role} in `{cohort.slug}`: {how}.")

    @registry.command("remove", "remove a person from a cohort (their pairs close)",
                      Arg("slug"), Arg("who"), moderator_only=True, private_answer=True)
    async def remove(ctx: CommandContext) -> Reply:
        s, env = await _env(ctx)
        who = _who(registry, "remove", str(ctx.args["who"]))
        cohort = await require_cohort(s, env, str(ctx.args["slug"]))
        member, closed = await remove_member(s, env, cohort, who)
        extra = f"; {closed} pair{'s' if closed != 1 else ''} closed" if closed else ""
        return Reply(f"Removed {member_markdown(member)} from `{cohort.slug}`{extra}.")

    def _pair_cmd(name: str, summary: str) -> Callable[[Handler], Handler]:
        return registry.command(name, summary, Arg("slug"), Arg("mentor"), Arg("mentee"),
                                moderator_only=True, private_answer=True)

    async def _people(ctx: CommandContext, name: str) -> tuple[AsyncSession, Env, Cohort, Who, Who]:
        s, env = await _env(ctx)
        mentor = _who(registry, name, str(ctx.args["mentor"]))
        mentee = _who(registry, name, str(ctx.args["mentee"]))
        cohort = await require_cohort(s, env, str(ctx.args["slug"]))
        return s, env, cohort, mentor, mentee

    @_pair_cmd("pair", "pair a mentor with a mentee: their private room and video link")
    async def pair(ctx: CommandContext) -> Reply:
        s, env, cohort, mentor, mentee = await _people(ctx, "pair")
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

    @_pair_cmd("unpair", "close a pair: goodbye in their room, then the hub leaves")
    async def unpair(ctx: CommandContext) -> Reply:
        s, env, cohort, mentor, mentee = await _people(ctx, "unpair")
        p = await find_open_pair(s, env, cohort, mentor, mentee)
        await close_pair(s, env, p)
        return Reply(f"Closed the pair {mentor} & {mentee} in `{cohort.slug}`. The hub says goodbye and "
                     "leaves their room; the history stays with them.")

    @_pair_cmd("pause", "stop scheduled content for a pair")
    async def pause(ctx: CommandContext) -> Reply:
        s, env, cohort, mentor, mentee = await _people(ctx, "pause")
        p = await find_open_pair(s, env, cohort, mentor, mentee)
        if not await set_pair_status(s, env, p, PairStatus.PAUSED):
            return Reply(f"{mentor} & {mentee} are already paused; nothing changed.")
        return Reply(f"Paused {mentor} & {mentee}: no scheduled content until "
                     f"`{prefix} resume {cohort.slug} {mentor} {mentee}`.")

    @_pair_cmd("resume", "restart scheduled content for a paused pair")
    async def resume(ctx: CommandContext) -> Reply:
        s, env, cohort, mentor, mentee = await _people(ctx, "resume")
        p = await find_open_pair(s, env, cohort, mentor, mentee)
        if not await set_pair_status(s, env, p, PairStatus.ACTIVE):
            return Reply(f"{mentor} & {mentee} are not paused; nothing changed.")
        return Reply(f"Resumed {mentor} & {mentee}: scheduled content starts again.")

    del cohort_create, cohort_list, cohort_show, add, remove, pair, unpair, pause, resume
