"""`hub roster import`: all or nothing, idempotent, dry runs change nothing (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from hub.cli import main
from hub.storage.db import open_database
from hub.storage.models import HubRoom, Member, Pair, hub_room_table
from hub.storage.models import outbox_table as T

from tests.support.databases import backends

pytestmark = pytest.mark.parametrize("backend", backends())
HEADER = "cohort,role,name,email,matrix_id,timezone,mentor"
TABLES = ("cohort", "member", "pair", "hub_room", "room_member", "outbox", "kv")



def write_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[database]\nurl = "{url}"\n'
        '[matrix]\nhomeserver = "https://matrix.example.org"\nuser_id = "@hub:example.org"\n'
        'password = "not-used"\nmoderators = ["@lead:example.org"]\n'
        '[[cohort]]\nslug = "winter"\nname = "Winter 2027"\nstart = 2027-01-11\n',
        encoding="utf-8",
    )
    return path


def roster(pairs: int, *, bad_line: int | None = None, bad: str = "", all_on_matrix: bool = False) -> str:
    """`pairs` mentors and mentees; mentees name their mentor by email, half of them email-only."""
    lines = [HEADER]
    for i in range(pairs):
        lines.append(f"winter,mentor,Mentor {i},mentor{i}@example.org,@mentor{i}:example.org,Europe/Berlin,")
        mx = f"@mentee{i}:example.org" if i % 2 or all_on_matrix else ""
        lines.append(f'winter,mentee,"Mentee {i}",mentee{i}@example.org,{mx},,mentor{i}@example.org')
    if bad_line is not None:
        lines[bad_line - 1] = bad
    return "\n".join(lines) + "\n"


def snapshot(url: str) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        db = await open_database(url)
        try:
            async with db.session() as s:
                out: dict[str, Any] = {}
                for table in TABLES:
                    rows = (await s.execute(text(f"SELECT * FROM {table}"))).all()
                    out[table] = sorted(map(repr, rows))
                return out
        finally:
            await db.close()

    return asyncio.run(go())


def counts(url: str) -> dict[str, int]:
    async def go() -> dict[str, int]:
        db = await open_database(url)
        try:
            async with db.session() as s:
                return {
                    "members": (await s.execute(select(func.count()).select_from(Member))).scalar_one(),
                    "pairs": (await s.execute(select(func.count()).select_from(Pair))).scalar_one(),
                    "pair_rooms": (await s.execute(select(func.count()).select_from(HubRoom).where(
                        hub_room_table.c.kind == "pair"))).scalar_one(),
                    "creates": (await s.execute(select(func.count()).select_from(T).where(
                        T.c.kind == "room-create"))).scalar_one(),
                    "outbox": (await s.execute(select(func.count()).select_from(T))).scalar_one(),
                }
        finally:
            await db.close()

    return asyncio.run(go())


def run(*args: str) -> int:
    return main(["roster", "import", *args])


def test_two_hundred_rows_make_one_hundred_pairs_once(
    backend: str, database_urls: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = database_urls[backend]
    config = write_config(tmp_path, url)
    csv = tmp_path / "roster.csv"
    csv.write_text(roster(100), encoding="utf-8")
    assert run(str(csv), "-c", str(config)) == 0
    out = capsys.readouterr().out
    assert "Imported 200 rows for winter: 200 people added" in out and "100 new pairs" in out
    first = counts(url)
    assert first["members"] == 200 and first["pairs"] == 100 and first["pair_rooms"] == 100
    assert first["creates"] == 102  # 100 pair rooms, the space and the lounge
    before = snapshot(url)
    assert run(str(csv), "-c", str(config)) == 0
    out = capsys.readouterr().out
    assert "0 people added, 0 updated, 200 unchanged; 0 new pairs, 100 already paired" in out
    assert snapshot(url) == before  # importing again changes nothing, queues nothing


def test_a_second_file_giving_people_matrix_ids_invites_them_once(
    backend: str, database_urls: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """People already imported, paired and in rooms: the import reads them once up front and must
    still act on what the file changes (here: the email-only mentees' new Matrix ids)."""
    url = database_urls[backend]
    config = write_config(tmp_path, url)
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    first.write_text(roster(20), encoding="utf-8")
    second.write_text(roster(20, all_on_matrix=True), encoding="utf-8")
    assert run(str(first), "-c", str(config)) == 0
    before = counts(url)
    capsys.readouterr()
    assert run(str(second), "-c", str(config)) == 0
    out = capsys.readouterr().out
    assert "0 people added, 10 updated, 30 unchanged; 0 new pairs, 20 already paired" in out
    after = counts(url)
    assert {k: after[k] for k in ("members", "pairs", "pair_rooms", "creates")} == {
        k: before[k] for k in ("members", "pairs", "pair_rooms", "creates")}
    # Each of the ten is invited into their pair's room; the space and the lounge get one row each.
    assert after["outbox"] == before["outbox"] + 12

    async def invites() -> list[list[str]]:
        db = await open_database(url)
        try:
            async with db.session() as s:
                rows = (await s.execute(select(T.c.payload).where(T.c.kind == "room-invite")
                                        .order_by(T.c.seq))).scalars().all()
                return [json.loads(r)["users"] for r in rows]
        finally:
            await db.close()

    new = asyncio.run(invites())[-12:]
    ten = sorted(f"@mentee{i}:example.org" for i in range(0, 20, 2))
    assert sorted(u for users in new[:10] for u in users) == ten
    assert new[10] == new[11] == ten
    snap = snapshot(url)
    assert run(str(second), "-c", str(config)) == 0
    assert snapshot(url) == snap


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("winter,boss,X,x@example.org,,,", "line 57: role must be mentor, mentee or moderator"),
        ("winter,mentee,X,x@example.org,,,nobody@example.org",
         "line 57: nobody@example.org is not a member of winter"),
        ("spring,mentor,X,x@example.org,,,", "line 57: there is no cohort 'spring'"),
        # The same name rule as `!hub add` and the config (hub.core.names); a quoted line break
        # used to reach the database, and then stopped every digest of the cohort.
        ('winter,mentor,"Line\nBreak",x@example.org,,,', "line 57: name: contains a line break"),
        ('winter,mentor,"Line\r\nBreak",x@example.org,,,', "line 57: name: contains a line break"),
        ("winter,mentor,Ann\u202egnp.exe,x@example.org,,,",
         "line 57: name: contains a bidirectional override (U+202E)"),
        ("winter,mentee,X,x@example.org,,,mentee3@example.org",
         "line 57: mentor mentee3@example.org is a mentee on line 9, not a mentor"),
    ],
)
def test_one_bad_row_imports_nothing_and_names_its_line(
    backend: str, database_urls: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    bad: str, message: str,
) -> None:
    url = database_urls[backend]
    config = write_config(tmp_path, url)
    csv = tmp_path / "roster.csv"
    csv.write_text(roster(40, bad_line=57, bad=bad), encoding="utf-8")
    before = snapshot(url)
    assert run(str(csv), "-c", str(config)) == 1
    err = capsys.readouterr().err
    assert "nothing was imported" in err and message in err, err
    assert "Traceback" not in err
    assert snapshot(url) == before


