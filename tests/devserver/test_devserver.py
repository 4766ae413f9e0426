"""The real peers in hub.devserver: a throwaway Synapse and an SMTP sink.

One Synapse serves the whole module (starting one costs ~2 s); the tests that use
it run in file order and the kill/restart test comes after the round trip.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from pathlib import Path

import aiohttp
import aiosmtplib
import pytest
from nio import (
    AsyncClient,
    JoinResponse,
    LoginResponse,
    RoomCreateResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
    WhoamiResponse,
)

from hub.devserver.proxy import RecordingProxy
from hub.devserver.smtp import ReceivedMail, SmtpSink
from hub.devserver.synapse import RegisteredUser, SynapseError, SynapseServer

# ---------------------------------------------------------------------------------
# Synapse


@pytest.fixture(scope="module")
async def synapse(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SynapseServer]:
    server = SynapseServer(tmp_path_factory.mktemp("synapse"))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="module")
async def users(synapse: SynapseServer) -> tuple[RegisteredUser, RegisteredUser]:
    alice = await synapse.register("alice", "alice-password", admin=True)
    bob = await synapse.register("bob", "bob-password")
    return alice, bob


async def _client(synapse: SynapseServer, user: RegisteredUser) -> AsyncClient:
    client = AsyncClient(synapse.url, user.user_id, device_id=user.device_id)
    client.access_token = user.access_token
    return client


async def _versions_status(url: str) -> int | None:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
            session.get(url + "/_matrix/client/versions") as response,
        ):
            return response.status
    except aiohttp.ClientError:
        return None


@pytest.mark.synapse
async def test_synapse_starts_quickly(synapse: SynapseServer) -> None:
    assert synapse.running
    assert synapse.url.startswith("http://127.0.0.1:")
    assert synapse.startup_seconds is not None
    # Target is ~3 s; generous bound for busy CI machines.
    assert synapse.startup_seconds < 30
    # Synapse's output goes to files in base_dir, not to the test output.
    assert synapse.log_path.parent == synapse.base_dir


@pytest.mark.synapse
async def test_register(synapse: SynapseServer, users: tuple[RegisteredUser, RegisteredUser]) -> None:
    alice, bob = users
    assert alice.user_id == f"@alice:{synapse.server_name}"
    assert bob.user_id == "@bob:localhost"
    assert alice.access_token and alice.device_id
    with pytest.raises(SynapseError, match="User ID already taken"):
        await synapse.register("bob", "whatever")


@pytest.mark.synapse
async def test_message_round_trip(
    synapse: SynapseServer, users: tuple[RegisteredUser, RegisteredUser]
) -> None:
    alice_user, bob_user = users
    alice = await _client(synapse, alice_user)
    bob = await _client(synapse, bob_user)
    try:
        created = await alice.room_create(name="pair room", invite=[bob_user.user_id])
        assert isinstance(created, RoomCreateResponse), created
        room_id = created.room_id
        joined = await bob.join(room_id)
        assert isinstance(joined, JoinResponse), joined

        # More than Synapse's default message burst (10): the loosened rc_message
        # must let all of these through without M_LIMIT_EXCEEDED.
        for n in range(15):
            sent = await alice.room_send(
                room_id, "m.room.message", {"msgtype": "m.text", "body": f"hello {n}"}
            )
            assert isinstance(sent, RoomSendResponse), sent

        synced = await bob.sync(timeout=0, full_state=True)
        assert isinstance(synced, SyncResponse), synced
        timeline = synced.rooms.join[room_id].timeline.events
        bodies = [e.body for e in timeline if isinstance(e, RoomMessageText)]
        assert bodies[-1] == "hello 14"
        assert all(e.sender == alice_user.user_id for e in timeline if isinstance(e, RoomMessageText))
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.synapse
async def test_the_recording_proxy_forwards_and_records_each_request(
    synapse: SynapseServer, users: tuple[RegisteredUser, RegisteredUser]
) -> None:
    alice_user, _ = users
    async with RecordingProxy(synapse.url) as proxy:
        alice = AsyncClient(proxy.url, alice_user.user_id, device_id=alice_user.device_id)
        alice.access_token = alice_user.access_token
        try:
            created = await alice.room_create(name="through the proxy")
            assert isinstance(created, RoomCreateResponse), created
            # A room id in the path (`!` and `:`, encoded by nio) reaches Synapse as sent.
            sent = await alice.room_send(created.room_id, "m.room.message",
                                         {"msgtype": "m.text", "body": "hi"})
            assert isinstance(sent, RoomSendResponse), sent
            synced = await alice.sync(timeout=0, full_state=True)
            assert isinstance(synced, SyncResponse), synced
        finally:
            await alice.close()
    sends = proxy.matching("PUT", rf"/_matrix/client/v3/rooms/{created.room_id}/send/m\.room\.message/.+")
    assert len(sends) == 1 and sends[0].status == 200
    (sync,) = proxy.matching("GET", "/_matrix/client/v3/sync")
    assert sync.query["full_state"] == "true" and sync.size > 1000 and sync.ended >= sync.began
    assert [e.method for e in proxy.exchanges] == ["POST", "PUT", "GET"]


@pytest.mark.synapse
async def test_password_login(synapse: SynapseServer, users: tuple[RegisteredUser, RegisteredUser]) -> None:
    _, bob_user = users
    client = AsyncClient(synapse.url, bob_user.user_id)
    try:
        for _ in range(6):  # beyond the default rc_login burst of 3
            response = await client.login(bob_user.password, device_name="test")
            assert isinstance(response, LoginResponse), response
    finally:
        await client.close()


@pytest.mark.synapse
async def test_kill_and_restart_keeps_url_and_users(
    synapse: SynapseServer, users: tuple[RegisteredUser, RegisteredUser]
) -> None:
    url = synapse.url
    synapse.kill()
    assert not synapse.running
    assert await _versions_status(url) is None

    await synapse.start()
    assert synapse.url == url
    assert await _versions_status(url) == 200
    for user in users:
        client = await _client(synapse, user)
        try:
            whoami = await client.whoami()
            assert isinstance(whoami, WhoamiResponse), whoami
            assert whoami.user_id == user.user_id
        finally:
            await client.close()


def test_synapse_config(tmp_path: Path) -> None:
    loose = SynapseServer(tmp_path / "loose", port=18448)
    config = json.loads(loose.config_path.read_text())
    assert config["listeners"][0]["port"] == 18448
    assert config["listeners"][0]["bind_addresses"] == ["127.0.0.1"]
    assert config["registration_shared_secret"] == loose.shared_secret
    assert config["rc_message"]["burst_count"] >= 1000
    assert config["rc_login"]["failed_attempts"]["per_second"] >= 1000
    assert "default_room_version" not in config
    key = (tmp_path / "loose" / "signing.key").read_text().split()
    assert key[0] == "ed25519" and key[1].startswith("a_") and len(key[2]) == 43

    strict = SynapseServer(tmp_path / "strict", default_rate_limits=True)
    config = json.loads(strict.config_path.read_text())
    assert not [k for k in config if k.startswith("rc_")]
    assert strict.port != loose.port


async def test_synapse_start_failure_quotes_the_log(tmp_path: Path) -> None:
    server = SynapseServer(tmp_path, extra_config={"database": {"name": "no-such-engine"}})
    with pytest.raises(SynapseError, match="exited with status") as excinfo:
        await server.start(timeout=30)
    assert "no-such-engine" in str(excinfo.value)
    assert not server.running


# ---------------------------------------------------------------------------------
# SMTP


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SmtpSink]:
    with SmtpSink(out_dir=tmp_path / "mail") as sink:
        yield sink


def _mail(to: str, subject: str = "Weekly digest", html: bool = True) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "hub@cohort.example"
    message["To"] = to
    message["Subject"] = subject
    message.set_content("plain body")
    if html:
        message.add_alternative("<p>html body</p>", subtype="html")
    return message


async def test_sink_receives_mail(sink: SmtpSink) -> None:
    await aiosmtplib.send(_mail("ana@example.org"), hostname=sink.hostname, port=sink.port)
    [mail] = await sink.wait_for(1, timeout=5)
    assert isinstance(mail, ReceivedMail)
    assert mail.mail_from == "hub@cohort.example"
    assert mail.rcpt_tos == ("ana@example.org",)
    assert mail.subject == "Weekly digest"
    assert mail.text == "plain body\n"
    assert mail.html == "<p>html body</p>\n"
    assert mail.message["To"] == "ana@example.org"
    assert b"Subject: Weekly digest" in mail.raw

    assert sink.out_dir is not None
    assert sorted(p.name for p in sink.out_dir.iterdir()) == [
        "001-weekly-digest.eml",
        "001-weekly-digest.html",
    ]


async def test_wait_for_counts_and_times_out(sink: SmtpSink) -> None:
    waiter = asyncio.create_task(sink.wait_for(3, timeout=10))
    for n in range(3):
        await aiosmtplib.send(
            _mail(f"p{n}@example.org", f"n{n}", html=False),
            hostname=sink.hostname,
            port=sink.port,
        )
    mails = await waiter
    assert [m.subject for m in mails] == ["n0", "n1", "n2"]
    assert sink.count == 3
    with pytest.raises(TimeoutError, match="expected 4 message"):
        await sink.wait_for(4, timeout=0.1)


async def test_fault_hook_temporary_and_permanent(sink: SmtpSink) -> None:
    def fault(rcpt: str, attempt: int) -> str | None:
        if rcpt.startswith("busy@") and attempt == 0:
            return "451 4.3.0 try later"
        if rcpt.startswith("gone@"):
            return "550 5.1.1 no such user"
        return None

    sink.fault = fault
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        await aiosmtplib.send(_mail("busy@example.org"), hostname=sink.hostname, port=sink.port)
    assert refused.value.recipients[0].code == 451
    assert sink.attempts("busy@example.org") == 1

    # Second attempt to the same address gets through.
    await aiosmtplib.send(_mail("busy@example.org"), hostname=sink.hostname, port=sink.port)

    # Permanent failure for one recipient, the other still delivered.
    errors, _ = await aiosmtplib.send(
        _mail("gone@example.org"),
        recipients=["gone@example.org", "ok@example.org"],
        hostname=sink.hostname,
        port=sink.port,
    )
    assert errors["gone@example.org"].code == 550
    mails = await sink.wait_for(2, timeout=5)
    assert [m.rcpt_tos for m in mails] == [("busy@example.org",), ("ok@example.org",)]


async def test_stop_and_start_same_port(sink: SmtpSink) -> None:
    port = sink.port
    sink.stop()
    with pytest.raises(aiosmtplib.SMTPConnectError):
        await aiosmtplib.send(_mail("a@example.org"), hostname=sink.hostname, port=port)
    sink.start()
    assert sink.port == port
    await aiosmtplib.send(_mail("a@example.org"), hostname=sink.hostname, port=port)
    assert len(await sink.wait_for(1, timeout=5)) == 1


async def test_stop_drops_open_sessions(sink: SmtpSink) -> None:
    client = aiosmtplib.SMTP(hostname=sink.hostname, port=sink.port, timeout=5)
    await client.connect()
    await client.ehlo()
    sink.stop()
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await client.send_message(_mail("a@example.org"))
    client.close()


async def test_auth_required(tmp_path: Path) -> None:
    with SmtpSink(credentials=("hub", "s3cret")) as sink:
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            await aiosmtplib.send(
                _mail("a@example.org"),
                hostname=sink.hostname,
                port=sink.port,
                username="hub",
                password="wrong",
            )
        await aiosmtplib.send(
            _mail("a@example.org"),
            hostname=sink.hostname,
            port=sink.port,
            username="hub",
            password="s3cret",
        )
        assert len(await sink.wait_for(1, timeout=5)) == 1

        # Without logging in, MAIL FROM is refused.
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await aiosmtplib.send(_mail("a@example.org"), hostname=sink.hostname, port=sink.port)
        assert refused.value.code == 530


async def test_count_only_cli() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub.devserver.smtp", "--count-only", stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        ready = (await asyncio.wait_for(process.stdout.readline(), 10)).decode()
        assert ready.startswith("listening on 127.0.0.1:"), ready
        port = int(ready.rsplit(":", 1)[1])
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as client:
            for n in range(5):
                await client.send_message(_mail(f"p{n}@example.org"))
        process.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(process.communicate(), 10)
        assert out.decode().strip() == "5"
        assert process.returncode == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
