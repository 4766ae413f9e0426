"""Matching (PRODUCT.md "Matching"): people's languages, topics, capacity and private avoid list;
rematch requests, counted.

Revision ID: 0011
Revises: 0010

The four member columns come from the roster's optional columns (`;`-separated
lists as stored text; `capacity` NULL means the default, 1). `avoid` holds
Matrix ids and emails never to pair the person with: private, it is read only
by the matcher (hub.features.matching_store) and never shown. `rematch_request`
counts `!hub rematch` asks per cohort for the moderators' report, deliberately
without the person, like `private_checkin`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision: str | None = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("member", sa.Column("languages", sa.Text(), nullable=True))
    op.add_column("member", sa.Column("topics", sa.Text(), nullable=True))
    op.add_column("member", sa.Column("capacity", sa.Integer(), nullable=True))
    op.add_column("member", sa.Column("avoid", sa.Text(), nullable=True))
    op.create_table(
        "rematch_request",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("cohort_id", sa.Integer(), sa.ForeignKey("cohort.id"), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
    )
    op.create_index("ix_rematch_request_cohort_id", "rematch_request", ["cohort_id"])


def downgrade() -> None:
    op.drop_index("ix_rematch_request_cohort_id", table_name="rematch_request")
    op.drop_table("rematch_request")
    with op.batch_alter_table("member") as batch:
        batch.drop_column("avoid")
        batch.drop_column("capacity")
        batch.drop_column("topics")
        batch.drop_column("languages")
