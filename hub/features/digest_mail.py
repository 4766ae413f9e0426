"""Each person's digest email, rendered when it is sent, by whichever process sends it.

At the digest slot the hub stores the week's *edition* once (table `digest_edition`:
the `DigestIssue` every recipient shares, the builder's public URL, Matrix id and
command prefix, and the cohort's List-Id) and queues one small row per person:
``{"template": "digest", "edition": ID, "to", "to_name", "zone", "pairs", "on_matrix",
"token"}``, about 300 bytes instead of a 21 KB email. The unsubscribe token is signed
then, at fan-out, as before; so rendering needs no secret, and a `hub worker` on
another machine never holds one.

`DigestMail` is the email sender's template for such rows (`hub.email.sender`): it
loads an edition once per process (its cohort-wide sections rendered once, as at
fan-out before) and renders each person's email through the same `email_payload` the
fan-out used, so the message is byte for byte the one the hub sent when it rendered
at fan-out (tests/features/test_digest_mail.py compares them). The rendering costs
whoever claims the row: spread over `hub run` and any number of workers, not 20 s
of the hub's CPU at the slot for 20,000 people.

A person whose email cannot be made (a name with a line break, stored by an older
hub) now fails their own row for good when it is rendered, with the reason, and is
reported to the moderators like any row that failed for good; everyone else's goes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from hub.core import digest as dg
from hub.core.calendar import Webinar
from hub.core.effects import Email
from hub.delivery.effect_writer import email_row_payload
from hub.email.payload import EmailPayload
from hub.errors import PermanentDeliveryError, TemporaryDeliveryError
from hub.features.program_unsent import person_reason
from hub.storage.db import Database
from hub.storage.models import digest_edition_table as E

__all__ = ["TEMPLATE", "DigestMail", "issue_data", "issue_from", "person_payload", "store_edition"]

log = logging.getLogger(__name__)

TEMPLATE = "digest"  # the rows' "template": the name `DigestMail` is registered under
_VERSION = 1  # of an edition's `data`; a process that does not know it leaves the row to one that does
_KEEP = 32  # editions kept per process: one per cohort per week, so a few at a time


def _when(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _moment(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _tip(tip: dg.Tip | None) -> list[str] | None:
    return None if tip is None else [tip.title, tip.body]


def issue_data(issue: dg.DigestIssue) -> dict[str, Any]:
    """`issue` as JSON-able data (`issue_from` reads it back to an equal issue)."""
    c = issue.cohort
    return {
        "cohort": [c.slug, c.name, c.timezone.key, c.lounge_room_id],
        "week": issue.week, "weeks": issue.weeks, "generated_at": issue.generated_at.isoformat(),
        "prompts": [[p.kind, p.title, p.summary, p.by_email] for p in issue.prompts],
        "webinars": [[w.at.isoformat(), w.title, w.url, _when(w.announce_at)] for w in issue.webinars],
        "pulse": {"new_members": issue.pulse.new_members, "lounge_messages": issue.pulse.lounge_messages,
                  "posts": [[p.room_id, p.event_id, p.sender_name, p.text, p.reactions]
                            for p in issue.pulse.posts]},
        "tip": _tip(issue.tip), "email_tip": _tip(issue.email_tip),
    }


def issue_from(data: Mapping[str, Any]) -> dg.DigestIssue:
    """The `DigestIssue` that `issue_data` wrote; times come back with fixed UTC offsets,
    which render the same (every time shown is converted to a zone first)."""
    slug, name, zone, lounge = data["cohort"]
    pulse = data["pulse"]
    return dg.DigestIssue(
        cohort=dg.CohortInfo(slug, name, ZoneInfo(zone), lounge),
        week=data["week"], weeks=data["weeks"], generated_at=datetime.fromisoformat(data["generated_at"]),
        prompts=tuple(dg.Prompt(*p) for p in data["prompts"]),
        webinars=tuple(Webinar(datetime.fromisoformat(at), title, url, _moment(announce))
                       for at, title, url, announce in data["webinars"]),
        pulse=dg.CohortPulse(new_members=pulse["new_members"], lounge_messages=pulse["lounge_messages"],
                             posts=tuple(dg.LoungePost(*p) for p in pulse["posts"])),
        tip=dg.Tip(*data["tip"]) if data["tip"] else None,
        email_tip=dg.Tip(*data["email_tip"]) if data["email_tip"] else None,
    )


async def store_edition(s: AsyncSession, builder: dg.DigestBuilder, issue: dg.DigestIssue, list_id: str,
                        now: float) -> int:
    """Store one fan-out's edition in the caller's transaction; its id, for the rows."""
    data = {"v": _VERSION, "public_url": builder.public_url, "hub_user_id": builder.hub_user_id,
            "command_prefix": builder.command_prefix, "list_id": list_id, "issue": issue_data(issue)}
    result = await s.execute(insert(E).values(
        cohort=issue.cohort.slug, week=issue.week, created_at=now,
        data=json.dumps(data, separators=(",", ":"), ensure_ascii=False)).returning(E.c.id))
    return int(result.scalar_one())


def person_payload(edition: int, address: str, recipient: dg.Recipient, token: str) -> dict[str, Any]:
    """One person's row: the edition, the person as the digest sees them, their signed token."""
    return {"template": TEMPLATE, "edition": edition, "to": address, "to_name": recipient.name,
            "zone": recipient.timezone.key, "on_matrix": recipient.on_matrix, "token": token,
            "pairs": [[p.days_since_active, p.backup_plan_set] for p in recipient.pairs]}


