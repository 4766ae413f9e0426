"""`hub check` and the start-up wait: every problem in one run, named by its key, in one line each;
folders checked offline; peers that do not answer are waited for by `hub run` (with backoff, one
line per try) and reported once by `hub check`."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hub.clock import FakeClock
from hub.config import EmailSettings
from hub.devserver import free_port
from hub.devserver.smtp import SmtpSink
from hub.devserver.synapse import RegisteredUser, SynapseServer
from hub.email.pool import SmtpPool
from hub.errors import LoginError, UnreachableError
from hub.waiting import describe_network_error, retry_delay, until_reachable

ROOT = Path(__file__).resolve().parents[2]
ENV = {"PATH": "/usr/bin:/bin", "HUB_MATRIX_PASSWORD": "dummy-matrix-pw", "HUB_SECRET": "dummy-web-secret"}


def _hub(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hub", *args], capture_output=True, text=True,
                          timeout=timeout, env=env or ENV, cwd=cwd)


def _config(tmp: Path, homeserver: str = "https://matrix.example.org", *, more: str = "",
            hub: str = "", user: str = "@hub:example.org", password: str = "${HUB_MATRIX_PASSWORD}") -> Path:
    path = tmp / "config.toml"
    path.write_text(f"""[hub]
{hub}
[matrix]
homeserver = "{homeserver}"
user_id = "{user}"
password = "{password}"
[web]
secret = "${{HUB_SECRET}}"
{more}""", encoding="utf-8")
    return path


def _closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused at once."""
    return free_port()


# --- the wait: backoff, one line per try, the reason in words -------------------------------------


def test_retry_delays_double_up_to_a_minute() -> None:
    assert [retry_delay(n) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert retry_delay(10_000) == 60


async def test_until_reachable_tries_again_with_backoff_then_returns(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(datetime(2027, 1, 11, tzinfo=UTC))
    tries: list[float] = []
    held: list[float] = []

    async def attempt() -> str:
        tries.append(clock.monotonic())
        if len(tries) <= 8:
            raise UnreachableError("the homeserver", "https://matrix.example.org", "connection refused")
        return "client"

    caplog.set_level(logging.INFO, logger="hub.waiting")
    assert await until_reachable(attempt, clock, on_wait=held.append) == "client"
    # Tries at 0, 1, 3, 7, 15, 31, 63, 123, 183: each wait doubles, capped at 60 s.
    assert tries == [0, 1, 3, 7, 15, 31, 63, 123, 183]
    assert held == [1, 2, 4, 8, 16, 32, 60, 60]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:8] == [
        "cannot reach the homeserver at https://matrix.example.org (connection refused); "
        f"trying again in {d} s" for d in (1, 2, 4, 8, 16, 32, 60, 60)
    ]
    assert lines[8:] == ["the homeserver at https://matrix.example.org answers (after 8 failed tries)"]


async def test_until_reachable_does_not_wait_out_other_errors() -> None:
    clock = FakeClock(datetime(2027, 1, 11, tzinfo=UTC))
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise LoginError("wrong password")

    with pytest.raises(LoginError):
        await until_reachable(attempt, clock)
    assert calls == 1 and clock.monotonic() == 0


async def test_network_errors_read_as_words() -> None:
    """The reasons of real failed connections, through the wrappers the libraries add."""
    import aiohttp

    port = _closed_port()
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError) as refused:
            await http.get(f"http://127.0.0.1:{port}/")
        with pytest.raises(aiohttp.ClientError) as no_dns:
            await http.get("http://no-such-host.invalid/")
    assert describe_network_error(refused.value) == "connection refused"
    assert describe_network_error(no_dns.value).startswith("DNS lookup failed (")
    with pytest.raises(OSError) as raw:
        await asyncio.open_connection("127.0.0.1", port)
    assert describe_network_error(raw.value) == "connection refused"
    assert describe_network_error(TimeoutError()) == "timed out"
    assert describe_network_error(socket.gaierror(-2, "Name or service not known")) == (
        "DNS lookup failed (Name or service not known)")


