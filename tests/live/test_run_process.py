"""`hub run` as an operator runs it: a process, SIGTERM, restart, logs without secrets."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.devserver import free_port
from hub.devserver.smtp import SmtpSink
from hub.devserver.synapse import SynapseServer

from tests.support.databases import backends

pytestmark = pytest.mark.synapse

SMTP_PASSWORD = "smtp-secret-Quokka-77"
WEB_SECRET = "web-secret-Wombat-42"


def _config(tmp: Path, homeserver: str, bot_id: str, moderator: str, web_port: int,
            database_url: str | None = None, *, smtp_port: int | None = None, extra: str = "") -> Path:
    path = tmp / "config.toml"
    database = f'[database]\nurl = "{database_url}"\n' if database_url else ""
    email = (f'enabled = true\nfrom = "Hub <hub@example.org>"\nsmtp_host = "127.0.0.1"\n'
             f'smtp_port = {smtp_port}\nsecurity = "none"\n') if smtp_port else "enabled = false\n"
    path.write_text(
        f"""{database}
[hub]
data_dir = "./data"
[matrix]
homeserver = "{homeserver}"
user_id = "{bot_id}"
password = "${{HUB_MATRIX_PASSWORD}}"
control_room = "#mods-{os.getpid()}-{web_port}:localhost"
moderators = ["{moderator}"]
[email]
{email}password = "${{HUB_SMTP_PASSWORD}}"
[web]
listen = "127.0.0.1:{web_port}"
secret = "${{HUB_SECRET}}"
{extra}""",
        encoding="utf-8",
    )
    return path


class HubProcess:
    def __init__(self, config: Path, env: dict[str, str], log: Path) -> None:
        self.config = config
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hub", "--log-level", "DEBUG", "run", "-c", str(self.config)],
            stdout=out, stderr=subprocess.STDOUT, env=self.env,
        )
        out.close()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def wait_for_log(self, line: str, times: int = 1, timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if text.count(line) >= times:
                return
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"hub exited {self.proc.returncode}:\n{text[-3000:]}")
            await asyncio.sleep(0.1)
        raise TimeoutError(f"no {line!r} in the hub's log:\n{self.text()[-3000:]}")

    async def wait_ready(self, timeout: float = 40) -> None:
        await self.wait_for_log("hub ready as", self.starts, timeout)

    starts = 0

    async def run(self) -> None:
        self.starts += 1
        self.start()
        await self.wait_ready()

    async def terminate(self, timeout: float = 20) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, timeout)


async def test_restart_answers_once_and_logs_no_secrets(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any],
    tmp_path: Path,
) -> None:
    bot = await register("hubproc", password="matrix-secret-Numbat-13")
    user = await participant("lead")
    port = free_port()
    config = _config(tmp_path, synapse.url, bot.user_id, user.user_id, port)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HUB_MATRIX_PASSWORD": bot.password,
        "HUB_SMTP_PASSWORD": SMTP_PASSWORD,
        "HUB_SECRET": WEB_SECRET,
    }
    log = tmp_path / "hub.log"
    hub = HubProcess(config, env, log)
    await hub.run()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                health = json.loads(await resp.text())
                assert resp.status == 200, health
                assert health["checks"]["sync"] == "ok" and health["checks"]["database"] == "ok"
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert 'hub_outbox_rows{channel="matrix",status="queued"}' in await resp.text()

        room = await user.create_room(invite=[bot.user_id])
        await user.wait_joined(room, bot.user_id)
        first = await user.send(room, "!hub ping")
        await user.wait_for_reply(room, first)

        assert await hub.terminate() == 0, log.read_text()[-2000:]
        assert "stopped cleanly" in log.read_text()
        while_down = await user.send(room, "!hub ping")
        await asyncio.sleep(0.5)
        assert user.replies_to(room, while_down) == []

        await hub.run()
        await user.wait_for_reply(room, while_down, timeout=15)
        # Give a duplicate every chance to show up before counting.
        marker = await user.send(room, "!hub ping")
        await user.wait_for_reply(room, marker)
        await asyncio.sleep(1.0)
        assert len(user.replies_to(room, while_down)) == 1
        assert len(user.replies_to(room, first)) == 1
        assert await hub.terminate() == 0
    finally:
        if hub.proc and hub.proc.poll() is None:
            hub.proc.kill()

    # Secrets from config and the access token the homeserver issued never reach the log.
    db = sqlite3.connect(tmp_path / "data" / "hub.db")
    token = db.execute("SELECT value FROM kv WHERE key = 'matrix.access_token'").fetchone()[0]
    device = db.execute("SELECT value FROM kv WHERE key = 'matrix.device_id'").fetchone()[0]
    db.close()
    text = log.read_text(errors="replace")
    assert text.count("hub ready as") == 2
    # The same device both times: the session was reused, not a new login.
    assert text.count(f"device {device}") >= 2 and text.count("with new device") == 1
    for secret in (bot.password, SMTP_PASSWORD, WEB_SECRET, token):
        assert secret not in text, "a secret reached the log"
    assert "Traceback" not in text

    # A revoked token stops the hub with a clear message and exit status 1.
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{synapse.url}/_matrix/client/v3/logout",
                             headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "hub", "run", "-c", str(config)],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "no longer accepts" in result.stderr and "--new-session" in result.stderr
    assert token not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("backend", backends())
async def test_a_second_process_on_the_same_database_stands_by_then_takes_over(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any],
    tmp_path: Path, backend: str, database_urls: dict[str, str],
) -> None:
    """Two `hub run` on one install would drive one Matrix device from two processes; the
    second waits, answers nothing, and takes over when the first is killed."""
    bot = await register("hubpair")
    user = await participant("lead")
    port = free_port()
    config = _config(tmp_path, synapse.url, bot.user_id, user.user_id, port,
                     database_urls[backend] if backend == "postgresql" else None)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HUB_MATRIX_PASSWORD": bot.password,
           "HUB_SMTP_PASSWORD": SMTP_PASSWORD, "HUB_SECRET": WEB_SECRET}
    first = HubProcess(config, env, tmp_path / "first.log")
    second = HubProcess(config, env, tmp_path / "second.log")
    standby = HubProcess(config, env, tmp_path / "third.log")
    try:
        await first.run()
        second.start()
        await second.wait_for_log("standing by", timeout=30)
        room = await user.create_room(invite=[bot.user_id])
        await user.wait_joined(room, bot.user_id)
        ping = await user.send(room, "!hub ping")
        await user.wait_for_reply(room, ping)
        await asyncio.sleep(1.0)  # a second answer, if any, would be here by now
        assert len(user.replies_to(room, ping)) == 1
        assert "hub ready as" not in second.text()

        assert first.proc is not None
        first.proc.kill()  # SIGKILL: the lock must go with the process, not with a clean exit
        first.proc.wait(10)
        second.starts = 1
        await second.wait_ready(timeout=40)
        assert "taking over" in second.text()
        after = await user.send(room, "!hub ping")
        await user.wait_for_reply(room, after, timeout=20)
        await asyncio.sleep(1.0)
        assert len(user.replies_to(room, after)) == 1

        # A standby asked to stop exits at once and cleanly.
        standby.start()
        await standby.wait_for_log("standing by", timeout=30)
        assert await standby.terminate(timeout=10) == 0
        assert await second.terminate() == 0
        assert "Traceback" not in second.text() + standby.text()
    finally:
        for p in (first, second, standby):
            if p.proc and p.proc.poll() is None:
                p.proc.kill()


async def test_hub_run_waits_through_a_dns_failure_and_stops_cleanly(tmp_path: Path) -> None:
    """A homeserver name that does not resolve: one line per try with the reason, no traceback;
    SIGTERM during the wait ends it cleanly (exit 0)."""
    url = "http://no-such-homeserver.invalid:8008"
    config = _config(tmp_path, url, "@hub:no-such-homeserver.invalid", "@lead:localhost", free_port())
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HUB_MATRIX_PASSWORD": "matrix-pw-Dingo-5",
           "HUB_SMTP_PASSWORD": SMTP_PASSWORD, "HUB_SECRET": WEB_SECRET}
    hub = HubProcess(config, env, tmp_path / "hub.log")
    hub.start()
    try:
        await hub.wait_for_log("trying again in 2 s", timeout=30)
        assert await hub.terminate() == 0
    finally:
        if hub.proc and hub.proc.poll() is None:
            hub.proc.kill()
    text = hub.text()
    lines = [line for line in text.splitlines() if "cannot reach" in line]
    assert len(lines) >= 2
    for line, delay in zip(lines, (1, 2, 4), strict=False):
        assert line.endswith(f"cannot reach the homeserver at {url} (DNS lookup failed "
                             f"(Name or service not known)); trying again in {delay} s"), line
    assert "stopped cleanly" in text
    assert "Traceback" not in text and "Unclosed client session" not in text, text


async def test_hub_run_waits_for_an_smtp_server_that_is_down_at_start(
    synapse: SynapseServer, register: Callable[..., Any], tmp_path: Path,
) -> None:
    """The mail server is down when `hub run` starts: Matrix does not wait for it; the hub greets
    it with backoff (one line per try naming it and the reason), and the welcome email queued
    by a roster import goes out once it answers. No restart, no traceback."""
    bot = await register("hubmail")
    sink = SmtpSink()  # its port is chosen now; it starts listening later
    web_port = free_port()
    config = _config(tmp_path, synapse.url, bot.user_id, "@lead:localhost", web_port, smtp_port=sink.port,
                     extra='[[cohort]]\nslug = "late-mail"\n')
    roster = tmp_path / "roster.csv"
    roster.write_text("cohort,role,name,email,matrix_id,timezone,mentor\n"
                      "late-mail,mentee,Ada Lovelace,ada@example.org,,,\n", encoding="utf-8")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HUB_MATRIX_PASSWORD": bot.password,
           "HUB_SMTP_PASSWORD": SMTP_PASSWORD, "HUB_SECRET": WEB_SECRET}
    imported = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "hub", "roster", "import", str(roster), "-c", str(config)],
        env=env, capture_output=True, text=True, timeout=60)
    assert imported.returncode == 0, imported.stderr
    hub = HubProcess(config, env, tmp_path / "hub.log")
    where = f"smtp://127.0.0.1:{sink.port}"
    try:
        hub.start()
        hub.starts = 1
        await hub.wait_ready()  # Matrix does not wait for the mail server
        await hub.wait_for_log(f"cannot reach the SMTP server at {where} (connection refused)", times=3)
        assert sink.count == 0
        sink.start()
        back = time.monotonic()
        (mail,) = await sink.wait_for(1, timeout=60)
        delivered = time.monotonic() - back
        assert mail.rcpt_tos == ("ada@example.org",)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{web_port}/healthz") as resp:
                assert json.loads(await resp.text())["checks"]["smtp"] == "ok"
        assert await hub.terminate() == 0
    finally:
        if hub.proc and hub.proc.poll() is None:
            hub.proc.kill()
        sink.stop()
    text = hub.text()
    waits = re.findall(rf"cannot reach the SMTP server at {re.escape(where)} \(connection refused\); "
                       r"trying again in (\d+) s", text)
    print(f"\nSMTP server started late: {len(waits)} tries logged, the welcome email {delivered:.1f} s "
          "after it started listening")
    assert [int(d) for d in waits] == [1, 2, 4, 8, 16, 32, 60][:len(waits)]
    assert f"the SMTP server at {where} answers (after {len(waits)} failed tries)" in text
    # No try of the mail's own while the greeting waits: its one line per try is the only one.
    assert "the SMTP server is unreachable" not in text and "SMTP health check failed" not in text
    assert "Traceback" not in text and SMTP_PASSWORD not in text, text[-3000:]
