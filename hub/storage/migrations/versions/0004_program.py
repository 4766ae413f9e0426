"""The program: content rotation, calendar bookkeeping, check-ins, plans.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Calendar bookkeeping (hub.program_store). What was *sent* is not here: the
    # outbox's unique dedupe_key is the record of that.
    op.create_table(
        "program_tick",
        sa.Column("cohort", sa.String(63), primary_key=True),
        sa.Column("last_tick", sa.Float(), nullable=False),
    )
    op.create_table(
        "program_skipped",
        sa.Column("item_key", sa.String(200), primary_key=True),
        sa.Column("cohort", sa.String(63), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("week", sa.Integer(), nullable=True),
        sa.Column("due_at", sa.Float(), nullable=False),
        sa.Column("skipped_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_program_skipped_cohort", "program_skipped", ["cohort"])


def downgrade() -> None:
    op.drop_index("ix_program_skipped_cohort", table_name="program_skipped")
    op.drop_table("program_skipped")
    op.drop_table("program_tick")
