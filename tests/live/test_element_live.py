"""The real hub with Element's own crypto stack (matrix-js-sdk + Rust crypto, signed devices only)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hub.devserver.synapse import SynapseServer

from tests.matrix.test_crosssign import _node_or_skip, run_element_client
from tests.support.live_hub import hub_settings, running_hub

pytestmark = pytest.mark.synapse


async def test_element_user_pings_the_hub_in_an_encrypted_room(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any],
    tmp_path: Path,
) -> None:
    node = _node_or_skip()
    bot = await register("hub")
    moderator = await participant("mod")
    password = secrets.token_urlsafe(12)
    alice = await register("alice", password=password)
    settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub",
                            moderators=[moderator.user_id])
    async with running_hub(settings):
        room = await moderator.create_room(invite=[bot.user_id, alice.user_id], encrypted=True)
        await moderator.wait_joined(room, bot.user_id)
        code, result, stderr = await run_element_client(
            node, homeserver=synapse.url, user_id=alice.user_id, password=password,
            room_id=room, hub_user_id=bot.user_id, text="!hub ping", timeout=30,
        )
    # (a) the hub read the command Element encrypted, (b) Element decrypted the hub's reply.
    assert code == 0, (result, stderr[-3000:])
    assert result["reply_body"] == "pong", result
    assert result["decryption_error"] is None and result["send_error"] is None
    assert all(d["signed_by_owner"] for d in result["hub_devices"]), result
    print(f"\nElement-stack round trip: {result.get('elapsed_ms')} ms")
