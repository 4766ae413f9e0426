"""Cross-signing of the hub's device (issue 8), against a real Synapse.

The signatures are checked with Synapse's own `signedjson`, an implementation
independent of hub.matrix.crosssign, and the last tests drive a real Element
crypto stack (matrix-js-sdk + Rust crypto, tests/js/element_client.mjs) in
"exclude insecure devices" mode against a small nio echo bot: once without
cross-signing (it must fail the way Element fails) and once with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import stat
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import pytest
import signedjson.key as signedjson_key
import signedjson.sign as signedjson_sign
from nio import (
    AsyncClient,
    AsyncClientConfig,
    LoginResponse,
    MatrixRoom,
    MegolmEvent,
    RoomCreateResponse,
    RoomMessageText,
)

from hub.devserver.synapse import SynapseServer
from hub.errors import CrossSigningError, ForeignCrossSigningIdentity, InvalidTokenError
from hub.matrix.crosssign import (
    CrossSigningStatus,
    check_cross_signing,
    ensure_cross_signing,
)

# `synapse` is the session-wide real homeserver from conftest.py.
pytestmark = pytest.mark.synapse


JS_DIR = Path(__file__).parent.parent / "js"
ELEMENT_CLIENT = JS_DIR / "element_client.mjs"
_names = itertools.count()


async def new_account(synapse: SynapseServer, prefix: str) -> tuple[str, str]:
    """A fresh account (user id, password): every test needs an identity-less start."""
    localpart = f"{prefix}{next(_names)}x{os.getpid()}"
    password = f"pw-{localpart}"
    user = await synapse.register(localpart, password)
    return user.user_id, password


async def nio_device(synapse: SynapseServer, user_id: str, password: str, store: Path) -> AsyncClient:
    """A logged-in nio client whose device keys are on the server, as in the hub."""
    store.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (a test, local tmp dir)
    client = AsyncClient(
        synapse.url,
        user_id,
        store_path=str(store),
        config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True),
    )
    response = await client.login(password, device_name="crosssign test")
    assert isinstance(response, LoginResponse), response
    if client.should_upload_keys:
        await client.keys_upload()
    return client


async def restored_device(synapse: SynapseServer, old: AsyncClient, store: Path) -> AsyncClient:
    """The same device after a restart: same store, token and device id, no new login."""
    client = AsyncClient(
        synapse.url,
        old.user_id,
        store_path=str(store),
        config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True),
    )
    client.restore_login(old.user_id, old.device_id, old.access_token)
    return client


async def ensure(
    synapse: SynapseServer,
    client: AsyncClient,
    key_file: Path,
    password: str | None,
    *,
    reset: bool = False,
) -> Any:
    # Exactly what the hub does with its live nio client.
    return await ensure_cross_signing(
        synapse.url,
        client.access_token,
        client.user_id,
        client.device_id,
        client.olm.account.identity_keys["ed25519"],
        None,
        key_file,
        password=password,
        reset=reset,
    )


async def check(synapse: SynapseServer, client: AsyncClient, key_file: Path) -> Any:
    return await check_cross_signing(
        synapse.url, client.access_token, client.user_id, client.device_id, key_file
    )


async def keys_query(synapse: SynapseServer, token: str, user_id: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            synapse.url + "/_matrix/client/v3/keys/query",
            json={"device_keys": {user_id: []}},
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        assert response.status == 200
        data: dict[str, Any] = await response.json()
        return data


def only_key(obj: dict[str, Any]) -> str:
    (public,) = obj["keys"].values()
    return str(public)


def assert_signed_by(obj: dict[str, Any], user_id: str, public_b64: str) -> None:
    """Check a signature with Synapse's signedjson, not with the code under test."""
    verify_key = signedjson_key.decode_verify_key_base64("ed25519", public_b64, public_b64)
    signedjson_sign.verify_signed_json(obj, user_id, verify_key)


