"""The roster CSV parser: every problem named by line, hostile input refused, nothing half-read."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.core.roster import COLUMNS, MAX_ROWS, check_roster, decode_roster, parse_roster
from hub.errors import RosterError

HEADER = ",".join(COLUMNS)


def problems(text: str) -> list[str]:
    with pytest.raises(RosterError) as e:
        parse_roster(text)
    return e.value.problems


def test_valid_roster_with_bom_blank_lines_quotes_and_case() -> None:
    text = (
        "\ufeff" + HEADER.upper() + "\r\n"
        "\r\n"
        'winter,Mentor,"Lovelace, Ada",ADA@Example.org,@ada:example.org,Europe/London,\r\n'
        "winter,mentee,Bo,,@bo:example.org,,ada@example.org\r\n"
        "   \r\n"
        "winter,moderator,,mod@example.org,,,\r\n"
    )
    roster = parse_roster(text)
    ada, bo, mod = roster.rows
    assert (ada.line, ada.name, ada.email, ada.role, ada.timezone) == (
        3, "Lovelace, Ada", "ada@example.org", "mentor", "Europe/London")
    assert bo.line == 4 and bo.mentor is not None and bo.mentor.email == "ada@example.org"
    assert mod.line == 6 and mod.matrix_id is None and mod.name == ""
    assert roster.cohorts == ["winter"]


def test_header_in_any_order() -> None:
    cols = list(reversed(COLUMNS))
    roster = parse_roster(",".join(cols) + "\n" + ",".join(
        {"cohort": "c", "role": "mentor", "email": "a@b.org"}.get(c, "") for c in cols))
    assert roster.rows[0].email == "a@b.org"


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("Winter 2027,mentor,A,a@b.org,,,", "line 2: cohort 'winter 2027' is not a cohort slug"),
        ("winter,boss,A,a@b.org,,,", "line 2: role must be mentor, mentee or moderator, not 'boss'"),
        ("winter,mentor,A,,,,", "line 2: needs an email or a matrix_id"),
        ("winter,mentor,A,not-an-address,,,", "line 2: email 'not-an-address' is not an email address"),
        ("winter,mentor,A,,ada:example.org,,", "line 2: matrix_id 'ada:example.org' is not a Matrix id"),
        ("winter,mentor,A,a@b.org,,Mars/Base,", "line 2: timezone 'Mars/Base' is not a known time zone"),
        ("winter,mentor,A,a@b.org,,,c@d.org", "line 2: only mentee rows name a mentor"),
        ("winter,mentee,A,a@b.org,,,nobody", "line 2: mentor: 'nobody' is neither a Matrix id"),
        ("winter,mentee,A,a@b.org,,,a@b.org", "line 2: a mentee cannot be their own mentor"),
        ("winter,mentor,A,a@b.org,,", "line 2: expected 7 fields like the header, found 6"),
        ("winter,mentor,A\x00,a@b.org,,,", "line 2: name: contains a control character (U+0000)"),
        ("winter,mentor,A\u2028B,a@b.org,,,", "line 2: name: contains a line break"),
        ("winter,mentor,A\u202eB,a@b.org,,,", "line 2: name: contains a bidirectional override (U+202E)"),
        ("winter,mentor," + "x" * 101 + ",a@b.org,,,", "line 2: name: is longer than 100 characters (101)"),
        ("winter,mentor,A,a@b.org\x00,,,", "line 2: email contains control characters"),
        ("winter,mentor," + "x" * 1001 + ",a@b.org,,,", "line 2: name is longer than 1000 characters"),
    ],
)
def test_bad_rows_name_their_line(row: str, expected: str) -> None:
    found = problems(f"{HEADER}\n{row}\n")
    assert any(p.startswith(expected) for p in found), found


def test_every_problem_is_listed_with_its_own_line() -> None:
    text = f"{HEADER}\nwinter,mentor,A,a@b.org,,,\n\nwinter,boss,B,b@b.org,,,\nwinter,mentor,C,,,,\n"
    found = problems(text)
    assert [p.split(":")[0] for p in found] == ["line 4", "line 5"]


def test_duplicates_and_role_references() -> None:
    text = (f"{HEADER}\n"
            "winter,mentor,A,a@b.org,,,\n"
            "winter,mentee,B,A@B.org,,,\n"  # same person (email is case-insensitive)
            "winter,mentee,C,c@b.org,,,d@b.org\n"
            "winter,mentee,D,d@b.org,,,\n"
            "spring,mentor,A,a@b.org,,,\n")  # another cohort: fine
    found = problems(text)
    assert "line 3: a@b.org is already on line 2 for cohort winter" in found
    assert "line 4: mentor d@b.org is a mentee on line 5, not a mentor" in found
    assert len(found) == 2


def test_a_duplicate_of_a_bad_row_is_reported_with_it() -> None:
    """Issue 16: the bad email on one row hid that the next row lists the same person."""
    text = (f"{HEADER}\n"
            "winter,mentor,A,a@@b.org,@a:b.org,,\n"
            "winter,mentee,A again,,@A:b.org,,\n"
            "winter,mentor,C,c@b.org,,Mars/Base,\n"
            "winter,mentee,D,d@b.org,,,c@b.org\n")  # fine; its mentor's row is not
    assert problems(text) == [
        "line 2: email 'a@@b.org' is not an email address",
        "line 3: @A:b.org is already on line 2 for cohort winter",
        "line 4: timezone 'Mars/Base' is not a known time zone (like Europe/Berlin)",
    ]
    roster, found = check_roster(text)
    assert [r.line for r in roster.rows] == [5]  # the importer checks the good rows further
    assert found.has_failed("winter", "C@B.org") and not found.has_failed("winter", "d@b.org")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "line 1: the file is empty"),
        ("\n\n", "line 1: the file is empty"),
        ("cohort,role,name,email,matrix_id,timezone\n", "missing column(s) mentor"),
        (HEADER + ",notes\n", "unknown column(s) 'notes'"),
        (HEADER + ",role\n", "column(s) role appear more than once"),
        (HEADER + '\nwinter,mentor,"A,a@b.org,,,\n', "line 2: cannot read the CSV"),
    ],
)
def test_header_and_structure(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in p for p in found), found


def test_a_quoted_newline_reports_the_row_start() -> None:
    text = f'{HEADER}\nwinter,mentor,"two\nlines",a@b.org,,,\nwinter,boss,B,b@b.org,,,\n'
    found = problems(text)
    # The multi-line name is a line break problem on line 2; the bad role is on line 4.
    assert [p.split(":")[0] for p in found] == ["line 2", "line 4"]


def test_decoding_reports_the_line_of_a_bad_byte() -> None:
    data = (HEADER + "\nwinter,mentor,A,a@b.org,,,\nwinter,mentor,").encode() + b"\xff\xfe,b@b.org,,,\n"
    with pytest.raises(RosterError) as e:
        decode_roster(data)
    assert e.value.problems == ["line 3: not valid UTF-8 (save the file as UTF-8 CSV)"]
    assert decode_roster(b"\xef\xbb\xbf" + HEADER.encode()) == HEADER


def test_row_limit() -> None:
    rows = "\n".join(f"c,mentor,,m{i}@b.org,,," for i in range(MAX_ROWS + 1))
    found = problems(f"{HEADER}\n{rows}\n")
    assert found == [f"line {MAX_ROWS + 2}: too many rows: at most {MAX_ROWS} per import"]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_parses_or_fails_with_line_numbered_problems(text: str) -> None:
    try:
        parse_roster(HEADER + "\n" + text)
    except RosterError as e:
        assert e.problems
        assert all(p.startswith("line ") or p.startswith("...") for p in e.problems)


# Any name hub.core.names accepts: no control characters, line or paragraph separators, bidi overrides.
_name = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp"),
                              exclude_characters="\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"),
                max_size=30).map(str.strip)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(_name, st.sampled_from(["mentor", "mentee", "moderator"])),
                min_size=1, max_size=20))
def test_generated_rosters_round_trip(people: list[tuple[str, str]]) -> None:
    import csv
    import io

    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(COLUMNS)
    for i, (name, role) in enumerate(people):
        w.writerow(["c", role, name, f"p{i}@example.org", f"@p{i}:example.org", "", ""])
    roster = parse_roster(out.getvalue())
    assert [(r.name, r.role, r.email) for r in roster.rows] == [
        (name, role, f"p{i}@example.org") for i, (name, role) in enumerate(people)]
