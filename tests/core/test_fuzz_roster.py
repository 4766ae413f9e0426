"""Fuzzing the roster reader: any upload parses whole or fails with RosterError, each problem on its line.

`hub roster import` and `!hub roster` show these problems to a moderator; anything other than a
RosterError would be a traceback in the control room or the terminal, and a problem without
"line N" leaves them hunting through a 5 000-row file. See tests/support/fuzz.py for the settings.
"""

from __future__ import annotations

import csv
import io
import re

from hypothesis import example, given
from hypothesis import strategies as st

from hub.core.roster import COLUMNS, Roster, decode_roster, parse_roster
from hub.errors import RosterError

from tests.support.fuzz import ANY_TEXT, fuzz, spliced

HEADER = ",".join(COLUMNS)
FRAGMENTS = [
    ",", '"', '""', "\n", "\r\n", "\r", "\x00", "\ufeff", "\u2028", "\u202e", " ", "\t",
    "winter", "Winter 2027", "mentor", "mentee", "moderator", "MENTEE", "@ada:example.org", "@", ":",
    "ada@example.org", "a@b", "Europe/Berlin", "America", "UTC", "../", "Etc/GMT+5", "\\", "x" * 300,
]
CELLS = st.one_of(spliced(FRAGMENTS), ANY_TEXT)


def _csv(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue()


@st.composite
def _uploads(draw: st.DrawFn) -> str:
    """A header that is usually right (sometimes shuffled, short or with extras) and fuzzed rows."""
    header = list(COLUMNS)
    if draw(st.booleans()):
        header = draw(st.permutations(COLUMNS))
    if draw(st.integers(0, 9)) == 0:
        header = draw(st.lists(st.sampled_from([*COLUMNS, "notes", "Cohort", ""]), max_size=9))
    width = len(header)
    rows = draw(st.lists(st.lists(CELLS, min_size=max(0, width - 1), max_size=width + 1), max_size=8))
    text = _csv([header, *rows])
    # Sometimes break the CSV itself: a stray quote or line break at some position.
    if draw(st.booleans()) and text:
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(['"', "\n", "\r", ',"x', "\x00"])) + text[at:]
    return text


def _assert_each_problem_has_a_line(text: str, error: RosterError) -> None:
    assert error.problems
    last = max(len(text.splitlines()), 1) + 1
    for p in error.problems:
        if p.startswith("... and "):
            assert p is error.problems[-1]
            continue
        m = re.match(r"line (\d+): (.+)", p, flags=re.DOTALL)
        assert m, f"{p!r} does not name its line"
        assert 1 <= int(m.group(1)) <= last, p


@fuzz(300)
@given(_uploads())
@example(f"{HEADER}\nwinter,mentor,A,a@b.org,,America,\n")  # a folder of zones: IsADirectoryError
@example(f"{HEADER}\nwinter,mentor,A,a@b.org,,{'x' * 300},\n")  # file name too long: OSError
def test_any_upload_parses_or_names_each_problem_by_line(text: str) -> None:
    try:
        parse_roster(text)
    except RosterError as e:
        _assert_each_problem_has_a_line(text, e)


@fuzz(150)
@given(st.binary(max_size=200).map(lambda b: HEADER.encode() + b"\n" + b))
def test_any_bytes_decode_and_parse_or_name_the_line(data: bytes) -> None:
    try:
        text = decode_roster(data)
    except RosterError as e:
        (problem,) = e.problems
        assert re.fullmatch(r"line \d+: not valid UTF-8 \(save the file as UTF-8 CSV\)", problem)
        return
    try:
        parse_roster(text)
    except RosterError as e:
        _assert_each_problem_has_a_line(text, e)


# --- valid rosters round-trip ---------------------------------------------------------------------

_NAMES = st.text(st.characters(categories=("L", "N", "P", "S", "Zs")), max_size=60).map(str.strip)
_ZONES = st.sampled_from(["", "UTC", "Europe/Berlin", "America/Sao_Paulo", "Asia/Kolkata"])
_SLUG = st.from_regex(r"[a-z0-9][a-z0-9-]{0,15}", fullmatch=True)


@st.composite
def _roster(draw: st.DrawFn) -> tuple[list[str], list[dict[str, str]]]:
    cohort = draw(_SLUG)
    n_mentors = draw(st.integers(0, 4))
    people: list[dict[str, str]] = []
    for i in range(draw(st.integers(1, 12))):
        role = "mentor" if i < n_mentors else draw(st.sampled_from(["mentee", "moderator"]))
        by = draw(st.sampled_from(["email", "matrix", "both"]))
        people.append({
            "cohort": cohort, "role": role, "name": draw(_NAMES),
            "email": f"p{i}@example.org" if by != "matrix" else "",
            "matrix_id": f"@p{i}:example.org" if by != "email" else "",
            "timezone": draw(_ZONES), "mentor": "",
        })
    mentors = [p for p in people if p["role"] == "mentor"]
    for p in people:
        if p["role"] == "mentee" and mentors and draw(st.booleans()):
            m = draw(st.sampled_from(mentors))
            p["mentor"] = m["matrix_id"] or m["email"]
    return draw(st.permutations(COLUMNS)), people


@fuzz(150)
@given(_roster(), st.sampled_from(["\n", "\r\n"]), st.booleans())
def test_valid_rosters_round_trip(case: tuple[list[str], list[dict[str, str]]], newline: str,
                                  bom: bool) -> None:
    header, people = case
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=newline)
    writer.writerow(header)
    writer.writerows([p[c] for c in header] for p in people)
    data = ("\ufeff" if bom else "") + out.getvalue()
    roster = parse_roster(decode_roster(data.encode()))
    assert isinstance(roster, Roster)
    got = [{"cohort": r.cohort, "role": r.role, "name": r.name, "email": r.email or "",
            "matrix_id": r.matrix_id or "", "timezone": r.timezone or "",
            "mentor": (r.mentor.matrix_id or r.mentor.email or "") if r.mentor else ""}
           for r in roster.rows]
    assert got == people
    assert [r.line for r in roster.rows] == list(range(2, len(people) + 2))
