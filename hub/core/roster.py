"""The roster CSV (PRODUCT.md "Roster CSV"): parsed and checked whole before anything is applied.

`parse_roster` either returns every row, typed and validated, or raises
`RosterError` listing each problem as ``line N: reason``. `check_roster` returns
the rows without a problem and the problems found so far, so the importer can
add what the database says about those rows and report every bad row of every
kind in one run (hub.features.roster). Lines are the file's physical lines (a
quoted field spanning lines is reported at the line where its row starts),
counting the header as line 1 unless blank lines come first. Whether the
cohorts and mentors named exist in the database is the importer's question;
everything that can be checked from the file alone is checked here.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hub.core.cohorts import ROLES, Who, is_email, is_matrix_id, parse_who, valid_slug
from hub.core.matching import MAX_CAPACITY
from hub.core.names import name_problem
from hub.errors import RosterError

__all__ = ["COLUMNS", "MAX_ROWS", "OPTIONAL_COLUMNS", "Roster", "RosterProblems", "RosterRow", "check_roster",
           "decode_roster", "parse_roster"]

COLUMNS = ("cohort", "role", "name", "email", "matrix_id", "timezone", "mentor")
# The matching columns (PRODUCT.md "Roster CSV"), in any order after or among the others.
OPTIONAL_COLUMNS = ("languages", "topics", "capacity", "avoid")
_MAX_WORD = 60  # one language or topic
MAX_ROWS = 50_000
_MAX_PROBLEMS = 50
_MAX_FIELD = 1000


@dataclass(frozen=True)
class RosterRow:
    line: int
    cohort: str
    role: str
    name: str
    email: str | None
    matrix_id: str | None
    timezone: str | None
    mentor: Who | None
    # The matching columns; None where the file has no such column (the stored value stays).
    languages: tuple[str, ...] | None = None
    topics: tuple[str, ...] | None = None
    capacity: int | None = None  # mentors: None when the file has no capacity column
    avoid: tuple[Who, ...] | None = None  # private: never repeated in any message but the file's own

    @property
    def who(self) -> Who:
        return Who(matrix_id=self.matrix_id, email=self.email)


@dataclass(frozen=True)
class Roster:
    rows: tuple[RosterRow, ...]
    columns: tuple[str, ...] = COLUMNS  # the header as read, so an absent column changes nothing

    @property
    def cohorts(self) -> list[str]:
        return sorted({r.cohort for r in self.rows})


def decode_roster(data: bytes) -> str:
    """UTF-8 (a byte-order mark is dropped); a bad byte is reported with its line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise RosterError([f"line {line}: not valid UTF-8 (save the file as UTF-8 CSV)"]) from None


class RosterProblems:
    """Every problem found in one import, from the file and then from the database.

    `failed` holds the (cohort, identifier) of every row with a problem, so a later
    check does not report a second, misleading problem about the same person (a
    mentee whose mentor's row is bad is not also told that the mentor does not exist).
    """

    def __init__(self) -> None:
        self._found: list[tuple[int, str]] = []
        self.failed: set[tuple[str, str]] = set()

    def __len__(self) -> int:
        return len(self._found)

    def add(self, line: int, message: str) -> None:
        self._found.append((line, message))

    def fail(self, cohort: str, *idents: str | None) -> None:
        self.failed.update((cohort, i.lower()) for i in idents if i)

    def has_failed(self, cohort: str, ident: str | None) -> bool:
        return bool(ident) and (cohort, (ident or "").lower()) in self.failed

    def lines(self) -> list[str]:
        """``line N: reason`` in file order (a stable sort: one line's problems keep their order)."""
        ordered = sorted(self._found, key=lambda p: p[0])
        shown = [f"line {line}: {message}" for line, message in ordered[:_MAX_PROBLEMS]]
        more = len(ordered) - len(shown)
        return shown + ([f"... and {more} more problems"] if more else [])

    def raise_if_any(self) -> None:
        if self._found:
            raise RosterError(self.lines())


def _clean(value: str) -> str:
    return value.strip()


def parse_roster(text: str) -> Roster:
    """Parse and check the whole file; RosterError lists every problem (nothing is applied)."""
    roster, problems = check_roster(text)
    problems.raise_if_any()
    return roster


