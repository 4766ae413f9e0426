"""The outbox's Matrix channel: sends rows with their stable transaction id.

Because the transaction id is the row's `txn_id` and the hub keeps one device
(and so one access token), a resend after a crash is the same PUT
/send/{type}/{txnId}: the homeserver answers with the original event id
instead of posting a second copy.
"""

from __future__ import annotations

import logging
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

__all__ = ["MatrixSender", "classify_error"]

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


def classify_error(resp: ErrorResponse, pause: SharedPause) -> Exception:
    code = resp.status_code or ""
    http = getattr(getattr(resp, "transport_response", None), "status", None)
    reason = f"{code or http or 'error'}: {resp.message or ''}".strip()
    if code == "M_LIMIT_EXCEEDED" or http == 429:
        retry = (resp.retry_after_ms or 5000) / 1000
        pause.pause(retry)
        return TemporaryDeliveryError(reason, retry_after=retry)
    if code in _PERMANENT or (http is not None and 400 <= http < 500 and code != "M_UNKNOWN_TOKEN"):
        return PermanentDeliveryError(reason)
    return TemporaryDeliveryError(reason)


class MatrixSender:
    def __init__(self, client: AsyncClient, pause: SharedPause, *, max_room_unknown: int = 8) -> None:
        self.client = client
        self.pause = pause
        self.max_room_unknown = max_room_unknown

    async def send(self, row: Claimed) -> str:
        await self.pause.wait()
        p = row.payload
        op = p.get("op", "message")
        try:
            if op == "message":
                return await self._message(row, p)
            if op == "state":
                return await self._state(p)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise TemporaryDeliveryError(f"homeserver unreachable: {e.__class__.__name__}: {e}") from e
        raise PermanentDeliveryError(f"unknown matrix outbox op {op!r}")

    async def _message(self, row: Claimed, p: dict[str, Any]) -> str:
        room_id = p["room_id"]
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
        raise classify_error(resp, self.pause)

    async def _state(self, p: dict[str, Any]) -> str:
        resp = await self.client.room_put_state(
            p["room_id"], p["type"], p["content"], state_key=p.get("state_key", "")
        )
        if isinstance(resp, RoomPutStateResponse):
            return str(resp.event_id)
        assert isinstance(resp, ErrorResponse)
        raise classify_error(resp, self.pause)
