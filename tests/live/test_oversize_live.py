"""Over-long texts and failed deliveries, against a real Synapse, read as the people's clients see them.

A support request too long for the control room is refused where it enters
(it used to be answered "Sent to the moderators" and then fail M_TOO_LARGE);
a 60 KB command gets a short answer that does not echo it (it used to get
none); a failure to the control room itself shows on /healthz and /metrics;
many failed deliveries to one room are one alert and a count.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nio import RoomMessageText

from hub.core.limits import AlertAggregator
from hub.delivery.outbox import MATRIX
from hub.devserver.synapse import SynapseServer
from hub.matrix.events import notice_content

from tests.support.cohorts import pair_in_new_cohort, room_of
from tests.support.live_hub import hub_settings, running_hub

pytestmark = pytest.mark.synapse


async def test_long_texts_are_refused_where_they_enter_and_failures_are_reported(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any], tmp_path: Path
) -> None:
    bot = await register("hub")
    mod, mentor, mentee = await participant("mod"), await participant("mentor"), await participant("mentee")
    settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub",
                            moderators=[mod.user_id])
    async with running_hub(settings) as hub:
        control = hub.control_room_id
        assert control and hub.outbox is not None and hub.db is not None and hub.web is not None
        await pair_in_new_cohort(hub, mod, mentor, mentee)
        await mod.ask(control, "!hub send reflection spring")
        direct = await room_of(hub, f"direct:{mentee.user_id}")
        await mentee.wait_until(lambda: any(isinstance(e, RoomMessageText) and "private check-in" in e.body
                                            for e in mentee.in_room(direct)), 30)

        def support_requests() -> int:
            return len(mod.notices(control, "Support request"))

        # Over the support cap, and over the cap of any command: refused, the limit said.
        over_cap = await mentee.ask(direct, "!hub support " + "please help " * 500)
        assert "takes at most 2,000" in over_cap and "Nothing was sent" in over_cap
        huge = await mentee.ask(direct, "!hub support " + "x" * 20_000)
        assert "20,013 characters long" in huge and "at most 12,000" in huge and "xxxxx" not in huge
        # A normal one still goes through: and once it is in, the refused ones would be too.
        assert "Sent to the moderators" in await mentee.ask(direct, "!hub support call me, please")
        await mod.wait_until(lambda: bool(mod.notices(control, "call me, please")), 20)
        await asyncio.sleep(1)
        assert support_requests() == 1

        # A 60 KB command (an unencrypted room: encrypted, it would not fit in an event) is answered.
        room = await mentee.create_room(invite=[bot.user_id])
        await mentee.wait_joined(room, bot.user_id, timeout=20)
        for command in ("!hub " + "z" * 60_000, "!hub support " + "y" * 59_000):
            answer = await mentee.ask(room, command)
            assert "characters long" in answer and "Nothing was changed" in answer
            assert len(answer) < 200

        # Failed for good, five times to one room (too large for an event): one alert, then a count.
        hub.alerts = AlertAggregator(hub.clock, window=15.0)  # an hour's window, shortened

        def alerts_about(text: str) -> list[str]:
            return [n.body for n in mod.notices(control, text) if room in n.body]

        async with hub.db.transaction() as s:
            for n in range(5):
                await hub.outbox.enqueue(
                    s, channel=MATRIX, kind="reply", lane=room, dedupe_key=f"test-too-large:{n}",
                    payload={"op": "message", "room_id": room, "type": "m.room.message",
                             "content": notice_content(f"{n}" * 70_000)})
        await mod.wait_until(lambda: bool(alerts_about("Delivery failed for good")), 20)
        await mod.wait_until(lambda: bool(alerts_about("more deliveries")), 40)
        await asyncio.sleep(1)
        assert len(alerts_about("Delivery failed for good")) == 1
        assert "M_TOO_LARGE" in alerts_about("Delivery failed for good")[0]
        assert [a.split(" ", 1)[0] for a in alerts_about("more deliveries")] == ["4"]

        # A failure to the control room itself: logged and on /healthz and /metrics (not a 503).
        url = f"http://127.0.0.1:{hub.web.bound_port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/healthz") as r:
                before = json.loads(await r.text())
            assert before["control_room"] == "ok" and before["control_room_failed"] == 0
            async with hub.db.transaction() as s:
                await hub.outbox.enqueue(
                    s, channel=MATRIX, kind="support", lane=control, dedupe_key="test-too-large-control",
                    payload={"op": "message", "room_id": control, "type": "m.room.message",
                             "content": notice_content("w" * 70_000)})
            for _ in range(100):
                async with http.get(url + "/healthz") as r:
                    after = json.loads(await r.text())
                    status = r.status
                if after["control_room_failed"]:
                    break
                await asyncio.sleep(0.2)
            async with http.get(url + "/metrics") as r:
                metrics = await r.text()
        assert after["control_room"] == "undelivered" and after["control_room_failed"] == 1
        assert status == 200
        assert "hub_control_room_failed_total 1" in metrics
