"""Storage adapter: SQLModel tables on an async engine, Alembic migrations."""

from hub.storage.db import Database, open_database
from hub.storage.models import HandledEvent, KeyValue, OutboxRow

__all__ = ["Database", "HandledEvent", "KeyValue", "OutboxRow", "open_database"]
