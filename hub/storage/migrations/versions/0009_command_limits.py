"""Command limits: uses of a rate-limited command, counted per key over a day.

Revision ID: 0009
Revises: 0008

`!hub email ADDRESS` mails a code to any address, so it is limited per person
and per address per day; the count lives here so that a restart does not
reset it. One row per use and key (`email-confirm:person:@a:x`,
`email-confirm:address:a@example.org`); rows older than a day are deleted when
the same key is used again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision: str | None = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "command_use",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(400), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
    )
    op.create_index("ix_command_use_key_at", "command_use", ["key", "at"])


def downgrade() -> None:
    op.drop_index("ix_command_use_key_at", table_name="command_use")
    op.drop_table("command_use")
