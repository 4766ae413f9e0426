"""`hub digest preview` as an operator runs it before the hub has made any room (issue 16).

It printed `The lounge: https://matrix.to/#/` (a link to nothing) and, for a later week, listed
under "Upcoming webinars" a webinar that is over by the time that week's digest goes out.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hub.cli import main


def test_preview_before_the_rooms_exist_and_of_a_later_week(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    today = datetime.now(UTC).date()
    start = today - timedelta(days=7)  # now is in week 2
    webinar = (today + timedelta(days=3)).isoformat() + "T17:00"  # upcoming now; over by week 3's digest
    config = tmp_path / "config.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "hub.db"}"\n'
        '[matrix]\nhomeserver = "https://matrix.example.org"\nuser_id = "@hub:example.org"\n'
        'password = "not-used"\nmoderators = ["@lead:example.org"]\n'
        f'[[cohort]]\nslug = "winter"\nname = "Winter"\ntimezone = "UTC"\nstart = {start.isoformat()}\n'
        f'webinar = {{ at = "{webinar}", title = "Midpoint" }}\n', encoding="utf-8")
    roster = tmp_path / "roster.csv"
    roster.write_text("cohort,role,name,email,matrix_id,timezone,mentor\n"
                      "winter,mentor,Ann,ann@example.org,@ann:example.org,,\n", encoding="utf-8")
    assert main(["roster", "import", str(roster), "-c", str(config)]) == 0  # people, no rooms yet
    capsys.readouterr()

    def preview(*more: str) -> str:
        assert main(["digest", "preview", "--cohort", "winter", "-c", str(config), *more]) == 0
        return capsys.readouterr().out

    this_week = preview("--for", "@ann:example.org")
    assert "week 2 of 12" in this_week and "Midpoint" in this_week
    assert "The lounge" not in this_week and "matrix.to/#/\n" not in this_week
    later = preview("--for", "@ann:example.org", "--week", "3")
    assert "week 3 of 12" in later and "Midpoint" not in later and "UPCOMING WEBINARS" not in later
    assert "Midpoint" in preview() and "Midpoint" not in preview("--week", "3")  # the lounge version