def check_roster(text: str) -> tuple[Roster, RosterProblems]:
    """The rows without a problem, and every problem of the others.

    Raises RosterError at once only when no row can be read at all (an empty file,
    a bad header): there is nothing else to check then.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    problems = RosterProblems()
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows: list[RosterRow] = []
    seen: dict[tuple[str, str], int] = {}
    last_line = 0
    read = 0
    while True:
        start = last_line + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            problems.add(reader.line_num or start, f"cannot read the CSV: {e}")
            break
        last_line = reader.line_num
        if not record or all(not f.strip() for f in record):
            continue  # blank lines are allowed anywhere
        if header is None:
            header = [f.strip().lower() for f in record]
            _check_header(header, start, problems)
            problems.raise_if_any()
            continue
        if read >= MAX_ROWS:
            problems.add(start, f"too many rows: at most {MAX_ROWS} per import")
            break
        read += 1
        if len(record) != len(header):
            problems.add(start, f"expected {len(header)} fields like the header, found {len(record)} "
                                "(a comma inside a value needs \"quotes\")")
            continue
        values = dict(zip(header, record, strict=True))
        row = _row(values, start, problems)
        # Duplicates are found on the values as written, so a person listed twice is reported
        # even when one of the two rows has another problem (a bad email, say).
        cohort = _clean(values["cohort"]).lower()
        idents = [i for i in (_clean(values["matrix_id"]), _clean(values["email"]).lower()) if i]
        duplicate = False
        for ident in idents:
            key = (cohort, ident.lower())
            if key in seen:
                problems.add(start, f"{ident} is already on line {seen[key]} for cohort {cohort}")
                duplicate = True
            else:
                seen[key] = start
        if row is None or duplicate:
            problems.fail(cohort, *idents)
            continue
        rows.append(row)
    if header is None:
        problems.add(1, "the file is empty; the first line must be the header "
                        + ",".join(COLUMNS))
        problems.raise_if_any()
    bad = _check_mentors(rows, problems)
    for r in rows:
        if r.line in bad:
            problems.fail(r.cohort, r.matrix_id, r.email)
    return Roster(tuple(r for r in rows if r.line not in bad), tuple(header or COLUMNS)), problems


def _check_header(header: list[str], line: int, problems: RosterProblems) -> None:
    missing = [c for c in COLUMNS if c not in header]
    unknown = [c for c in header if c not in COLUMNS and c not in OPTIONAL_COLUMNS]
    dupes = sorted({c for c in header if header.count(c) > 1})
    expected = (f"expected the header {','.join(COLUMNS)}, then any of the optional columns "
                f"{', '.join(OPTIONAL_COLUMNS)}")
    if unknown:
        problems.add(line, f"unknown column(s) {', '.join(repr(c) for c in unknown)}; {expected}")
    if missing:
        problems.add(line, f"missing column(s) {', '.join(missing)}; {expected}")
    if dupes:
        problems.add(line, f"column(s) {', '.join(dupes)} appear more than once")


def _row(values: dict[str, str], line: int, problems: RosterProblems) -> RosterRow | None:
    """The row, or None when it has a problem (each one added to `problems`)."""
    before = len(problems)
    for column, value in values.items():
        if len(value) > _MAX_FIELD:
            problems.add(line, f"{column} is longer than {_MAX_FIELD} characters")
            return None
        if column == "name":
            continue  # checked below with the rules every name follows (hub.core.names)
        if any(ord(ch) < 32 and ch not in "\t" for ch in value) or "\x7f" in value:
            problems.add(line, f"{column} contains control characters")
            return None
    cohort = _clean(values["cohort"]).lower()
    role = _clean(values["role"]).lower()
    name = _clean(values["name"])
    email = _clean(values["email"]).lower() or None
    matrix_id = _clean(values["matrix_id"]) or None
    tz = _clean(values["timezone"]) or None
    mentor_text = _clean(values["mentor"])
    if not cohort:
        problems.add(line, "cohort is empty")
    elif not valid_slug(cohort):
        problems.add(line, f"cohort {cohort!r} is not a cohort slug (lowercase letters, digits, -)")
    if role not in ROLES:
        problems.add(line, f"role must be mentor, mentee or moderator, not {role!r}")
    problem = name_problem(name) if name else None  # an empty name is allowed: the id stands in
    if problem is not None:
        problems.add(line, f"name: {problem}")
    if email is None and matrix_id is None:
        problems.add(line, "needs an email or a matrix_id (or both)")
    if email is not None and not is_email(email):
        problems.add(line, f"email {email!r} is not an email address")
    if matrix_id is not None and not is_matrix_id(matrix_id):
        problems.add(line, f"matrix_id {matrix_id!r} is not a Matrix id (like @name:example.org)")
    if tz is not None:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "America" is a folder, or too long
            problems.add(line, f"timezone {tz!r} is not a known time zone (like Europe/Berlin)")
    matching = _matching_columns(values, role, line, problems)
    mentor: Who | None = None
    if mentor_text:
        if role != "mentee":
            problems.add(line, f"only mentee rows name a mentor; this row's role is {role or 'empty'}")
        else:
            try:
                mentor = parse_who(mentor_text)
            except ValueError as e:
                problems.add(line, f"mentor: {e}")
    if len(problems) != before:
        return None
    return RosterRow(line, cohort, role, name, email, matrix_id, tz, mentor, *matching)


def _words(values: dict[str, str], column: str, line: int,
           problems: RosterProblems) -> tuple[str, ...] | None:
    """A `;`-separated list, lower case, each word once, in the file's order; None without the column."""
    if column not in values:
        return None
    words: list[str] = []
    for word in values[column].split(";"):
        word = " ".join(word.split()).lower()
        if not word or word in words:
            continue
        if len(word) > _MAX_WORD:
            problems.add(line, f"{column}: {word[:20]!r}... is longer than {_MAX_WORD} characters "
                               "(separate the items with ;)")
            return None
        words.append(word)
    return tuple(words)


