"""Proposing mentors for a cohort's unpaired mentees (PRODUCT.md "Matching"): pure, deterministic.

The input is plain data (`MatchInput`: mentees, mentors with their room left,
and the forbidden pairs), the output a `Proposal`; nothing here knows the
database, Matrix or email, so the same roster always gives the same proposal.

How the best proposal is chosen, in order:

1. hard constraints: a mentor's room left (capacity minus open pairs), a shared
   language when both people list languages, and no *forbidden* pair (someone's
   private `avoid`, either way, or a former pair: the caller merges the two so
   nothing downstream can tell them apart, and no reason ever reveals an avoid);
2. the most mentees matched;
3. then, pair by pair, shared topics, then the least time-zone difference
   (hours apart on the clock, in quarter hours, so +14 and -10 are 0 apart),
   then mentors with the most room left.

(2) is exact: every matched pair is worth more than all the preferences of
every other pair together. (3) is exact within one pair (one more shared
topic outweighs any time-zone difference, a quarter hour closer outweighs any
room left) and summed over the pairs. Every preference is an integer, so the
float costs scipy sees are exact and ties break the same way every time.

The solver is scipy's `linear_sum_assignment` with mentees as rows and mentor
*seats* as columns (a mentor with room 2 is two columns; the first seat is
cheaper, so room left counts as it should). The cost matrix is built with
numpy from per-person bit matrices, never a Python loop over pairs: 2,000
mentees by 1,000 mentors is a fraction of a second (bench/match.py).
`greedy` is the first-come pass in roster order that the bench and the tests
compare against: it can leave out a mentee the assignment matches.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

__all__ = [
    "MAX_CAPACITY",
    "Costs",
    "MatchInput",
    "Mentee",
    "Mentor",
    "Proposal",
    "ProposedPair",
    "Reason",
    "Unmatched",
    "allowed",
    "cost_matrix",
    "greedy",
    "hours_apart",
    "proposal_lines",
    "propose",
    "solve",
]

MAX_CAPACITY = 20  # the roster's `capacity` limit: a mentor with more mentees at once is a class
_QUARTERS_MAX = 48  # 12 hours: the furthest two clocks can be apart
_Bool = npt.NDArray[np.bool_]
_Int = npt.NDArray[np.int32]


@dataclass(frozen=True)
class Mentee:
    key: int  # the caller's id (the member row's)
    languages: frozenset[str] = frozenset()
    topics: frozenset[str] = frozenset()
    utc_offset: float = 0.0  # hours, at the moment of matching


@dataclass(frozen=True)
class Mentor:
    key: int
    room: int  # capacity minus open pairs: how many more mentees they take now
    languages: frozenset[str] = frozenset()
    topics: frozenset[str] = frozenset()
    utc_offset: float = 0.0


@dataclass(frozen=True)
class MatchInput:
    mentees: tuple[Mentee, ...]  # in roster order: ties go to the earlier person
    mentors: tuple[Mentor, ...]
    # (mentor key, mentee key) never to propose: either's avoid, or a former pair.
    forbidden: frozenset[tuple[int, int]] = frozenset()


class Reason(enum.Enum):
    """Why a mentee stays unmatched. Worded so that no reason can point at someone's avoid."""

    NO_ROOM = "every mentor is at capacity"
    NONE_FITS = ("no mentor with room left can take them (a shared language is needed, and former "
                 "partners and private preferences are respected)")
    TAKEN = "the mentors who could take them are proposed for other mentees"


@dataclass(frozen=True)
class ProposedPair:
    mentor: int
    mentee: int
    shared_topics: tuple[str, ...]  # sorted
    hours_apart: float  # on the clock, to the quarter hour


@dataclass(frozen=True)
class Unmatched:
    mentee: int
    reason: Reason


@dataclass(frozen=True)
class Proposal:
    pairs: tuple[ProposedPair, ...]  # in the mentees' order
    unmatched: tuple[Unmatched, ...]
    # The summed preference score of the pairs (higher is better): how the bench
    # compares the assignment with a greedy pass on equal terms.
    score: int = 0


def hours_apart(a: float, b: float) -> float:
    """How far apart two clocks are, in hours to the quarter: 0 to 12 (+14 and -10 are 0 apart)."""
    d = abs(a - b) % 24
    return round(min(d, 24 - d) * 4) / 4


@dataclass(frozen=True)
class _Tables:
    feasible: _Bool  # mentees x mentors
    quality: _Int  # mentees x mentors, the pair preference score without room left
    shared: _Int  # mentees x mentors, shared topic counts
    quarters: _Int  # mentees x mentors, quarter hours apart
    rooms: _Int  # per mentor
    room_weight: int