def assert_cross_signed(query: dict[str, Any], user_id: str, device_id: str) -> str:
    """device <- self-signing key <- master key, as any other client would check it."""
    master = query["master_keys"][user_id]
    ssk = query["self_signing_keys"][user_id]
    device = query["device_keys"][user_id][device_id]
    assert master["usage"] == ["master"]
    assert ssk["usage"] == ["self_signing"]
    assert_signed_by(ssk, user_id, only_key(master))
    assert_signed_by(device, user_id, only_key(ssk))
    return only_key(master)


class UploadSpy:
    """Counts POSTs to the two cross-signing upload endpoints, whoever sends them."""

    PATHS = ("/keys/device_signing/upload", "/keys/signatures/upload")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        original = aiohttp.ClientSession._request
        spy = self

        async def _request(
            self: aiohttp.ClientSession, method: str, str_or_url: Any, **kwargs: Any
        ) -> aiohttp.ClientResponse:
            url = str(str_or_url)
            if method == "POST" and url.endswith(spy.PATHS):
                spy.calls.append(url.rsplit("/_matrix/client", 1)[-1])
            return await original(self, method, str_or_url, **kwargs)

        monkeypatch.setattr(aiohttp.ClientSession, "_request", _request)


# ---------------------------------------------------------------------------
# (a) fresh account


async def test_fresh_account_gets_identity_and_signed_device(synapse: SynapseServer, tmp_path: Path) -> None:
    user_id, password = await new_account(synapse, "fresh")
    client = await nio_device(synapse, user_id, password, tmp_path / "store")
    key_file = tmp_path / "secrets" / "cross_signing.json"
    try:
        before = await check(synapse, client, key_file)
        assert before.status is CrossSigningStatus.NOT_SIGNED
        assert before.master_key is None
        assert "no cross-signing identity" in before.message

        report = await ensure(synapse, client, key_file, password=None)
        assert report.status is CrossSigningStatus.SIGNED
        # The first upload needs no password on Synapse.
        assert report.uploaded == ("device_signing", "signatures")

        after = await check(synapse, client, key_file)
        assert after.status is CrossSigningStatus.SIGNED
        assert after.master_key == report.master_key
        assert client.device_id in after.message

        # What another user's client sees.
        observer = await synapse.register(f"observer{next(_names)}x{os.getpid()}", "pw")
        query = await keys_query(synapse, observer.access_token, user_id)
        assert assert_cross_signed(query, user_id, client.device_id) == report.master_key
        # Other users must not see our user-signing key.
        assert user_id not in query.get("user_signing_keys", {})

        # The private keys are owner-only, and the directory we created too.
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
        stored = json.loads(key_file.read_text())
        assert stored["user_id"] == user_id
        assert set(stored) == {"version", "user_id", "master", "self_signing", "user_signing"}
    finally:
        await client.close()