def _matching_columns(
    values: dict[str, str], role: str, line: int, problems: RosterProblems,
) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None, int | None, tuple[Who, ...] | None]:
    """languages, topics, capacity and avoid of one row; each problem names its column."""
    languages = _words(values, "languages", line, problems)
    topics = _words(values, "topics", line, problems)
    # An empty cell is the default (1), stored; no column leaves the stored capacity alone.
    capacity: int | None = 1 if "capacity" in values and role == "mentor" else None
    raw = _clean(values.get("capacity", ""))
    if raw:
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_CAPACITY:
            problems.add(line, f"capacity {raw[:20]!r} is not a whole number from 1 to {MAX_CAPACITY}")
        elif role != "mentor":
            problems.add(line, f"only mentor rows have a capacity; this row's role is {role or 'empty'}")
        else:
            capacity = int(raw)
    avoid: tuple[Who, ...] | None = None
    if "avoid" in values:
        people: list[Who] = []
        for text in values["avoid"].split(";"):
            if not text.strip():
                continue
            try:
                people.append(parse_who(text.strip()))
            except ValueError:
                problems.add(line, f"avoid: {text.strip()[:80]!r} is neither a Matrix id nor an email "
                                   "address (separate people with ;)")
        avoid = tuple(people)
    return languages, topics, capacity, avoid


def _check_mentors(rows: list[RosterRow], problems: RosterProblems) -> set[int]:
    """A mentor named in the file must be a mentor there; one named elsewhere is the importer's check.

    Returns the lines of the mentee rows with a problem here.
    """
    by_ident: dict[tuple[str, str], RosterRow] = {}
    for r in rows:
        for ident in (r.matrix_id, r.email):
            if ident:
                by_ident[(r.cohort, ident.lower())] = r
    bad: set[int] = set()
    for r in rows:
        if r.mentor is None:
            continue
        ident = (r.mentor.matrix_id or r.mentor.email or "").lower()
        target = by_ident.get((r.cohort, ident))
        if target is r:
            problems.add(r.line, "a mentee cannot be their own mentor")
            bad.add(r.line)
        elif target is not None and target.role != "mentor":
            problems.add(r.line, f"mentor {ident} is a {target.role} on line {target.line}, not a mentor")
            bad.add(r.line)
    return bad
