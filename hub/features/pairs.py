"""Pairs: making them (one or a roster's worth), their rooms, pausing and closing them."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.core import membership as core
from hub.core.cohorts import Who, goodbye_text, pair_welcome, video_name, video_url
from hub.core.membership import OPEN_PAIR, PairStatus, Role, RoomKind
from hub.errors import CommandError
from hub.features.member_mail import queue_pair_mail
from hub.features.people import find_member, member_label, member_markdown, pair_people
from hub.features.room_queue import Env, add_room, find_room, queue_all, queue_room_message, room_added, want
from hub.storage.models import Cohort, HubRoom, Member, Pair, pair_table

__all__ = [
    "close_pair",
    "ensure_pair_room",
    "find_open_pair",
    "make_pair",
    "make_pairs",
    "open_pairs_of",
    "set_pair_status",
]


async def open_pairs_of(s: AsyncSession, env: Env, member: Member) -> list[Pair]:
    """The member's active and paused pairs, oldest first."""
    return await env.store.open_pairs_of(s, member)


async def find_open_pair(s: AsyncSession, env: Env, cohort: Cohort, mentor: Who, mentee: Who) -> Pair:
    assert cohort.id is not None
    a = await find_member(s, env, cohort.id, mentor)
    b = await find_member(s, env, cohort.id, mentee)
    if a is None or b is None:
        missing = mentor if a is None else mentee
        raise CommandError(f"{missing} is not a member of {cohort.slug}.")
    pair = (await s.execute(select(Pair).where(
        (pair_table.c.mentor_id == a.id) & (pair_table.c.mentee_id == b.id)
        & pair_table.c.status.in_(OPEN_PAIR)
    ))).scalar_one_or_none()
    if pair is None:
        raise CommandError(f"{mentor} and {mentee} are not a pair in {cohort.slug}.")
    return pair


async def make_pair(s: AsyncSession, env: Env, cohort: Cohort, mentor: Who, mentee: Who) -> tuple[Pair, bool]:
    """Pair a mentor with a mentee; (pair, False) if exactly this pair exists already."""
    [result] = await make_pairs(s, env, [(cohort, mentor, mentee)])
    if isinstance(result, CommandError):
        raise result
    return result


async def make_pairs(
    s: AsyncSession, env: Env, requests: Sequence[tuple[Cohort, Who, Who]],
) -> list[tuple[Pair, bool] | CommandError]:
    """`make_pair` for each (cohort, mentor, mentee), in order; per request its result or its error.

    The same rows as one `make_pair` after another (a request sees the pairs made by those
    before it), written with a few INSERTs for all of them: the people's rows (if added in
    this batch and not flushed yet), then the pairs, then their rooms, since each needs the
    ids of the one before. The outbox rows come in the same order as one call after another.
    """
    results: list[tuple[Pair, bool] | CommandError | None] = []  # None: a new pair, made below
    plans: list[tuple[int, Cohort, Member, Member]] = []  # (request index, cohort, mentor, mentee)
    planned: dict[int, tuple[int, Member]] = {}  # id(mentee) -> (request index, mentor), this call
    repeats: dict[int, int] = {}  # request index -> the earlier request here that pairs the same two
    for i, (cohort, mentor, mentee) in enumerate(requests):
        try:
            a, b = await _pair_checks(s, env, cohort, mentor, mentee)
            earlier = planned.get(id(b))
            if earlier is not None:
                if earlier[1] is not a:
                    raise _already_paired(env, mentee, earlier[1])
                repeats[i] = earlier[0]
                results.append(None)
                continue
            assert cohort.id is not None
            current = await env.store.open_pair_of_mentee(s, cohort.id, b)
            if current is not None:
                if current.mentor_id != a.id:
                    raise _already_paired(env, mentee, await s.get(Member, current.mentor_id))
                results.append((current, False))
                continue
        except CommandError as e:
            results.append(e)
            continue
        planned[id(b)] = (i, a)
        plans.append((i, cohort, a, b))
        results.append(None)
    if not plans:
        return _resolved(results, repeats)
    # Rows that new ones refer to are written first: the ORM orders a flush's INSERTs by
    # table only along relationships, which these models do not declare. In a batch this
    # writes the people added so far (one INSERT for all of them) and gives them their ids.
    await s.flush()
    made: list[tuple[Pair, Member, Member, Cohort]] = []
    for i, cohort, a, b in plans:
        assert cohort.id is not None and a.id is not None and b.id is not None
        pair = Pair(id=await env.store.new_id(s, pair_table.name), cohort_id=cohort.id, mentor_id=a.id,
                    mentee_id=b.id, status=PairStatus.ACTIVE,
                    video_name=video_name(env.secret, secrets.token_hex(16)), created_at=env.now())
        s.add(pair)
        results[i] = (pair, True)
        made.append((pair, a, b, cohort))
    await s.flush()  # the pairs' ids name their rooms
    for pair, *_ in made:
        env.store.pair_added(pair)
    rooms = await _prepare_pair_rooms(s, env, [pair for pair, *_ in made])
    for (pair, a, b, cohort), room in zip(made, rooms, strict=True):
        if room is not None:
            await _finish_pair_room(s, env, room)
        for me, partner in ((a, b), (b, a)):
            if me.matrix_id is None and me.email:
                await queue_pair_mail(s, env, me, partner, cohort, pair)
    return _resolved(results, repeats)