async def test_smtp_greeting_holds_mail_until_the_server_answers() -> None:
    """While the start-up greeting waits, mail is put back without a connection attempt of its
    own (the greeting's line is the only one per try), and is sent once the server answers."""
    from hub.email.message import build_message
    from hub.email.payload import email_payload
    from hub.errors import TemporaryDeliveryError

    sink = SmtpSink()  # not started: its port refuses
    settings = EmailSettings(enabled=True, sender="Hub <hub@example.org>", smtp_host=sink.hostname,
                             smtp_port=sink.port, security="none", connections=1)
    pool = SmtpPool(settings, FakeClock(datetime(2027, 1, 11, tzinfo=UTC)))
    with pytest.raises(UnreachableError) as e:
        await pool.greet()
    assert str(e.value) == (f"cannot reach the SMTP server at smtp://{sink.hostname}:{sink.port}: "
                            "connection refused")
    pool.hold(30)
    message = build_message(email_payload(to="a@example.org", subject="hi", text="hi\n"), txn_id="t1",
                            from_header=settings.sender, date=datetime.now(UTC))
    with pytest.raises(TemporaryDeliveryError) as held:
        await pool.send(message)
    assert held.value.retry_after == 10.5 and "has not answered since the hub started" in held.value.reason
    assert pool.connects == 0 and pool.pause.epoch == 0  # no try, no outage step of its own
    sink.start()
    try:
        await pool.greet()
        assert pool.held_until is None and pool.healthy is True
        await pool.send(message)
        assert [m.rcpt_tos for m in await sink.wait_for(1)] == [("a@example.org",)]
        assert pool.connects == 1  # the greeting's connection carried the mail
    finally:
        await pool.close()
        sink.stop()


# --- config and content in one run ---------------------------------------------------------------


def test_config_problems_do_not_hide_content_or_folder_problems(tmp_path: Path) -> None:
    """A missing variable, a wrong key, a content folder that is not there and a data folder that
    is a file: all in one run, each once (no "must not be empty" after the missing variable)."""
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    config = _config(tmp_path, hub='data_dir = "afile"', password="${HUB_NOT_SET}",
                     more='[content]\npath = "./content"\n[video]\nbase_ur = "https://meet.jit.si"\n')
    result = _hub("check", "--offline", "-c", str(config))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines == [
        f"{config}: matrix.password: environment variable HUB_NOT_SET is not set",
        f"{config}: video.base_ur: unknown key (did you mean 'base_url'?)",
        f"{config}: hub.data_dir: {tmp_path / 'afile'} is a file, not a folder",
        f"{config}: content.path: {tmp_path / 'content'} is not a folder",
    ], result.stderr


def test_config_problems_do_not_hide_content_errors(tmp_path: Path) -> None:
    library = tmp_path / "library"
    shutil.copytree(ROOT / "content", library)
    broken = library / "icebreakers" / "zz-broken.md"
    broken.parent.mkdir(exist_ok=True)
    broken.write_text("---\nid: zz-broken\nkind: icebreaker\naudience: pair\n---\nHi {{ pairr }}\n",
                      encoding="utf-8")
    config = _config(tmp_path, more='[content]\npath = "library"\n[hub2]\n')
    result = _hub("check", "--offline", "-c", str(config))
    assert result.returncode == 1
    assert f"{config}: hub2: unknown section (did you mean 'hub'?)" in result.stderr
    assert f"{broken}:6: unknown variable 'pairr'" in result.stderr


# --- folders, offline ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["data_dir is a file", "data_dir under /proc",
                                  "database folder under a file", "database is a folder"])
def test_offline_check_finds_unusable_folders(tmp_path: Path, case: str) -> None:
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    (tmp_path / "adir.db").mkdir()
    hub, more, expected = {
        "data_dir is a file": ('data_dir = "afile"', "",
                               f"hub.data_dir: {tmp_path / 'afile'} is a file, not a folder"),
        "data_dir under /proc": ('data_dir = "/proc/nope/data"', "",
                                 "hub.data_dir: cannot create /proc/nope/data: cannot write in /proc ("),
        "database folder under a file": ("", f'[database]\nurl = "sqlite:///{tmp_path}/afile/db/hub.db"\n',
                                         f"database.url: cannot create {tmp_path / 'afile' / 'db'}: "
                                         f"{tmp_path / 'afile'} is a file, not a folder"),
        "database is a folder": ("", f'[database]\nurl = "sqlite:///{tmp_path}/adir.db"\n',
                                 f"database.url: {tmp_path / 'adir.db'} is not a file"),
    }[case]
    config = _config(tmp_path, hub=hub, more=more)
    result = _hub("check", "--offline", "-c", str(config))
    assert result.returncode == 1, result.stdout
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"{config}: {expected}"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.db", "afile", "config.toml"]  # nothing made


