"""Prompts that take answers by reaction, and each person's current answer to them.

Revision ID: 0010
Revises: 0009

A prompt ("did you meet?" in a pair room, the private check-in in a direct
room) is recorded once the homeserver has given it an event id, with whom it
asks and the program week (hub.features.prompts). `prompt_answer` keeps what
a person's latest reaction or reply to it chose, so a different reaction can
replace the answer and a redaction withdraw it; rows go when the prompt stops
taking answers (14 days).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision: str | None = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prompt",
        sa.Column("event_id", sa.String(255), primary_key=True),
        sa.Column("room_id", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("cohort_id", sa.Integer(), sa.ForeignKey("cohort.id"), nullable=True),
        sa.Column("pair_id", sa.Integer(), sa.ForeignKey("pair.id"), nullable=True),
        sa.Column("user_id", sa.String(255), nullable=True),
        sa.Column("week", sa.Integer(), nullable=False),
        sa.Column("sent_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_prompt_sent_at", "prompt", ["sent_at"])
    op.create_table(
        "prompt_answer",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("prompt_event_id", sa.String(255), sa.ForeignKey("prompt.event_id"), nullable=False),
        sa.Column("sender", sa.String(255), nullable=False),
        sa.Column("answer_event_id", sa.String(255), nullable=False),
        sa.Column("option", sa.String(16), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.UniqueConstraint("prompt_event_id", "sender", name="uq_prompt_answer_sender"),
    )
    op.create_index("ix_prompt_answer_answer_event_id", "prompt_answer", ["answer_event_id"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_prompt_answer_answer_event_id", table_name="prompt_answer")
    op.drop_table("prompt_answer")
    op.drop_index("ix_prompt_sent_at", table_name="prompt")
    op.drop_table("prompt")
