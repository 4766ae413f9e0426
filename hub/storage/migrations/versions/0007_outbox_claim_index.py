"""Outbox: the claim's index walks queued rows in `seq` order on PostgreSQL too.

Revision ID: 0007
Revises: 0006

The dispatcher's claim takes the oldest due lane heads (`status = 'queued'
ORDER BY seq LIMIT n`). On SQLite the index on `status` already yields seq
order (the rowid is the index's last column); PostgreSQL's does not, so it
walked the primary key through the whole history of sent rows, filtering
them out, for every claim: 40 ms per claim with 30,000 sent rows behind the
queue. `(status, seq)` replaces `(status)`: same use for every other query,
and the claim reads only the rows it returns.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_outbox_status_seq", "outbox", ["status", "seq"])
    op.drop_index("ix_outbox_status", table_name="outbox")


def downgrade() -> None:
    op.create_index("ix_outbox_status", "outbox", ["status"])
    op.drop_index("ix_outbox_status_seq", table_name="outbox")
