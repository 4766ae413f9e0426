"""Room provisioning on the homeserver: create, find again, invite, kick, leave, read state.

The only module (with its siblings) that makes these nio calls. Failures are
raised as the delivery errors the dispatcher understands, so each step is an
outbox row that is retried or failed like any message.

Rooms are created with a tag state event (`org.cohorthub.room`, naming this
install, the room's key and generation). `find_tagged` looks for it among
the rooms the hub has joined, which is how a room created just before a crash
(the room exists, the database never heard of it) is adopted instead of
created a second time.

A tag is only a label: anyone who can read it (every lounge member) can copy
it into a room of their own and invite the hub. So a tag counts only in a
room the hub created alone (`m.room.create` sent by the hub, no other
creators) and only when the hub sent the tag itself: a power-50 moderator
can set state in a hub room, but cannot make it look like another one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from nio import (
    AsyncClient,
    ErrorResponse,
    JoinedRoomsResponse,
    JoinResponse,
    KeysQueryResponse,
    MatrixRoom,
    RoomCreateResponse,
    RoomGetStateEventResponse,
    RoomGetStateResponse,
    RoomInviteResponse,
    RoomKickResponse,
    RoomLeaveResponse,
    RoomPutStateResponse,
)

from hub.core.cohorts import (
    CREATOR_POWER_VERSIONS,
    RESTRICTED_VERSIONS,
    ROOM_TAG,
    RoomSpec,
    join_rule_content,
)
from hub.core.homeserver import RoomSnapshot
from hub.delivery.ratelimit import SharedPause
from hub.errors import TemporaryDeliveryError
from hub.matrix.room_view import (
    get_json,
    joined_events,
    joined_path,
    members_path,
    room_from_state,
    state_events,
    state_path,
)
from hub.matrix.rooms import default_room_version, power_levels_users
from hub.matrix.sender import classify_error

__all__ = ["Provision", "RoomSnapshot", "own_tag", "snapshot_from_events"]

log = logging.getLogger(__name__)

# Who the hub's own records say is invited to a room (by its id) and has not answered yet.
InviteesLookup = Callable[[str], Awaitable[Collection[str]]]

# Refusals that mean "already as wanted": inviting someone who is in the room,
# kicking someone who is not, leaving a room the hub has left.
_ALREADY = ("already in the room", "already joined", "is already invited", "not in the room",
            "not in room", "user is not in the room", "not a member")


def _already(resp: ErrorResponse) -> bool:
    message = (resp.message or "").lower()
    return any(phrase in message for phrase in _ALREADY)


class Provision:
    """`hub.core.homeserver.Homeserver` on nio: the room work behind the Matrix sender's effects."""

    def __init__(self, client: AsyncClient, pause: SharedPause, *,
                 invitees: InviteesLookup | None = None) -> None:
        self.client = client
        self.pause = pause
        # Given by the wiring for the rooms the hub manages (`load_room`); without it the
        # invited are read from the homeserver with the joined.
        self.invitees = invitees
        self._version: str | None = None
        self._versions: set[str] = set()
        self._tags: dict[str, dict[str, Any] | None] = {}  # room id -> its tag (None: untagged)
        self._scan_lock = asyncio.Lock()
        self._direct_lock = asyncio.Lock()
        # Rooms nio knows whole in this run: made here, or fed their state (`feed`). Any other
        # room nio knows it pieced together from incremental syncs (only what changed since the
        # saved position, members lazy-loaded), which `load_room` and `feed` complete.
        self._whole: set[str] = set()
        # Rooms whose members alone nio was taught in this run (`load_room`, encrypted rooms).
        self._members: set[str] = set()

    @property
    def user_id(self) -> str:
        return str(self.client.user_id)

    def _error(self, resp: Any) -> Exception:
        if isinstance(resp, ErrorResponse):
            return classify_error(resp, self.pause)
        return TemporaryDeliveryError(f"unexpected answer from the homeserver: {resp!r}"[:300])

    async def room_version(self, spec: RoomSpec) -> str:
        """The homeserver's default, unless the room needs what that version cannot do."""
        if self._version is None:
            self._version = await default_room_version(self.client)
            try:
                data = await get_json(self.client, "/_matrix/client/v3/capabilities")
                self._versions = set(data["capabilities"]["m.room_versions"]["available"])
            except Exception:  # an old server without capabilities: keep the default
                self._versions = {self._version}
        version = self._version
        if spec.join_rule == "restricted" and version not in RESTRICTED_VERSIONS:
            for candidate in ("12", "11", "10", "9", "8"):
                if candidate in self._versions:
                    return candidate
        return version

    # -- create and find again ---------------------------------------------------------------

    async def create(self, spec: RoomSpec, version: str) -> str:
        """createRoom with the spec's whole state; the hub is the creator. Returns the room id."""
        hub = self.user_id
        state: list[dict[str, Any]] = [
            {"type": ROOM_TAG, "state_key": "", "content": dict(spec.tag)},
            {"type": "m.room.history_visibility", "state_key": "",
             "content": {"history_visibility": spec.history_visibility}},
            {"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "forbidden"}},
            {"type": "m.room.join_rules", "state_key": "", "content": join_rule_content(spec, version)},
        ]
        if spec.encrypted:
            state.append({"type": "m.room.encryption", "state_key": "",
                          "content": {"algorithm": "m.megolm.v1.aes-sha2"}})
        if spec.parent_space:
            state.append({"type": "m.space.parent", "state_key": spec.parent_space,
                          "content": {"via": [hub.split(":", 1)[1]], "canonical": True}})
        power: dict[str, Any] = {
            "users": power_levels_users(version, hub, dict(spec.moderators)),
            "invite": spec.invite_level,
            "events_default": spec.events_level,
        }
        resp = await self.client.room_create(
            name=spec.name, topic=spec.topic, room_version=version, is_direct=spec.is_direct,
            space=spec.is_space, initial_state=state, power_level_override=power,
        )
        if not isinstance(resp, RoomCreateResponse):
            raise self._error(resp)
        room_id = str(resp.room_id)
        self._tags[room_id] = dict(spec.tag)
        # nio learns of a room from sync only (nio #279); the hub posts at once,
        # so it tells nio what it just made.
        self._remember(room_id, encrypted=spec.encrypted)
        log.info("created %s room %s for %s", spec.kind, room_id, spec.key)
        return room_id

    def _remember(self, room_id: str, *, encrypted: bool) -> None:
        room = self.client.rooms.get(room_id)
        if room is None:
            room = MatrixRoom(room_id, self.user_id, encrypted)
            room.add_member(self.user_id, None, None)
            self.client.rooms[room_id] = room
        self._whole.add(room_id)
        if encrypted:
            # Even if a sync got there first: one that ran while the room was being made shows
            # it newly joined with the state so far (perhaps not yet `m.room.encryption`), and
            # the rest, all the hub's own events, never comes (hub.matrix.sync).
            self._mark_encrypted(room_id)

    def _mark_encrypted(self, room_id: str) -> None:
        """Encrypted for nio now, and in its store for later runs: the hub's own
        `m.room.encryption` is not in its sync, and nio builds a room it meets again in a later
        run as encrypted only if its store says so (else the hub's messages go in plain text)."""
        room = self.client.rooms.get(room_id)
        if room is not None:
            room.encrypted = True
        if room_id in self.client.encrypted_rooms:
            # Saved already (nio loads the set from its store at start): the room check feeds
            # every encrypted room on each pass, and each save was a write to nio's SQLite store
            # on the event loop, 40 % of the hub's time during a pass.
            return
        self.client.encrypted_rooms.add(room_id)
        if self.client.store is not None:
            self.client.store.save_encrypted_rooms([room_id])

    async def find_tagged(self, tag: Mapping[str, Any], skip: Collection[str]) -> str | None:
        """A joined room carrying exactly `tag`, looked for among rooms not in `skip` (known ones)."""
        async with self._scan_lock:
            for room_id, seen in self._tags.items():
                if seen is not None and dict(seen) == dict(tag) and room_id not in skip:
                    return room_id
            resp = await self.client.joined_rooms()
            if not isinstance(resp, JoinedRoomsResponse):
                raise self._error(resp)
            unknown = [r for r in resp.rooms if r not in skip and r not in self._tags]
            sem = asyncio.Semaphore(8)

            async def read(room_id: str) -> None:
                # The whole state, not just the tag's content: who created the room and
                # who sent the tag decide whether the tag means anything (module docstring).
                async with sem:
                    got = await self.client.room_get_state(room_id)
                self._tags[room_id] = (own_tag(got.events, self.user_id)
                                       if isinstance(got, RoomGetStateResponse) else None)

            await asyncio.gather(*(read(r) for r in unknown))
            for room_id in resp.rooms:
                seen = self._tags.get(room_id)
                if seen is not None and dict(seen) == dict(tag) and room_id not in skip:
                    return str(room_id)
        return None

    # -- membership ------------------------------------------------------------------------------

    async def invite(self, room_id: str, user_id: str) -> str:
        """Invite; "ok", "already" (in the room or invited) or raises."""
        resp = await self.client.room_invite(room_id, user_id)
        if isinstance(resp, RoomInviteResponse):
            room = self.client.rooms.get(room_id)
            if room is not None:
                # Share the room's encryption keys with the invitee's devices too:
                # the welcome follows right after, before any sync shows the invite.
                room.add_member(user_id, None, None, invited=True)
                if room.encrypted and self.client.olm is not None:
                    self.client.olm.update_tracked_users(room)
            return "ok"
        if isinstance(resp, ErrorResponse) and _already(resp):
            return "already"
        raise self._error(resp)

    async def kick(self, room_id: str, user_id: str, reason: str) -> None:
        resp = await self.client.room_kick(room_id, user_id, reason)
        if isinstance(resp, RoomKickResponse) or (isinstance(resp, ErrorResponse) and _already(resp)):
            room = self.client.rooms.get(room_id)
            # The kick is the hub's own event, which its sync no longer shows (hub.matrix.sync):
            # out of nio's member list now, and a new room key for the next message, so the
            # kicked person's devices are not sent keys to what follows.
            if room is not None and room.remove_member(user_id) and room.encrypted:
                self.client.invalidate_outbound_session(room_id)
            return
        raise self._error(resp)

    async def leave(self, room_id: str) -> None:
        resp = await self.client.room_leave(room_id)
        if isinstance(resp, RoomLeaveResponse) or (isinstance(resp, ErrorResponse) and _already(resp)):
            self.forget(room_id)
            return
        raise self._error(resp)

    async def join(self, room_id: str) -> bool:
        resp = await self.client.join(room_id)
        return isinstance(resp, JoinResponse)

    async def put_state(self, room_id: str, event_type: str, state_key: str, content: dict[str, Any]) -> str:
        resp = await self.client.room_put_state(room_id, event_type, content, state_key=state_key)
        if isinstance(resp, RoomPutStateResponse):
            if event_type == "m.room.encryption":
                self._mark_encrypted(room_id)  # a room fix turned it on: the sync will not say so
            if event_type == ROOM_TAG:
                # Read again on the next scan: the hub's own tag counts only in a room it created.
                self._tags.pop(room_id, None)
            return str(resp.event_id)
        raise self._error(resp)

    async def state_content(self, room_id: str, event_type: str,
                            state_key: str = "") -> dict[str, Any] | None:
        """One state event's content, or None if the room has none of that type."""
        resp = await self.client.room_get_state_event(room_id, event_type, state_key)
        if isinstance(resp, RoomGetStateEventResponse):
            return dict(resp.content)
        if isinstance(resp, ErrorResponse) and resp.status_code == "M_NOT_FOUND":
            return None
        raise self._error(resp)

    async def set_direct(self, user_id: str, room_id: str) -> None:
        """Record the room as the hub's direct chat with `user_id` (`m.direct` account data)."""
        path = f"/_matrix/client/v3/user/{self.user_id}/account_data/m.direct"
        headers = {"Authorization": f"Bearer {self.client.access_token}"}
        async with self._direct_lock:  # read-modify-write of one shared document
            resp = await self.client.send("GET", path, headers=headers)
            data: dict[str, Any] = {}
            if resp.status == 200:
                body = await resp.json()
                data = body if isinstance(body, dict) else {}
            elif resp.status != 404:
                raise TemporaryDeliveryError(f"reading m.direct failed: HTTP {resp.status}")
            rooms = [r for r in data.get(user_id, []) if isinstance(r, str)]
            if room_id in rooms:
                return
            data[user_id] = [*rooms, room_id]
            put = await self.client.send("PUT", path, json.dumps(data), headers=headers)
            if put.status != 200:
                raise TemporaryDeliveryError(f"writing m.direct failed: HTTP {put.status}")

    # -- reading rooms -------------------------------------------------------------------------------

    async def snapshot(self, room_id: str) -> RoomSnapshot | None:
        """The room's full state, or None when the hub cannot see it (not in it, or it is gone)."""
        data = await get_json(self.client, state_path(room_id))
        if isinstance(data, ErrorResponse):
            if data.status_code in ("M_FORBIDDEN", "M_NOT_FOUND"):
                return None
            raise self._error(data)
        return snapshot_from_events(room_id, state_events(data))

    async def load_room(self, room_id: str) -> bool:
        """Make nio ready to send in a room it does not know whole in this run (False if the hub
        cannot read it): before the hub's first send there since start-up.

        A room nio's store knows as encrypted needs its members alone, to share the room key
        with the joined and the invited (whose devices need it too: pair rooms show history
        from the invite on), never with anyone who declined or left. With `invitees`, the
        joined come from GET /joined_members and the invited from the hub's own records,
        which the sync keeps current (the first sync of a run is handled before any send):
        in a 5,000-room fan-out GET /members cost Synapse 69 ms a room, /joined_members 30 ms
        (bench/README.md, experiment J). Without, one GET /members (joined and invited). Any
        other room is read whole (GET /state), which also says whether it is encrypted."""
        room = self.client.rooms.get(room_id)
        if room is None or (room_id not in self._whole and room_id not in self._members):
            encrypted = room_id in self.client.encrypted_rooms
            joined_only = encrypted and self.invitees is not None
            path = joined_path if joined_only else members_path if encrypted else state_path
            data = await get_json(self.client, path(room_id))
            if isinstance(data, ErrorResponse):
                return room_id in self.client.rooms
            if not encrypted:
                self.feed(room_id, state_events(data))
            elif self.invitees is not None:
                self._learn_members(room_id, joined_events(data, await self.invitees(room_id)))
            else:
                self._learn_members(room_id, state_events(data))
            room = self.client.rooms[room_id]
        if room.encrypted and self.client.olm is not None:
            await self._query_keys(room)
        return True

    def _learn_members(self, room_id: str, events: list[dict[str, Any]]) -> None:
        # A new room from the members alone: what nio pieced together from incremental syncs
        # is replaced, as `feed` replaces it (the members answer lists everyone still in).
        self._install(room_id, room_from_state(room_id, self.user_id, events, encrypted=True))
        self._members.add(room_id)

    def _install(self, room_id: str, room: MatrixRoom) -> None:
        """Put `room` in nio's place for `room_id`; an encrypted room is marked so (in nio's
        store too) and its members' devices tracked."""
        partial = self.client.rooms.get(room_id)
        if partial is not None and partial.members_synced and set(partial.users) == set(room.users):
            # The same members, whose keys this run has asked for already: a send on its way
            # (it checked the room it saw, then awaited) must not find this one unready. The
            # control room is fed at start while the first reply may be sending, and nio
            # refused it ("members aren't fully synced"): a second's retry on the first ping.
            room.members_synced = True
        self.client.rooms[room_id] = room
        if room.encrypted:
            self._mark_encrypted(room_id)
            if self.client.olm is not None:
                self.client.olm.update_tracked_users(room)
                if partial is not None and set(partial.users) != set(room.users):
                    # A room key this run shared with the partial member list misses someone:
                    # the next message gets a new one, shared with everyone now known.
                    self.client.invalidate_outbound_session(room_id)

    async def _query_keys(self, room: MatrixRoom) -> None:
        """What nio's `room_send` does for a room whose members it has not synced, without its
        joined-members request: track the members' devices and fetch the keys of those new to
        it (or changed), so the room key reaches every device. Before every send, not only the
        first: someone invited since is tracked (`invite`) but has no keys yet. Lanes query at
        once, as nio's own `room_send` would: one query at a time (a lock) held the 16 lanes of
        a 5,000-room fan-out behind each other for 60 % of it."""
        assert self.client.olm is not None
        if not room.members_synced:
            self.client.olm.update_tracked_users(room)
        if self.client.should_query_keys:  # no await between: nio refuses a query of nobody
            resp = await self.client.keys_query()
            if not isinstance(resp, KeysQueryResponse):
                raise self._error(resp)
        room.members_synced = True

    def forget(self, room_id: str) -> None:
        """Drop nio's view of a room the hub replaced: a later sync teaches it again if need be."""
        self.client.rooms.pop(room_id, None)
        self._whole.discard(room_id)
        self._members.discard(room_id)

    def feed(self, room_id: str, events: list[dict[str, Any]]) -> None:
        """Teach nio a room from its whole state (a GET /state answer, just read).

        Replaces what nio pieced together from incremental syncs (the changes since the saved
        position, lazy-loaded members), which lacks the members who did not speak, the
        invited, and the power levels; a room nio already knows whole is left as it is (the
        sync keeps it current).
        """
        if room_id in self._whole and room_id in self.client.rooms:
            return
        encrypted = room_id in self.client.encrypted_rooms
        room = room_from_state(room_id, self.user_id, events, encrypted=encrypted)
        # `members_synced` stays False although every member is here: before the first send
        # `load_room` asks for the keys of users nio has just begun to track (else their
        # devices get no room key), and then marks it.
        self._install(room_id, room)
        self._whole.add(room_id)


def _created_by(create: dict[str, Any]) -> frozenset[str]:
    """Everyone a room's m.room.create event makes a creator: its sender and additional creators
    (and, before room version 11, the `creator` it names, which must be the sender anyway)."""
    raw = create.get("content")
    content: dict[str, Any] = raw if isinstance(raw, dict) else {}
    users = {str(create.get("sender", ""))}
    extra = content.get("additional_creators") or []
    users.update(str(u) for u in (extra if isinstance(extra, list) else [extra]))
    if "creator" in content:
        users.add(str(content["creator"]))
    return frozenset(users)


def own_tag(events: list[dict[str, Any]], hub: str) -> dict[str, Any] | None:
    """The room's hub tag, if the hub alone created the room and sent the tag itself; else None."""
    by_type = {(str(e.get("type", "")), str(e.get("state_key", ""))): e for e in events}
    create, tag = by_type.get(("m.room.create", "")), by_type.get((ROOM_TAG, ""))
    if create is None or tag is None or _created_by(create) != {hub} or tag.get("sender") != hub:
        return None
    content = tag.get("content")
    return dict(content) if isinstance(content, dict) and content else None


def snapshot_from_events(room_id: str, events: list[dict[str, Any]]) -> RoomSnapshot:
    state: dict[tuple[str, str], dict[str, Any]] = {}
    members: dict[str, str] = {}
    version = "1"
    creators: set[str] = set()
    created_by: frozenset[str] = frozenset()
    for e in events:
        kind, key = str(e.get("type", "")), str(e.get("state_key", ""))
        raw = e.get("content")
        content: dict[str, Any] = raw if isinstance(raw, dict) else {}
        state[(kind, key)] = content
        if kind == "m.room.member":
            members[key] = str(content.get("membership", ""))
        elif kind == "m.room.create":
            version = str(content.get("room_version", "1"))
            creators.add(str(e.get("sender", "")))
            extra = content.get("additional_creators") or []
            creators.update(u for u in extra if isinstance(u, str))
            created_by = _created_by(e)
    if version not in CREATOR_POWER_VERSIONS:
        creators.clear()
    return RoomSnapshot(room_id, state, members, version, frozenset(creators), events, created_by)