async def test_private_keys_are_never_logged(
    synapse: SynapseServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    user_id, password = await new_account(synapse, "quiet")
    client = await nio_device(synapse, user_id, password, tmp_path / "store")
    key_file = tmp_path / "cs.json"
    try:
        with caplog.at_level("DEBUG", logger="hub"):
            report = await ensure(synapse, client, key_file, password=password)
        seeds = [v for k, v in json.loads(key_file.read_text()).items() if k not in ("version", "user_id")]
        assert len(seeds) == 3
        for seed in seeds:
            assert seed not in caplog.text
            assert seed not in repr(report)
        assert report.master_key is not None and report.master_key in caplog.text
    finally:
        await client.close()


# ---------------------------------------------------------------------------
# (b) restart: same key file, same device


async def test_restart_uploads_nothing(
    synapse: SynapseServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_id, password = await new_account(synapse, "restart")
    store = tmp_path / "store"
    key_file = tmp_path / "cs.json"
    first = await nio_device(synapse, user_id, password, store)
    try:
        report = await ensure(synapse, first, key_file, password=password)
        device_id, device_key = first.device_id, first.olm.account.identity_keys["ed25519"]
    finally:
        await first.close()
    file_before = key_file.read_bytes()

    spy = UploadSpy(monkeypatch)
    again = await restored_device(synapse, first, store)
    try:
        assert again.device_id == device_id
        assert again.olm.account.identity_keys["ed25519"] == device_key
        for _ in range(2):
            second = await ensure(synapse, again, key_file, password=password, reset=True)
            assert second.status is CrossSigningStatus.SIGNED
            assert second.uploaded == ()
            assert second.master_key == report.master_key
        assert spy.calls == []
        assert key_file.read_bytes() == file_before
        query = await keys_query(synapse, again.access_token, user_id)
        assert assert_cross_signed(query, user_id, device_id) == report.master_key
    finally:
        await again.close()


async def test_new_device_same_identity_only_signs_the_device(
    synapse: SynapseServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh login (e.g. the crypto store was lost) keeps the identity: only the
    # new device's signature is uploaded, the master key stays.
    user_id, password = await new_account(synapse, "relogin")
    key_file = tmp_path / "cs.json"
    first = await nio_device(synapse, user_id, password, tmp_path / "store1")
    second = await nio_device(synapse, user_id, password, tmp_path / "store2")
    try:
        report = await ensure(synapse, first, key_file, password=password)
        spy = UploadSpy(monkeypatch)
        assert (await check(synapse, second, key_file)).status is CrossSigningStatus.NOT_SIGNED
        again = await ensure(synapse, second, key_file, password=password)
        assert again.uploaded == ("signatures",)
        assert spy.calls == ["/v3/keys/signatures/upload"]
        assert again.master_key == report.master_key
        query = await keys_query(synapse, second.access_token, user_id)
        assert_cross_signed(query, user_id, first.device_id)
        assert_cross_signed(query, user_id, second.device_id)
    finally:
        await first.close()
        await second.close()


# ---------------------------------------------------------------------------
# (c) someone else owns the identity, (d) reset with the password


async def test_foreign_identity_is_refused_then_reset_with_password(
    synapse: SynapseServer, tmp_path: Path
) -> None:
    user_id, password = await new_account(synapse, "foreign")
    # "Element": another device of the account, with keys the hub never sees.
    element = await nio_device(synapse, user_id, password, tmp_path / "element")
    hub = await nio_device(synapse, user_id, password, tmp_path / "hub")
    element_keys = tmp_path / "element-keys.json"
    hub_keys = tmp_path / "hub" / "cs.json"
    try:
        foreign = await ensure(synapse, element, element_keys, password=None)

        # (c) check says so, with the fix; ensure refuses and changes nothing.
        report = await check(synapse, hub, hub_keys)
        assert report.status is CrossSigningStatus.FOREIGN_IDENTITY
        assert report.master_key == foreign.master_key
        assert foreign.master_key is not None and foreign.master_key in report.message
        assert "reset_cross_signing = true" in report.message
        assert "[matrix]" in report.message and "password" in report.message
        with pytest.raises(ForeignCrossSigningIdentity) as raised:
            await ensure(synapse, hub, hub_keys, password=password)
        assert raised.value.master_key == foreign.master_key
        assert "reset_cross_signing = true" in str(raised.value)
        assert not hub_keys.exists()
        query = await keys_query(synapse, hub.access_token, user_id)
        assert only_key(query["master_keys"][user_id]) == foreign.master_key

        # Reset without a password: the server asks for UIA and we can't answer.
        with pytest.raises(CrossSigningError, match="password"):
            await ensure(synapse, hub, hub_keys, password=None, reset=True)
        # A wrong password is named as such.
        with pytest.raises(CrossSigningError, match="rejected the password"):
            await ensure(synapse, hub, hub_keys, password="wrong", reset=True)
        query = await keys_query(synapse, hub.access_token, user_id)
        assert only_key(query["master_keys"][user_id]) == foreign.master_key

        # (d) reset with the password replaces the identity.
        replaced = await ensure(synapse, hub, hub_keys, password=password, reset=True)
        assert replaced.status is CrossSigningStatus.SIGNED
        assert replaced.uploaded == ("device_signing", "signatures")
        assert replaced.master_key != foreign.master_key
        query = await keys_query(synapse, hub.access_token, user_id)
        assert assert_cross_signed(query, user_id, hub.device_id) == replaced.master_key
        assert (await check(synapse, hub, hub_keys)).status is CrossSigningStatus.SIGNED
        # ... and now the old keys are the foreign ones.
        old = await check(synapse, element, element_keys)
        assert old.status is CrossSigningStatus.FOREIGN_IDENTITY
    finally:
        await element.close()
        await hub.close()


async def test_key_file_of_another_account_is_an_error(synapse: SynapseServer, tmp_path: Path) -> None:
    user_a, pw_a = await new_account(synapse, "owner")
    user_b, pw_b = await new_account(synapse, "intruder")
    a = await nio_device(synapse, user_a, pw_a, tmp_path / "a")
    b = await nio_device(synapse, user_b, pw_b, tmp_path / "b")
    key_file = tmp_path / "cs.json"
    try:
        await ensure(synapse, a, key_file, password=pw_a)
        with pytest.raises(CrossSigningError, match=f"not of {user_b}"):
            await ensure(synapse, b, key_file, password=pw_b)
        with pytest.raises(CrossSigningError, match=f"not of {user_b}"):
            await check(synapse, b, key_file)
    finally:
        await a.close()
        await b.close()


async def test_device_keys_must_be_published_first(synapse: SynapseServer, tmp_path: Path) -> None:
    password = "pw-bare"
    user = await synapse.register(f"bare{next(_names)}x{os.getpid()}", password)
    # A device that never uploaded keys: there is nothing to sign yet.
    with pytest.raises(CrossSigningError, match="has not published its encryption keys"):
        await ensure_cross_signing(
            synapse.url,
            user.access_token,
            user.user_id,
            user.device_id,
            "A" * 43,
            None,
            tmp_path / "cs.json",
            password=password,
        )


async def test_revoked_token_and_broken_key_file_are_explained(
    synapse: SynapseServer, tmp_path: Path
) -> None:
    user = await synapse.register(f"tok{next(_names)}x{os.getpid()}", "pw")
    with pytest.raises(InvalidTokenError, match="M_UNKNOWN_TOKEN"):
        await check_cross_signing(synapse.url, "not-a-token", user.user_id, user.device_id, tmp_path / "k")

    broken = tmp_path / "broken.json"
    broken.write_text('{"version": 1, "master": "SECRETSEED"')
    with pytest.raises(CrossSigningError, match="not a valid cross-signing key file") as raised:
        await check_cross_signing(synapse.url, user.access_token, user.user_id, user.device_id, broken)
    assert "SECRETSEED" not in str(raised.value)


# ---------------------------------------------------------------------------
# A real Element crypto stack against a small nio bot.


class EchoBot:
    """The smallest bot that answers `!hub ping` with an m.notice reply, like the hub.

    Undecryptable messages get a reply too ("could not decrypt"), so the js
    client also gets to try decrypting the bot's messages when the bot could
    not read its own.
    """

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.received: list[str] = []
        self.undecryptable = 0
        self._task: asyncio.Task[None] | None = None
        client.add_event_callback(self._on_text, RoomMessageText)
        client.add_event_callback(self._on_megolm, MegolmEvent)

    async def _reply(self, room: MatrixRoom, event_id: str, body: str) -> None:
        await self.client.room_send(
            room.room_id,
            "m.room.message",
            {
                "msgtype": "m.notice",
                "body": body,
                "m.relates_to": {"m.in_reply_to": {"event_id": event_id}},
            },
            ignore_unverified_devices=True,
        )

    async def _on_text(self, room: MatrixRoom, event: RoomMessageText) -> None:
        if event.sender == self.client.user_id:
            return
        self.received.append(event.body)
        if event.body.startswith("!hub ping"):
            await self._reply(room, event.event_id, "pong")

    async def _on_megolm(self, room: MatrixRoom, event: MegolmEvent) -> None:
        self.undecryptable += 1
        await self._reply(room, event.event_id, "could not decrypt your message")

    async def create_room(self, invite: str) -> str:
        response = await self.client.room_create(
            invite=[invite],
            initial_state=[
                {
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                }
            ],
        )
        assert isinstance(response, RoomCreateResponse), response
        return str(response.room_id)

    def start(self) -> None:
        self._task = asyncio.create_task(self.client.sync_forever(timeout=500, full_state=True))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.close()


def _unavailable(why: str) -> NoReturn:
    # A developer without Node may skip the Element-stack tests; CI installs Node and the
    # JS dependencies (`.ci/run`), so there a missing one is a failure, never a silent skip.
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def _node_or_skip() -> str:
    node = shutil.which("node")
    if node is None:
        _unavailable("node is not on PATH: the Element-stack test needs Node 20+")
    if not (JS_DIR / "node_modules" / "matrix-js-sdk").is_dir():
        _unavailable("tests/js/node_modules is missing: run `npm ci` in tests/js")
    return node


async def run_element_client(node: str, **args: Any) -> tuple[int, dict[str, Any], str]:
    proc = await asyncio.create_subprocess_exec(
        node,
        str(ELEMENT_CLIENT),
        json.dumps(args),
        cwd=JS_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), args.get("timeout", 60) + 90)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    stderr = err.decode(errors="replace")
    lines = out.decode().strip().splitlines()
    assert lines, f"element_client.mjs printed nothing; stderr:\n{stderr[-3000:]}"
    return proc.returncode or 0, json.loads(lines[-1]), stderr


async def element_against_bot(
    synapse: SynapseServer,
    tmp_path: Path,
    prepare: Callable[[AsyncClient, str], Awaitable[None]],
    reply_timeout: float,
) -> tuple[int, dict[str, Any], str, EchoBot]:
    node = _node_or_skip()
    bot_id, bot_pw = await new_account(synapse, "bot")
    alice_id, alice_pw = await new_account(synapse, "alice")
    bot = EchoBot(await nio_device(synapse, bot_id, bot_pw, tmp_path / "bot"))
    try:
        await prepare(bot.client, bot_pw)
        room_id = await bot.create_room(alice_id)
        bot.start()
        code, result, stderr = await run_element_client(
            node,
            homeserver=synapse.url,
            user_id=alice_id,
            password=alice_pw,
            room_id=room_id,
            hub_user_id=bot_id,
            text="!hub ping",
            timeout=reply_timeout,
        )
    finally:
        await bot.stop()
    return code, result, stderr, bot


async def test_element_rejects_uncross_signed_bot(synapse: SynapseServer, tmp_path: Path) -> None:
    """The harness reproduces today's Element: an uncross-signed bot is shut out."""

    async def nothing(client: AsyncClient, password: str) -> None:
        pass

    code, result, stderr, bot = await element_against_bot(synapse, tmp_path, nothing, 20)
    assert code == 1, (result, stderr[-3000:])
    assert result["own_device_cross_signed"] is True
    assert result["send_error"] is None
    assert result["sent_event_id"]
    # (b) The bot's message can't be decrypted by Element...
    assert result["decryption_error"] == "UNSIGNED_SENDER_DEVICE", result
    assert result["reply_body"] is None
    assert all(not d["signed_by_owner"] for d in result["hub_devices"])
    # (a) ...and Element withheld the room key, so the bot never read `!hub ping`.
    assert bot.received == []
    assert bot.undecryptable >= 1


async def test_element_talks_to_cross_signed_bot(synapse: SynapseServer, tmp_path: Path) -> None:
    async def cross_sign(client: AsyncClient, password: str) -> None:
        report = await ensure_cross_signing(
            client.homeserver,
            client.access_token,
            client.user_id,
            client.device_id,
            client.olm.account.identity_keys["ed25519"],
            None,
            tmp_path / "bot-cross-signing.json",
            password=password,
        )
        assert report.status is CrossSigningStatus.SIGNED

    code, result, stderr, bot = await element_against_bot(synapse, tmp_path, cross_sign, 60)
    assert code == 0, (result, stderr[-3000:])
    assert result["reply_body"] == "pong"
    assert result["decryption_error"] is None
    assert result["send_error"] is None
    assert all(d["signed_by_owner"] for d in result["hub_devices"])
    assert bot.received == ["!hub ping"]
    assert bot.undecryptable == 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
