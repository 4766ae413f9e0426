"""A person's own commands: private check-in and reflection, asking for help, email, snooze.

`!hub checkin` scores are stored without the person (cohort, week, score),
so nobody can ever list who said what; a low score brings the private
reflection guide and nothing else. `!hub support` is the one door from a
private room to the moderators, and it carries only the words typed after it.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.core import content as ct
from hub.core.cohorts import display_name, is_email
from hub.core.commands import Arg, CommandContext, CommandRegistry, Reply, RoomKind
from hub.core.effects import Email, Outgoing, RoomMessage
from hub.core.markup import echo
from hub.delivery.effect_writer import enqueue
from hub.email.payload import normalize_address
from hub.errors import ArgumentError, CommandError
from hub.features.participants import (
    code_hash,
    content_cohort,
    content_person,
    get_pref,
    load_cohort_view,
    memberships,
    program_week_of,
    said,
)
from hub.features.ports import Configured, Effects, Moderators, Programmed, Store, Timed
from hub.features.reactions import answering, drop_score, remember
from hub.storage.models import CommandUse, PrivateCheckin
from hub.storage.models import command_use_table as U

__all__ = ["CONFIRM_PER_DAY", "CONFIRM_WITHIN", "LOW_SCORE", "MAX_SNOOZE_DAYS", "MAX_SUPPORT_CHARS",
           "EmailPrefs", "Guide", "PersonPorts", "Prefs", "Support", "checkin", "email",
           "record_private_checkin", "reflect", "register_person_commands", "snooze", "support", "unsnooze"]

LOW_SCORE = 2  # a score at or below this brings the private reflection guide
MAX_SNOOZE_DAYS = 60
CONFIRM_WITHIN = timedelta(hours=48)  # how long the code mailed to a new address stays valid
DIRECT = frozenset({RoomKind.DIRECT})
# `!hub email ADDRESS` mails whatever address it is given: without a limit it is a
# way to make the hub spam a third party. Per person and per address, a day.
CONFIRM_PER_DAY = 3
MAX_SUPPORT_CHARS = 2000  # a request the control room can always receive (a Matrix event is 64 KiB)
_DAY = 86400.0


class Prefs(Store, Timed, Protocol):
    """Snoozing reads and writes a preference row at the current time, nothing else."""


class Guide(Store, Timed, Programmed, Protocol):
    """A check-in is stored; the reflection guide is rendered from the program's library."""


class Support(Effects, Moderators, Protocol):
    """A support request is one notice queued for the moderators' room."""


class EmailPrefs(Effects, Timed, Configured, Protocol):
    """An email preference, or a new address and the confirmation mail queued for it."""


class PersonPorts(Guide, Support, EmailPrefs, Protocol):
    """Everything a person's own commands use."""


async def _use_daily(session: AsyncSession, keys: list[str], now: datetime, limit: int) -> float | None:
    """Count one use under every key, unless one of them had `limit` uses in the last day.

    Returns None when counted, else the time (UNIX) the oldest use in the full
    key's day expires. Kept in the database, so a restart does not reset it.
    """
    since = now.timestamp() - _DAY
    await session.execute(delete(U).where(U.c.key.in_(keys) & (U.c.at <= since)))
    rows = (await session.execute(
        select(U.c.key, func.count(), func.min(U.c.at)).where(U.c.key.in_(keys)).group_by(U.c.key)
    )).all()
    full = [oldest for _, n, oldest in rows if n >= limit]
    if full:
        return float(max(full)) + _DAY
    session.add_all([CommandUse(key=k, at=now.timestamp()) for k in keys])
    return None


async def record_private_checkin(s: AsyncSession, cohort_id: int | None, week: int, score: int,
                                 now: float) -> None:
    """Store a private 1-5 score, without the person.

    `!hub checkin` and an email answer link (hub.features.answers) both call this.
    """
    s.add(PrivateCheckin(cohort_id=cohort_id, week=week, score=score, at=now))


