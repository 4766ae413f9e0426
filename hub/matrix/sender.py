"""The outbox's Matrix channel: sends rows with their stable transaction id.

Because the transaction id is the row's `txn_id` and the hub keeps one device
(and so one access token), a resend after a crash is the same PUT
/send/{type}/{txnId}: the homeserver answers with the original event id
instead of posting a second copy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from nio import (
    AsyncClient,
    ErrorResponse,
    LocalProtocolError,
    RoomPutStateResponse,
    RoomSendResponse,
)

from hub.delivery.dispatcher import Claimed
from hub.delivery.ratelimit import SharedPause
from hub.errors import PermanentDeliveryError, TemporaryDeliveryError

__all__ = ["MatrixSender", "OpHandler", "SentHook", "classify_error"]

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


# A further op (e.g. "create_room", hub.features.rooms): gets the row and its payload.
OpHandler = Callable[[Claimed, dict[str, Any]], Awaitable[str]]
# Told of each message row sent, with its payload (room id resolved) and the new event id.
SentHook = Callable[[Claimed, dict[str, Any], str], Awaitable[None]]


class MatrixSender:
    def __init__(self, client: AsyncClient, pause: SharedPause, *, max_room_unknown: int = 8) -> None:
        self.client = client
        self.pause = pause
        self.max_room_unknown = max_room_unknown
        # Extension points for the rooms the hub owns (hub.features.rooms): more ops;
        # rows naming a room by its stable key, resolved to its id at send time
        # (the id does not exist yet when such rows are queued); and loading a room
        # nio has not seen in this run (after a restart nio knows no rooms, nio #279).
        self.ops: dict[str, OpHandler] = {}
        self.resolve_room_key: Callable[[str], Awaitable[str]] | None = None
        self.load_room: Callable[[str], Awaitable[bool]] | None = None
        # Set after this run's first (full-state) sync: until then nio knows no
        # rooms, and a send would fail for a reason that is not the row's.
        self.ready: asyncio.Event | None = None
        self.ready_timeout = 30.0
        # What must know a message's event id, which exists only once it is sent (the prompts
        # that take answers by reaction, hub.features.prompts).
        self.after_sent: list[SentHook] = []

    async def send(self, row: Claimed) -> str:
        if self.ready is not None and not self.ready.is_set():
            if not await self.pause.clock.wait(self.ready, self.ready_timeout):
                raise TemporaryDeliveryError("waiting for the first sync", retry_after=5.0)
        await self.pause.wait()
        p = row.payload
        op = p.get("op", "message")
        epoch = self.pause.epoch
        try:
            if p.get("room_key") and op in ("message", "state") and self.resolve_room_key is not None:
                p = {**p, "room_id": await self.resolve_room_key(str(p["room_key"]))}
            if op == "message":
                result = await self._message(row, p, epoch)
                await self._after_sent(row, p, result)
            elif op == "state":
                result = await self._state(p, epoch)
            elif op in self.ops:
                result = await self.ops[op](row, p)
            else:
                raise PermanentDeliveryError(f"unknown matrix outbox op {op!r}")
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            reason = f"{e.__class__.__name__}: {e}"
            raise TemporaryDeliveryError(
                f"homeserver unreachable: {reason}", retry_after=self.pause.failure(epoch, reason)
            ) from e
        self.pause.success()
        return result

    async def _message(self, row: Claimed, p: dict[str, Any], epoch: int) -> str:
        room_id = p["room_id"]
        if room_id not in self.client.rooms and self.load_room is not None:
            await self.load_room(room_id)
        try:
            resp = await self.client.room_send(
                room_id,
                p.get("type", "m.room.message"),
                p["content"],
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

    async def _state(self, p: dict[str, Any], epoch: int) -> str:
        resp = await self.client.room_put_state(
            p["room_id"], p["type"], p["content"], state_key=p.get("state_key", "")
        )
        if isinstance(resp, RoomPutStateResponse):
            return str(resp.event_id)
        assert isinstance(resp, ErrorResponse)
        raise classify_error(resp, self.pause, epoch)