def _bits(people: Sequence[Mentee | Mentor], attr: str, vocab: dict[str, int]) -> _Bool:
    out = np.zeros((len(people), max(len(vocab), 1)), dtype=np.bool_)
    rows: list[int] = []
    cols: list[int] = []
    for i, p in enumerate(people):
        for word in getattr(p, attr):
            rows.append(i)
            cols.append(vocab[word])
    out[rows, cols] = True
    return out


def _vocab(groups: Iterable[Iterable[frozenset[str]]]) -> dict[str, int]:
    words = sorted({w for group in groups for s in group for w in s})
    return {w: i for i, w in enumerate(words)}


def _tables(inp: MatchInput) -> _Tables:
    mentees, mentors = inp.mentees, inp.mentors
    langs = _vocab(([e.languages for e in mentees], [m.languages for m in mentors]))
    topics = _vocab(([e.topics for e in mentees], [m.topics for m in mentors]))
    # float32 products go through BLAS; integer matmul in numpy does not (ten times slower).
    le = _bits(mentees, "languages", langs).astype(np.float32)
    lm = _bits(mentors, "languages", langs).astype(np.float32)
    te = _bits(mentees, "topics", topics).astype(np.float32)
    tm = _bits(mentors, "topics", topics).astype(np.float32)
    rooms = np.array([max(m.room, 0) for m in mentors], dtype=np.int32)
    speaks = (le @ lm.T) > 0.5
    e_lists: _Bool = np.asarray(le.any(axis=1), dtype=np.bool_)
    m_lists: _Bool = np.asarray(lm.any(axis=1), dtype=np.bool_)
    feasible = speaks | ~(e_lists[:, None] & m_lists[None, :])
    feasible &= (rooms > 0)[None, :]
    if inp.forbidden:
        e_index = {e.key: i for i, e in enumerate(mentees)}
        m_index = {m.key: j for j, m in enumerate(mentors)}
        hits = [(e_index[b], m_index[a]) for a, b in inp.forbidden if b in e_index and a in m_index]
        if hits:
            ei, mi = zip(*hits, strict=True)
            feasible[list(ei), list(mi)] = False
    # int32, not int64, and no modulo: on millions of cells, numpy's int64 division is what costs.
    shared = np.rint(te @ tm.T).astype(np.int32)
    # Offsets in quarter hours are whole numbers from -48 to +56, so a difference is within 104.
    off_e = np.rint(np.array([e.utc_offset for e in mentees], dtype=np.float64) * 4).astype(np.int32)
    off_m = np.rint(np.array([m.utc_offset for m in mentors], dtype=np.float64) * 4).astype(np.int32)
    d = np.abs(off_e[:, None] - off_m[None, :])
    d = np.where(d >= 96, d - 96, d)
    quarters = np.minimum(d, 96 - d)
    room_weight = int(rooms.max()) if len(mentors) else 0
    w_quarter = room_weight + 1
    w_topic = (_QUARTERS_MAX + 1) * w_quarter
    quality = shared * w_topic + (_QUARTERS_MAX - quarters) * w_quarter
    return _Tables(feasible, quality, shared, quarters, rooms, room_weight)


def _reasons(inp: MatchInput, t: _Tables, matched: set[int]) -> tuple[Unmatched, ...]:
    any_room = bool((t.rooms > 0).any())
    fits: _Bool = (np.asarray(t.feasible.any(axis=1), dtype=np.bool_) if len(inp.mentors)
                   else np.zeros(len(inp.mentees), dtype=np.bool_))
    out = []
    for i, e in enumerate(inp.mentees):
        if i in matched:
            continue
        reason = Reason.NO_ROOM if not any_room else Reason.TAKEN if fits[i] else Reason.NONE_FITS
        out.append(Unmatched(e.key, reason))
    return tuple(out)


def _proposal(inp: MatchInput, t: _Tables, chosen: dict[int, tuple[int, int]]) -> Proposal:
    """`chosen`: mentee index -> (mentor index, room left before this seat)."""
    pairs = []
    score = 0
    for i in sorted(chosen):
        j, room_left = chosen[i]
        e, m = inp.mentees[i], inp.mentors[j]
        score += int(t.quality[i, j]) + room_left
        pairs.append(ProposedPair(m.key, e.key, tuple(sorted(e.topics & m.topics)),
                                  int(t.quarters[i, j]) / 4))
    return Proposal(tuple(pairs), _reasons(inp, t, set(chosen)), score)


@dataclass(frozen=True)
class Costs:
    """The assignment problem for `linear_sum_assignment`: mentees who fit someone x mentor seats."""

    tables: _Tables
    matrix: npt.NDArray[np.float64]  # rows x seats; 0 where the pair is not allowed (= unmatched)
    rows: npt.NDArray[np.intp]  # mentee index of each row
    seat_mentor: npt.NDArray[np.intp]  # mentor index of each seat
    seat_room: _Int  # room left before taking each seat
    allowed: _Bool  # rows x seats


