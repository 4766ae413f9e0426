"""Mail for email-only participants: their one welcome, the pairing notice, check-in questions.

Email-only people are full members (PRODUCT.md "Email"), so what the others get
in a direct room or a pair room reaches them by email, never with a command in
it:

* the welcome, once, from the content library's person welcome (its email
  branch, `person.on_matrix` false), with their pairing and video call when they
  are paired in the same import or command (`queue_welcome`, `queue_paired`);
* a short "you have a mentor/mentee" notice when they are paired later: a
  different message, not a second welcome;
* the "did you meet, and how?" question in check-in weeks and the private 1-5
  check-in in reflection weeks, each with one signed answer link per option
  (`question_rows`, called by the program for those items; `hub.web_answer`
  serves the links).

Each is one person's mail but carries the cohort's List-Id and one-click
unsubscribe, like the digest: the welcome promises "a link at the bottom of
every email", and an email-only person has no other way to say stop.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from hub.config import Settings
from hub.core import content as ct
from hub.core.answers import (
    CHECKIN,
    CHECKIN_OPTIONS,
    MET,
    MET_OPTIONS,
    Answer,
    answer_url,
    cohort_scope,
    pair_scope,
)
from hub.core.cohorts import display_name, paired_email, video_url
from hub.core.content_format import html_to_text, one_line
from hub.core.content_library import load_library
from hub.core.markup import markdown_to_matrix
from hub.core.membership import Role
from hub.core.person_email import AnswerLink, PersonEmail, PersonEmailBuilder, VideoCall
from hub.core.tokens import Purpose, TokenSigner, list_unsubscribe_headers
from hub.delivery.outbox import EMAIL, OutboxStatus
from hub.email.payload import email_payload, normalize_address
from hub.features.subscribers import handles_for, list_id, signing_secret
from hub.program_targets import person_key
from hub.storage.models import Cohort, Member, email_suppression_table, outbox_table

__all__ = ["builder", "library_for", "paired_payload", "question_rows", "welcome_payload"]

log = logging.getLogger(__name__)


@functools.cache
def builder() -> PersonEmailBuilder:
    return PersonEmailBuilder()


@functools.cache
def _library(path: str | None, prefix: str) -> ct.Library:
    from pathlib import Path

    return load_library(Path(path) if path else None, command_prefix=prefix)


def library_for(settings: Settings) -> ct.Library:
    """The content library `hub run` loaded (loaded once per process and configuration)."""
    path = settings.content.path
    return _library(str(path) if path else None, settings.matrix.command_prefix)


def _cohort(cohort: Cohort) -> ct.Cohort:
    return ct.Cohort(cohort.name, cohort.slug, cohort.weeks, date.fromisoformat(cohort.start_date),
                     cohort.timezone)


def _person(member: Member, zone: str) -> ct.Person:
    role = member.role if member.role in ct.ROLES else Role.MENTEE
    return ct.Person(display_name(member.name, member.matrix_id, member.email), role,
                     member.timezone or zone, member.matrix_id is not None)


def _unsubscribe(headers: dict[str, str]) -> str | None:
    value = headers.get("List-Unsubscribe", "")
    return value[1:-1] if value.startswith("<") and value.endswith(">") else None


async def _identities(s: AsyncSession, settings: Settings, cohort: Cohort, members: Sequence[Member],
                      now: datetime) -> tuple[TokenSigner, dict[int, tuple[str, dict[str, str]]]]:
    """The signer, and per member id: their subscriber handle and their list headers (List-Id, unsubscribe).

    The same handle signs their unsubscribe and their answer links.
    """
    signer = TokenSigner(await signing_secret(s, settings))
    keys = {m.id or 0: person_key(m.matrix_id, m.email) for m in members}
    handles = await handles_for(s, [k for k in keys.values() if k], now)
    lid = list_id(settings, cohort)
    out: dict[int, tuple[str, dict[str, str]]] = {}
    for mid, k in keys.items():
        if k:
            handle = handles[k]
            out[mid] = (handle, {"List-Id": lid, **list_unsubscribe_headers(
                settings.web.public_url, signer.sign(handle, Purpose.UNSUBSCRIBE, issued_at=now))})
    return signer, out


def _payload(address: str, name: str, subject: str, mail: PersonEmail,
             headers: dict[str, str]) -> dict[str, Any]:
    return dict(email_payload(to=address, subject=one_line(subject), text=mail.text, html=mail.html,
                              to_name=one_line(name), headers=headers))


# -- the welcome and the pairing notice ---------------------------------------------------------


async def welcome_payload(
    s: AsyncSession, settings: Settings, member: Member, cohort: Cohort, now: datetime,
    partner: Member | None = None, video_name: str | None = None,
) -> dict[str, Any]:
    """The one welcome email, rendered from the library's person welcome (its email branch)."""
    assert member.email is not None
    library = library_for(settings)
    me = _person(member, cohort.timezone)
    other = _person(partner, cohort.timezone) if partner is not None else None
    rendered = library.render(library.pick(ct.Kind.WELCOME, ct.Audience.PERSON),
                              ct.Variables(cohort=_cohort(cohort), person=me, partner=other))
    _, ids = await _identities(s, settings, cohort, [member], now)
    headers = ids[member.id or 0][1]
    call = None
    if other is not None and video_name:
        call = VideoCall(other.name, video_url(settings.video.base_url, video_name))
    mail = builder().build(subject=rendered.subject, eyebrow=f"{cohort.name} · welcome",
                           fragment=rendered.formatted_body, text=rendered.body, cohort_name=cohort.name,
                           unsubscribe_url=_unsubscribe(headers), call=call)
    return _payload(member.email, me.name, rendered.subject, mail, headers)


