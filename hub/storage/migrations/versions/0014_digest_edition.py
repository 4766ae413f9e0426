"""Digest editions: a week's digest stored once, rendered per person when each email is sent.

Revision ID: 0014
Revises: 0013

`digest_edition` holds what every recipient's digest shares (the week's prompts,
webinars, lounge pulse, tip, and the builder's public URL and List-Id) as JSON. A
digest email's outbox row then carries only the edition id and that person's part
(name, zone, pair counts, signed unsubscribe token), and whichever process claims
the row (`hub run` or a `hub worker`) renders it (hub.features.digest_mail). Rows
queued before this migration carry the whole rendered email and are sent as they are.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision: str | None = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "digest_edition",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("cohort", sa.String(63), nullable=False),
        sa.Column("week", sa.Integer(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("digest_edition")