def test_every_bad_row_of_every_kind_is_reported_in_one_run(
    backend: str, database_urls: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 16: a bad email hid the duplicate, and both hid the unknown cohort. Now the file's
    problems, the database's (role change, no such mentor) and the pairs' come in one run."""
    url = database_urls[backend]
    config = write_config(tmp_path, url)
    csv = tmp_path / "roster.csv"
    csv.write_text(roster(1), encoding="utf-8")  # Mentor 0 is a mentor in the database now
    assert run(str(csv), "-c", str(config)) == 0
    capsys.readouterr()
    csv.write_text("\n".join([
        HEADER,
        "winter,mentor,Ann,ann@example.org,,,",  # 2: fine
        "winter,mentor,Bob,bob@@example.org,,,",  # 3: bad email
        "wintr,mentee,Cy,cy@example.org,,,",  # 4: unknown cohort
        "winter,mentee,Ann again,ANN@example.org,,,",  # 5: Ann's row again
        "winter,mentee,Mentor 0,mentor0@example.org,,,",  # 6: a mentor in the database
        "winter,mentee,Di,di@example.org,,,nobody@example.org",  # 7: no such mentor
        "winter,mentor,Fay,fay@example.org,,Mars/Base,",  # 8: bad time zone
        "winter,mentee,Gus,gus@example.org,,,fay@example.org",  # 9: fine, but Fay's row is not
        "winter,mentee,Hal,hal@example.org,,,ann@example.org",  # 10: fine
    ]) + "\n", encoding="utf-8")
    before = snapshot(url)
    assert run(str(csv), "-c", str(config)) == 1
    err = capsys.readouterr().err
    assert f"{csv}: nothing was imported:" in err
    problems = [line.removeprefix(f"{csv}: ") for line in err.splitlines() if line.startswith(f"{csv}: line")]
    assert [p.split(":")[0] for p in problems] == [f"line {n}" for n in (3, 4, 5, 6, 7, 8)], err
    assert "email 'bob@@example.org' is not an email address" in problems[0]
    assert problems[1] == ("line 4: there is no cohort 'wintr'; did you mean 'winter'? Or add it as "
                           "[[cohort]] in the config, or with `!hub cohort create` in the control room")
    assert problems[2] == "line 5: ann@example.org is already on line 2 for cohort winter"
    assert "mentor0@example.org is already a mentor in winter" in problems[3]
    assert "nobody@example.org is not a member of winter" in problems[4]
    assert "timezone 'Mars/Base' is not a known time zone" in problems[5]
    assert "Traceback" not in err
    assert snapshot(url) == before


def test_the_summary_counts_in_words(
    backend: str, database_urls: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, database_urls[backend])
    csv = tmp_path / "roster.csv"
    csv.write_text(roster(1), encoding="utf-8")
    assert run(str(csv), "-c", str(config)) == 0
    assert capsys.readouterr().out == ("Imported 2 rows for winter: 2 people added, 0 updated, 0 unchanged; "
                                       "1 new pair, 0 already paired.\n")
    csv.write_text(f"{HEADER}\nwinter,mentor,Mentor Zero,mentor0@example.org,,,\n", encoding="utf-8")
    assert run(str(csv), "-c", str(config), "--dry-run") == 0
    assert capsys.readouterr().out == ("Dry run, nothing was changed: would import 1 row for winter: "
                                       "0 people added, 1 updated, 0 unchanged; 0 new pairs, "
                                       "0 already paired.\n")


def test_dry_run_changes_nothing(
    backend: str, database_urls: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = database_urls[backend]
    config = write_config(tmp_path, url)
    csv = tmp_path / "roster.csv"
    csv.write_text(roster(10), encoding="utf-8")
    before = snapshot(url)
    assert run(str(csv), "-c", str(config), "--dry-run") == 0
    out = capsys.readouterr().out
    assert out.startswith("Dry run, nothing was changed: would import 20 rows") and "10 new pairs" in out
    assert snapshot(url) == before
    # The same file for real afterwards: the dry run's report was the truth.
    assert run(str(csv), "-c", str(config)) == 0
    assert counts(url)["pairs"] == 10


def test_unreadable_file_and_usage(
    backend: str, database_urls: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, database_urls[backend])
    assert run(str(tmp_path / "missing.csv"), "-c", str(config)) == 1
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["roster", "import"])
    assert e.value.code == 2


def test_an_import_racing_the_running_hubs_config_sync_neither_fails_nor_duplicates(
    backend: str, database_urls: dict[str, str], tmp_path: Path
) -> None:
    """The hub applies `[[cohort]]` at start while an operator imports a roster into the same fresh
    database: both find no cohort and create it. One must wait for the other (CI once failed here
    with a UNIQUE violation on cohort.slug), and the install identity must be made once."""
    from hub.clock import SystemClock
    from hub.config import load_settings
    from hub.delivery.outbox import Outbox
    from hub.features.config_sync import sync_config
    from hub.features.room_queue import load_env
    from hub.features.roster import import_file

    url = database_urls[backend]
    settings = load_settings(write_config(tmp_path, url))
    csv = tmp_path / "roster.csv"
    csv.write_text(roster(5), encoding="utf-8")

    async def hub_start(db: Any) -> None:
        async with db.transaction() as s:
            env = await load_env(s, Outbox(db, SystemClock()), SystemClock(), settings)
            await sync_config(s, env)

    async def go() -> list[Any]:
        db = await open_database(url)
        try:
            results = await asyncio.gather(
                *(hub_start(db) for _ in range(3)), *(import_file(settings, csv) for _ in range(2)),
                return_exceptions=True)
            return [r for r in results if isinstance(r, BaseException)]
        finally:
            await db.close()

    assert asyncio.run(go()) == []
    after = counts(url)
    assert after["members"] == 10 and after["pairs"] == 5
    assert after["creates"] == 7  # five pair rooms, one space, one lounge: nothing made twice
    snap = snapshot(url)
    assert len([row for row in snap["kv"] if "install" in row]) == 1