async def paired_payload(
    s: AsyncSession, settings: Settings, member: Member, partner: Member, cohort: Cohort,
    video_name: str, now: datetime,
) -> dict[str, Any]:
    """"You have a mentor/mentee": for someone welcomed before they were paired."""
    assert member.email is not None
    me, other = _person(member, cohort.timezone), _person(partner, cohort.timezone)
    subject, markdown = paired_email(name=me.name, cohort=cohort.name, partner=other.name,
                                     partner_role=other.role)
    _, fragment = markdown_to_matrix(markdown)
    _, ids = await _identities(s, settings, cohort, [member], now)
    headers = ids[member.id or 0][1]
    mail = builder().build(subject=subject, eyebrow=cohort.name, fragment=fragment,
                           text=html_to_text(fragment), cohort_name=cohort.name,
                           unsubscribe_url=_unsubscribe(headers),
                           call=VideoCall(other.name, video_url(settings.video.base_url, video_name)))
    return _payload(member.email, me.name, subject, mail, headers)


async def replace_queued(s: AsyncSession, dedupe_key: str, payload: dict[str, Any]) -> bool:
    """Give a row queued in this transaction (not sent: it is not committed yet) a new payload."""
    result = await s.execute(update(outbox_table).where(
        (outbox_table.c.dedupe_key == dedupe_key) & (outbox_table.c.status == OutboxStatus.QUEUED)
    ).values(payload=json.dumps(payload, separators=(",", ":"), ensure_ascii=False)))
    return bool(getattr(result, "rowcount", 0))


# -- check-in questions -------------------------------------------------------------------------


def _links(signer: TokenSigner, public_url: str, question: str, options: dict[str, str], week: int,
           scope: str, handle: str, now: datetime) -> tuple[AnswerLink, ...]:
    out = []
    for value, label in options.items():
        token = signer.sign(Answer(question, value, week, scope, handle).handle, Purpose.ANSWER,
                            issued_at=now)
        out.append(AnswerLink(label, answer_url(public_url, token)))
    return tuple(out)


async def question_rows(
    s: AsyncSession, settings: Settings, library: ct.Library, *, cohort: Cohort,
    pairs: Sequence[tuple[int, str, Member, Member]], members_mode: dict[int, str],
    addresses: dict[int, str | None], question: str, week: int, key: str, now: datetime,
) -> tuple[list[dict[str, Any]], list[tuple[Member, str, Exception]]]:
    """Email rows asking each email-only participant of the active `pairs` the week's question.

    `pairs` are (pair id, video name, mentor, mentee); `question` is MET (one email per
    pair: a mentor may have several) or CHECKIN (one per person). Rows are keyed
    `KEY:email:...`, so each person gets each item once, ever. Returns the rows and
    the people left out, with why (a broken name, say), for the program's alert.
    """
    if not settings.email.enabled or week < 1:
        return [], []
    wanted: list[tuple[Member, Member, int, str]] = []  # (person, partner, pair id, video name)
    for pair_id, video, mentor, mentee in pairs:
        for me, other in ((mentor, mentee), (mentee, mentor)):
            if me.matrix_id is None and addresses.get(me.id or 0) and members_mode.get(me.id or 0) == "all":
                wanted.append((me, other, pair_id, video))
    if not wanted:
        return [], []
    bounced = set((await s.execute(select(email_suppression_table.c.address).where(
        email_suppression_table.c.address.in_(
            [normalize_address(str(addresses[m.id or 0])) for m, *_ in wanted])))).scalars().all())
    signer, ids = await _identities(s, settings, cohort, list({m.id: m for m, *_ in wanted}.values()), now)
    variables_cohort = _cohort(cohort)
    seen: set[int] = set()
    rows: list[dict[str, Any]] = []
    left_out: list[tuple[Member, str, Exception]] = []
    for me, other, pair_id, video in wanted:
        address = str(addresses[me.id or 0])
        if normalize_address(address) in bounced:
            continue
        if question == CHECKIN:
            if (me.id or 0) in seen:
                continue
            seen.add(me.id or 0)
        try:
            person_handle, own = ids[me.id or 0]
            if question == MET:
                item = library.pick(ct.Kind.CHECKIN, ct.Audience.PERSON, use="met")
                links = _links(signer, settings.web.public_url, MET, MET_OPTIONS, week, pair_scope(video),
                               person_handle, now)
                intro, row_key = "Your answer", f"{key}:email:{me.id}:pair:{pair_id}"
                partner: ct.Person | None = _person(other, cohort.timezone)
            else:
                item = library.pick(ct.Kind.CHECKIN, ct.Audience.PERSON)
                links = _links(signer, settings.web.public_url, CHECKIN, CHECKIN_OPTIONS, week,
                               cohort_scope(cohort.slug), person_handle, now)
                several = sum(1 for m, *_ in wanted if m.id == me.id) > 1
                intro, row_key = "Your answer (private)", f"{key}:email:{me.id}"
                partner = None if several else _person(other, cohort.timezone)
            person = _person(me, cohort.timezone)
            rendered = library.render(item, ct.Variables(cohort=variables_cohort, week=week, person=person,
                                                         partner=partner))
            mail = builder().build(subject=rendered.subject, eyebrow=f"{cohort.name} · week {week}",
                                   fragment=rendered.formatted_body, text=rendered.body,
                                   cohort_name=cohort.name, unsubscribe_url=_unsubscribe(own), answers=links,
                                   answers_intro=intro)
            payload = _payload(address, person.name, rendered.subject, mail, own)
        except Exception as e:
            left_out.append((me, address, e))
            continue
        rows.append({"channel": EMAIL, "kind": f"{question}-question-email",
                     "lane": normalize_address(address), "payload": payload, "dedupe_key": row_key})
    return rows, left_out
