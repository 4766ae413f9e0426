"""The room check's report lines stay short enough to be sent, whatever the room's size."""

from __future__ import annotations

from hub.features.room_check import _some


def test_a_report_line_names_ten_people_and_counts_the_rest() -> None:
    users = [f"@person_{i}:example.org" for i in range(3400)]
    line = _some(users)
    assert line.endswith(" and 3390 more")
    assert line.count("@person") == 10
    assert len(line) < 400  # 3,400 names made a report Synapse refused as M_TOO_LARGE
    assert "@person\\_0" in line  # escaped: Markdown in a name is shown, not rendered


def test_a_few_people_are_all_named() -> None:
    assert _some(["@a:x", "@b:x"]) == "@a:x, @b:x"
