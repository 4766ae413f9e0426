"""Issue 14 on a real Synapse: `!hub match` proposes the optimal pairs, accept makes them (rooms,
welcomes), and after `!hub rematch` a former pair is never proposed again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nio import RoomCreateResponse, RoomPreset
from sqlalchemy import select

from hub.core.roster import parse_roster
from hub.devserver.synapse import SynapseServer
from hub.features.roster import apply_roster
from hub.storage.models import Pair, pair_table

from tests.support.cohorts import room_of
from tests.support.live_hub import hub_settings, running_hub

pytestmark = pytest.mark.synapse

HEADER = "cohort,role,name,email,matrix_id,timezone,mentor,languages,topics,capacity,avoid"


def _roster(ada: str, ann: str, ben: str, bo: str) -> str:
    """Greedy in roster order gives Ben to Ada (a shared topic) and leaves Bo, who speaks only
    German, without anyone; the optimal assignment gives Ben to Ann and Bo to Ada. Cy avoids Ann
    and Al, and Ada avoids Cy: nobody can take Cy."""
    return "\n".join([
        HEADER,
        f"spring,mentor,Ada,,{ada},Europe/Berlin,,en;de,product,1,cy@example.org",
        f"spring,mentor,Ann,,{ann},Europe/London,,en,,1,",
        "spring,mentor,Al,al@example.org,,America/Los_Angeles,,en,,1,",
        f"spring,mentee,Ben,,{ben},Europe/Berlin,,en,product,,",
        f"spring,mentee,Bo,,{bo},Europe/Berlin,,de,,,",
        f"spring,mentee,Cy,cy@example.org,,Europe/Berlin,,en,,,{ann};al@example.org",
    ]) + "\n"


async def test_match_accept_and_rematch_on_a_real_homeserver(
    synapse: SynapseServer, register: Callable[..., Any], participant: Callable[..., Any], tmp_path: Path
) -> None:
    bot = await register("hub")
    mod = await participant("mod")
    ada, ann, ben, bo = [await participant(n) for n in ("ada", "ann", "ben", "bo")]
    settings = hub_settings(homeserver=synapse.url, bot=bot, data_dir=tmp_path / "hub",
                            moderators=[mod.user_id])
    async with running_hub(settings) as hub:
        assert hub.db is not None
        control = hub.control_room_id
        assert control
        await mod.wait_joined(control, mod.user_id, timeout=20)
        await mod.ask(control, '!hub cohort create spring "Spring 2027"')
        await apply_roster(hub.db, settings, parse_roster(
            _roster(ada.user_id, ann.user_id, ben.user_id, bo.user_id)))

        proposal = await mod.ask(control, "!hub match spring")
        lines = proposal.splitlines()
        assert f"1. {ann.user_id} → {ben.user_id} (no shared topics; 1 hour apart)" in lines, proposal
        assert f"2. {ada.user_id} → {bo.user_id} (no shared topics; same time zone)" in lines, proposal
        assert "2 of 3 unpaired mentees matched" in proposal
        [cy_line] = [line for line in lines if "cy@example.org" in line]
        assert "no mentor with room left can take them" in cy_line
        for mentor in (ada.user_id, ann.user_id, "al@example.org", "avoid"):
            assert mentor not in cy_line  # never who avoids them, or whom they avoid

        made = await mod.ask(control, "!hub match spring accept")
        assert "Made 2 pairs" in made and "no longer valid" not in made, made
        async with hub.db.session() as s:
            pairs = {(p.mentor_id, p.mentee_id, p.status) for p in (await s.execute(select(Pair))).scalars()}
        assert len(pairs) == 2
        first, second = await room_of(hub, "pair:1"), await room_of(hub, "pair:2")
        await ben.wait_joined(first, ann.user_id, timeout=30)
        await bo.wait_joined(second, ada.user_id, timeout=30)
        for who, room in ((ben, first), (bo, second)):
            await who.wait_until(lambda w=who, r=room: bool(w.notices(r, "pair room")), 30)

        again = await mod.ask(control, "!hub match spring")
        assert "0 of 1 unpaired mentees matched" in again, again
        assert ben.user_id not in again and bo.user_id not in again
        # Nothing to accept: the new proposal has no lines.
        assert "There is no proposal" in await mod.ask(control, "!hub match spring accept")

        # Ben asks privately; only "asks for a rematch" and his words reach the moderators.
        resp = await ben.client.room_create(is_direct=True, preset=RoomPreset.trusted_private_chat,
                                            invite=[bot.user_id])
        assert isinstance(resp, RoomCreateResponse), resp
        dm = str(resp.room_id)
        await ben.wait_joined(dm, bot.user_id, timeout=30)
        asked = await ben.ask(dm, "!hub rematch It isn't clicking for us")
        assert "Thanks for telling us" in asked
        await mod.wait_until(lambda: bool(mod.notices(control, "isn't clicking for us")), 20)
        assert "asks for a rematch" in mod.notices(control, "isn't clicking for us")[0].body

        # The moderators close the pair kindly, and the new proposal is never Ann.
        closed = await mod.ask(control, f"!hub rematch spring {ben.user_id}")
        assert "Closed the pair" in closed, closed
        assert f"1. al@example.org → {ben.user_id} (no shared topics; 9 hours apart)" in closed.splitlines()
        assert ann.user_id not in closed.split("Closed the pair", 1)[1].split("\n", 1)[1]
        await ben.wait_until(lambda: bool(ben.notices(first, "closing this pair")), 30)
        await asyncio.sleep(2)  # the hub's leave (queued after any goodbye) has had time to arrive
        assert not ben.notices(first, "This pair has been closed by")  # one goodbye, the kind one
        async with hub.db.session() as s:
            statuses = sorted(p.status for p in (await s.execute(
                select(Pair).order_by(pair_table.c.id))).scalars())
        assert statuses == ["active", "closed"]

        later = await mod.ask(control, "!hub match spring")
        assert f"al@example.org → {ben.user_id}" in later and f"{ann.user_id} → {ben.user_id}" not in later
        report = await mod.ask(control, "!hub report spring")
        assert "Rematch requests: 1 from participants; 1 pairs closed for a rematch" in report
