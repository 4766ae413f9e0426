"""A simulated Matrix user: a real nio client with end-to-end encryption, for `hub demo`.

It behaves like a participant's own client would: it syncs, joins the rooms it
is invited to, decrypts what the hub sends, and sends commands and chat. It
never looks into the hub's database; the demo uses it to show that what the
hub does is visible from the outside, the way Element would see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nio import (
    Api,
    AsyncClient,
    AsyncClientConfig,
    Event,
    MegolmEvent,
    ReactionEvent,
    RoomMessageNotice,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
)

from hub.devserver.synapse import RegisteredUser

__all__ = ["SimulatedUser"]


async def send_reaction(client: AsyncClient, room_id: str, content: dict[str, Any], *,
                        tx_id: str | None = None) -> Any:
    """Send an m.reaction encrypted (in an encrypted room), as Element X (matrix-rust-sdk) does.

    nio's `room_send`, like matrix-js-sdk (Element Web), sends reactions in clear even
    there. This takes the steps `room_send` takes before encrypting (members known, the
    room key shared with their devices), encrypts (nio keeps `m.relates_to` in clear,
    so the reaction is still grouped under its message) and sends it the way
    `room_send` does. Returns what it returns.
    """
    room = client.rooms.get(room_id)
    if client.olm is None or room is None or not room.encrypted:
        return await client.room_send(room_id, "m.reaction", content, tx_id=tx_id,
                                      ignore_unverified_devices=True)
    if not room.members_synced:
        await client.joined_members(room_id)
        if client.should_query_keys:
            await client.keys_query()
    if client.olm.should_share_group_session(room_id):
        sharing = client.sharing_session.get(room_id)
        if sharing is not None:
            await sharing.wait()
        else:
            await client.share_group_session(room_id, ignore_unverified_devices=True)
    event_type, encrypted = client.encrypt(room_id, "m.reaction", content)
    method, path, data = Api.room_send(client.access_token, room_id, event_type, encrypted,
                                       tx_id or uuid.uuid4().hex)
    return await client._send(RoomSendResponse, method, path, data, (room_id,))


class SimulatedUser:
    """One logged-in account that auto-joins invites and records every timeline event."""

    def __init__(self, homeserver: str, user: RegisteredUser, store_dir: Path, *, name: str) -> None:
        store_dir.mkdir(parents=True, exist_ok=True)
        self.user = user
        self.name = name
        self.client = AsyncClient(
            homeserver,
            user.user_id,
            device_id=user.device_id,
            store_path=str(store_dir),
            # Sync tokens in memory only: the store is thrown away with the demo.
            config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False),
        )
        self.client.restore_login(user.user_id, user.device_id, user.access_token)
        self.events: list[tuple[str, Event]] = []
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self.auto_join = True  # tests turn it off to play someone ignoring an invite

    @property
    def user_id(self) -> str:
        return self.user.user_id

    async def start(self) -> None:
        await self._sync_once(first=True)
        self._task = asyncio.create_task(self._loop(), name=f"sim-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self.client.close()

    async def _loop(self) -> None:
        while True:
            try:
                await self._sync_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A simulated user must not take the demo down; a real client would retry too.
                await asyncio.sleep(0.5)

    async def _sync_once(self, first: bool = False) -> None:
        c = self.client
        resp = await c.sync(timeout=0 if first else 1000, full_state=first)
        if not isinstance(resp, SyncResponse):
            await asyncio.sleep(0.3)
            return
        if c.should_upload_keys:
            await c.keys_upload()
        if c.should_query_keys:
            await c.keys_query()
        if c.should_claim_keys:
            await c.keys_claim(c.get_users_for_key_claiming())
        await c.send_to_device_messages()
        if self.auto_join:
            for room_id in resp.rooms.invite:
                await c.join(room_id)
        fresh = [(room_id, ev) for room_id, info in resp.rooms.join.items() for ev in info.timeline.events]
        # Room keys may arrive after the message they unlock: retry what is still encrypted.
        for i, (room_id, ev) in enumerate(self.events):
            if isinstance(ev, MegolmEvent):
                with contextlib.suppress(Exception):
                    self.events[i] = (room_id, c.decrypt_event(ev))
        async with self._changed:
            self.events.extend(fresh)
            self._changed.notify_all()

    def joined(self, room_id: str) -> bool:
        room = self.client.rooms.get(room_id)
        # nio lists invited users in `users` too; joined means not (only) invited.
        return room is not None and self.user_id in room.users and self.user_id not in room.invited_users

    def in_room(self, room_id: str) -> list[Event]:
        return [ev for rid, ev in self.events if rid == room_id]

    def notices(self, room_id: str, text: str = "") -> list[RoomMessageNotice]:
        return [e for e in self.in_room(room_id) if isinstance(e, RoomMessageNotice) and text in e.body]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:  # noqa: ASYNC109
        """Wait (bounded) until `predicate` holds after some sync; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        async with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.name}: condition not met within {timeout:g}s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=min(left, 0.5))

    async def send(self, room_id: str, body: str) -> str:
        """Send a plain message (a command or chat); returns its event id."""
        # nio cannot send into a room it has not synced yet.
        await self.wait_until(lambda: self.joined(room_id), 20)
        content: dict[str, Any] = {"msgtype": "m.text", "body": body}
        resp = await self.client.room_send(room_id, "m.room.message", content,
                                           ignore_unverified_devices=True)
        if not isinstance(resp, RoomSendResponse):
            raise RuntimeError(f"{self.name}: sending to {room_id} failed: {resp}")
        return str(resp.event_id)

    def reply_to(self, room_id: str, event_id: str) -> Event | None:
        for ev in self.in_room(room_id):
            rel = ev.source.get("content", {}).get("m.relates_to") or {}
            if rel.get("m.in_reply_to", {}).get("event_id") == event_id:
                return ev
        return None

    async def ask(self, room_id: str, command: str, timeout: float = 30) -> str:  # noqa: ASYNC109
        """Send a command and return the text of the hub's reply (decrypted, as a client shows it)."""
        event_id = await self.send(room_id, command)

        # A notice, or an m.text when the answer asks someone to act (the plan after `!hub dropped`).
        answers = (RoomMessageNotice, RoomMessageText)

        def answered() -> bool:
            return isinstance(self.reply_to(room_id, event_id), answers)

        await self.wait_until(answered, timeout)
        reply = self.reply_to(room_id, event_id)
        assert isinstance(reply, answers)
        return str(reply.body)

    # -- answering by reaction, as a person taps the hub's offered reaction in a client ----------

    def offered(self, room_id: str, key: str) -> str | None:
        """The newest message someone else reacted to with `key`: the hub offers answers that way."""
        for ev in reversed(self.in_room(room_id)):
            if isinstance(ev, ReactionEvent) and ev.key == key and ev.sender != self.user_id:
                return str(ev.reacts_to)
        return None

    def notices_replying(self, room_id: str, event_id: str) -> list[RoomMessageNotice]:
        """The notices (the hub's answers) that are replies to `event_id`."""
        return [e for e in self.notices(room_id)
                if ((e.source.get("content", {}).get("m.relates_to") or {}).get("m.in_reply_to") or {})
                .get("event_id") == event_id]

    async def react(self, room_id: str, event_id: str, key: str, *, encrypted: bool = True) -> str:
        """React to `event_id` with `key`; returns the reaction's id.

        Encrypted in an encrypted room as Element X sends it, or in clear as Element Web does.
        """
        await self.wait_until(lambda: self.joined(room_id), 20)
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}
        resp = (await send_reaction(self.client, room_id, content) if encrypted else
                await self.client.room_send(room_id, "m.reaction", content, ignore_unverified_devices=True))
        if not isinstance(resp, RoomSendResponse):
            raise RuntimeError(f"{self.name}: reacting in {room_id} failed: {resp}")
        return str(resp.event_id)

    async def tap(self, room_id: str, key: str, timeout: float = 30) -> str:  # noqa: ASYNC109
        """Tap the reaction `key` the hub offers on its latest prompt here; returns its acknowledgement."""
        await self.wait_until(lambda: self.offered(room_id, key) is not None, timeout)
        prompt = self.offered(room_id, key)
        assert prompt is not None
        seen = {e.event_id for e in self.notices_replying(room_id, prompt)}

        def fresh() -> list[RoomMessageNotice]:
            return [e for e in self.notices_replying(room_id, prompt) if e.event_id not in seen]

        await self.react(room_id, prompt, key)
        await self.wait_until(lambda: bool(fresh()), timeout)
        return str(fresh()[0].body)
