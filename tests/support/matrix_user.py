"""A participant as a real Matrix client (nio with end-to-end encryption) for integration tests.

It reads what the hub sends the way a user's client would: by syncing and
decrypting, never by looking into the hub's database. The syncing client is
the demo's `SimulatedUser`; this adds what tests need on top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nio import Event, RoomCreateResponse, RoomSendResponse

from hub.devserver.client import SimulatedUser
from hub.devserver.synapse import RegisteredUser


class Participant(SimulatedUser):
    def __init__(self, homeserver: str, user: RegisteredUser, store_dir: Path) -> None:
        super().__init__(homeserver, user, store_dir, name=user.user_id)

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

    async def ask(self, room_id: str, command: str, timeout: float = 20) -> str:
        """The hub's decrypted reply to `command`; never a traceback."""
        body = await super().ask(room_id, command, timeout)
        assert "Traceback" not in body
        return body

    async def wait_for_reply(self, room_id: str, to_event: str, timeout: float = 10) -> Event:
        found: list[Event] = []

        def check() -> bool:
            found[:] = self.replies_to(room_id, to_event)
            return bool(found)

        await self.wait_until(check, timeout)
        return found[0]

    def replies_to(self, room_id: str, to_event: str) -> list[Event]:
        out = []
        for ev in self.in_room(room_id):
            rel = ev.source.get("content", {}).get("m.relates_to") or {}
            if rel.get("m.in_reply_to", {}).get("event_id") == to_event:
                out.append(ev)
        return out
