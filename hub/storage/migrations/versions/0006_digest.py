"""Digest: room activity from the sync, lounge posts and reactions, subscriber handles.

Revision ID: 0006
Revises: 0005

Privacy is in the shape of these tables: `room_activity` is the only one that
sees pair and direct rooms, and it holds a time and a count, never words;
`lounge_post` holds a short excerpt, and only lounge messages are ever written
to it (hub.activity decides by the room's kind before it looks at content).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Per hub room (lounge, pair, direct): when someone other than the hub last
    # spoke, and how many messages the hub has seen there. Counts only.
    op.create_table(
        "room_activity",
        sa.Column("room_id", sa.String(255), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("messages", sa.Integer(), nullable=False),
        sa.Column("last_active_at", sa.Float(), nullable=False),
    )
    # Lounge messages, for "lounge messages this week" and the most-reacted posts.
    op.create_table(
        "lounge_post",
        sa.Column("event_id", sa.String(255), primary_key=True),
        sa.Column("room_id", sa.String(255), nullable=False),
        sa.Column("sender", sa.String(255), nullable=False),
        sa.Column("sender_name", sa.String(200), nullable=False),
        sa.Column("excerpt", sa.Text(), nullable=False),
        sa.Column("sent_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_lounge_post_room_sent", "lounge_post", ["room_id", "sent_at"])
    # One row per m.reaction annotation on a lounge post: the event id makes a replayed sync harmless.
    op.create_table(
        "lounge_reaction",
        sa.Column("event_id", sa.String(255), primary_key=True),
        sa.Column("post_event_id", sa.String(255), nullable=False),
        sa.Column("sender", sa.String(255), nullable=False),
        sa.Column("sent_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_lounge_reaction_post", "lounge_reaction", ["post_event_id"])
    # The opaque handle signed into a person's unsubscribe links. `person` is the
    # key their preferences live under in person_pref: a Matrix id, or
    # "mailto:ADDRESS" for someone who has no Matrix account.
    op.create_table(
        "subscriber",
        sa.Column("handle", sa.String(64), primary_key=True),
        sa.Column("person", sa.String(300), nullable=False, unique=True),
        sa.Column("created_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("subscriber")
    op.drop_index("ix_lounge_reaction_post", table_name="lounge_reaction")
    op.drop_table("lounge_reaction")
    op.drop_index("ix_lounge_post_room_sent", table_name="lounge_post")
    op.drop_table("lounge_post")
    op.drop_table("room_activity")