def _resolved(
    results: list[tuple[Pair, bool] | CommandError | None], repeats: dict[int, int],
) -> list[tuple[Pair, bool] | CommandError]:
    """A request repeating an earlier one of the same call gets its pair, as already existing."""
    out: list[tuple[Pair, bool] | CommandError] = []
    for i, r in enumerate(results):
        if r is None:
            earlier = out[repeats[i]]
            assert not isinstance(earlier, CommandError)
            r = (earlier[0], False)
        out.append(r)
    return out


async def _pair_checks(
    s: AsyncSession, env: Env, cohort: Cohort, mentor: Who, mentee: Who,
) -> tuple[Member, Member]:
    assert cohort.id is not None
    a = await find_member(s, env, cohort.id, mentor)
    b = await find_member(s, env, cohort.id, mentee)
    add = f"`{env.prefix} add {cohort.slug} ROLE WHO` first"
    if a is None:
        raise CommandError(f"{mentor} is not a member of {cohort.slug}; {add}.")
    if b is None:
        raise CommandError(f"{mentee} is not a member of {cohort.slug}; {add}.")
    if a.role != Role.MENTOR:
        raise CommandError(f"{mentor} is a {a.role} in {cohort.slug}, not a mentor.")
    if b.role != Role.MENTEE:
        raise CommandError(f"{mentee} is a {b.role} in {cohort.slug}, not a mentee.")
    return a, b


def _already_paired(env: Env, mentee: Who, other: Member | None) -> CommandError:
    return CommandError(
        f"{mentee} is already paired with {member_markdown(other) if other else 'another mentor'}; "
        f"`{env.prefix} unpair` them first."
    )


@dataclass(frozen=True)
class _PairRoom:
    pair: Pair
    room: HubRoom
    new: bool
    mentor: Member
    mentee: Member
    cohort: Cohort


async def ensure_pair_room(s: AsyncSession, env: Env, pair: Pair) -> HubRoom | None:
    """The pair's room (queued for creation if new), with its members wanted and its welcome queued.

    No room for a pair where neither person has a Matrix id: they meet by the
    emailed link. The room appears as soon as one of them gets a Matrix id.
    """
    [prepared] = await _prepare_pair_rooms(s, env, [pair])
    if prepared is None:
        return None
    await _finish_pair_room(s, env, prepared)
    return prepared.room


async def _prepare_pair_rooms(s: AsyncSession, env: Env, pairs: Sequence[Pair]) -> list[_PairRoom | None]:
    """Each pair's room, found or added (one INSERT for all new ones); None where it gets none."""
    out: list[_PairRoom | None] = []
    for pair in pairs:
        mentor, mentee, cohort = await pair_people(s, pair)
        if not (mentor.matrix_id or mentee.matrix_id) or pair.status not in OPEN_PAIR:
            out.append(None)
            continue
        key = f"pair:{pair.id}"
        room = await find_room(s, env, key)
        new = room is None
        if room is None:
            room = await add_room(s, env, key=key, kind=RoomKind.PAIR, cohort_id=cohort.id, pair_id=pair.id)
        out.append(_PairRoom(pair, room, new, mentor, mentee, cohort))
    if any(p is not None and p.new for p in out):
        await s.flush()
    return out


async def _finish_pair_room(s: AsyncSession, env: Env, p: _PairRoom) -> None:
    """Queue a prepared room's creation (if new), its members' invites and the welcome, in that order."""
    if p.new:
        await room_added(s, env, p.room)
    for user in (m.matrix_id for m in (p.mentor, p.mentee)):
        if user:
            await want(s, env, p.room, user)
    link = video_url(env.settings.video.base_url, p.pair.video_name)
    text = pair_welcome(mentor=member_label(p.mentor), mentee=member_label(p.mentee), cohort=p.cohort.name,
                        link=link, prefix=env.prefix)
    await queue_room_message(s, env, p.room, text, kind="pair-welcome",
                             dedupe_key=f"welcome:{p.room.key}:{p.room.generation}")


async def close_pair(s: AsyncSession, env: Env, pair: Pair) -> None:
    """Close a pair: goodbye in its room, then the hub leaves; the people keep the history."""
    pair.status, pair.closed_at = PairStatus.CLOSED, env.now()
    room = await find_room(s, env, f"pair:{pair.id}")
    if room is None or room.status in core.CLOSED_ROOM:
        return
    _, _, cohort = await pair_people(s, pair)
    status, outs = core.close_room(room, goodbye_text(cohort.name))
    await queue_all(s, env, outs)
    if status is not None:
        room.status = status


async def set_pair_status(s: AsyncSession, env: Env, pair: Pair, status: PairStatus) -> bool:
    """Pause or resume scheduled content for a pair; False if it already was so."""
    if not core.pause(pair.status, status):
        return False
    pair.status = status
    pair.paused_at = env.now() if status == PairStatus.PAUSED else None
    return True

