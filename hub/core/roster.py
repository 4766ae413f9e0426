"""The roster CSV (PRODUCT.md "Roster CSV"): parsed and checked whole before anything is applied.

`parse_roster` either returns every row, typed and validated, or raises
`RosterError` listing each problem as ``line N: reason``. Lines are the
file's physical lines (a quoted field spanning lines is reported at the line
where its row starts), counting the header as line 1 unless blank lines come
first. Whether the cohorts and mentors named exist in the database is the
importer's question; everything that can be checked from the file alone is
checked here.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hub.core.cohorts import ROLES, Who, is_email, is_matrix_id, parse_who, valid_slug
from hub.core.names import name_problem
from hub.errors import RosterError

__all__ = ["COLUMNS", "MAX_ROWS", "Roster", "RosterRow", "decode_roster", "parse_roster"]

COLUMNS = ("cohort", "role", "name", "email", "matrix_id", "timezone", "mentor")
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

    @property
    def who(self) -> Who:
        return Who(matrix_id=self.matrix_id, email=self.email)


@dataclass(frozen=True)
class Roster:
    rows: tuple[RosterRow, ...]

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


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.more = 0

    def add(self, line: int, message: str) -> None:
        if len(self.items) < _MAX_PROBLEMS:
            self.items.append(f"line {line}: {message}")
        else:
            self.more += 1

    def raise_if_any(self) -> None:
        if self.items:
            extra = [f"... and {self.more} more problems"] if self.more else []
            raise RosterError(self.items + extra)


def _clean(value: str) -> str:
    return value.strip()


def parse_roster(text: str) -> Roster:
    """Parse and check the whole file; RosterError lists every problem (nothing is applied)."""
    if text.startswith("\ufeff"):
        text = text[1:]
    problems = _Problems()
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows: list[RosterRow] = []
    seen: dict[tuple[str, str], int] = {}
    last_line = 0
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
        if len(rows) >= MAX_ROWS:
            problems.add(start, f"too many rows: at most {MAX_ROWS} per import")
            break
        if len(record) != len(header):
            problems.add(start, f"expected {len(header)} fields like the header, found {len(record)} "
                                "(a comma inside a value needs \"quotes\")")
            continue
        row = _row(dict(zip(header, record, strict=True)), start, problems)
        if row is None:
            continue
        for ident in (row.matrix_id, row.email):
            if ident is None:
                continue
            key = (row.cohort, ident.lower())
            if key in seen:
                problems.add(start, f"{ident} is already on line {seen[key]} for cohort {row.cohort}")
            else:
                seen[key] = start
        rows.append(row)
    if header is None:
        problems.add(1, "the file is empty; the first line must be the header "
                        + ",".join(COLUMNS))
    _check_mentors(rows, problems)
    problems.raise_if_any()
    return Roster(tuple(rows))


def _check_header(header: list[str], line: int, problems: _Problems) -> None:
    missing = [c for c in COLUMNS if c not in header]
    unknown = [c for c in header if c not in COLUMNS]
    dupes = sorted({c for c in header if header.count(c) > 1})
    expected = f"expected the header {','.join(COLUMNS)}"
    if unknown:
        problems.add(line, f"unknown column(s) {', '.join(repr(c) for c in unknown)}; {expected}")
    if missing:
        problems.add(line, f"missing column(s) {', '.join(missing)}; {expected}")
    if dupes:
        problems.add(line, f"column(s) {', '.join(dupes)} appear more than once")


def _row(values: dict[str, str], line: int, problems: _Problems) -> RosterRow | None:
    before = len(problems.items) + problems.more
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
    mentor: Who | None = None
    if mentor_text:
        if role != "mentee":
            problems.add(line, f"only mentee rows name a mentor; this row's role is {role or 'empty'}")
        else:
            try:
                mentor = parse_who(mentor_text)
            except ValueError as e:
                problems.add(line, f"mentor: {e}")
    if len(problems.items) + problems.more != before:
        return None
    return RosterRow(line, cohort, role, name, email, matrix_id, tz, mentor)


def _check_mentors(rows: list[RosterRow], problems: _Problems) -> None:
    """A mentor named in the file must be a mentor there; one named elsewhere is the importer's check."""
    by_ident: dict[tuple[str, str], RosterRow] = {}
    for r in rows:
        for ident in (r.matrix_id, r.email):
            if ident:
                by_ident[(r.cohort, ident.lower())] = r
    for r in rows:
        if r.mentor is None:
            continue
        ident = (r.mentor.matrix_id or r.mentor.email or "").lower()
        target = by_ident.get((r.cohort, ident))
        if target is r:
            problems.add(r.line, "a mentee cannot be their own mentor")
        elif target is not None and target.role != "mentor":
            problems.add(r.line, f"mentor {ident} is a {target.role} on line {target.line}, not a mentor")
