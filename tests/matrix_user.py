"""A participant as a real Matrix client (nio with end-to-end encryption) for integration tests.

It reads what the hub sends the way a user's client would: by syncing and
decrypting, never by looking into the hub's database.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    Event,
    MegolmEvent,
    RoomCreateResponse,
    RoomSendResponse,
    SyncResponse,
)

from hub.devserver.synapse import RegisteredUser


class Participant:
    def __init__(self, homeserver: str, user: RegisteredUser, store_dir: Path) -> None:
        store_dir.mkdir(parents=True, exist_ok=True)
        self.user = user
        self.client = AsyncClient(
            homeserver,
            user.user_id,
            device_id=user.device_id,
            store_path=str(store_dir),
            config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False),
        )
        self.client.restore_login(user.user_id, user.device_id, user.access_token)
        self.events: list[tuple[str, Event]] = []
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self.auto_join = True

    @property
    def user_id(self) -> str:
        return self.user.user_id

    async def start(self) -> None:
        await self._sync_once(first=True)
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                await self._sync_once()
            except asyncio.CancelledError:
                raise
            except Exception:
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
        fresh: list[tuple[str, Event]] = []
        for room_id, info in resp.rooms.join.items():
            for ev in info.timeline.events:
                fresh.append((room_id, ev))
        # Retry decrypting events whose keys may have arrived since.
        for i, (room_id, ev) in enumerate(self.events):
            if isinstance(ev, MegolmEvent):
                with contextlib.suppress(Exception):
                    self.events[i] = (room_id, c.decrypt_event(ev))
        if fresh or first:
            async with self._changed:
                self.events.extend(fresh)
                self._changed.notify_all()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.client.close()

    async def create_room(
        self, *, invite: list[str], encrypted: bool = False, name: str = "test room"
    ) -> str:
        state: list[dict[str, Any]] = []
        if encrypted:
            state.append({"type": "m.room.encryption", "state_key": "",
                          "content": {"algorithm": "m.megolm.v1.aes-sha2"}})
        resp = await self.client.room_create(name=name, invite=invite, initial_state=state)
        assert isinstance(resp, RoomCreateResponse), resp
        await self.wait_until(lambda: resp.room_id in self.client.rooms, 10)
        return str(resp.room_id)

    async def wait_joined(self, room_id: str, user_id: str, timeout: float = 15) -> None:
        def joined() -> bool:
            room = self.client.rooms.get(room_id)
            # nio lists invited users in `users` too; joined means not (only) invited.
            return room is not None and user_id in room.users and user_id not in room.invited_users

        await self.wait_until(joined, timeout)

    async def send(self, room_id: str, body: str, *, thread_root: str | None = None) -> str:
        # nio cannot send into a room it has not synced yet (nio #279).
        await self.wait_until(lambda: room_id in self.client.rooms, 10)
        content: dict[str, Any] = {"msgtype": "m.text", "body": body}
        if thread_root:
            content["m.relates_to"] = {"rel_type": "m.thread", "event_id": thread_root}
        resp = await self.client.room_send(room_id, "m.room.message", content,
                                           ignore_unverified_devices=True)
        assert isinstance(resp, RoomSendResponse), resp
        return str(resp.event_id)

    def in_room(self, room_id: str) -> list[Event]:
        return [ev for rid, ev in self.events if rid == room_id]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("condition not met in time")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=min(left, 0.5))

    async def wait_for_reply(self, room_id: str, to_event: str, timeout: float = 10) -> Event:
        found: list[Event] = []

        def check() -> bool:
            for ev in self.in_room(room_id):
                rel = ev.source.get("content", {}).get("m.relates_to") or {}
                if rel.get("m.in_reply_to", {}).get("event_id") == to_event:
                    found.append(ev)
                    return True
            return False

        await self.wait_until(check, timeout)
        return found[0]

    def replies_to(self, room_id: str, to_event: str) -> list[Event]:
        out = []
        for ev in self.in_room(room_id):
            rel = ev.source.get("content", {}).get("m.relates_to") or {}
            if rel.get("m.in_reply_to", {}).get("event_id") == to_event:
                out.append(ev)
        return out
