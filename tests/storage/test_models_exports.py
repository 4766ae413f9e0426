"""hub.storage.models says what it offers: every table, as a class and as a Core `Table`, is in `__all__`."""

from __future__ import annotations

from sqlalchemy import Table
from sqlmodel import SQLModel

import hub.storage.models as models


def test_all_names_exist_and_every_table_is_exported() -> None:
    exported = set(models.__all__)
    assert all(hasattr(models, name) for name in exported)
    classes = {name for name, value in vars(models).items()
               if isinstance(value, type) and issubclass(value, SQLModel) and value is not SQLModel
               and value.__module__ == models.__name__}
    tables = {name for name, value in vars(models).items() if isinstance(value, Table)}
    assert classes and tables
    assert classes <= exported, sorted(classes - exported)
    assert tables <= exported, sorted(tables - exported)
