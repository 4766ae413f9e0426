"""The hub's Matrix session: one device for the life of the install.

The password is used once; the access token and device id it yields are kept
in the database (maubot/mautrix do the same) and reused on every start, so
the crypto store, the cross-signing signature and Matrix transaction-id
deduplication all stay tied to one device.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TypeVar

import aiohttp
from nio import (
    AsyncClient,
    AsyncClientConfig,
    LoginResponse,
    WhoamiResponse,
)

from hub.config import MatrixSettings
from hub.errors import InvalidTokenError, LoginError, UnreachableError
from hub.logs import add_secrets
from hub.matrix.crypto_store import HubCryptoStore
from hub.storage.db import Database, private_dir
from hub.waiting import describe_network_error

__all__ = ["DEVICE_NAME", "MatrixSession", "make_client"]

log = logging.getLogger(__name__)
DEVICE_NAME = "Cohort Hub"
_TOKEN = "matrix.access_token"
_DEVICE = "matrix.device_id"
_USER = "matrix.user_id"
R = TypeVar("R")


def make_client(settings: MatrixSettings, store_dir: Path, device_id: str | None = None) -> AsyncClient:
    private_dir(store_dir)  # the device's keys: 0700 even if an older hub made it looser
    config = AsyncClientConfig(
        # nio would otherwise retry 429s and timeouts forever inside one call,
        # hiding them from the dispatcher's shared limiter and backoff.
        max_limit_exceeded=0,
        max_timeouts=0,
        request_timeout=60,
        encryption_enabled=True,
        store_sync_tokens=False,  # the sync token lives in our database, saved after handling
        store=HubCryptoStore,  # without the hub's own room keys (hub.matrix.crypto_store)
    )
    return AsyncClient(
        settings.homeserver,
        settings.user_id,
        device_id=device_id or "",
        store_path=str(store_dir),
        config=config,
    )


class MatrixSession:
    def __init__(self, settings: MatrixSettings, db: Database, data_dir: Path) -> None:
        self.settings = settings
        self.db = db
        self.store_dir = data_dir / "crypto"
        self.client: AsyncClient | None = None

    async def open(self) -> AsyncClient:
        """Restore the saved session (checked with whoami), or log in once and save it.

        Raises UnreachableError when the homeserver does not answer (refused, no DNS,
        timed out, a 5xx from its proxy): `hub run` waits and tries again, `hub check`
        reports it. A client that failed is closed here, never left to the garbage
        collector's "Unclosed client session".
        """
        token = await self.db.get_state(_TOKEN)
        device = await self.db.get_state(_DEVICE)
        saved_user = await self.db.get_state(_USER)
        if token and device and saved_user == self.settings.user_id:
            add_secrets([token])
            client = make_client(self.settings, self.store_dir, device)
            client.restore_login(self.settings.user_id, device, token)
            async with self._closed_on_error(client):
                await self._whoami(client, device, source="the saved session")
            self.client = client
            return client
        if self.settings.access_token:
            client = make_client(self.settings, self.store_dir)
            client.access_token = self.settings.access_token
            async with self._closed_on_error(client):
                who = await self._whoami(client, None, source="matrix.access_token")
                if not who.device_id:
                    raise LoginError("matrix.access_token has no device id (whoami returned none)")
                client.restore_login(self.settings.user_id, who.device_id, self.settings.access_token)
                await self._save(self.settings.access_token, who.device_id)
            self.client = client
            return client
        if not self.settings.password:
            raise LoginError("no saved session and neither matrix.password nor access_token is set")
        client = make_client(self.settings, self.store_dir)
        async with self._closed_on_error(client):
            resp = await self._reach(client.login(self.settings.password, device_name=DEVICE_NAME))
            if not isinstance(resp, LoginResponse):
                raise LoginError(
                    f"logging in as {self.settings.user_id} at {self.settings.homeserver} failed: "
                    f"{getattr(resp, 'message', resp)}"
                )
            add_secrets([resp.access_token])
            await self._save(resp.access_token, resp.device_id)
        log.info("logged in as %s with new device %s", resp.user_id, resp.device_id)
        self.client = client
        return client

    @contextlib.asynccontextmanager
    async def _closed_on_error(self, client: AsyncClient) -> AsyncIterator[None]:
        try:
            yield
        except BaseException:
            await client.close()
            raise

    async def _reach(self, call: Awaitable[R]) -> R:
        """`call`'s response; UnreachableError if the homeserver did not answer, or answered
        only through a proxy that could not reach it (5xx) or is shedding load (429)."""
        try:
            resp = await call
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise UnreachableError("the homeserver", self.settings.homeserver,
                                   describe_network_error(e)) from None
        status = getattr(getattr(resp, "transport_response", None), "status", 0) or 0
        if status >= 500 or status == 429:
            raise UnreachableError("the homeserver", self.settings.homeserver, f"HTTP {status}")
        return resp

    async def _whoami(self, client: AsyncClient, device: str | None, *, source: str) -> WhoamiResponse:
        resp = await self._reach(client.whoami())
        if isinstance(resp, WhoamiResponse):
            if resp.user_id != self.settings.user_id:
                raise LoginError(
                    f"{source} belongs to {resp.user_id}, not matrix.user_id {self.settings.user_id}"
                )
            if device and resp.device_id and resp.device_id != device:
                raise LoginError(f"{source} is for device {resp.device_id}, expected {device}")
            return resp
        code = getattr(resp, "status_code", "")
        if code == "M_UNKNOWN_TOKEN":
            raise InvalidTokenError(
                f"the homeserver no longer accepts {source}'s access token (it was logged out or "
                "revoked). Set a fresh matrix.access_token, or remove the saved session with "
                "`hub run --new-session` to log in again with matrix.password (this makes a new device)."
            )
        raise LoginError(f"checking {source} with whoami failed: {getattr(resp, 'message', resp)}")

    async def _save(self, token: str, device: str) -> None:
        async with self.db.transaction() as s:
            await self.db.set_state(_TOKEN, token, s)
            await self.db.set_state(_DEVICE, device, s)
            await self.db.set_state(_USER, self.settings.user_id, s)

    async def forget(self) -> None:
        """Drop the saved session so the next start logs in with the password again."""
        async with self.db.transaction() as s:
            for key in (_TOKEN, _DEVICE, _USER, "sync.next_batch"):
                await self.db.set_state(key, "", s)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
