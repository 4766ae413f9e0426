"""What the features know of the homeserver: plain facts from the sync, and the port they act through.

The Matrix adapter (`hub.matrix.events`) turns nio's sync responses into these
dataclasses, and `hub.matrix.provision.Provision` implements `Homeserver`; the
features see only this module, so they never import nio or `hub.matrix` (the
import-linter contract says so). The Matrix writes themselves are outbox rows
(`hub.core.effects`); `Homeserver` is what the Matrix sender's room handlers use
to carry them out, and what reads a room's state for the room checks.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from hub.core.cohorts import CREATOR_POWER_VERSIONS, RoomSpec

__all__ = [
    "AnswerEvent",
    "Homeserver",
    "IncomingMessage",
    "RoomSnapshot",
    "RoomSyncFacts",
    "StateChange",
]


@dataclass(frozen=True)
class IncomingMessage:
    room_id: str
    event_id: str
    sender: str
    body: str
    msgtype: str
    thread_root: str | None
    origin_server_ts: int
    encrypted: bool
    # Where the hub's reply goes when not under this event: a command that stands for a
    # reaction (hub.features.reactions) is acknowledged under the prompt it reacted to.
    reply_to: str | None = None


@dataclass(frozen=True)
class StateChange:
    """A state event someone else sent in a room the hub is in."""

    room_id: str
    event_id: str
    event_type: str
    sender: str


@dataclass(frozen=True)
class AnswerEvent:
    """Something that may answer a prompt, or take an answer back.

    `kind` is "reaction" (`key` is the reaction's key), "reply" (an `m.text` replying to
    `target`; `key` is its text without the quoted fallback) or "redaction" (of `target`).
    """

    room_id: str
    event_id: str
    sender: str
    kind: str
    target: str
    key: str
    origin_server_ts: int
    encrypted: bool


@dataclass(frozen=True)
class RoomSyncFacts:
    """What one sync says about rooms and who is in them (hub.features.rooms records it).

    `memberships`: (room id, user id) -> membership (invite, join, leave, ban), the last
    seen in the batch, the hub's own included. `left`: rooms the hub is no longer in.
    `drift`: state of the `owned` types others changed (empty for a run's first sync,
    which shows all state: the start's room check looks at that).
    """

    batch: str
    memberships: dict[tuple[str, str], str] = field(default_factory=dict)
    left: list[str] = field(default_factory=list)
    drift: list[StateChange] = field(default_factory=list)


@dataclass(frozen=True)
class RoomSnapshot:
    """A room's current state as the homeserver reports it."""

    room_id: str
    state: dict[tuple[str, str], dict[str, Any]]
    members: dict[str, str]  # user id -> membership (invite, join, leave, ban, knock)
    room_version: str
    creators: frozenset[str]
    events: list[dict[str, Any]]  # the raw state events, to teach the Matrix client the room
    created_by: frozenset[str] = frozenset()  # m.room.create's sender and additional creators

    def state_event(self, event_type: str, state_key: str = "") -> dict[str, Any] | None:
        """The raw current state event (with its sender and id), or None."""
        for e in self.events:
            if e.get("type") == event_type and e.get("state_key") == state_key:
                return e
        return None

    def owned_by(self, hub: str) -> bool:
        """The hub made this room, alone: nobody else holds a creator's unremovable power."""
        return self.created_by == {hub}

    def outranks(self, user: str, hub: str) -> bool:
        """`user` cannot be kicked by the hub: a creator (v12), or power at least the hub's."""
        if user in self.creators:
            return True
        if self.room_version in CREATOR_POWER_VERSIONS and hub in self.creators:
            return False  # the hub has unlimited power here
        power = self.state.get(("m.room.power_levels", ""), {})
        raw = power.get("users")
        users: dict[str, Any] = raw if isinstance(raw, dict) else {}
        default = power.get("users_default", 0)

        def level(u: str) -> int:
            value = users.get(u, default)
            return value if isinstance(value, int) else 0

        return level(user) >= level(hub)


class Homeserver(Protocol):
    """The room work the hub does on its homeserver (`hub.matrix.provision.Provision`).

    Failures raise `TemporaryDeliveryError`/`PermanentDeliveryError` (hub.errors), so each
    step is part of an outbox row that is retried or failed like any message.
    """

    @property
    def user_id(self) -> str: ...

    async def room_version(self, spec: RoomSpec) -> str: ...

    async def create(self, spec: RoomSpec, version: str) -> str: ...

    async def find_tagged(self, tag: Mapping[str, Any], skip: Collection[str]) -> str | None: ...

    async def invite(self, room_id: str, user_id: str) -> str: ...

    async def kick(self, room_id: str, user_id: str, reason: str) -> None: ...

    async def leave(self, room_id: str) -> None: ...

    async def join(self, room_id: str) -> bool: ...

    async def put_state(self, room_id: str, event_type: str, state_key: str,
                        content: dict[str, Any]) -> str: ...

    async def state_content(self, room_id: str, event_type: str,
                            state_key: str = "") -> dict[str, Any] | None:
        """One state event's content, or None if the room has none of that type."""
        ...

    async def set_direct(self, user_id: str, room_id: str) -> None: ...

    async def snapshot(self, room_id: str) -> RoomSnapshot | None: ...

    async def load_room(self, room_id: str) -> bool: ...

    def feed(self, room_id: str, events: list[dict[str, Any]]) -> None:
        """Teach the client a room from its state events (it knows rooms from syncs only)."""
        ...

    def forget(self, room_id: str) -> None:
        """Drop what the client knows of a room the hub no longer uses."""
        ...
