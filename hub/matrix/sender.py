"""The outbox's Matrix channel: sends rows with their stable transaction id.

Each row is read back as its effect (`hub.core.effects.effect_from_payload`) and
dispatched on the effect's type: messages and state events are sent here; the
room effects (create, invite, kick, leave, fix, join, pin) go to the handler
`hub.service` gave for that type. The sender imports no feature: what serves
which effect is decided in the one place that wires the hub.

Because the transaction id is the row's `txn_id` and the hub keeps one device
(and so one access token), a resend after a crash is the same PUT
/send/{type}/{txnId}: the homeserver answers with the original event id
instead of posting a second copy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

import aiohttp
from nio import (
    AsyncClient,
    ErrorResponse,
    LocalProtocolError,
    RoomPutStateResponse,
    RoomSendResponse,
)

from hub.core.effects import Email, MatrixEffect, RoomMessage, StateEvent, effect_from_payload
from hub.delivery.dispatcher import Claimed
from hub.delivery.ratelimit import SharedPause
from hub.errors import DeliveryError, PermanentDeliveryError, TemporaryDeliveryError

__all__ = ["EffectHandler", "MatrixSender", "SentHook", "classify_error"]

log = logging.getLogger(__name__)

# Errors that retrying cannot fix. Anything else (5xx, unknown) is retried.
_PERMANENT = {
    "M_FORBIDDEN",
    "M_NOT_FOUND",
    "M_BAD_JSON",
    "M_NOT_JSON",
    "M_TOO_LARGE",
    "M_INVALID_PARAM",
    "M_UNKNOWN_ROOM",
}


def classify_error(resp: ErrorResponse, pause: SharedPause, epoch: int | None = None) -> Exception:
    code = resp.status_code or ""
    http = getattr(getattr(resp, "transport_response", None), "status", None)
    reason = f"{code or http or 'error'}: {resp.message or ''}".strip()
    if code == "M_LIMIT_EXCEEDED" or http == 429:
        retry = (resp.retry_after_ms or 5000) / 1000
        pause.pause(retry)
        return TemporaryDeliveryError(reason, retry_after=retry)
    if code in _PERMANENT or (http is not None and 400 <= http < 500 and code != "M_UNKNOWN_TOKEN"):
        return PermanentDeliveryError(reason)
    if http is not None and http >= 500 and epoch is not None:
        # 502/503/504 from a proxy in front of a stopped homeserver: an outage, not this row.
        return TemporaryDeliveryError(reason, retry_after=pause.failure(epoch, reason))
    return TemporaryDeliveryError(reason)


# Room keys -> each room's id now, or the error its rows get (`RoomBase.resolve_many`).
RoomKeysLookup = Callable[[Collection[str]], Awaitable[Mapping[str, "str | DeliveryError"]]]
# How long a room id looked up with a claimed batch is used instead of a lookup of its own.
RESOLVED_FOR = 10.0

# Carries out one kind of room effect (e.g. `CreateRoom`, hub.features.room_ops): gets the
# row and its effect (of the type it is registered for), returns the row's result.
EffectHandler = Callable[[Claimed, Any], Awaitable[str]]
# Told of each message row sent, with its payload (room id resolved) and the new event id.
SentHook = Callable[[Claimed, dict[str, Any], str], Awaitable[None]]


class MatrixSender:
    def __init__(
        self,
        client: AsyncClient,
        pause: SharedPause,
        *,
        handlers: Mapping[type[MatrixEffect], EffectHandler] | None = None,
        resolve_room_keys: RoomKeysLookup | None = None,
        load_room: Callable[[str], Awaitable[bool]] | None = None,
        max_room_unknown: int = 8,
    ) -> None:
        self.client = client
        self.pause = pause
        self.max_room_unknown = max_room_unknown
        # Given by the wiring (hub.service), for the rooms the hub owns: the handler of each
        # room effect; rows naming a room by its stable key, resolved to its id at send time
        # (the id does not exist yet when such rows are queued); and loading a room nio does
        # not know whole in this run (after a restart nio knows no rooms, nio #279, and the
        # sync resumes from the saved position without full state, hub.matrix.sync).
        self.handlers: dict[type[MatrixEffect], EffectHandler] = dict(handlers or {})
        # Room keys are looked up for a whole claimed batch at once (`prepare`); each row's
        # answer is kept here until its send takes it, and used only while younger than
        # RESOLVED_FOR. A row without a fresh answer is looked up alone, the same way.
        self.resolve_room_keys = resolve_room_keys
        self._resolved: dict[int, tuple[float, str | DeliveryError]] = {}  # seq -> (when, answer)
        self.load_room = load_room
        # Set after this run's first sync (and, as the service wires it, once the control room
        # is known): until then nio has not read the to-device messages and key changes that
        # came while the hub was down.
        self.ready: asyncio.Event | None = None
        self.ready_timeout = 30.0
        # What must know a message's event id, which exists only once it is sent (the prompts
        # that take answers by reaction, hub.features.prompts).
        self.after_sent: list[SentHook] = []

    async def prepare(self, rows: Sequence[Claimed]) -> None:
        """Look up the rooms a claimed batch names by key, in one query (`Dispatcher` calls it)."""
        if self.resolve_room_keys is None:
            return
        keys = {seq: key for seq, key in ((r.seq, r.payload.get("room_key")) for r in rows)
                if isinstance(key, str) and key}
        if not keys:
            return
        found = await self.resolve_room_keys(set(keys.values()))
        now = self.pause.clock.monotonic()
        # Answers no send took (rows given back at a stop) would be stale by now: dropped.
        self._resolved = {seq: kept for seq, kept in self._resolved.items() if now - kept[0] < RESOLVED_FOR}
        self._resolved.update((seq, (now, found[key])) for seq, key in keys.items() if key in found)

    async def send(self, row: Claimed) -> str:
        prepared = self._resolved.pop(row.seq, None)  # taken whatever happens to this attempt
        if self.ready is not None and not self.ready.is_set():
            if not await self.pause.clock.wait(self.ready, self.ready_timeout):
                raise TemporaryDeliveryError("waiting for the first sync and the control room",
                                             retry_after=5.0)
        await self.pause.wait()
        effect = effect_from_payload(row.payload, "matrix")  # an unknown op fails the row for good
        if isinstance(effect, Email):  # not with channel "matrix"; said for the type checker
            raise PermanentDeliveryError("an email payload in a Matrix row")
        epoch = self.pause.epoch
        # The batch's answer, unless the waits above made it old (a closed room is not sent to).
        fresh = prepared is not None and self.pause.clock.monotonic() - prepared[0] < RESOLVED_FOR
        resolved = prepared[1] if prepared is not None and fresh else None
        try:
            if isinstance(effect, RoomMessage):
                room_id = await self._room_id(effect.room_key, effect.room_id, resolved)
                result = await self._message(row, room_id, effect, epoch)
                await self._after_sent(row, {**row.payload, "room_id": room_id}, result)
            elif isinstance(effect, StateEvent):
                room_id = await self._room_id(effect.room_key, effect.room_id, resolved)
                result = await self._state(room_id, effect, epoch)
            elif (handler := self.handlers.get(type(effect))) is not None:
                result = await handler(row, effect)
            else:
                raise PermanentDeliveryError(f"no handler for matrix outbox op {str(effect.op)!r}")
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            reason = f"{e.__class__.__name__}: {e}"
            raise TemporaryDeliveryError(
                f"homeserver unreachable: {reason}", retry_after=self.pause.failure(epoch, reason)
            ) from e
        self.pause.success()
        return result

    async def _room_id(self, room_key: str | None, room_id: str | None,
                       resolved: str | DeliveryError | None = None) -> str:
        """A row naming a hub room by key goes to the room's id now (it may not have had one)."""
        if room_key and resolved is not None:  # looked up with its batch (`prepare`)
            if isinstance(resolved, DeliveryError):
                raise resolved
            return resolved
        if room_key and self.resolve_room_keys is not None:
            alone = (await self.resolve_room_keys([room_key])).get(room_key)
            if alone is None:
                raise PermanentDeliveryError(f"room {room_key} cannot be looked up")
            if isinstance(alone, DeliveryError):
                raise alone
            return alone
        if room_id is None:
            raise PermanentDeliveryError(f"room {room_key} cannot be looked up here")
        return room_id

    async def _message(self, row: Claimed, room_id: str, effect: RoomMessage, epoch: int) -> str:
        if self.load_room is not None:
            # A room nio does not know whole in this run (unseen since start-up, or seen only
            # in incremental syncs): its state first, so the room key reaches every member.
            await self.load_room(room_id)
        try:
            resp = await self.client.room_send(
                room_id,
                effect.type,
                effect.content,
                tx_id=row.txn_id,
                # Trust comes from cross-signing on the participants' side;
                # the hub shares keys with every device of a room's members.
                ignore_unverified_devices=True,
            )
        except LocalProtocolError as e:
            # nio does not know the room until a sync has shown it (nio #279):
            # retry shortly, and give up only if it never appears.
            if row.attempts + 1 >= self.max_room_unknown:
                raise PermanentDeliveryError(f"room {room_id} unknown to the hub: {e}") from e
            raise TemporaryDeliveryError(f"room not synced yet: {e}", retry_after=1.0) from e
        if isinstance(resp, RoomSendResponse):
            return str(resp.event_id)
        assert isinstance(resp, ErrorResponse)
        raise classify_error(resp, self.pause, epoch)

    async def _after_sent(self, row: Claimed, p: dict[str, Any], event_id: str) -> None:
        for hook in self.after_sent:
            try:
                await hook(row, p, event_id)
            except Exception as e:
                # Sent, but not yet recorded: sending again with the same transaction id gets the
                # same event id from the homeserver, and the hooks another chance.
                log.warning("recording sent row %s (%s) failed: %s", row.seq, row.kind, e)
                raise TemporaryDeliveryError(f"recording the sent message failed: {e}",
                                             retry_after=2.0) from e

    async def _state(self, room_id: str, effect: StateEvent, epoch: int) -> str:
        resp = await self.client.room_put_state(room_id, effect.type, effect.content,
                                                state_key=effect.state_key)
        if isinstance(resp, RoomPutStateResponse):
            return str(resp.event_id)
        assert isinstance(resp, ErrorResponse)
        raise classify_error(resp, self.pause, epoch)
