"""Outbox: PostgreSQL compresses payloads with lz4 instead of pglz.

Revision ID: 0008
Revises: 0007

A digest email's payload (text and HTML) is about 21 KB, so PostgreSQL
TOASTs and compresses every one. With the default pglz, compressing 2,000 of
them took most of the second it took to queue a digest, and the dispatcher
pays again to decompress each claim. lz4 does the same work several times
faster for a little less compression. It exists from PostgreSQL 14 on, and
only on servers built with it: anywhere else the column keeps pglz, which is
slower but otherwise the same. Only new values are affected; SQLite has no
such setting.
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

revision = "0008"
down_revision: str | None = "0007"
branch_labels = None
depends_on = None


def _set_compression(method: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    version = bind.execute(text("SHOW server_version_num")).scalar()
    if int(str(version)) < 140000:
        return
    try:
        with bind.begin_nested():  # a savepoint: a server without lz4 must not abort the migration
            bind.execute(text(f"ALTER TABLE outbox ALTER COLUMN payload SET COMPRESSION {method}"))
    except DBAPIError:
        pass  # built without lz4 ("compression method lz4 not supported"): keep pglz


def upgrade() -> None:
    _set_compression("lz4")


def downgrade() -> None:
    _set_compression("default")
