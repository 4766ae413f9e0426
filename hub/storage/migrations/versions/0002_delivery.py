"""Delivery engine: email suppression and delivery bookkeeping.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "email_suppression",
        sa.Column("address", sa.String(320), primary_key=True),
        sa.Column("code", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("txn_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    # Which dispatcher instance holds a `sending` claim (see hub.delivery.dispatcher).
    op.add_column("outbox", sa.Column("claimed_by", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("claimed_by")
    op.drop_table("email_suppression")
