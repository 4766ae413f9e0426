"""`hub roster import` when the running hub keeps SQLite's write lock: a clear message, nothing applied."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hub.storage import db as storage_db

from tests.cli.test_roster import (
    counts,
    roster,
    run,
    write_config,
)


def test_an_import_that_cannot_get_the_write_lock_says_so_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    config = write_config(tmp_path, url)
    csv = tmp_path / "roster.csv"
    csv.write_text(roster(3), encoding="utf-8")
    assert run(str(csv), "-c", str(config), "--dry-run") == 0  # creates and migrates the database
    before = counts(url)
    monkeypatch.setattr(storage_db, "SQLITE_BUSY_MS", 300)  # not the real 10 s
    holder = sqlite3.connect(tmp_path / "hub.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # what a busy hub's write transaction holds
    try:
        assert run(str(csv), "-c", str(config)) == 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    err = capsys.readouterr().err
    assert "database stayed locked" in err and "nothing was imported" in err and "run the import again" in err
    assert "Traceback" not in err
    assert counts(url) == before
    assert run(str(csv), "-c", str(config)) == 0  # and once the lock is free, it goes through
    assert counts(url)["pairs"] == 3
