"""Rooms the hub manages directly: the control room, invites, power levels (v12-aware)."""

from __future__ import annotations

import logging
from typing import Any

from nio import (
    AsyncClient,
    JoinResponse,
    RoomCreateResponse,
    RoomResolveAliasResponse,
)

from hub.config import MatrixSettings
from hub.errors import MatrixError

__all__ = ["CREATOR_POWER_VERSIONS", "default_room_version", "ensure_control_room", "power_levels_users"]

log = logging.getLogger(__name__)

# Room versions where creators have unlimited power and must not appear in the
# power-levels `users` map (MSC4289; room version 12 and its experimental forms).
CREATOR_POWER_VERSIONS = frozenset({"12", "org.matrix.hydra.11"})


async def default_room_version(client: AsyncClient) -> str:
    """The homeserver's default room version, from /capabilities (falls back to "10")."""
    try:
        resp = await client.send(
            "GET",
            "/_matrix/client/v3/capabilities",
            headers={"Authorization": f"Bearer {client.access_token}"},
        )
        data = await resp.json()
        return str(data["capabilities"]["m.room_versions"]["default"])
    except Exception:
        return "10"


def power_levels_users(room_version: str, hub: str, others: dict[str, int]) -> dict[str, int]:
    """The `users` map for a room the hub creates: the hub at 100 only where that is allowed."""
    users = {u: level for u, level in others.items() if u != hub}
    if room_version not in CREATOR_POWER_VERSIONS:
        users[hub] = 100
    return users


async def ensure_control_room(client: AsyncClient, settings: MatrixSettings) -> str:
    """Find (and join) or create the moderators' control room; return its room id.

    Direct client calls, not outbox effects: `hub.service.Hub._after_first_sync` says why.
    """
    ref = settings.control_room
    room_id: str | None = None
    if ref.startswith("!"):
        room_id = ref
    else:
        resolved = await client.room_resolve_alias(ref)
        if isinstance(resolved, RoomResolveAliasResponse):
            room_id = resolved.room_id
        elif getattr(resolved, "status_code", None) != "M_NOT_FOUND":
            raise MatrixError(f"could not look up matrix.control_room {ref}: {resolved}")
    if room_id is not None:
        if room_id not in client.rooms:
            joined = await client.join(room_id)
            if not isinstance(joined, JoinResponse):
                raise MatrixError(
                    f"the hub cannot join matrix.control_room {ref}: {getattr(joined, 'message', joined)}. "
                    "Invite the hub's account to it, or remove the alias so the hub creates the room."
                )
        return room_id
    alias_local, _, alias_server = ref[1:].partition(":")
    if alias_server and alias_server != settings.server_name:
        raise MatrixError(
            f"matrix.control_room {ref} does not exist and is on another server; create it there "
            "and invite the hub, or use an alias on the hub's own server."
        )
    version = await default_room_version(client)
    power: dict[str, Any] = {
        "users": power_levels_users(version, settings.user_id, {m: 50 for m in settings.moderators}),
    }
    created = await client.room_create(
        alias=alias_local,
        name="Mentoring moderators",
        topic="Cohort Hub control room: moderators' commands, alerts and reports.",
        invite=list(settings.moderators),
        initial_state=[
            {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "shared"},
            },
        ],
        power_level_override=power,
    )
    if not isinstance(created, RoomCreateResponse):
        raise MatrixError(f"could not create the control room {ref}: {getattr(created, 'message', created)}")
    log.info("created the control room %s (%s)", ref, created.room_id)
    return str(created.room_id)
