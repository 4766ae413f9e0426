"""Which databases the storage tests run on: SQLite always, PostgreSQL when HUB_TEST_DATABASE_URL is set."""

from __future__ import annotations

import os

__all__ = ["PG_URL", "backends"]

PG_URL = os.environ.get("HUB_TEST_DATABASE_URL")


def backends() -> list[str]:
    """Storage tests run on SQLite always and on PostgreSQL when configured (CI sets it)."""
    if PG_URL:
        return ["sqlite", "postgresql"]
    if os.environ.get("CI"):
        raise RuntimeError("CI must set HUB_TEST_DATABASE_URL so storage tests run on PostgreSQL")
    return ["sqlite"]
