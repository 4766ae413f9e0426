"""The program's parts that are not the service: the default spec, outbox rows of prompts, the .ics.

`hub.features.program.ProgramService` uses them to make its rows; the command
modules (`program_commands`, `pair_commands`) use the headers, mentions and the
suppression check without the whole service. Split out of `program.py` so each
module stays one job (issue 15: no module in hub/features over 500 lines).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import icalendar
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.config import Settings
from hub.core import content as ct
from hub.core.calendar import CalendarItem, ItemKind, ProgramSpec, Target, Webinar
from hub.core.cohorts import display_name
from hub.core.messages import Mention
from hub.core.schedule import parse_weekly_slot
from hub.email.payload import normalize_address
from hub.features.participants import room_row
from hub.features.subscribers import list_id
from hub.storage.models import Cohort, HubRoom, Member, email_suppression_table

__all__ = [
    "ANNOUNCE_DELAY",
    "ROTATING",
    "STARTS_IN",
    "WEBINAR_LENGTH",
    "WEBINAR_USE",
    "DigestHook",
    "default_spec",
    "email_headers",
    "mentions",
    "prompt_row",
    "suppressed",
    "webinar_ics",
]

# `!hub webinar` announces a little in the future rather than "now": a tick
# running while the command's transaction commits must not pass the instant
# before it can see the new row (the calendar only looks forward from the last tick).
ANNOUNCE_DELAY = timedelta(seconds=10)
# Webinar length is not configured; the .ics needs an end. One hour is the usual slot.
WEBINAR_LENGTH = timedelta(hours=1)
# The config's defaults (hub.config._load_cohort), for cohorts made with `!hub cohort create`.
_DEFAULT_SLOTS = {"digest": "mon 09:00", "icebreaker": "tue 10:00", "checkin": "fri 15:00",
                  "reflection": "wed 10:00"}
_DEFAULT_CHECKIN_WEEKS = (1, 2, 4, 8)
_DEFAULT_REFLECTION_WEEKS = (3, 6, 9)
ROTATING = {ItemKind.ICEBREAKER: ct.Kind.ICEBREAKER, ItemKind.REFLECTION: ct.Kind.REFLECTION}
STARTS_IN = {ItemKind.WEBINAR_REMINDER_24H: "in 24 hours", ItemKind.WEBINAR_REMINDER_1H: "in 1 hour"}
WEBINAR_USE = {ItemKind.WEBINAR_ANNOUNCE: "announcement", ItemKind.WEBINAR_REMINDER_24H: "reminder",
                ItemKind.WEBINAR_REMINDER_1H: "reminder", ItemKind.WEBINAR_FOLLOWUP: "follow-up"}

# The digest is another feature's: it gets the due item and its targets and returns outbox rows.
DigestHook = Callable[[AsyncSession, CalendarItem, Sequence[Target]], Awaitable[list[dict[str, Any]]]]


def default_spec(cohort: Cohort, webinars: Sequence[Webinar] = ()) -> ProgramSpec:
    """A cohort made at run time: the default slots, weeks clipped to its length."""
    return ProgramSpec(
        slug=cohort.slug, timezone=ZoneInfo(cohort.timezone), start=date.fromisoformat(cohort.start_date),
        weeks=cohort.weeks,
        digest=parse_weekly_slot(_DEFAULT_SLOTS["digest"]),
        icebreaker=parse_weekly_slot(_DEFAULT_SLOTS["icebreaker"]),
        checkin=parse_weekly_slot(_DEFAULT_SLOTS["checkin"]),
        checkin_weeks=tuple(w for w in _DEFAULT_CHECKIN_WEEKS if w <= cohort.weeks),
        reflection=parse_weekly_slot(_DEFAULT_SLOTS["reflection"]),
        reflection_weeks=tuple(w for w in _DEFAULT_REFLECTION_WEEKS if w <= cohort.weeks),
        webinars=tuple(webinars),
    )


def webinar_ics(*, uid: str, title: str, at: datetime, url: str | None, cohort: str,
                now: datetime) -> str:
    """A one-event calendar (METHOD:PUBLISH: an announcement, not a meeting request with RSVPs)."""
    cal = icalendar.Calendar()
    cal.add("prodid", "-//Cohort Hub//cohort-hub//EN")
    cal.add("version", "2.0")
    cal.add("method", "PUBLISH")
    event = icalendar.Event()
    event.add("uid", uid)
    event.add("dtstamp", now.astimezone(UTC))
    event.add("dtstart", at.astimezone(UTC))
    event.add("dtend", (at + WEBINAR_LENGTH).astimezone(UTC))
    event.add("summary", f"{title} ({cohort})")
    if url:
        event.add("location", url)
        event.add("url", url)
        event.add("description", f"Join: {url}")
    cal.add_component(event)
    ics: bytes = cal.to_ical()
    return ics.decode("utf-8")


def mentions(*members: Member) -> list[Mention]:
    """The people a prompt is for, as `hub.core.messages.prompt_content` names them: those on Matrix."""
    return [Mention(m.matrix_id, display_name(m.name, m.matrix_id, m.email)) for m in members if m.matrix_id]


def prompt_row(room: HubRoom, rendered: ct.Rendered, people: Sequence[Mention], *, kind: str, dedupe_key: str,
               week: int | None) -> dict[str, Any]:
    """The outbox row of a prompt: `room_row` with `rendered` as an m.text that notifies `people`.

    Besides ``op``/``room_key``/``type``/``content``, the payload says what the sent event
    asks and of whom, for whatever handles answers to it (once sent, the row's ``result``
    is the event id; the sender ignores the extra key):

    ``prompt``: ``{"kind": <the row's kind, e.g. "program-checkin", "program-private-checkin">,
    "week": <the program week it is for, None before the start>, "for": [<Matrix ids>]}``
    """
    row = room_row(room, rendered.matrix_content(people), kind=kind, dedupe_key=dedupe_key)
    row["payload"]["prompt"] = {"kind": kind, "week": week or None,
                                "for": list(row["payload"]["content"]["m.mentions"].get("user_ids", []))}
    return row


def email_headers(settings: Settings, cohort: Cohort) -> dict[str, str]:
    """List-Id only; bulk mail to members takes `subscribers.list_headers` (adds one-click unsubscribe)."""
    return {"List-Id": list_id(settings, cohort)}


async def suppressed(s: AsyncSession, addresses: Sequence[str]) -> set[str]:
    """Which of `addresses` bounced for good (no mail goes to them)."""
    if not addresses:
        return set()
    rows = (await s.execute(select(email_suppression_table.c.address).where(
        email_suppression_table.c.address.in_([normalize_address(a) for a in addresses])))).scalars().all()
    return set(rows)
