"""Issue 17: the hub's first message in an encrypted room after a restart costs one request.

After a restart nio knows no rooms, and the sync resumes without full state. Before its first
send in a pair room the hub used to read the room's whole state (GET /state) and nio then
asked for its joined members (GET /joined_members): two requests per room, 5,000 of each in
the first icebreaker of a 5,000-room programme. Now one GET /joined_members is all it asks,
the invited coming from the hub's own records (and no key query: the hub still follows the
pair's device lists), and the room key still reaches everyone: the mentor who joined reads
the message, and the mentee who was only invited joins afterwards and reads it too. A mentee
who declined while the hub was down gets no room key.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from nio import RoomMessageNotice

from hub.devserver.proxy import RecordingProxy
from hub.devserver.synapse import SynapseServer
from hub.features.room_check import RoomCheck

from tests.support.cohorts import pair_in_new_cohort, post_in_pair_room, quiet
from tests.support.live_hub import hub_settings, running_hub

pytestmark = pytest.mark.synapse

TEXT = "A first question for the two of you"


async def _posted_after_restart(proxy: RecordingProxy, bot: Any, mod: Any, mentor: Any, mentee: Any,
                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *,
                                while_down: Callable[[str], Awaitable[Any]] | None = None) -> str:
    """A pair made by a first run (the mentor joined, the mentee only invited), then a second
    run's first post in the pair room, read by the mentor; the proxy records only the second
    run. `while_down` acts on the pair room between the runs. Returns the pair room's id."""
    settings = hub_settings(homeserver=proxy.url, bot=bot, data_dir=tmp_path / "hub",
                            moderators=[mod.user_id])
    async with running_hub(settings) as hub:
        pair = await pair_in_new_cohort(hub, mod, mentor, mentee)
        await mentor.wait_joined(pair, mentor.user_id, timeout=30)
        await quiet(hub)
    if while_down is not None:
        await while_down(pair)
    # The room check's first page (one room) at start, the next one after the test: the
    # pair room is first read by the send itself.
    monkeypatch.setattr(RoomCheck, "check_page", 1)
    monkeypatch.setattr(RoomCheck, "check_pause", 300.0)
    proxy.clear()
    async with running_hub(settings) as hub:
        assert hub.control_room_id
        assert await mod.ask(hub.control_room_id, "!hub ping") == "pong"
        await post_in_pair_room(hub, TEXT, "first-send")
        await mentor.wait_until(lambda: any(isinstance(e, RoomMessageNotice) and e.body == TEXT
                                            for e in mentor.in_room(pair)), 30)
    return str(pair)


async def test_the_first_send_after_a_restart_reads_the_members_once_and_reaches_the_invited(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any],
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    bot = await register("hub")
    mod, mentor, mentee = await participant("lead"), await participant("mentor"), await participant("mentee")
    mentee.auto_join = False  # invited, not joined, when the message is sent
    async with RecordingProxy(synapse.url) as proxy:
        pair = await _posted_after_restart(proxy, bot, mod, mentor, mentee, tmp_path, monkeypatch)
        mentee.auto_join = True
        await mentee.client.join(pair)
        await mentee.wait_until(lambda: any(isinstance(e, RoomMessageNotice) and e.body == TEXT
                                            for e in mentee.in_room(pair)), 30)

    base = f"/_matrix/client/v3/rooms/{pair}"
    sent = proxy.matching("PUT", f"{base}/send/.*")
    assert sent, "the message was not sent through the proxy"
    # The pair's keys were queried in the first run, and the hub still follows their device
    # lists (hub.matrix.device_tracking): the invited mentee, whose devices did not change, is
    # not queried again, where nio alone queried every room's members again after a start
    # (5,251 queries at 5,000 rooms). Only changes the resumed sync reported are.
    queries = proxy.matching("POST", "/_matrix/client/v3/keys/query")
    queried = [set(json.loads(e.body)["device_keys"]) for e in queries if e.began < sent[0].began]
    assert not any(mentee.user_id in users for users in queried), queried
    before = [e for e in proxy.exchanges if e.path.startswith(base) and e.began < sent[0].began]
    assert [(e.method, e.path.removeprefix(base), dict(e.query)) for e in before] == [
        ("GET", "/joined_members", {})]


def _key_recipients(proxy: RecordingProxy) -> set[str]:
    """Everyone a room key (an olm-encrypted to-device message) was sent to through the proxy."""
    sent = proxy.matching("PUT", "/_matrix/client/v3/sendToDevice/m.room.encrypted/.*")
    return {user for e in sent for user in json.loads(e.body).get("messages", {})}


async def test_a_mentee_who_declined_while_the_hub_was_down_gets_no_room_key(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any],
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    bot = await register("hub")
    mod, mentor, mentee = await participant("lead"), await participant("mentor"), await participant("mentee")
    mentee.auto_join = False
    async with RecordingProxy(synapse.url) as proxy:
        # The invite declined while the hub is down.
        pair = await _posted_after_restart(proxy, bot, mod, mentor, mentee, tmp_path, monkeypatch,
                                           while_down=mentee.client.room_leave)

    assert proxy.matching("GET", f"/_matrix/client/v3/rooms/{pair}/joined_members")
    recipients = _key_recipients(proxy)
    assert mentor.user_id in recipients  # the room key was shared through the proxy
    assert mentee.user_id not in recipients, recipients
