"""A throwaway Synapse homeserver in a subprocess, for tests and ``hub demo``.

The server is configured by writing ``homeserver.yaml`` directly instead of running
Synapse's ``--generate-config``: that command imports most of Synapse and writes a
large commented file, which costs seconds we would pay on every test run.

Everything lives in ``base_dir``: config, signing key, SQLite database, media store
and logs. Synapse's own output goes to files there (never to the test output), and
errors raised from :meth:`SynapseServer.start` quote the end of those files.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import importlib.util
import io
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp

from hub.devserver import free_port

__all__ = ["RegisteredUser", "SynapseError", "SynapseServer"]

# Rate limiters loosened when ``default_rate_limits`` is False. The names are the
# ones Synapse 1.163 reads in synapse/config/ratelimiting.py; dotted names are
# nested sections. Unknown keys are silently ignored by Synapse, so a typo here
# would not fail loudly: keep this list in sync with that file.
_RATE_LIMITS = (
    "rc_message",
    "rc_registration",
    "rc_registration_token_validity",
    "rc_login.address",
    "rc_login.account",
    "rc_login.failed_attempts",
    "rc_admin_redaction",
    "rc_joins.local",
    "rc_joins.remote",
    "rc_joins_per_room",
    "rc_key_requests",
    "rc_3pid_validation",
    "rc_invites.per_room",
    "rc_invites.per_user",
    "rc_invites.per_issuer",
    "rc_third_party_invite",
    "rc_media_create",
    "rc_presence.per_user",
    "rc_delayed_event_mgmt",
    "rc_room_creation",
    "rc_reports",
    "rc_user_directory",
    "rc_profile",
)
# burst_count is parsed with int() by Synapse, so it must be an integer.
_LOOSE_LIMIT: dict[str, float | int] = {"per_second": 100_000.0, "burst_count": 1_000_000}

_LOG_FILE = "homeserver.log"
_CONSOLE_FILE = "console.log"


def _kill_group(pid: int) -> None:
    """Last-resort cleanup, run by a weakref.finalize (at exit or garbage collection).

    Synapse runs in its own process group so it does not see the terminal's SIGINT;
    if a test run is aborted before the fixtures stop it, or a SynapseServer is
    dropped while running, it would otherwise be orphaned and keep its port busy.
    The pid cannot have been reused: the finalizer is detached when we reap it.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


class SynapseError(RuntimeError):
    """Synapse failed to start, or an admin API call failed."""


@dataclass(frozen=True, slots=True)
class RegisteredUser:
    """A user created through the shared-secret registration API, already logged in."""

    user_id: str
    password: str
    access_token: str
    device_id: str


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return f"({path.name} does not exist)"
    return "\n".join(text.splitlines()[-lines:]) or f"({path.name} is empty)"


