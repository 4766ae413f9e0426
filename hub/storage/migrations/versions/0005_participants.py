"""Participants' side of the program: backup plans, content rotation, check-ins, preferences, webinars.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A pair's backup plan; `event_id` is the pinned plan message once it is sent.
    op.create_table(
        "pair_plan",
        sa.Column("pair_id", sa.Integer(), sa.ForeignKey("pair.id"), primary_key=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("set_at", sa.Float(), nullable=False),
        sa.Column("message_key", sa.String(400), nullable=True),
        sa.Column("event_id", sa.String(255), nullable=True),
    )
    # Which rotating content a room has had (icebreakers, reflection prompts, video nudges).
    op.create_table(
        "content_use",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("scope", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("item_id", sa.String(80), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("used_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_content_use_scope_kind", "content_use", ["scope", "kind"])
    # "Did you meet, and how?": one answer per pair and program week (the latest wins).
    op.create_table(
        "checkin_answer",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("pair_id", sa.Integer(), sa.ForeignKey("pair.id"), nullable=False),
        sa.Column("cohort_id", sa.Integer(), sa.ForeignKey("cohort.id"), nullable=False),
        sa.Column("week", sa.Integer(), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("answered_at", sa.Float(), nullable=False),
        sa.UniqueConstraint("pair_id", "week", name="uq_checkin_answer_pair_week"),
    )
    op.create_index("ix_checkin_answer_cohort_id", "checkin_answer", ["cohort_id"])
    # Private 1-5 check-ins, deliberately without the person: only counts can come out.
    op.create_table(
        "private_checkin",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("cohort_id", sa.Integer(), sa.ForeignKey("cohort.id"), nullable=True),
        sa.Column("week", sa.Integer(), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
    )
    op.create_index("ix_private_checkin_cohort_id", "private_checkin", ["cohort_id"])
    # Per Matrix user: email preferences and snooze.
    op.create_table(
        "person_pref",
        sa.Column("user_id", sa.String(255), primary_key=True),
        sa.Column("email_mode", sa.String(16), nullable=False),
        sa.Column("email", sa.String(254), nullable=True),
        sa.Column("pending_email", sa.String(254), nullable=True),
        sa.Column("pending_code", sa.String(64), nullable=True),
        sa.Column("pending_at", sa.Float(), nullable=True),
        sa.Column("snooze_until", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    # Webinars scheduled with `!hub webinar` (config webinars stay in the config).
    op.create_table(
        "webinar",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("cohort_id", sa.Integer(), sa.ForeignKey("cohort.id"), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("url", sa.String(2000), nullable=True),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("announce_at", sa.Float(), nullable=False),
        sa.UniqueConstraint("cohort_id", "at", name="uq_webinar_cohort_at"),
    )


def downgrade() -> None:
    op.drop_table("webinar")
    op.drop_table("person_pref")
    op.drop_index("ix_private_checkin_cohort_id", table_name="private_checkin")
    op.drop_table("private_checkin")
    op.drop_index("ix_checkin_answer_cohort_id", table_name="checkin_answer")
    op.drop_table("checkin_answer")
    op.drop_index("ix_content_use_scope_kind", table_name="content_use")
    op.drop_table("content_use")
    op.drop_table("pair_plan")
