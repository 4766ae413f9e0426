"""`!hub digest SLUG preview|send` and `hub digest preview` (the CLI).

`send` sends *this week's* digest now, under the same calendar item the
scheduler uses (``digest:SLUG:wN``): whoever has had it is skipped, and the
scheduled run later that week skips whoever got it from `send`. So a digest
reaches each person at most once per week, however it was triggered.

`preview` shows the lounge version to moderators (in the control room); the CLI
renders any week for the lounge or for one person, and changes nothing: its
transaction is rolled back, subscriber handles made for the preview included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from hub.clock import SystemClock
from hub.config import Settings
from hub.core.calendar import CalendarItem, ItemKind
from hub.core.cohorts import is_email
from hub.core.commands import Arg, CommandContext, CommandRegistry, Reply, RoomKind
from hub.core.effects import Outgoing, RoomMessage
from hub.core.markup import echo
from hub.delivery.effect_writer import enqueue
from hub.delivery.outbox import EMAIL, MATRIX, Outbox
from hub.email.payload import normalize_address
from hub.errors import CommandError, HubError
from hub.features.digest import DigestService
from hub.features.participants import load_cohort_view, program_week_of
from hub.features.ports import Digesting, Effects, Moderators, Programmed, Timed
from hub.features.program import ProgramService
from hub.storage.db import open_database

__all__ = ["DigestPorts", "PreviewResult", "digest", "preview", "register_digest_commands"]


class DigestPorts(Effects, Timed, Moderators, Programmed, Digesting, Protocol):
    """What `!hub digest` uses: the transaction and outbox, time, the moderators' room, the
    program (whose calendar item `send` reuses) and the digest."""


Ctx = CommandContext[DigestPorts]


async def digest(ctx: Ctx) -> Reply:
    ports = ctx.ports
    s, now = ports.session, ports.clock.now()
    service, program = ports.digest, ports.program
    slug = str(ctx.args["slug"]).lower()
    view = await load_cohort_view(s, slug)
    if view is None:
        raise CommandError(f"There is no cohort {echo(slug)}. `{ctx.prefix} cohort list` shows them.")
    week = program_week_of(view, now)
    if ctx.args["action"] == "preview":
        ed = await service.edition(s, view, week or 1, now, preview=True)
        post = ed.builder.lounge_post(ed.issue)
        if ctx.room_kind is RoomKind.CONTROL or not ports.control_room:
            return Reply(post.body, post.formatted_body)
        room = ports.control_room
        await enqueue(ports.outbox, s, Outgoing(RoomMessage(post.content(), room_id=room), "digest-preview",
                                                f"digest-preview:{ctx.event_id}"))
        return Reply("The preview is in the moderators' room.")
    if week == 0:
        raise CommandError(f"`{slug}` has not started yet (it starts {view.cohort.start_date}); "
                           "nothing was sent. `preview` shows what week 1 will look like.")
    item = CalendarItem(key=f"{ItemKind.DIGEST.value}:{slug}:w{week}", kind=ItemKind.DIGEST,
                        cohort=slug, week=week, due=now)
    targets = await program.targets_of(item, now)
    rows = await program.rows(s, item, targets, source="send")
    await ports.outbox.enqueue_many(s, rows)
    posted = any(r["channel"] == MATRIX and r["kind"] == "digest" for r in rows)
    lounge = "the lounge and " if posted else ""
    emails = sum(1 for r in rows if r["channel"] == EMAIL)
    if not rows:
        return Reply(f"Week {week}'s digest for `{slug}` has already gone to everyone; nothing was sent.")
    return Reply(f"Sent week {week}'s digest for `{slug}` to {lounge}{emails} "
                 f"{'person' if emails == 1 else 'people'} by email.")


def register_digest_commands(registry: CommandRegistry) -> None:
    registry.command("digest", "preview this week's digest (lounge version) or send it now",
                     Arg("slug"), Arg("action", kind="choice", choices=("preview", "send")),
                     moderator_only=True, private_answer=True)(digest)


@dataclass(frozen=True)
class PreviewResult:
    subject: str
    text: str
    html: str


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>"
            f"<body>{body}</body></html>\n")


async def preview(settings: Settings, slug: str, *, week: int | None = None,
                  who: str | None = None) -> PreviewResult:
    """Render a digest without sending or storing anything (`hub digest preview`)."""
    db = await open_database(settings.database.url)
    try:
        clock = SystemClock()
        program = ProgramService(db=db, outbox=Outbox(db, clock), clock=clock, settings=lambda: settings)
        service = DigestService(program, control_room=lambda: None)
        async with db.session() as s:
            try:
                view = await load_cohort_view(s, slug.lower())
                if view is None:
                    raise HubError(f"there is no cohort {echo(slug)}")
                now = clock.now()
                n = week if week is not None else (program_week_of(view, now) or 1)
                if not 1 <= n <= view.cohort.weeks:
                    raise HubError(f"--week must be between 1 and {view.cohort.weeks}")
                ed = await service.edition(s, view, n, now, preview=True)
                if who is None:
                    post = ed.builder.lounge_post(ed.issue)
                    subject = ed.builder.subject(ed.issue)
                    return PreviewResult(subject, post.body, _page(subject, post.formatted_body))
                wanted = normalize_address(who) if is_email(who) else who
                member = next((m for m in view.members.values()
                               if wanted in (m.matrix_id, view.address(m), m.email)), None)
                if member is None:
                    raise HubError(f"{echo(who)} is not an active member of {echo(slug)}")
                _, recipient = (await service.recipients(s, view, [member], now))[0]
                mail = ed.builder.email(ed.issue, recipient)
                return PreviewResult(mail.subject, mail.text, mail.html)
            finally:
                await s.rollback()  # handles and the generated secret made for a preview are not kept
    finally:
        await db.close()
