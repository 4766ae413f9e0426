"""A room's state read from the homeserver and taught to nio, without nio's per-event checks.

nio checks every event against a JSON schema as it parses one (a few tenths of a millisecond
each): reading the state of a space or lounge of 10,000 people took about 1.7 s of the event
loop, the answer's schema and then each event, and no command was answered meanwhile. Here the
answer is parsed as plain JSON (in a worker thread when it is big), member events are applied to
nio's room directly, each field checked for its type, and only the few other state events go
through nio's parser.

`members_path` is the cheaper read before a first send: the joined and invited members alone
(GET /members), which is all nio needs to share a room key, in one request where reading the
whole state and then nio's own joined-members request took two. `joined_path` is cheaper still
(GET /joined_members, a cached answer in Synapse: 30 ms against 69 ms during a 5,000-room
fan-out), for callers that know who is invited from their own records (`joined_events`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection
from typing import Any
from urllib.parse import quote

from nio import AsyncClient, ErrorResponse, Event, MatrixRoom, RoomEncryptionEvent

__all__ = ["BIG_BODY", "get_json", "joined_events", "joined_path", "members_path", "room_from_state",
           "state_path"]

# Answers larger than this (bytes) are parsed in a worker thread: a 3 MB state of 10,000
# members takes tens of milliseconds to parse, which the thread gives back to the loop in slices.
BIG_BODY = 256 * 1024


def state_path(room_id: str) -> str:
    return f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/state"


def members_path(room_id: str) -> str:
    # Joined and invited: an invited person's devices get the room key too, so they can read
    # what was sent before they joined (nio's own joined-members request leaves them out).
    return f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/members?not_membership=leave"


def joined_path(room_id: str) -> str:
    return f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/joined_members"


def joined_events(data: Any, invited: Collection[str]) -> list[dict[str, Any]]:
    """Member events for `room_from_state` from a GET /joined_members answer, and an invite for
    each of `invited` who has not joined. The answer's fields are checked there, as any event's."""
    joined = data.get("joined") if isinstance(data, dict) else None
    joined = joined if isinstance(joined, dict) else {}
    events = []
    for user, profile in joined.items():
        profile = profile if isinstance(profile, dict) else {}
        content = {"membership": "join", "displayname": profile.get("display_name"),
                   "avatar_url": profile.get("avatar_url")}
        events.append({"type": "m.room.member", "state_key": user, "content": content})
    events.extend({"type": "m.room.member", "state_key": user, "content": {"membership": "invite"}}
                  for user in sorted(set(invited) - set(joined)))
    return events


async def get_json(client: AsyncClient, path: str) -> Any:
    """GET `path` as the hub: the parsed body, or an `ErrorResponse` carrying the HTTP answer
    (for `hub.matrix.sender.classify_error`). Network errors are raised as aiohttp's."""
    resp = await client.send("GET", path, headers={"Authorization": f"Bearer {client.access_token}"})
    body = await resp.read()
    try:
        data = await asyncio.to_thread(json.loads, body) if len(body) > BIG_BODY else json.loads(body)
    except ValueError:
        data = None
    if resp.status == 200 and data is not None:
        return data
    error = ErrorResponse.from_dict(data) if isinstance(data, dict) else ErrorResponse(
        f"HTTP {resp.status}: {body[:200].decode('utf-8', 'replace')}")
    error.transport_response = resp
    return error


def state_events(data: Any) -> list[dict[str, Any]]:
    """The events of a GET /state (a list) or GET /members (`chunk`) answer that are objects."""
    items = data.get("chunk") if isinstance(data, dict) else data
    return [e for e in items if isinstance(e, dict)] if isinstance(items, list) else []


def room_from_state(room_id: str, own_user: str, events: list[dict[str, Any]], *,
                    encrypted: bool, room: MatrixRoom | None = None) -> MatrixRoom:
    """nio's room from state events (all of its state, or its members alone): a new one, or
    `room` with the members added. A member event whose fields have the wrong types is skipped,
    as nio's parser would."""
    room = room if room is not None else MatrixRoom(room_id, own_user, encrypted)
    for raw in events:
        kind, user = raw.get("type"), raw.get("state_key")
        if kind == "m.room.member":
            content = raw.get("content")
            if not isinstance(user, str) or not isinstance(content, dict):
                continue
            membership = content.get("membership")
            name, avatar = content.get("displayname"), content.get("avatar_url")
            name = name if isinstance(name, str) else None
            avatar = avatar if isinstance(avatar, str) else None
            if membership in ("join", "invite"):
                _member(room, user, name, avatar, invited=membership == "invite")
            else:  # left, banned, knocking: not a member the room key goes to
                room.remove_member(user)
            continue
        event = Event.parse_event(raw)
        if isinstance(event, RoomEncryptionEvent):
            encrypted = True
        if isinstance(event, Event):
            room.handle_event(event)
    room.encrypted = room.encrypted or encrypted
    return room


def _member(room: MatrixRoom, user: str, name: str | None, avatar: str | None, *, invited: bool) -> None:
    """What nio's `handle_membership` does for a join or an invite, from checked fields."""
    known = room.users.get(user)
    if known is None:
        room.add_member(user, name, avatar, invited=invited)
        return
    known.invited = invited
    if invited:
        room.invited_users[user] = known
    else:
        room.invited_users.pop(user, None)
    if name is not None and name != known.display_name:
        room.names[known.name].remove(user)
        known.display_name = name
        room.names[known.name].append(user)
    if avatar is not None:
        known.avatar_url = avatar
