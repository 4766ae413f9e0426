"""`hub worker` as an operator runs it: refused on SQLite; on PostgreSQL, a process that needs no
Matrix secret and sends the digest exactly as `hub run` would (the same bytes for the same row).

Many workers beside `hub run`, and one killed mid-batch: tests/live/test_workers_live.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from sqlalchemy import select, update

from hub.clock import SystemClock
from hub.delivery.dispatcher import Claimed
from hub.delivery.outbox import EMAIL
from hub.devserver.smtp import SmtpSink
from hub.email.message import build_message
from hub.email.pool import SmtpPool
from hub.features.digest import DigestService
from hub.mailer import DeliveryAlerts, email_sender
from hub.storage.models import outbox_table as T

from tests.features.test_program_wiring import BERLIN, give_rooms_ids, make_world, run_calendar
from tests.support.databases import PG_URL

FROM = "Hub <hub@example.org>"  # as tests.features.test_program_wiring's settings say


def _config(tmp: Path, url: str, smtp_port: int) -> Path:
    path = tmp / "worker.toml"
    # `hub run`'s config as it is, Matrix password from the environment included: a worker
    # never logs in, so it starts without it.
    path.write_text(f"""
[database]
url = "{url}"
[matrix]
homeserver = "https://example.org"
user_id = "@hub:example.org"
password = "${{HUB_MATRIX_PASSWORD}}"
control_room = "#mods:example.org"
[email]
enabled = true
from = "{FROM}"
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
security = "none"
[web]
public_url = "https://hub.example.org"
secret = "test-secret"
""", encoding="utf-8")
    return path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def start_worker(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "hub", "--log-level", "DEBUG", "worker", "-c",
                                 str(config)], env=_env(), stdout=out, stderr=subprocess.STDOUT)


def test_a_worker_on_sqlite_stops_at_once_naming_postgresql(tmp_path: Path) -> None:
    config = _config(tmp_path, f"sqlite:///{tmp_path / 'data' / 'hub.db'}", 25)
    result = subprocess.run([sys.executable, "-m", "hub", "worker", "-c", str(config)], env=_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "hub worker needs PostgreSQL" in result.stderr and "FOR UPDATE SKIP LOCKED" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # nothing was opened or made


@pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL (HUB_TEST_DATABASE_URL)")
async def test_a_worker_process_sends_the_digest_as_hub_run_would(
        tmp_path: Path, database_urls: dict[str, str]) -> None:
    url = database_urls["postgresql"]
    world = await make_world(tmp_path, url, datetime(2027, 1, 17, 12, 0, tzinfo=BERLIN))
    world.program.digest = DigestService(world.program, control_room=lambda: None).rows
    sink = SmtpSink()
    sink.start()
    log = tmp_path / "worker.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        await give_rooms_ids(world)
        await run_calendar(world.program, world.clock, datetime(2027, 1, 18, 10, 0, tzinfo=BERLIN))
        async with world.db.transaction() as s:  # queued on the test's 2027 clock: due now
            await s.execute(update(T).values(not_before=0.0))
            digests = {r.lane: Claimed(r.seq, r.txn_id, EMAIL, r.kind, r.lane, json.loads(r.payload), 0, 0.0)
                       for r in (await s.execute(select(T).where((T.c.kind == "digest")
                                                                 & (T.c.channel == "email")))).all()}
        assert len(digests) == 6 and all(c.payload["template"] == "digest" for c in digests.values())
        proc = start_worker(_config(tmp_path, url, sink.port), log)
        deadline = time.monotonic() + 60
        while not {m.rcpt_tos[0] for m in sink.messages if "digest" in m.subject} >= set(digests):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.2)

        # What `hub run` makes of the same rows: its email sender (hub.mailer), in this process.
        pool = SmtpPool(world.settings.email, SystemClock())
        sender = email_sender(world.settings, world.db, pool, SystemClock(),
                              alerts=DeliveryAlerts(SystemClock(), control_room=lambda: None,
                                                    command_prefix=lambda: "!hub"), envelope=None)
        compared = 0
        for mail in sink.messages:
            row = digests.get(mail.rcpt_tos[0])
            if row is None or "digest" not in mail.subject:
                continue  # a welcome or a webinar mail, sent too
            compared += 1
            date = parsedate_to_datetime(str(mail.message["Date"]))
            expected = build_message(await sender.render(row), txn_id=row.txn_id, from_header=FROM, date=date)
            assert mail.raw == expected.data, mail.rcpt_tos
        assert compared == len(digests)  # each once
        await pool.close()

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
        text = log.read_text()
        assert "worker ready" in text and "stopped cleanly" in text and "Traceback" not in text
        assert "HUB_MATRIX_PASSWORD" not in text
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        sink.stop()
        await world.db.close()