def test_hub_run_names_an_unusable_data_dir(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    config = _config(tmp_path, hub='data_dir = "afile"')
    result = _hub("run", "-c", str(config))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{config}: hub.data_dir: {tmp_path / 'afile'} is a file, not a folder"]


def test_online_check_blames_the_data_dir_not_the_homeserver(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    config = _config(tmp_path, f"http://127.0.0.1:{_closed_port()}", hub='data_dir = "afile"')
    result = _hub("check", "-c", str(config))
    assert result.returncode == 1
    assert "hub.data_dir" in result.stderr and "homeserver" not in result.stderr, result.stderr


# --- online: one line per unreachable server, no leaks, alembic quiet ------------------------------


@pytest.mark.serial  # times the check (a subprocess): alone, not beside another worker
def test_unreachable_servers_are_one_line_each(tmp_path: Path) -> None:
    hs_port, smtp_port = _closed_port(), _closed_port()
    config = _config(tmp_path, f"http://127.0.0.1:{hs_port}", more=f"""[email]
enabled = true
from = "Hub <hub@example.org>"
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
security = "none"
""")
    started = time.monotonic()
    result = _hub("check", "-c", str(config))
    took = time.monotonic() - started
    assert result.returncode == 1
    problems = [line for line in result.stderr.splitlines() if line.startswith(str(config))]
    assert problems == [
        f"{config}: matrix.homeserver: cannot reach the homeserver at http://127.0.0.1:{hs_port}: "
        "connection refused",
        f"{config}: email.smtp_host: cannot reach the SMTP server at smtp://127.0.0.1:{smtp_port}: "
        "connection refused",
    ], result.stderr
    assert "Traceback" not in result.stderr and "Unclosed" not in result.stderr, result.stderr
    assert took < 20  # fails fast: no waiting in a check


def test_dns_failure_is_one_line(tmp_path: Path) -> None:
    config = _config(tmp_path, "https://no-such-homeserver.invalid")
    result = _hub("check", "-c", str(config))
    assert result.returncode == 1
    problems = [line for line in result.stderr.splitlines() if line.startswith(str(config))]
    assert len(problems) == 1 and problems[0].startswith(
        f"{config}: matrix.homeserver: cannot reach the homeserver at https://no-such-homeserver.invalid: "
        "DNS lookup failed ("), result.stderr
    assert "Unclosed" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.synapse
async def test_online_check_is_quiet_and_closes_what_it_opens(
        synapse: SynapseServer, register: Callable[..., Any], tmp_path: Path) -> None:
    """No "Unclosed client session" and no alembic lines: one line when the schema is created,
    none when it is current."""
    bot: RegisteredUser = await register("checkbot")
    env = {**ENV, "HUB_MATRIX_PASSWORD": bot.password}
    with SmtpSink() as sink:
        config = _config(tmp_path, synapse.url, user=bot.user_id, more=f"""[email]
enabled = true
from = "Hub <hub@example.org>"
smtp_host = "{sink.hostname}"
smtp_port = {sink.port}
security = "none"
""")
        first = await asyncio.to_thread(_hub, "check", "-c", str(config), env=env)
        second = await asyncio.to_thread(_hub, "check", "-c", str(config), env=env)
    for result in (first, second):
        assert result.returncode == 0, result.stderr
        assert "Unclosed" not in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert "alembic" not in result.stderr, result.stderr
        assert f"smtp: OK (smtp://{sink.hostname}:{sink.port}, none)" in result.stdout
    # The first run creates the schema and says so in one line; the second has nothing to say.
    assert first.stderr.count("database schema created") == 1, first.stderr
    assert "database schema" not in second.stderr, second.stderr


async def test_a_proxy_answering_502_is_unreachable_not_a_login_failure(tmp_path: Path) -> None:
    """A homeserver behind a reverse proxy that answers 502 while Synapse is down: `hub run`
    waits for it like a refused connection (it used to exit with 'logging in ... failed')."""
    from aiohttp import web

    async def bad_gateway(request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>502 Bad Gateway</html>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", bad_gateway)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        config = _config(tmp_path, f"http://127.0.0.1:{port}")
        result = await asyncio.to_thread(_hub, "check", "-c", str(config))
    finally:
        await runner.cleanup()
    assert result.returncode == 1
    problems = [line for line in result.stderr.splitlines() if line.startswith(str(config))]
    assert problems == [
        f"{config}: matrix.homeserver: cannot reach the homeserver at http://127.0.0.1:{port}: HTTP 502"
    ], result.stderr
