"""Outbox: a priority, so replies are claimed ahead of a fan-out in progress.

Revision ID: 0013
Revises: 0012

`priority` is `hub.core.ports.Priority`: 0 for a row someone is waiting for (a
command's answer), 1 for a fan-out (scheduled items, digests, roster
provisioning). Existing rows become 0: a queue left from before the upgrade is
sent in the order it always was. The claim walks `(status, priority, seq)` in
order and stops at its limit, as it walked `(status, seq)` before (0007); the
new index replaces that one, which serves no query the new one cannot.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision: str | None = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("priority", sa.SmallInteger(), nullable=False, server_default="0"))
    op.create_index("ix_outbox_status_priority_seq", "outbox", ["status", "priority", "seq"])
    op.drop_index("ix_outbox_status_seq", table_name="outbox")


def downgrade() -> None:
    op.create_index("ix_outbox_status_seq", "outbox", ["status", "seq"])
    op.drop_index("ix_outbox_status_priority_seq", table_name="outbox")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("priority")
