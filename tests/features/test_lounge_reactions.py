"""The digest's "most-reacted" lounge posts count other people's reactions, not the author's own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert

from hub.activity import top_lounge_posts
from hub.storage.db import open_database
from hub.storage.models import lounge_post_table, lounge_reaction_table

NOW = datetime(2027, 3, 10, 12, 0, tzinfo=UTC)
ROOM = "!lounge:localhost"


async def test_an_authors_own_reactions_do_not_count(tmp_path: Path) -> None:
    db = await open_database(f"sqlite:///{tmp_path / 'hub.db'}")
    at = (NOW - timedelta(days=1)).timestamp()
    posts = [("$ada", "@ada:x"), ("$bo", "@bo:x"), ("$cy", "@cy:x")]
    reactions = [
        ("$ada", "@ada:x"), ("$ada", "@ada:x"), ("$ada", "@ada:x"),  # Ada likes her own post, thrice
        ("$ada", "@bo:x"),
        ("$bo", "@cy:x"), ("$bo", "@dee:x"),
        ("$cy", "@cy:x"),  # only its author: not a most-reacted post at all
    ]
    try:
        async with db.transaction() as s:
            await s.execute(insert(lounge_post_table), [
                dict(event_id=e, room_id=ROOM, sender=who, sender_name=who[1:3], excerpt=f"post {e}",
                     sent_at=at + i) for i, (e, who) in enumerate(posts)])
            await s.execute(insert(lounge_reaction_table), [
                dict(event_id=f"$r{i}", post_event_id=post, sender=who, sent_at=at + 10 + i)
                for i, (post, who) in enumerate(reactions)])
        async with db.session() as s:
            top = await top_lounge_posts(s, ROOM, NOW - timedelta(days=7))
    finally:
        await db.close()
    assert [(p.event_id, p.reactions) for p in top] == [("$bo", 2), ("$ada", 1)]
