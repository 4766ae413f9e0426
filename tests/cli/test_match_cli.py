"""`hub match --cohort SLUG [--out FILE.csv]`: the optimal proposal, and a roster CSV that makes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.cli import main

from tests.cli.test_roster import counts, run, write_config
from tests.support.databases import backends

pytestmark = pytest.mark.parametrize("backend", backends())

# Greedy in roster order gives Ben to Ada (shared topic) and leaves Bo (German only) out.
ROSTER = (
    "cohort,role,name,email,matrix_id,timezone,mentor,languages,topics,capacity,avoid\n"
    "winter,mentor,Ada,ada@example.org,,Europe/Berlin,,en;de,product,1,cy@example.org\n"
    "winter,mentor,Ann,ann@example.org,@ann:example.org,Europe/London,,en,,1,\n"
    "winter,mentee,Ben,ben@example.org,,Europe/Berlin,,en,product,,\n"
    "winter,mentee,Bo,bo@example.org,,Europe/Berlin,,de,,,\n"
    "winter,mentee,Cy,cy@example.org,,Europe/Berlin,,en,,,@ann:example.org\n"
)



def test_hub_match_proposes_the_optimum_and_writes_a_roster_that_makes_it(
    backend: str, database_urls: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    url = database_urls[backend]
    config = write_config(tmp_path, url)
    (tmp_path / "roster.csv").write_text(ROSTER, encoding="utf-8")
    assert run(str(tmp_path / "roster.csv"), "-c", str(config)) == 0
    capsys.readouterr()
    out = tmp_path / "proposal.csv"
    assert main(["match", "--cohort", "winter", "-c", str(config), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1:] == [
        "1. @ann:example.org → ben@example.org (no shared topics; 1 hour apart)",
        "2. ada@example.org → bo@example.org (no shared topics; same time zone)",
        "unmatched: cy@example.org: no mentor with room left can take them (a shared language is "
        "needed, and former partners and private preferences are respected)",
    ]
    assert out.read_text(encoding="utf-8").splitlines() == [
        "cohort,role,name,email,matrix_id,timezone,mentor",
        "winter,mentee,Ben,ben@example.org,,Europe/Berlin,@ann:example.org",
        "winter,mentee,Bo,bo@example.org,,Europe/Berlin,ada@example.org",
    ]
    assert counts(url)["pairs"] == 0  # proposing changes nothing
    assert run(str(out), "-c", str(config)) == 0
    assert counts(url)["pairs"] == 2
    capsys.readouterr()
    assert main(["match", "--cohort", "winter", "-c", str(config)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "Proposal for winter: 0 of 1 unpaired mentees matched, 1 left unmatched.")
    assert main(["match", "--cohort", "nope", "-c", str(config)]) == 1
    assert "there is no cohort" in capsys.readouterr().err
