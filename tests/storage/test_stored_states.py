"""The state enums name exactly the strings the database holds, so a typo in one fails here.

The enums (`hub.core.membership`, `hub.delivery.outbox.OutboxStatus`) replaced bare strings
without a migration: rows written before them must read back equal to a member. What the
database holds is documented once, on the model's column (`# a | b | c`); the enums are
checked against that, against the column defaults, and against the SQL text that cannot use
the enum (the models' partial index, the dispatcher's hand-written claim queries).
"""

from __future__ import annotations

import ast
import inspect
import re
from enum import StrEnum

import pytest

from hub.core.membership import MembershipState, MemberStatus, PairStatus, Role, RoomKind, RoomStatus
from hub.delivery import dispatcher
from hub.delivery.outbox import UNSENT, OutboxStatus
from hub.storage import models

# (model class, column) -> the enum of its values.
COLUMNS: list[tuple[str, str, type[StrEnum]]] = [
    ("OutboxRow", "status", OutboxStatus),
    ("Member", "role", Role),
    ("Member", "status", MemberStatus),
    ("Pair", "status", PairStatus),
    ("HubRoom", "kind", RoomKind),
    ("HubRoom", "status", RoomStatus),
    ("RoomMember", "state", MembershipState),
]


def documented_values(model: str, column: str) -> set[str]:
    """The values the column's comment in models.py lists (same line, or the lines just above)."""
    source = inspect.getsource(models).splitlines()
    tree = ast.parse("\n".join(source))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == model)
    field = next(n for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
                 and n.target.id == column)
    line = source[field.lineno - 1]
    comment = line.split("#", 1)[1] if "#" in line else ""
    above = field.lineno - 2
    while not comment and source[above].strip().startswith("#"):
        comment = source[above].strip().lstrip("#") + comment
        above -= 1
    assert "|" in comment, f"{model}.{column} does not document its values"
    return {re.sub(r"\(.*?\)", "", v).strip() for v in comment.split("|")}


@pytest.mark.parametrize(("model", "column", "enum"), COLUMNS,
                         ids=[f"{m}.{c}" for m, c, _ in COLUMNS])
def test_each_enum_is_the_columns_documented_values(model: str, column: str, enum: type[StrEnum]) -> None:
    assert {e.value for e in enum} == documented_values(model, column)


@pytest.mark.parametrize(("model", "column", "enum"), COLUMNS,
                         ids=[f"{m}.{c}" for m, c, _ in COLUMNS])
def test_a_columns_default_is_a_member(model: str, column: str, enum: type[StrEnum]) -> None:
    default = getattr(models, model).__table__.c[column].default
    if default is not None:
        assert enum(default.arg) == default.arg


def quoted_statuses(sql: str) -> set[str]:
    """The quoted literals a piece of SQL compares `status` with (`status = 'x'`, `IN ('x', 'y')`)."""
    found: set[str] = set()
    for m in re.finditer(r"status\s*(?:=|!=|<>|IN)\s*(\([^)]*\)|'[^']*')", sql, re.IGNORECASE):
        found |= set(re.findall(r"'([^']*)'", m.group(1)))
    return found


def test_sql_text_names_only_enum_values() -> None:
    claim_sql = quoted_statuses(inspect.getsource(dispatcher))
    # The claim reads queued rows, its lane check unsent ones, the recorder writes sent.
    assert claim_sql == {"queued", "sending", "sent"}
    assert claim_sql <= {s.value for s in OutboxStatus}
    index_sql = quoted_statuses(inspect.getsource(models.Pair))
    assert index_sql == {"closed"} and index_sql <= {s.value for s in PairStatus}


def test_the_helper_reads_sql_and_comments() -> None:
    # The checks above can fail: a misspelt value is found, not skipped.
    assert quoted_statuses("WHERE o.status = 'queud' AND p.status IN ('queued', 'sendng')") == {
        "queud", "queued", "sendng"}
    assert documented_values("RoomMember", "state") == {
        "pending", "invited", "joined", "left", "banned", "removed"}


def test_unsent_is_queued_and_sending() -> None:
    assert set(UNSENT) == {"queued", "sending"}
