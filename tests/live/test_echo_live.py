"""On a real Synapse, read by a real client: a link or image typed into a command comes back
in the hub's notice as inline code, never as a live link or image."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
from nio import RoomMessageNotice

from hub.devserver.synapse import SynapseServer

from tests.features.test_echo import outside_code, tags
from tests.support.live_hub import hub_settings, running_hub
from tests.support.matrix_user import Participant

pytestmark = pytest.mark.synapse


@pytest.fixture(scope="module")
async def lead(synapse: SynapseServer, tmp_path_factory: pytest.TempPathFactory,
               ) -> AsyncIterator[tuple[Participant, str]]:
    base = tmp_path_factory.mktemp("echo-live")
    bot = await synapse.register(f"hub{secrets.token_hex(4)}", secrets.token_urlsafe(12))
    user = await synapse.register(f"lead{secrets.token_hex(4)}", secrets.token_urlsafe(12))
    mod = Participant(synapse.url, user, base / "store-lead")
    await mod.start()
    settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=base / "hub", moderators=[mod.user_id])
    async with running_hub(settings) as hub:
        assert hub.control_room_id is not None
        await mod.wait_joined(hub.control_room_id, mod.user_id, timeout=20)
        yield mod, hub.control_room_id
    await mod.stop()


@pytest.mark.parametrize(("command", "typed"), [
    ('!hub met "[Reset your password](https://evil.example/login)"',
     "[Reset your password](https://evil.example/login)"),
    # A raw tag: the old sanitiser let an https image through (a tracking pixel).
    ('!hub met "<img src=https://evil.example/pixel.png>"', "<img src=https://evil.example/pixel.png>"),
    # A backtick in an unknown command ended the hub's code span early; the link followed it.
    ('!hub "x`[Reset](https://evil.example/login)"', "x`[Reset](https://evil.example/login)"),
])
async def test_a_typed_link_comes_back_as_code(
    lead: tuple[Participant, str], command: str, typed: str,
) -> None:
    mod, room = lead
    event = await mod.send(room, command)
    reply = await mod.wait_for_reply(room, event, timeout=20)
    assert isinstance(reply, RoomMessageNotice), reply
    html = reply.formatted_body or ""
    found = [tag for tag, _ in tags(html)]
    assert "a" not in found and "img" not in found, html
    assert "<code>" in html, html  # shown, as code
    assert "evil.example" not in outside_code(reply.body), reply.body
    assert typed[:40] in reply.body or typed[:40].replace("<", "&lt;") in html