def cost_matrix(inp: MatchInput) -> Costs:
    """The cost of every (mentee, seat), built with numpy (see the module's docstring)."""
    t = _tables(inp)
    # Only people who fit someone take part; a mentor needs no more seats than mentees who fit.
    rows = np.flatnonzero(t.feasible.any(axis=1))
    fit_counts = t.feasible[rows].sum(axis=0)
    seats = np.minimum(t.rooms, fit_counts).astype(np.intp)
    cols = np.flatnonzero(seats > 0)
    seats = seats[cols]
    seat_mentor = np.repeat(cols, seats)
    starts = np.cumsum(seats) - seats
    seat_k = np.arange(len(seat_mentor)) - np.repeat(starts, seats)
    seat_room = (t.rooms[seat_mentor] - seat_k).astype(np.int32)
    best_pair = int(t.quality.max(initial=0)) + t.room_weight
    # Any match outweighs every preference of every other pair: matched count first.
    big = min(len(rows), len(seat_mentor)) * best_pair + 1
    # Per mentor first, then one column per seat (a take, not a Python loop): the seat's own
    # part is the room left before it. In place where possible: these are 30 MB arrays.
    everyone = len(rows) == t.feasible.shape[0] and len(cols) == t.feasible.shape[1]
    sub_feasible = t.feasible if everyone else t.feasible[np.ix_(rows, cols)]
    per_mentor = (t.quality if everyone else t.quality[np.ix_(rows, cols)]).astype(np.float64)
    per_mentor += big
    np.negative(per_mentor, out=per_mentor)
    per_mentor[~sub_feasible] = 0.0
    seat_of = np.repeat(np.arange(len(cols)), seats)
    allowed_seats: _Bool = sub_feasible.take(seat_of, axis=1)
    matrix = per_mentor.take(seat_of, axis=1)
    np.subtract(matrix, seat_room.astype(np.float64)[None, :], out=matrix, where=allowed_seats)
    return Costs(t, matrix, rows, seat_mentor, seat_room, allowed_seats)


def solve(inp: MatchInput, costs: Costs) -> Proposal:
    """Solve the assignment and read the proposal out of it."""
    chosen: dict[int, tuple[int, int]] = {}
    if costs.matrix.size:
        r_idx, c_idx = linear_sum_assignment(costs.matrix)
        for r, c in zip(r_idx.tolist(), c_idx.tolist(), strict=True):
            if costs.allowed[r, c]:
                chosen[int(costs.rows[r])] = (int(costs.seat_mentor[c]), int(costs.seat_room[c]))
    return _proposal(inp, costs.tables, chosen)


def propose(inp: MatchInput) -> Proposal:
    """The optimal assignment (see the module's docstring)."""
    return solve(inp, cost_matrix(inp))


def greedy(inp: MatchInput) -> Proposal:
    """First come, first served in roster order: each mentee takes the best mentor left for them.

    Not what the hub proposes: the bench and the tests show what it misses.
    """
    t = _tables(inp)
    left = t.rooms.copy()
    chosen: dict[int, tuple[int, int]] = {}
    for i in range(len(inp.mentees)):
        ok = t.feasible[i] & (left > 0)
        if not ok.any():
            continue
        value = np.where(ok, t.quality[i] + left, -1)
        j = int(np.argmax(value))  # the first of equals: roster order
        chosen[i] = (j, int(left[j]))
        left[j] -= 1
    return _proposal(inp, t, chosen)


def allowed(mentor: Mentor, mentee: Mentee, forbidden: frozenset[tuple[int, int]]) -> bool:
    """The hard constraints of one pair, room left aside: what `accept` checks again before making it."""
    speaks = not (mentor.languages and mentee.languages) or bool(mentor.languages & mentee.languages)
    return speaks and (mentor.key, mentee.key) not in forbidden


def _hours(h: float) -> str:
    if h == 0:
        return "same time zone"
    text = f"{h:g}"
    return f"{text} hour{'s' if h != 1 else ''} apart"


def proposal_lines(proposal: Proposal, label: Callable[[int], str],
                   escape: Callable[[str], str] = str) -> list[str]:
    """Plain lines: a numbered line per pair (why: shared topics, hours apart), then the unmatched.

    `label` turns a key into how the person is named (their Matrix id, else email);
    `escape` is applied to the topics (people's words) for a Markdown reply.
    """
    lines = []
    for n, p in enumerate(proposal.pairs, 1):
        topics = ", ".join(escape(t) for t in p.shared_topics)
        why = [f"shared topics: {topics}" if p.shared_topics else "no shared topics", _hours(p.hours_apart)]
        lines.append(f"{n}. {label(p.mentor)} → {label(p.mentee)} ({'; '.join(why)})")
    for u in proposal.unmatched:
        lines.append(f"unmatched: {label(u.mentee)}: {u.reason.value}")
    return lines