async def _guide(ctx: CommandContext[Guide]) -> Reply:
    """The private reflection guide, rendered for the person asking."""
    ports = ctx.ports
    program = ports.program
    mine = [(m, c) for m, c in await memberships(ports.session, ctx.sender) if m.role in ("mentor", "mentee")]
    if not mine:
        raise CommandError("You're not a mentor or mentee in a cohort, so there's no reflection guide "
                           "for you here.")
    view = await load_cohort_view(ports.session, mine[0][1].slug)
    member = view.member_by_matrix(ctx.sender) if view is not None else None
    if view is None or member is None:
        raise CommandError("Your cohort could not be found; please try again later.")
    partner = view.partner_of(ctx.sender)
    variables = ct.Variables(
        cohort=content_cohort(view), week=program_week_of(view, ports.clock.now()),
        person=content_person(view, member),
        partner=content_person(view, partner) if partner is not None else None)
    item = program.library.pick(ct.Kind.REFLECTION, ct.Audience.PERSON, use="guide")
    rendered = program.library.render(item, variables)
    return Reply(rendered.body, rendered.formatted_body)


async def checkin(ctx: CommandContext[Guide]) -> Reply:
    ports = ctx.ports
    now = ports.clock.now()
    mine = await memberships(ports.session, ctx.sender)
    cohort = next((c for m, c in mine if m.role in ("mentor", "mentee")), None)
    week = 0
    if cohort is not None:
        view = await load_cohort_view(ports.session, cohort.slug)
        week = program_week_of(view, now) if view is not None else 0
    cohort_id = cohort.id if cohort else None
    score = int(ctx.args["score"])
    by_reaction = answering()
    if by_reaction is not None:
        # Answered by reaction or reply to a prompt (hub.features.reactions): that prompt's
        # cohort and week, and a later answer replaces the earlier one instead of adding to it.
        cohort_id, week = by_reaction.cohort_id, by_reaction.week
        replaced = await remember(ports.session, by_reaction, now.timestamp())
        if replaced is not None:
            await drop_score(ports.session, cohort_id, week, int(replaced))
    await record_private_checkin(ports.session, cohort_id, week, score, now.timestamp())
    if score <= LOW_SCORE:
        return await _guide(ctx)
    return Reply("Thanks, noted privately. It isn't shown to your partner or the program team. "
                 f"If things change, `{ctx.prefix} reflect` opens a short guide any time.")


async def reflect(ctx: CommandContext[Guide]) -> Reply:
    return await _guide(ctx)


async def support(ctx: CommandContext[Support]) -> Reply:
    ports = ctx.ports
    control = ports.control_room
    if not control:
        raise CommandError("The moderators' room is not ready yet, so nothing was sent. "
                           "Please try again in a few minutes.")
    mine = await memberships(ports.session, ctx.sender)
    who = display_name(mine[0][0].name if mine else None, ctx.sender, None)
    cohorts = ", ".join(sorted({c.slug for _, c in mine})) or "no cohort"
    plain, html = said("🆘 **Support request** from {who} ({sender}, {cohorts}):\n\n{text}\n\n"
                       "Please contact them directly. Their partner has not been told.",
                       who=who, sender=ctx.sender, cohorts=cohorts, text=str(ctx.args["text"]))
    await enqueue(ports.outbox, ports.session, Outgoing(RoomMessage.notice(plain, html, room_id=control),
                                                        "support", f"support:{ctx.event_id}"))
    return Reply("Sent to the moderators, just those words. Someone will get in touch with you; "
                 "your partner isn't told.")


