"""The roster's optional matching columns: stored when right, and a bad value names line and column."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hub.storage.db import open_database
from hub.storage.models import Member, member_table

from tests.cli.test_roster import run, snapshot, write_config
from tests.support.databases import backends

pytestmark = pytest.mark.parametrize("backend", backends())
HEADER = "cohort,role,name,email,matrix_id,timezone,mentor"



GOOD = (
    "capacity,cohort,role,name,email,matrix_id,timezone,mentor,languages,topics,avoid\n"  # any order
    "2,winter,mentor,Ada,ada@example.org,@ada:example.org,Europe/Berlin,,EN; de,Product;Career Change,\n"
    ",winter,mentor,Ann,ann@example.org,,,,en,,\n"
    ",winter,mentee,Ben,ben@example.org,@ben:example.org,,,en,product,ann@example.org\n"
    ",winter,mentee,Cy,cy@example.org,,,,,,\n"
)


def _people(url: str) -> dict[str, tuple[Any, ...]]:
    async def go() -> dict[str, tuple[Any, ...]]:
        db = await open_database(url)
        try:
            async with db.session() as s:
                rows = (await s.execute(select(Member).order_by(member_table.c.id))).scalars().all()
                return {m.name: (m.languages, m.topics, m.capacity, m.avoid) for m in rows}
        finally:
            await db.close()

    return asyncio.run(go())


def test_the_matching_columns_are_stored_in_any_order(
    backend: str, database_urls: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    url = database_urls[backend]
    config = write_config(tmp_path, url)
    csv = tmp_path / "roster.csv"
    csv.write_text(GOOD, encoding="utf-8")
    assert run(str(csv), "-c", str(config)) == 0, capsys.readouterr().err
    assert _people(url) == {
        "Ada": ("en;de", "product;career change", 2, None),
        "Ann": ("en", None, 1, None),
        "Ben": ("en", "product", None, "ann@example.org"),
        "Cy": (None, None, None, None),
    }
    out = capsys.readouterr()
    assert "ann@example.org" not in out.out + out.err  # avoid is private, even in the summary
    # A file without the columns leaves what is stored alone.
    csv.write_text(HEADER + "\nwinter,mentor,Ada,ada@example.org,@ada:example.org,Europe/Berlin,\n",
                   encoding="utf-8")
    assert run(str(csv), "-c", str(config)) == 0
    assert _people(url)["Ada"] == ("en;de", "product;career change", 2, None)


@pytest.mark.parametrize(("change", "message"), [
    (("languages", "langauges"), "line 1: unknown column(s) 'langauges'"),
    (("2,winter,mentor,Ada", "two,winter,mentor,Ada"),
     "line 2: capacity 'two' is not a whole number from 1 to 20"),
    ((",winter,mentee,Cy,cy@example.org,,,,,,", "3,winter,mentee,Cy,cy@example.org,,,,,,"),
     "line 5: only mentor rows have a capacity"),
    (("product,ann@example.org", "product,nobody@example.org"),
     "line 4: avoid: nobody@example.org is nobody in cohort winter"),
    (("product,ann@example.org", "product,ann at example"),
     "line 4: avoid: 'ann at example' is neither a Matrix id nor an email address"),
])
def test_a_bad_column_names_line_and_column_and_imports_nothing(
    backend: str, database_urls: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    change: tuple[str, str], message: str,
) -> None:
    url = database_urls[backend]
    config = write_config(tmp_path, url)
    csv = tmp_path / "roster.csv"
    assert change[0] in GOOD
    csv.write_text(GOOD.replace(change[0], change[1], 1), encoding="utf-8")
    before = snapshot(url)
    assert run(str(csv), "-c", str(config)) == 1
    err = capsys.readouterr().err
    assert "nothing was imported" in err and message in err, err
    assert "Traceback" not in err
    assert snapshot(url) == before