class SynapseServer:
    """A local Synapse homeserver with SQLite storage, listening on 127.0.0.1.

    The config is written by the constructor so it can be inspected (or edited)
    before :meth:`start`. The port is fixed at construction time, so a server
    stopped with :meth:`kill` or :meth:`stop` comes back on the same URL with the
    same data when started again. ``extra_config`` replaces top-level keys of the
    generated config (shallow: pass a whole section to change one of its keys).
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        server_name: str = "localhost",
        default_rate_limits: bool = False,
        port: int | None = None,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.base_dir = Path(base_dir).resolve()
        self._server_name = server_name
        self._port = port if port is not None else free_port()
        self.default_rate_limits = default_rate_limits
        self._shared_secret = secrets.token_urlsafe(32)
        self._process: subprocess.Popen[bytes] | None = None
        self._console: io.BufferedWriter | None = None  # console.log while running
        self._finalizer: weakref.finalize[[int], SynapseServer] | None = None
        self.startup_seconds: float | None = None
        """Wall-clock seconds the last successful :meth:`start` took."""

        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._write_signing_key()
        self._write_log_config()
        config = self._build_config()
        if extra_config:
            config.update(extra_config)
        # JSON is a subset of YAML, so we can write the config without importing
        # PyYAML in the parent process (it only comes with the test/demo extras).
        self.config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    # -- public properties --------------------------------------------------------

    @property
    def url(self) -> str:
        """Client-server API base URL, e.g. ``http://127.0.0.1:8008``."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def server_name(self) -> str:
        return self._server_name

    @property
    def shared_secret(self) -> str:
        """The ``registration_shared_secret`` for ``/_synapse/admin/v1/register``."""
        return self._shared_secret

    @property
    def config_path(self) -> Path:
        return self.base_dir / "homeserver.yaml"

    @property
    def log_path(self) -> Path:
        """Synapse's log (WARNING and above)."""
        return self.base_dir / _LOG_FILE

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The homeserver's process id while it runs (benchmarks read its CPU time)."""
        return self._process.pid if self.running and self._process is not None else None

    # -- config -------------------------------------------------------------------

    def _write_signing_key(self) -> None:
        path = self.base_dir / "signing.key"
        if path.exists():
            # Keep the key of an existing data dir: events already stored were
            # signed with it.
            return
        # An ed25519 signing key file is "ed25519 <version> <unpadded base64 seed>"
        # and the seed is just 32 random bytes, so no need to import signedjson/nacl.
        seed = base64.b64encode(os.urandom(32)).decode("ascii").rstrip("=")
        version = "a_" + secrets.token_hex(2)
        path.write_text(f"ed25519 {version} {seed}\n", encoding="utf-8")
        path.chmod(0o600)

    def _write_log_config(self) -> None:
        log_config = {
            "version": 1,
            "formatters": {
                "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
            },
            "handlers": {
                "file": {
                    "class": "logging.FileHandler",
                    "formatter": "plain",
                    "filename": str(self.log_path),
                    "encoding": "utf-8",
                },
            },
            "root": {"level": "WARNING", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }
        (self.base_dir / "log.config").write_text(json.dumps(log_config, indent=2) + "\n", encoding="utf-8")

    def _build_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "server_name": self._server_name,
            "public_baseurl": self.url + "/",
            "pid_file": str(self.base_dir / "homeserver.pid"),
            "listeners": [
                {
                    "port": self._port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    # "client" also serves /_synapse/admin and the media repo.
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": {
                "name": "sqlite3",
                "args": {"database": str(self.base_dir / "homeserver.db")},
            },
            "log_config": str(self.base_dir / "log.config"),
            "media_store_path": str(self.base_dir / "media_store"),
            "signing_key_path": str(self.base_dir / "signing.key"),
            "registration_shared_secret": self._shared_secret,
            "macaroon_secret_key": secrets.token_urlsafe(32),
            "form_secret": secrets.token_urlsafe(32),
            "enable_registration": False,
            "report_stats": False,
            # Cheap hashes: registration/login happen dozens of times per test run.
            "bcrypt_rounds": 4,
            # Never talk to matrix.org or anything else on the network.
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "federation_domain_whitelist": [],
            "url_preview_enabled": False,
            "enable_metrics": False,
        }
        if not self.default_rate_limits:
            for dotted in _RATE_LIMITS:
                section = config
                *parents, leaf = dotted.split(".")
                for part in parents:
                    section = section.setdefault(part, {})
                section[leaf] = dict(_LOOSE_LIMIT)
        return config

    # -- lifecycle ----------------------------------------------------------------

    def _spawn(self) -> None:
        if self.running:
            raise SynapseError(f"Synapse is already running at {self.url}")
        if importlib.util.find_spec("synapse") is None:
            raise SynapseError(
                "matrix-synapse is not installed in this environment; "
                "install it with: pip install 'cohort-hub[demo]'"
            )
        # Appending keeps the output of earlier runs (e.g. before a kill()).
        self._console = (self.base_dir / _CONSOLE_FILE).open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
            cwd=self.base_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._console,
            stderr=subprocess.STDOUT,
            # Own process group: a Ctrl-C in the terminal must not reach Synapse
            # before the test fixtures shut it down, and kill() can signal the
            # whole group.
            start_new_session=True,
        )
        self._finalizer = weakref.finalize(self, _kill_group, self._process.pid)

    def _failure(self, reason: str) -> SynapseError:
        return SynapseError(
            f"Synapse {reason} (config {self.config_path}).\n"
            f"--- {_LOG_FILE} (tail) ---\n{_tail(self.log_path)}\n"
            f"--- {_CONSOLE_FILE} (tail) ---\n{_tail(self.base_dir / _CONSOLE_FILE)}"
        )

    # The explicit timeouts below (ASYNC109) are part of the API the test fixtures
    # and `hub demo` share; they bound a subprocess, not just this coroutine.
    async def start(self, timeout: float = 60) -> None:  # noqa: ASYNC109
        """Start Synapse and wait until the client API answers.

        Raises :class:`SynapseError` (with the end of Synapse's logs) if the process
        exits or does not answer within ``timeout`` seconds.
        """
        began = time.monotonic()
        self._spawn()
        try:
            await self._wait_ready(began, timeout)
        except BaseException:
            # Includes cancellation: never leave a half-started server behind.
            self.kill()
            raise
        self.startup_seconds = time.monotonic() - began

    async def _wait_ready(self, began: float, budget: float) -> None:
        deadline = began + budget
        versions = self.url + "/_matrix/client/versions"
        # A short per-request timeout: while Synapse is still importing, the port
        # is closed and connections fail immediately anyway.
        client_timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=client_timeout) as session:
            while True:
                if self._process is not None and self._process.poll() is not None:
                    code = self._process.returncode
                    self._reap()
                    raise self._failure(f"exited with status {code} during startup")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(versions) as response:
                        if response.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise self._failure(f"did not answer on {versions} within {budget:g}s")
                await asyncio.sleep(0.05)

    async def stop(self, timeout: float = 10) -> None:  # noqa: ASYNC109
        """SIGTERM, wait up to ``timeout`` seconds for a clean exit, then SIGKILL."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            self._signal(signal.SIGTERM)
            # A plain Popen rather than an asyncio subprocess: it is not tied to an
            # event loop, so a server started under one loop (a session fixture)
            # can be stopped from another, or through the sync API.
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(process.wait, timeout)
        self.kill()

    def kill(self) -> None:
        """SIGKILL Synapse at once (to simulate a crashed homeserver).

        :meth:`start` brings it back on the same port with the same data.
        """
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            self._signal(signal.SIGKILL)
            process.wait()
        self._reap()

    def _signal(self, signum: signal.Signals) -> None:
        assert self._process is not None
        try:
            os.killpg(self._process.pid, signum)
        except ProcessLookupError:
            pass  # already gone

    def _reap(self) -> None:
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=5)
        self._process = None
        if self._console is not None:
            self._console.close()
            self._console = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def start_blocking(self, timeout: float = 60) -> None:
        """Synchronous :meth:`start`, for code that does not run an event loop yet."""
        asyncio.run(self.start(timeout))

    def stop_blocking(self, timeout: float = 10) -> None:
        """Synchronous :meth:`stop`."""
        asyncio.run(self.stop(timeout))

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- admin API ----------------------------------------------------------------

    async def register(self, localpart: str, password: str, *, admin: bool = False) -> RegisteredUser:
        """Create a user with the shared-secret registration API and log it in.

        See https://element-hq.github.io/synapse/latest/admin_api/register_api.html
        """
        endpoint = self.url + "/_synapse/admin/v1/register"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            async with session.get(endpoint) as response:
                body = await response.json()
                if response.status != 200:
                    raise SynapseError(f"GET {endpoint}: {response.status} {body}")
                nonce = str(body["nonce"])
            mac = hmac.new(self._shared_secret.encode("utf-8"), digestmod=hashlib.sha1)
            for part in (nonce, localpart, password):
                mac.update(part.encode("utf-8"))
                mac.update(b"\x00")
            mac.update(b"admin" if admin else b"notadmin")
            payload = {
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
            }
            async with session.post(endpoint, json=payload) as response:
                body = await response.json()
                if response.status != 200:
                    raise SynapseError(f"registering {localpart!r}: {response.status} {body}")
        return RegisteredUser(
            user_id=str(body["user_id"]),
            password=password,
            access_token=str(body["access_token"]),
            device_id=str(body["device_id"]),
        )

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<SynapseServer {self._server_name} {self.url} {state}>"
