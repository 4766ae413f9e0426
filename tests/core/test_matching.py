"""hub.core.matching: the optimal assignment, its hard constraints, reasons, and a brute-force check."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from hub.core.matching import (
    MatchInput,
    Mentee,
    Mentor,
    Proposal,
    Reason,
    greedy,
    hours_apart,
    proposal_lines,
    propose,
)


def _lang(*codes: str) -> frozenset[str]:
    return frozenset(codes)


def _greedy_trap() -> MatchInput:
    """Mentee 1 likes mentor 10 best, but mentee 2 can only have mentor 10 (German)."""
    return MatchInput(
        mentees=(Mentee(1, _lang("en"), frozenset({"product"})),
                 Mentee(2, _lang("de")),
                 Mentee(3, _lang("en"))),
        mentors=(Mentor(10, 1, _lang("en", "de"), frozenset({"product"})),
                 Mentor(11, 1, _lang("en"))),
        # 3 is avoided by mentor 10 and was mentor 11's mentee before: nobody can take them.
        forbidden=frozenset({(10, 3), (11, 3)}),
    )


def test_the_assignment_matches_whom_a_greedy_pass_leaves_out() -> None:
    inp = _greedy_trap()
    best = propose(inp)
    assert [(p.mentor, p.mentee) for p in best.pairs] == [(11, 1), (10, 2)]
    assert [(u.mentee, u.reason) for u in best.unmatched] == [(3, Reason.NONE_FITS)]
    first_come = greedy(inp)
    assert [(p.mentor, p.mentee) for p in first_come.pairs] == [(10, 1)]
    assert {u.mentee for u in first_come.unmatched} == {2, 3}


def test_reasons_never_name_a_person_and_say_no_room_when_nobody_has_any() -> None:
    inp = MatchInput(mentees=(Mentee(1),), mentors=(Mentor(10, 0),))
    assert propose(inp).unmatched[0].reason is Reason.NO_ROOM
    lines = proposal_lines(propose(_greedy_trap()), lambda k: f"@p{k}:x")
    assert lines[-1].startswith("unmatched: @p3:x: ")
    assert "@p10" not in lines[-1] and "@p11" not in lines[-1] and "avoid" not in lines[-1]


def test_topics_then_time_zones_then_room_left_decide() -> None:
    e = Mentee(1, topics=frozenset({"career"}), utc_offset=1)
    near = Mentor(10, 1, utc_offset=1)
    topical_far = Mentor(11, 1, topics=frozenset({"career"}), utc_offset=-8)
    assert propose(MatchInput((e,), (near, topical_far))).pairs[0].mentor == 11
    far = Mentor(12, 3, utc_offset=9)
    assert propose(MatchInput((e,), (far, near))).pairs[0].mentor == 10
    roomy = Mentor(13, 3, utc_offset=1)
    pair = propose(MatchInput((e,), (near, roomy))).pairs[0]
    assert pair.mentor == 13 and pair.hours_apart == 0
    assert proposal_lines(propose(MatchInput((e,), (topical_far,))), str) == [
        "1. 11 → 1 (shared topics: career; 9 hours apart)"]


def test_hours_apart_is_on_the_clock() -> None:
    assert hours_apart(14, -10) == 0
    assert hours_apart(5.5, -3) == 8.5
    assert hours_apart(-11, 12) == 1


def test_languages_only_bind_when_both_list_them() -> None:
    e = Mentee(1, _lang("fr"))
    assert propose(MatchInput((e,), (Mentor(10, 1),))).pairs[0].mentor == 10
    assert propose(MatchInput((e,), (Mentor(10, 1, _lang("en")),))).pairs == ()
    assert propose(MatchInput((Mentee(1),), (Mentor(10, 1, _lang("en")),))).pairs[0].mentor == 10


def test_the_same_input_gives_the_same_proposal() -> None:
    inp = MatchInput(tuple(Mentee(i) for i in range(6)), tuple(Mentor(10 + j, 2) for j in range(2)))
    assert propose(inp) == propose(inp)
    # Equal candidates: the earlier mentees are the ones matched.
    assert [p.mentee for p in propose(inp).pairs] == [0, 1, 2, 3]


# -- the property test: hard constraints always hold, and as many as possible are matched ----------

LANGS = ("en", "de", "fr")
TOPICS = ("career", "product", "design")


@st.composite
def rosters(draw: st.DrawFn) -> MatchInput:
    n_e = draw(st.integers(0, 5))
    n_m = draw(st.integers(0, 3))
    offsets = st.sampled_from((-8.0, -5.0, 0.0, 1.0, 5.5, 9.0, 14.0))
    langs = st.frozensets(st.sampled_from(LANGS), max_size=2)
    topics = st.frozensets(st.sampled_from(TOPICS), max_size=2)
    mentees = tuple(Mentee(i, draw(langs), draw(topics), draw(offsets)) for i in range(n_e))
    mentors = tuple(Mentor(100 + j, draw(st.integers(0, 2)), draw(langs), draw(topics), draw(offsets))
                    for j in range(n_m))
    every = [(m.key, e.key) for m in mentors for e in mentees]
    forbidden = draw(st.frozensets(st.sampled_from(every), max_size=3)) if every else frozenset()
    return MatchInput(mentees, mentors, forbidden)


def _allowed(inp: MatchInput, m: Mentor, e: Mentee) -> bool:
    langs_ok = not (m.languages and e.languages) or bool(m.languages & e.languages)
    return langs_ok and (m.key, e.key) not in inp.forbidden


def _brute_force_best(inp: MatchInput) -> tuple[int, int]:
    """(most matched, best score among those) over every way to give each mentee a mentor or none."""
    best = (0, 0)
    options: list[list[Mentor | None]] = [
        [None, *(m for m in inp.mentors if _allowed(inp, m, e))] for e in inp.mentees]
    for choice in itertools.product(*options):
        taken = [m.key for m in choice if m is not None]
        if any(taken.count(m.key) > m.room for m in inp.mentors):
            continue
        best = max(best, (len(taken), _score(inp, choice)))
    return best


def _score(inp: MatchInput, choice: tuple[Mentor | None, ...]) -> int:
    """The module's documented preferences, computed the slow way."""
    room_weight = max((m.room for m in inp.mentors), default=0)
    w_quarter = room_weight + 1
    w_topic = 49 * w_quarter
    total = 0
    for e, m in zip(inp.mentees, choice, strict=True):
        if m is not None:
            quarters = int(hours_apart(e.utc_offset, m.utc_offset) * 4)
            total += len(e.topics & m.topics) * w_topic + (48 - quarters) * w_quarter
    for m in inp.mentors:
        k = sum(1 for c in choice if c is m)
        total += sum(m.room - i for i in range(k))
    return total


def _check_hard_constraints(inp: MatchInput, proposal: Proposal) -> None:
    mentors = {m.key: m for m in inp.mentors}
    mentees = {e.key: e for e in inp.mentees}
    for p in proposal.pairs:
        assert _allowed(inp, mentors[p.mentor], mentees[p.mentee])
    for m in inp.mentors:
        assert sum(1 for p in proposal.pairs if p.mentor == m.key) <= max(m.room, 0)
    assert len({p.mentee for p in proposal.pairs}) == len(proposal.pairs)
    assert {p.mentee for p in proposal.pairs} | {u.mentee for u in proposal.unmatched} == set(mentees)


@settings(max_examples=300, deadline=None)
@given(rosters())
def test_every_proposal_keeps_the_hard_constraints_and_matches_the_most(inp: MatchInput) -> None:
    proposal = propose(inp)
    _check_hard_constraints(inp, proposal)
    _check_hard_constraints(inp, greedy(inp))
    most, best_score = _brute_force_best(inp)
    assert len(proposal.pairs) == most
    assert proposal.score == best_score
    assert len(greedy(inp).pairs) <= most
