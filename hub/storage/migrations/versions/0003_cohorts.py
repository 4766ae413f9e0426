"""Cohorts, people, pairs and the rooms the hub owns.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cohort",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("slug", sa.String(63), nullable=False, unique=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("start_date", sa.String(10), nullable=False),
        sa.Column("weeks", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "member",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("cohort_id", sa.Integer(), sa.ForeignKey("cohort.id"), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("email", sa.String(254), nullable=True),
        sa.Column("matrix_id", sa.String(255), nullable=True),
        sa.Column("timezone", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("removed_at", sa.Float(), nullable=True),
        sa.Column("reminded_at", sa.Float(), nullable=True),
        sa.UniqueConstraint("cohort_id", "matrix_id", name="uq_member_cohort_matrix_id"),
        sa.UniqueConstraint("cohort_id", "email", name="uq_member_cohort_email"),
    )
    op.create_index("ix_member_cohort_id", "member", ["cohort_id"])
    op.create_index("ix_member_matrix_id", "member", ["matrix_id"])
    op.create_table(
        "pair",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("cohort_id", sa.Integer(), sa.ForeignKey("cohort.id"), nullable=False),
        sa.Column("mentor_id", sa.Integer(), sa.ForeignKey("member.id"), nullable=False),
        sa.Column("mentee_id", sa.Integer(), sa.ForeignKey("member.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("video_name", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("paused_at", sa.Float(), nullable=True),
        sa.Column("closed_at", sa.Float(), nullable=True),
    )
    op.create_index("ix_pair_cohort_id", "pair", ["cohort_id"])
    op.create_index("ix_pair_mentor_id", "pair", ["mentor_id"])
    # A mentee has at most one open pair: the database, not only the code, says so.
    op.create_index(
        "uq_pair_open_mentee",
        "pair",
        ["mentee_id"],
        unique=True,
        sqlite_where=sa.text("status != 'closed'"),
        postgresql_where=sa.text("status != 'closed'"),
    )
    op.create_table(
        "hub_room",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(200), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("room_id", sa.String(255), nullable=True, unique=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("cohort_id", sa.Integer(), sa.ForeignKey("cohort.id"), nullable=True),
        sa.Column("pair_id", sa.Integer(), sa.ForeignKey("pair.id"), nullable=True),
        sa.Column("user_id", sa.String(255), nullable=True),
        sa.Column("room_version", sa.String(32), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("ready_at", sa.Float(), nullable=True),
        sa.Column("problem", sa.Text(), nullable=True),
    )
    op.create_index("ix_hub_room_cohort_id", "hub_room", ["cohort_id"])
    op.create_index("ix_hub_room_pair_id", "hub_room", ["pair_id"])
    op.create_index("ix_hub_room_user_id", "hub_room", ["user_id"])
    op.create_table(
        "room_member",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("room_pk", sa.Integer(), sa.ForeignKey("hub_room.id"), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("invited_at", sa.Float(), nullable=True),
        sa.Column("joined_at", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.UniqueConstraint("room_pk", "user_id", name="uq_room_member"),
    )
    op.create_index("ix_room_member_room_pk", "room_member", ["room_pk"])
    op.create_index("ix_room_member_user_id", "room_member", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_room_member_user_id", table_name="room_member")
    op.drop_index("ix_room_member_room_pk", table_name="room_member")
    op.drop_table("room_member")
    op.drop_index("ix_hub_room_user_id", table_name="hub_room")
    op.drop_index("ix_hub_room_pair_id", table_name="hub_room")
    op.drop_index("ix_hub_room_cohort_id", table_name="hub_room")
    op.drop_table("hub_room")
    op.drop_index("uq_pair_open_mentee", table_name="pair")
    op.drop_index("ix_pair_mentor_id", table_name="pair")
    op.drop_index("ix_pair_cohort_id", table_name="pair")
    op.drop_table("pair")
    op.drop_index("ix_member_matrix_id", table_name="member")
    op.drop_index("ix_member_cohort_id", table_name="member")
    op.drop_table("member")
    op.drop_table("cohort")
