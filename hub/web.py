"""The small web endpoint: /healthz and /metrics (unsubscribe arrives with the digest)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from hub.delivery.outbox import Outbox, OutboxStatus

__all__ = ["ControlRoomFailures", "HealthSource", "WebServer"]

log = logging.getLogger(__name__)


@dataclass
class ControlRoomFailures:
    """Deliveries to the control room that failed for good: the one failure no alert can report.

    Counted since the process started (a Prometheus counter); /healthz shows
    "undelivered" while the last one is less than `recent` seconds old. It does
    not turn /healthz 503: the hub is working, and a restart would not help.
    """

    total: int = 0
    last_at: float | None = None  # monotonic seconds
    recent: float = 86400.0

    def record(self, now: float) -> None:
        self.total += 1
        self.last_at = now

    def recently(self, now: float) -> bool:
        return self.last_at is not None and now - self.last_at < self.recent


@dataclass
class HealthSource:
    sync_ok: Callable[[], bool]
    database_ok: Callable[[], Awaitable[bool]]
    smtp_ok: Callable[[], bool]
    outbox: Outbox
    max_queue_age: float = 900.0  # seconds a row may wait before the hub counts as unhealthy
    control_room: ControlRoomFailures = field(default_factory=ControlRoomFailures)
    monotonic: Callable[[], float] = time.monotonic  # the clock `control_room` is recorded on


class WebServer:
    def __init__(self, host: str, port: int, health: HealthSource) -> None:
        self.host = host
        self.port = port
        self.health = health
        self.app = web.Application()
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/metrics", self.metrics)
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    def add_routes(self, routes: list[web.RouteDef]) -> None:
        self.app.router.add_routes(routes)

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.bound_port = sockets[0].getsockname()[1] if sockets else self.port
        log.info("web endpoint listening on %s:%s", self.host, self.bound_port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def healthz(self, request: web.Request) -> web.Response:
        db_ok = await self.health.database_ok()
        stats = await self.health.outbox.stats() if db_ok else None
        checks = {
            "sync": "ok" if self.health.sync_ok() else "failing",
            "database": "ok" if db_ok else "failing",
            "smtp": "ok" if self.health.smtp_ok() else "failing",
        }
        if stats is not None:
            stale = stats.oldest_queued_age > self.health.max_queue_age
            checks["outbox"] = "stale" if stale else "ok"
        body = {
            "status": "ok" if all(v == "ok" for v in checks.values()) else "failing",
            "checks": checks,
            "oldest_queued_seconds": round(stats.oldest_queued_age, 1) if stats else None,
            # Outside `checks`: visible to monitoring, but never a 503 (see ControlRoomFailures).
            "control_room": ("undelivered" if self.health.control_room.recently(self.health.monotonic())
                             else "ok"),
            "control_room_failed": self.health.control_room.total,
        }
        return web.Response(
            status=200 if body["status"] == "ok" else 503,
            text=json.dumps(body),
            content_type="application/json",
        )

    async def metrics(self, request: web.Request) -> web.Response:
        stats = await self.health.outbox.stats()
        lines = [
            "# HELP hub_outbox_rows Outbox rows by channel and status.",
            "# TYPE hub_outbox_rows gauge",
        ]
        for status, by_channel in ((OutboxStatus.QUEUED, stats.queued), (OutboxStatus.SENDING, stats.sending),
                                   (OutboxStatus.SENT, stats.sent), (OutboxStatus.FAILED, stats.failed)):
            for channel in ("matrix", "email"):
                lines.append(
                    f'hub_outbox_rows{{channel="{channel}",status="{status}"}} '
                    f"{by_channel.get(channel, 0)}"
                )
        lines += [
            "# HELP hub_outbox_oldest_queued_seconds Age of the oldest unsent row.",
            "# TYPE hub_outbox_oldest_queued_seconds gauge",
            f"hub_outbox_oldest_queued_seconds {stats.oldest_queued_age:.3f}",
            "# HELP hub_sync_up 1 when the last sync succeeded.",
            "# TYPE hub_sync_up gauge",
            f"hub_sync_up {1 if self.health.sync_ok() else 0}",
            "# HELP hub_smtp_up 1 when the SMTP server answered the last attempt (1 if email is off).",
            "# TYPE hub_smtp_up gauge",
            f"hub_smtp_up {1 if self.health.smtp_ok() else 0}",
            "# HELP hub_control_room_failed_total Messages to the control room that failed for good.",
            "# TYPE hub_control_room_failed_total counter",
            f"hub_control_room_failed_total {self.health.control_room.total}",
        ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")