@dataclass(frozen=True, slots=True)
class _Loaded:
    list_id: str
    render: Callable[[dg.Recipient, str], dg.DigestEmail]


class DigestMail:
    """The "digest" template of `EmailSender`: an edition reference in, the person's email out."""

    def __init__(self, db: Database, *, keep: int = _KEEP) -> None:
        self.db = db
        self.keep = keep
        self.loads = 0  # editions read from the database (tests: once per process and edition)
        self._editions: OrderedDict[int, asyncio.Task[_Loaded]] = OrderedDict()
        # Compiled templates: one builder per (public URL, Matrix id, prefix), as the hub keeps.
        self._builders: dict[tuple[str, str | None, str], dg.DigestBuilder] = {}

    async def __call__(self, payload: Mapping[str, Any]) -> EmailPayload:
        edition = await self._edition(int(payload["edition"]))
        try:
            recipient = dg.Recipient(
                handle="", name=str(payload["to_name"]), timezone=ZoneInfo(str(payload["zone"])),
                pairs=tuple(dg.PairCounts(days, plan) for days, plan in payload["pairs"]),
                on_matrix=bool(payload["on_matrix"]))
            mail = edition.render(recipient, str(payload["token"]))
            # Through the effect writer's `email_payload`, as the fan-out queued it before.
            return email_row_payload(Email(
                to=str(payload["to"]), subject=mail.subject, text=mail.text, html=mail.html,
                to_name=recipient.name, headers={"List-Id": edition.list_id, **mail.headers}))
        except (ValueError, TypeError, KeyError) as e:  # UnsafeHeaderError is a ValueError
            log.warning("no digest email for %s: %r", payload.get("to"), e)
            raise PermanentDeliveryError(f"their digest could not be made: "
                                         f"{person_reason(str(payload.get('to_name')), e)}") from None

    async def _edition(self, edition: int) -> _Loaded:
        # One load per edition however many of its rows are in flight: the first starts it,
        # the others wait for the same task.
        task = self._editions.get(edition)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._editions[edition] = asyncio.ensure_future(self._load(edition))
        self._editions.move_to_end(edition)
        while len(self._editions) > self.keep:
            self._editions.popitem(last=False)
        return await asyncio.shield(task)

    async def _load(self, edition: int) -> _Loaded:
        try:
            async with self.db.session() as s:
                raw = (await s.execute(select(E.c.data).where(E.c.id == edition))).scalar_one_or_none()
        except (SQLAlchemyError, OSError) as e:
            raise TemporaryDeliveryError(
                f"could not read digest edition {edition}: {e.__class__.__name__}") from e
        self.loads += 1
        if raw is None:
            raise PermanentDeliveryError(f"digest edition {edition} is not in the database")
        data = json.loads(raw)
        if data.get("v") != _VERSION:
            raise TemporaryDeliveryError(
                f"digest edition {edition} is of a newer hub (format {data.get('v')}); "
                "a process of that version will send it", retry_after=60.0)
        key = (str(data["public_url"]), data["hub_user_id"], str(data["command_prefix"]))
        builder = self._builders.get(key)
        if builder is None:
            builder = self._builders[key] = dg.DigestBuilder(
                public_url=key[0], signer=None, hub_user_id=key[1], command_prefix=key[2])
        # The cohort-wide sections are rendered here, once per edition and process.
        return _Loaded(str(data["list_id"]), builder.signed_email_renderer(issue_from(data["issue"])))
