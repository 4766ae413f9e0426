"""Tables. Times are UNIX seconds (float) so SQLite and PostgreSQL compare them alike.

The schema itself is owned by the numbered migrations in `migrations/versions`;
these classes must match them (a test compares the two).
"""

from __future__ import annotations

from sqlalchemy import Table
from sqlmodel import Field, SQLModel

__all__ = [
    "AuditEntry",
    "HandledEvent",
    "KeyValue",
    "OutboxRow",
    "audit_table",
    "metadata",
    "outbox_table",
]


class KeyValue(SQLModel, table=True):
    """Small pieces of state: the Matrix session (access token, device id), the sync token."""

    __tablename__ = "kv"
    key: str = Field(primary_key=True, max_length=200)
    value: str


class HandledEvent(SQLModel, table=True):
    """Inbound events already handled, so an event id is handled at most once."""

    __tablename__ = "handled_event"
    event_id: str = Field(primary_key=True, max_length=255)
    room_id: str = Field(max_length=255)
    handled_at: float


class OutboxRow(SQLModel, table=True):
    """One outgoing side effect: a chat message, a state change or one email.

    `seq` orders rows; rows sharing a `lane` (a room id, an email address) are
    sent strictly in `seq` order. `txn_id` is the Matrix transaction id and the
    email Message-ID's local part, stable across retries. `dedupe_key` is the
    natural key of the logical message: queueing the same one twice is a no-op.
    """

    __tablename__ = "outbox"
    seq: int | None = Field(default=None, primary_key=True)
    txn_id: str = Field(unique=True, max_length=64)
    dedupe_key: str = Field(unique=True, max_length=400)
    channel: str = Field(max_length=16)  # matrix | email
    kind: str = Field(max_length=64)
    lane: str = Field(index=True, max_length=320)
    payload: str  # JSON
    status: str = Field(default="queued", index=True, max_length=16)  # queued|sending|sent|failed
    attempts: int = 0
    not_before: float = 0.0
    claimed_until: float | None = None
    created_at: float
    sent_at: float | None = None
    last_error: str | None = None
    result: str | None = Field(default=None, max_length=255)  # event id, SMTP reply


class AuditEntry(SQLModel, table=True):
    """A moderator action (PRODUCT.md: `!hub audit`)."""

    __tablename__ = "audit"
    id: int | None = Field(default=None, primary_key=True)
    at: float
    actor: str = Field(max_length=255)
    room_id: str = Field(max_length=255)
    command: str
    outcome: str = Field(max_length=32)


metadata = SQLModel.metadata

# Typed handles on the tables for SQL expressions (SQLModel's class attributes
# look like plain values to mypy).
outbox_table: Table = OutboxRow.__table__  # type: ignore[attr-defined]
audit_table: Table = AuditEntry.__table__  # type: ignore[attr-defined]
