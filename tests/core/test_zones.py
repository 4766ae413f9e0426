"""hub.core.zones: every way a zone name can be wrong is "not a known time zone", never a crash."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from hub.core.zones import find_zone

from tests.features.test_program_wiring import BERLIN, CONTROL, MOD, World, make_world


@pytest.mark.parametrize("name", ["Europe/Berlin", "UTC", "America/Los_Angeles"])
def test_a_real_zone_is_found(name: str) -> None:
    zone = find_zone(name)
    assert zone is not None and zone.key == name


@pytest.mark.parametrize("name", [
    "", "Mars/Olympus", "America",  # a folder of zones: IsADirectoryError
    "A" * 300,  # longer than a file name may be: OSError
    "../etc/passwd", "/etc/localtime", "Europe/Berlin\x00",
])
def test_anything_else_is_none(name: str) -> None:
    assert find_zone(name) is None


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = await make_world(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}",
                         datetime(2027, 1, 12, 12, 0, tzinfo=BERLIN))
    yield w
    await w.db.close()


@pytest.mark.parametrize("tz", ["America", "A" * 300, "Mars/Olympus"])
async def test_cohort_create_with_a_zone_folder_is_a_usage_error(world: World, tz: str) -> None:
    # "America" used to end in the runner's catch-all ("something went wrong"), audited as crashed.
    reply = await world.command(MOD, CONTROL, f'!hub cohort create spring "Spring" tz={tz}')
    assert "is not a known time zone" in reply["body"]
    async with world.db.session() as s:
        assert (await s.execute(text("SELECT count(*) FROM cohort WHERE slug = 'spring'"))).scalar() == 0