async def email(ctx: CommandContext[EmailPrefs]) -> Reply:
    ports = ctx.ports
    now = ports.clock.now()
    setting, code = str(ctx.args["setting"]), ctx.args.get("code")
    word = setting.lower()
    if word != "confirm" and code is not None:
        raise ArgumentError(f"unexpected {echo(code)}")
    pref = await get_pref(ports.session, ctx.sender, now, create=True)
    assert pref is not None
    if word in ("off", "weekly", "on"):
        pref.email_mode, pref.updated_at = ("all" if word == "on" else word), now.timestamp()
        return Reply({
            "off": "Done: the hub sends you no more digests, announcements or webinar emails. "
                   "(A backup plan someone asks for with `!hub dropped` still reaches you.) "
                   f"`{ctx.prefix} email on` undoes it.",
            "weekly": "Done: by email you now get only the weekly digest.",
            "on": "Done: you get the weekly digest, announcements and webinar invitations by email.",
        }[word].replace("!hub", ctx.prefix))
    if word == "confirm":
        if not code:
            raise ArgumentError("the code is missing")
        age = now.timestamp() - pref.pending_at if pref.pending_at is not None else None
        fresh = age is not None and age <= CONFIRM_WITHIN.total_seconds()
        if not pref.pending_email or not fresh or pref.pending_code != code_hash(str(code)):
            raise CommandError("That code doesn't match a recent address change; nothing changed. "
                               f"Send `{ctx.prefix} email ADDRESS` again for a new code.")
        pref.email, pref.pending_email, pref.pending_code, pref.pending_at = (
            pref.pending_email, None, None, None)
        pref.updated_at = now.timestamp()
        return Reply(f"Confirmed: the hub's email now goes to {pref.email}.")
    if not is_email(setting):
        raise ArgumentError(f"{echo(setting)} is not off, weekly, on or an email address")
    settings = ctx.ports.settings()
    if not settings.email.enabled:
        raise CommandError("Email is turned off on this hub, so there is nothing to change.")
    address = normalize_address(setting)
    again = await _use_daily(ports.session, [f"email-confirm:person:{ctx.sender}",
                                             f"email-confirm:address:{address}"], now, CONFIRM_PER_DAY)
    if again is not None:
        raise CommandError(
            f"I send at most {CONFIRM_PER_DAY} confirmation emails a day per person and per "
            f"address, and that limit is reached; nothing was sent or changed. You can ask "
            f"again after {datetime.fromtimestamp(again, now.tzinfo):%H:%M} UTC.")
    # The new address is used only once its owner proves it by sending back the mailed code.
    new_code = secrets.token_hex(4).upper()
    pref.pending_email, pref.pending_code, pref.pending_at = address, code_hash(new_code), now.timestamp()
    pref.updated_at = now.timestamp()
    text = (f"Someone asked the mentoring hub to send its email to this address.\n\n"
            f"If that was you, send this in any chat with the hub (within 48 hours):\n\n"
            f"    {ctx.prefix} email confirm {new_code}\n\n"
            "If it wasn't you, ignore this message: nothing changes.")
    mail = Email(to=address, subject="Confirm your new address for the mentoring hub", text=text)
    await enqueue(ports.outbox, ports.session,
                  Outgoing(mail, "email-confirm", f"email-confirm:{ctx.event_id}"))
    return Reply(f"Almost done: I've emailed a code to {address}. Send `{ctx.prefix} email confirm CODE` "
                 "here to start using it; until then mail keeps going to your current address. "
                 f"(At most {CONFIRM_PER_DAY} such emails a day per person and per address.)")


async def snooze(ctx: CommandContext[Prefs]) -> Reply:
    ports = ctx.ports
    now = ports.clock.now()
    pref = await get_pref(ports.session, ctx.sender, now, create=True)
    assert pref is not None
    until = now + timedelta(days=int(ctx.args["days"]))
    pref.snooze_until, pref.updated_at = until.timestamp(), now.timestamp()
    return Reply(f"Snoozed until {until:%A %d %B, %H:%M} UTC: no private check-ins from me until then. "
                 f"Your pair room still gets its weekly prompts (they're for you both). "
                 f"`{ctx.prefix} unsnooze` ends it early.")


async def unsnooze(ctx: CommandContext[Prefs]) -> Reply:
    ports = ctx.ports
    now = ports.clock.now()
    pref = await get_pref(ports.session, ctx.sender, now)
    if pref is None or pref.snooze_until is None or pref.snooze_until <= now.timestamp():
        return Reply("You weren't snoozed; nothing changed.")
    pref.snooze_until, pref.updated_at = None, now.timestamp()
    return Reply("Welcome back: nudges to you are on again.")


def register_person_commands(registry: CommandRegistry) -> None:
    registry.command("checkin", "a private 1-5 rating of how your mentoring relationship feels",
                     Arg("score", kind="int", minimum=1, maximum=5), where=DIRECT)(checkin)
    registry.command("reflect", "the private reflection guide", where=DIRECT)(reflect)
    registry.command("support", "ask the moderators for help (only these words reach them)",
                     Arg("text", kind="text", maximum=MAX_SUPPORT_CHARS), where=DIRECT)(support)
    registry.command("email", "email preferences: off, weekly (digest only), on, a new ADDRESS, "
                     "or confirm CODE", Arg("setting"), Arg("code", optional=True))(email)
    registry.command("snooze", f"pause nudges to you for DAYS days (at most {MAX_SNOOZE_DAYS})",
                     Arg("days", kind="int", minimum=1, maximum=MAX_SNOOZE_DAYS))(snooze)
    registry.command("unsnooze", "end a snooze")(unsnooze)


