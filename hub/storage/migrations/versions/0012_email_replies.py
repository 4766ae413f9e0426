"""Replies by email: inbound mail as received, and pair-room messages waiting to be emailed.

Revision ID: 0012
Revises: 0011

`inbound_mail` holds every message the hub's SMTP listener accepted, raw, written
before the listener answers 250 (hub.email.inbound); hub.features.email_replies
handles each row once (posts a reply, or reads a bounce) and records the outcome.
`pair_mail` holds a pair-room message for an email-only member until it goes out
in a batch (hub.features.pair_mail); `mailed_at` marks the batch it went in.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision: str | None = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inbound_mail",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("mail_from", sa.String(320), nullable=False),
        sa.Column("message_id", sa.String(400), nullable=True),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("handled_at", sa.Float(), nullable=True),
    )
    op.create_index("ix_inbound_mail_status", "inbound_mail", ["status"])
    op.create_table(
        "pair_mail",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("room_pk", sa.Integer(), sa.ForeignKey("hub_room.id"), nullable=False),
        sa.Column("member_id", sa.Integer(), sa.ForeignKey("member.id"), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("sender_name", sa.String(200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("sent_at", sa.Float(), nullable=False),
        sa.Column("recorded_at", sa.Float(), nullable=False),
        sa.Column("mailed_at", sa.Float(), nullable=True),
        sa.UniqueConstraint("event_id", "member_id", name="uq_pair_mail_event_member"),
    )
    op.create_index("ix_pair_mail_member_id", "pair_mail", ["member_id"])


def downgrade() -> None:
    op.drop_index("ix_pair_mail_member_id", table_name="pair_mail")
    op.drop_table("pair_mail")
    op.drop_index("ix_inbound_mail_status", table_name="inbound_mail")
    op.drop_table("inbound_mail")
