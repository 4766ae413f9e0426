"""Display names: one check (hub.core.names) at every way a name comes in, refusing the same things.

A line break in a name used to stop a cohort's whole programme (email headers refuse it);
the programme's side of that is in test_digest_wiring.py. Here: the rule itself, and each
entry (`!hub cohort create`, `!hub add`, the config, the roster) refusing with the reason
and changing nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from hub.config import settings_from_dict
from hub.core.names import MAX_NAME, check_name, name_problem, one_line
from hub.core.roster import parse_roster
from hub.errors import ConfigError, RosterError

from tests.features.test_program_wiring import BERLIN, CONTROL, MOD, World, make_world

BAD = [
    ("Line\nBreak", "contains a line break"),
    ("Line\r\nBreak", "contains a line break"),
    ("Carriage\rReturn", "contains a line break"),
    ("Para\u2029graph", "contains a line break"),
    ("Next\x85Line", "contains a line break"),
    ("Tab\there", "contains a control character (U+0009)"),
    ("Nul\x00", "contains a control character (U+0000)"),
    ("Del\x7f", "contains a control character (U+007F)"),
    ("Ann\u202egnp.exe", "contains a bidirectional override (U+202E)"),
    ("Isolate\u2066x\u2069", "contains a bidirectional override (U+2066)"),
    ("", "is empty"),
    (" \u3000 ", "is empty"),
    ("x" * (MAX_NAME + 1), f"is longer than {MAX_NAME} characters ({MAX_NAME + 1})"),
]
GOOD = ["Ada Lovelace", "  Ada  ", "José María", "李小龙", "محمد\u200f", "👩\u200d💻 Dev", "x" * MAX_NAME,
        "O'Brien-Smith (she/her)", "**bold** <b>"]


@pytest.mark.parametrize(("name", "problem"), BAD)
def test_a_bad_name_is_refused_with_the_reason(name: str, problem: str) -> None:
    assert name_problem(name) == problem
    with pytest.raises(ValueError, match=r"^NAME: ") as info:
        check_name(name, "NAME")
    assert str(info.value) == f"NAME: {problem}"


@pytest.mark.parametrize("name", GOOD)
def test_a_good_name_passes_trimmed(name: str) -> None:
    # Markdown and HTML are fine here: they are escaped where names are shown.
    assert name_problem(name) is None
    assert check_name(name) == name.strip()


def test_one_line_flattens_what_an_older_hub_stored() -> None:
    assert one_line("Line\r\nBreak\u2028 and\ttab\u202e!") == "Line Break and tab!"


# -- the config -------------------------------------------------------------------------------------


def _config(**cohort: object) -> dict[str, object]:
    return {"matrix": {"homeserver": "https://example.org", "user_id": "@hub:example.org", "password": "x"},
            "cohort": [{"slug": "winter", **cohort}]}


@pytest.mark.parametrize(("name", "problem"), BAD)
def test_config_refuses_a_bad_cohort_name(tmp_path: Path, name: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(_config(name=name), base=tmp_path, file="hub.toml", env={})
    assert info.value.problems == [f"hub.toml: cohort[0].name: {problem}"]


def test_config_keeps_a_good_name_trimmed_and_the_slug_without_one(tmp_path: Path) -> None:
    s = settings_from_dict(_config(name="  Winter 2027 "), base=tmp_path, env={})
    assert s.cohorts[0].name == "Winter 2027"
    assert settings_from_dict(_config(), base=tmp_path, env={}).cohorts[0].name == "winter"


# -- the roster (parsing; `hub roster import` changing nothing is in test_roster.py) ------------------


@pytest.mark.parametrize(("name", "problem"), [b for b in BAD if b[0].strip()])
def test_roster_refuses_a_bad_name_on_its_line(name: str, problem: str) -> None:
    quoted = '"' + name.replace('"', '""') + '"'
    # Line 2's empty name is fine (the Matrix id or address stands in for it).
    csv = ("cohort,role,name,email,matrix_id,timezone,mentor\n"
           f"winter,mentor,  ,a@example.org,,,\nwinter,mentee,{quoted},b@example.org,,,\n")
    with pytest.raises(RosterError) as info:
        parse_roster(csv)
    assert info.value.problems == [f"line 3: name: {problem}"]


# -- the commands -----------------------------------------------------------------------------------


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = await make_world(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}",
                         datetime(2027, 1, 12, 12, 0, tzinfo=BERLIN))
    yield w
    await w.db.close()


async def _people_and_cohorts(w: World) -> list[str]:
    """What a refused command must not change: cohorts, members, rooms, and the outbox but its reply."""
    async with w.db.session() as s:
        rows = [repr(tuple(r)) for table in ("cohort", "member", "hub_room", "pair")
                for r in (await s.execute(text(f"SELECT * FROM {table}"))).all()]
        rows += [repr(tuple(r)) for r in (await s.execute(text(
            "SELECT kind, dedupe_key, payload FROM outbox WHERE kind != 'reply'"))).all()]
    return sorted(rows)


@pytest.mark.parametrize(("name", "problem"), [
    ("Line\\nBreak", "contains a line break"), ("Evil\u202eName", "contains a bidirectional override")])
async def test_commands_refuse_a_bad_name_and_change_nothing(world: World, name: str, problem: str) -> None:
    # The quoted argument as a Matrix client sends it: a real line break inside the quotes.
    typed = name.replace("\\n", "\n")
    before = await _people_and_cohorts(world)
    reply = await world.command(MOD, CONTROL, f'!hub add winter mentee @new:example.org "{typed}"')
    assert f"NAME: {problem}" in reply["body"] and "Usage:" in reply["body"]
    reply = await world.command(MOD, CONTROL, f'!hub add winter mentee eve@example.org "{typed}"')
    assert f"NAME: {problem}" in reply["body"]
    reply = await world.command(MOD, CONTROL, f'!hub cohort create spring "{typed}" start=2027-03-01')
    assert f"NAME: {problem}" in reply["body"] and "Usage:" in reply["body"]
    # Renaming someone already there is the same entry.
    reply = await world.command(MOD, CONTROL, f'!hub add winter mentor @mentor0:example.org "{typed}"')
    assert f"NAME: {problem}" in reply["body"]
    assert await _people_and_cohorts(world) == before
    # The same commands with a good name go through.
    reply = await world.command(MOD, CONTROL, '!hub cohort create spring "  Spring 2027 " start=2027-03-01')
    assert "Created cohort **Spring 2027**" in reply["body"]
    reply = await world.command(MOD, CONTROL, '!hub add spring mentee @new:example.org "Ada Lovelace"')
    assert reply["body"].startswith("Added Ada Lovelace")
    reply = await world.command(MOD, CONTROL, "!hub add spring mentor @other:example.org")  # no name: fine
    assert reply["body"].startswith("Added ")
