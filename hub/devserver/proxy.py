"""A recording reverse proxy for a homeserver: what a client asked, and how big the answers were.

Tests and benchmarks put it between the hub and the local Synapse to count requests of
one kind (the room check's GET /state per page) and the bytes of an answer (the first
sync after a restart): a real count against a real server, where a mock would only
count what the test expects. It forwards every request as it came (method, raw path
and query, body, headers other than the hop-by-hop ones) and answers with the server's
status, headers and body.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import aiohttp
from aiohttp import web
from yarl import URL

from hub.devserver import free_port

__all__ = ["Exchange", "RecordingProxy"]

# Not forwarded either way: they describe one connection, not the message. Accept-Encoding
# too, so answers come uncompressed and `size` is the bytes the client parses.
_HOP = frozenset({"host", "connection", "keep-alive", "transfer-encoding", "content-length",
                  "content-encoding", "accept-encoding", "upgrade", "proxy-connection", "te"})


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request through the proxy."""

    method: str
    path: str  # decoded: /_matrix/client/v3/rooms/!id:server/state
    query: Mapping[str, str]
    status: int  # 502 when the server could not be reached
    size: int  # bytes of the answer's body
    began: float  # time.monotonic() when the request arrived
    ended: float
    body: bytes = b""  # the request's


class RecordingProxy:
    """`url` forwards to `target`; `exchanges` lists every request, in the order they ended."""

    def __init__(self, target: str, *, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.target = target.rstrip("/")
        self.host = host
        self.port = port or free_port(host)
        self.exchanges: list[Exchange] = []
        # (method, whole-path regular expression, seconds): requests held that long before they
        # are forwarded, to play a slow homeserver for one kind of request.
        self.delays: list[tuple[str, re.Pattern[str], float]] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def clear(self) -> None:
        self.exchanges.clear()

    def delay(self, method: str, path: str, seconds: float) -> None:
        """Hold requests with this method and (decoded) path `seconds` before forwarding them."""
        self.delays.append((method, re.compile(path), seconds))

    def matching(self, method: str, path: str) -> list[Exchange]:
        """The exchanges with this method whose whole path matches the regular expression."""
        pattern = re.compile(path)
        return [e for e in self.exchanges if e.method == method and pattern.fullmatch(e.path)]

    async def start(self) -> None:
        # No overall timeout: a sync long-polls for as long as its client asked.
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None),
                                              auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        # A client that hangs up (a hub stopping mid long-poll) ends the forwarding at once,
        # and stopping does not wait a minute for requests still open.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0,
                                     access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        began = time.monotonic()
        for method, pattern, seconds in self.delays:
            if request.method == method and pattern.fullmatch(request.path):
                await asyncio.sleep(seconds)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        # The raw path, as the client encoded it: room ids carry `!` and `:`.
        url = URL(self.target + request.raw_path, encoded=True)
        try:
            async with self._session.request(request.method, url, data=body or None,
                                             headers=headers, allow_redirects=False) as resp:
                data = await resp.read()
                status = resp.status
                answer_headers = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP}
        except (aiohttp.ClientError, OSError) as e:
            data, status, answer_headers = str(e).encode(), 502, {}
        self.exchanges.append(Exchange(request.method, request.path, dict(request.query), status,
                                       len(data), began, time.monotonic(), body))
        return web.Response(status=status, body=data, headers=answer_headers)
