"""A running hub's files are its user's alone, whatever the umask (issue 18 item 10).

`hub run` outside the systemd unit (no UMask=0077) used to leave data_dir 0755 and
hub.db 0644: another local user read the access token from it and used it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from hub.devserver.synapse import SynapseServer

from tests.support.live_hub import hub_settings, running_hub

pytestmark = pytest.mark.synapse


async def test_a_running_hub_keeps_its_files_private_under_umask_022(
        synapse: SynapseServer, register: Any, tmp_path: Path) -> None:
    bot = await register("permshub")
    data_dir = tmp_path / "hub"
    settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=data_dir, moderators=[])
    old = os.umask(0o022)
    try:
        async with running_hub(settings):
            modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode))
                     for p in [data_dir, *data_dir.iterdir()]}
    finally:
        os.umask(old)
    assert modes["hub"] == modes["crypto"] == "0o700", modes
    for name in ("hub.db", "hub.db-wal", "hub.db-shm", "hub.db.lock"):
        assert modes[name] == "0o600", modes
    # Nothing else in data_dir is readable by others either.
    assert all(int(m, 8) & 0o077 == 0 for m in modes.values()), modes
