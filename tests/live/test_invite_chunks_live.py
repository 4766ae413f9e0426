"""Issue 17: a cohort's invites go in chunks, so a lounge post waits for one chunk, not all.

A roster import adds a cohort's people at once: one row invites them all into the space
and one into the lounge. On a homeserver where each invite is slow (held at a proxy in
front of a real Synapse, as a large room makes them), the moderator's announcement,
queued right behind, is in the lounge after the first chunk of invites, where it once
came after all of them. Everyone is still invited, each once; and the room check, run
while the invites are on their way, neither reports them as repaired nor queues them
again (it once did at every start of a hub with a big cohort). A later pass over the
same, unchanged rooms writes nothing about their members.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import event, select

from hub.core.membership import MembershipState
from hub.core.ports import Priority
from hub.devserver.proxy import RecordingProxy
from hub.devserver.synapse import SynapseServer
from hub.features import room_ops
from hub.features.roster import import_file
from hub.storage.models import hub_room_table, outbox_table, room_member_table

from tests.support.cohorts import new_cohort, quiet, room_of
from tests.support.live_hub import hub_settings, running_hub

pytestmark = pytest.mark.synapse

CHUNK, PEOPLE = 4, 14
HOLD = 3.0  # seconds each invite waits at the proxy: far longer than a command takes


async def timeline(homeserver: str, token: str, room_id: str) -> list[dict[str, Any]]:
    """The room's events oldest first, as a client's /messages shows them."""
    async with aiohttp.ClientSession() as http, http.get(
            f"{homeserver}/_matrix/client/v3/rooms/{room_id}/messages",
            params={"dir": "b", "limit": "500"}, headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    return list(reversed(body["chunk"]))


async def test_a_lounge_post_waits_for_one_chunk_of_a_cohorts_invites_and_nobody_twice(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any],
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(room_ops, "INVITE_CHUNK", CHUNK)
    bot = await register("hub")
    mod = await participant("lead")
    people = [(await register(f"n{i}")).user_id for i in range(PEOPLE)]
    async with RecordingProxy(synapse.url) as proxy:
        settings = hub_settings(homeserver=proxy.url, bot=bot, data_dir=tmp_path / "hub",
                                moderators=[mod.user_id])
        async with running_hub(settings) as hub:
            assert hub.db is not None and hub.outbox is not None and hub.rooms is not None
            control = hub.control_room_id
            assert control is not None
            await new_cohort(hub, "big", "Big")
            lounge = await room_of(hub, "lounge:1")
            await mod.wait_joined(lounge, mod.user_id, timeout=30)
            await quiet(hub)

            proxy.delay("POST", r"/_matrix/client/v3/rooms/[^/]+/invite", HOLD)
            roster = tmp_path / "roster.csv"
            roster.write_text("cohort,role,name,email,matrix_id,timezone,mentor\n" + "".join(
                f"big,mentee,Person {i},,{user},,\n" for i, user in enumerate(people)), encoding="utf-8")
            await import_file(settings, roster)
            reply = await mod.ask(control, "!hub announce big Hello everyone")
            assert reply.startswith("Announced in the `big` lounge"), reply

            # The first chunk is still held at the proxy: nobody is invited yet, and the
            # room check must see the invites as on their way, not lost.
            report = await hub.rooms.reconcile(apply_config=False)
            assert not [line for line in report.repaired or [] if "invited" in line], report.repaired
            await quiet(hub, timeout=120)

            async with hub.db.session() as s:
                lounge_pk = (await s.execute(select(hub_room_table.c.id).where(
                    hub_room_table.c.key == "lounge:1"))).scalar_one()
                m = room_member_table.c
                states = dict((await s.execute(select(m.user_id, m.state).where(
                    m.room_pk == lounge_pk))).all())
                o = outbox_table.c
                invite_rows = (await s.execute(select(o.priority).where(
                    (o.lane == lounge) & (o.kind == "room-invite")))).scalars().all()
            token = await hub.db.get_state("matrix.access_token")
            assert token

            # A pass over rooms that did not change writes nothing about their members: it
            # once updated every member's row on every pass (10,000 UPDATEs for a lounge).
            written: list[str] = []

            def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
                if room_member_table.name in statement and not statement.lstrip().startswith("SELECT"):
                    written.append(statement)

            event.listen(hub.db.engine.sync_engine, "before_cursor_execute", record)
            try:
                report = await hub.rooms.reconcile(apply_config=False)
            finally:
                event.remove(hub.db.engine.sync_engine, "before_cursor_execute", record)
            assert report.checked >= 2 and not report.repaired, report
            assert written == []

    assert all(states[u] == MembershipState.INVITED for u in people), states
    events = await timeline(synapse.url, token, lounge)
    invites = [e["state_key"] for e in events if e["type"] == "m.room.member"
               and e["content"].get("membership") == "invite" and e["state_key"] in people]
    assert Counter(invites) == Counter(people)  # everyone, each once
    posted = next(i for i, e in enumerate(events) if e["type"] == "m.room.message"
                  and "Hello everyone" in e["content"].get("body", ""))
    before = [e for e in events[:posted] if e["type"] == "m.room.member"
              and e["content"].get("membership") == "invite" and e["state_key"] in people]
    # One chunk ahead of the post (it came after all 14 before the chunks).
    assert len(before) == CHUNK, [e["state_key"] for e in before]
    # The import's row and one continuation per further chunk, all bulk as the import's is
    # (behind people's replies); none added by the check.
    assert invite_rows == [Priority.BULK] * math.ceil(PEOPLE / CHUNK), invite_rows
