"""Commands against a real Synapse: the hub answers as a user's client sees it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nio import RoomMessageNotice

from hub.devserver.synapse import SynapseServer
from hub.storage.models import AuditEntry

from tests.support.live_hub import hub_settings, running_hub

pytestmark = pytest.mark.synapse


async def _hub_and_room(
    synapse: SynapseServer,
    register: Callable[..., Any],
    participant: Callable[..., Any],
    tmp_path: Path,
    *,
    encrypted: bool,
    moderator: bool = True,
) -> tuple[Any, Any, Any, str]:
    bot = await register("hub")
    user = await participant("lead")
    settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub",
                            moderators=[user.user_id] if moderator else [])
    return settings, user, bot, ""


@pytest.mark.serial  # times the answer: alone, not beside another worker
async def test_ping_gets_notice_reply_within_2s(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any], tmp_path: Path
) -> None:
    settings, user, bot, _ = await _hub_and_room(synapse, register, participant, tmp_path,
                                                 encrypted=False)
    async with running_hub(settings):
        room = await user.create_room(invite=[bot.user_id])
        await user.wait_joined(room, bot.user_id)
        sent_at = time.monotonic()
        ping = await user.send(room, "!hub ping")
        reply = await user.wait_for_reply(room, ping, timeout=40)
        latency = time.monotonic() - sent_at
    assert isinstance(reply, RoomMessageNotice)
    assert reply.body == "pong"
    assert reply.sender == bot.user_id
    print(f"\nping latency (plain room): {latency * 1000:.0f} ms")
    assert latency < 2.0


async def test_ping_in_encrypted_room_both_ways(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any], tmp_path: Path
) -> None:
    settings, user, bot, _ = await _hub_and_room(synapse, register, participant, tmp_path,
                                                 encrypted=True)
    async with running_hub(settings):
        room = await user.create_room(invite=[bot.user_id], encrypted=True)
        await user.wait_joined(room, bot.user_id)
        sent_at = time.monotonic()
        ping = await user.send(room, "!hub ping")
        reply = await user.wait_for_reply(room, ping, timeout=10)
        latency = time.monotonic() - sent_at
    # The raw event on the wire was encrypted, and the user's client decrypted it.
    assert reply.source["type"] == "m.room.encrypted" or getattr(reply, "decrypted", False)
    assert isinstance(reply, RoomMessageNotice), f"reply not decrypted: {reply}"
    assert reply.body == "pong"
    print(f"\nping latency (encrypted room): {latency * 1000:.0f} ms")


async def test_reply_in_thread_and_help_and_unknown(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any], tmp_path: Path
) -> None:
    settings, user, bot, _ = await _hub_and_room(synapse, register, participant, tmp_path,
                                                 encrypted=False)
    async with running_hub(settings):
        room = await user.create_room(invite=[bot.user_id])
        await user.wait_joined(room, bot.user_id)
        root = await user.send(room, "a thread about the hub")
        ping = await user.send(room, "!hub ping", thread_root=root)
        reply = await user.wait_for_reply(room, ping)
        rel = reply.source["content"]["m.relates_to"]
        assert rel["rel_type"] == "m.thread" and rel["event_id"] == root

        bare = await user.send(room, "!hub")
        help_reply = await user.wait_for_reply(room, bare)
        assert "!hub ping" in help_reply.body and "!hub help" in help_reply.body
        assert help_reply.source["content"]["format"] == "org.matrix.custom.html"

        typo = await user.send(room, "!hub pnig")
        typo_reply = await user.wait_for_reply(room, typo)
        assert "Did you mean" in typo_reply.body and "!hub ping" in typo_reply.body

        bad = await user.send(room, '!hub audit "unclosed')
        bad_reply = await user.wait_for_reply(room, bad)
        assert "quote" in bad_reply.body
        assert "Traceback" not in bad_reply.body

        # Messages not addressed to the hub get no answer.
        chat = await user.send(room, "hubbub !hub ping")
        await user.wait_for_reply(room, await user.send(room, "!hub ping"))
        assert user.replies_to(room, chat) == []


async def test_non_moderator_is_refused_and_nothing_changes(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any], tmp_path: Path
) -> None:
    settings, user, bot, _ = await _hub_and_room(synapse, register, participant, tmp_path,
                                                 encrypted=False, moderator=False)
    async with running_hub(settings) as hub:
        room = await user.create_room(invite=[bot.user_id])
        # The hub only accepts invites from moderators: this user is not one.
        with pytest.raises(TimeoutError):
            await user.wait_joined(room, bot.user_id, timeout=3)

    moderator = await participant("mod")
    settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub",
                            moderators=[moderator.user_id])
    async with running_hub(settings) as hub:
        room = await moderator.create_room(invite=[bot.user_id, user.user_id])
        await moderator.wait_joined(room, bot.user_id)
        await user.client.join(room)
        await moderator.wait_joined(room, user.user_id)
        cmd = await user.send(room, "!hub audit 5")
        reply = await user.wait_for_reply(room, cmd)
        assert "moderators only" in reply.body and "nothing was changed" in reply.body
        assert hub.db is not None
        async with hub.db.session() as s:
            from sqlalchemy import func, select

            count = (await s.execute(select(func.count()).select_from(AuditEntry))).scalar()
        assert count == 0

        # The moderator may, and the action is audited. The room is one a participant reads,
        # so the answer goes to the control room and this room gets a ✅ on the command.
        control = hub.control_room_id
        assert control
        await moderator.wait_joined(control, moderator.user_id, timeout=20)

        def answered_in_control(text: str) -> bool:
            return any(text in e.body for e in moderator.notices(control, "asked in"))

        ok = await moderator.send(room, "!hub audit 5")
        await moderator.wait_until(lambda: answered_in_control("No moderator actions"), 20)
        await user.wait_until(lambda: any(
            e.source.get("type") == "m.reaction" and e.sender == bot.user_id
            and e.source["content"]["m.relates_to"]["event_id"] == ok for e in user.in_room(room)), 20)
        assert user.replies_to(room, ok) == []
        await moderator.send(room, "!hub audit")
        await moderator.wait_until(lambda: answered_in_control("!hub audit 5"), 20)
