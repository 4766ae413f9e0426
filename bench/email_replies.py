"""Replies by email: 1,000 replies through the hub's SMTP listener into rooms vs Synapse's raw send.

Ten cohorts from the config give ten lounges the hub made; 100 email-only members (ten per
cohort) are imported. The hub side: ten SMTP connections (an MTA's parallel deliveries) each
deliver 100 replies (``reply+TOKEN@domain``, quoted history and signature below the text) to
the running hub's listener; timed from the first connection until the dispatcher has recorded
every post as sent. That is the whole path: SMTP, the row written before 250, the poster
(parse, rules, mail-parser-reply, outbox), the dispatcher and Synapse. The raw side sends the
same 1,000 message contents to the same rooms with `AsyncClient.room_send`, one worker per
room in order (the outbox keeps one room's messages in order too). Rounds alternate which
side goes first. Run: `python bench/email_replies.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import tempfile
import time
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import aiosmtplib
from _common import (
    backend_name,
    matrix_client,
    runs,
    scratch_database,
    start_sink,
    stop_sink,
    synapse_at,
)
from nio import AsyncClient, RoomSendResponse
from sqlalchemy import select

from hub.config import Settings, settings_from_dict
from hub.core.email_reply import reply_content, reply_text
from hub.core.tokens import AddressTokenSigner, reply_address
from hub.devserver.synapse import RegisteredUser
from hub.features.roster import import_file
from hub.service import Hub
from hub.storage.models import Cohort, HubRoom, Member

__all__ = ["main"]

DOMAIN = "hub.bench.test"
SECRET = "bench-secret-not-real"


def settings(base: Path, homeserver: str, bot: RegisteredUser, url: str, smtp_port: int,
             cohorts: int) -> Settings:
    return settings_from_dict({
        "hub": {"data_dir": str(base / "hub")},
        "database": {"url": url},
        "matrix": {"homeserver": homeserver, "user_id": bot.user_id, "password": bot.password,
                   "control_room": "#bench-mods:localhost"},
        "email": {"enabled": True, "from": "Hub <hub@example.org>", "smtp_host": "127.0.0.1",
                  "smtp_port": smtp_port, "security": "none",
                  "inbound": {"listen": "127.0.0.1:0", "domain": DOMAIN}},
        "web": {"listen": "127.0.0.1:0", "secret": SECRET},
        "cohort": [{"slug": f"c{i}", "name": f"Cohort {i}"} for i in range(cohorts)],
    }, base=base, env={})


def reply(to: str, sender: str, i: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, "Re: this week"
    msg["Message-ID"] = make_msgid(domain="bench.example.org")
    msg.set_content(f"Reply {i}: thanks, the icebreaker worked well for us this week.\n\n-- \n"
                    f"Sent from my phone\n\nOn Mon, Hub <hub@example.org> wrote:\n> This week's icebreaker\n")
    return msg


async def wait_until(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the hub did not get there in time")
        await asyncio.sleep(0.2)


async def setup(hub: Hub, base: Path, cohorts: int, per_cohort: int) -> list[tuple[str, str, str]]:
    """(address, reply address, room id) of every member, after the welcomes have gone."""
    assert hub.db is not None and hub.outbox is not None

    async def lounges_ready() -> bool:
        assert hub.db is not None
        async with hub.db.session() as s:
            rows = (await s.execute(select(HubRoom).where(
                (HubRoom.kind == "lounge") & (HubRoom.status == "ready")))).scalars().all()  # type: ignore[arg-type]
        return len(rows) >= cohorts

    await wait_until(lounges_ready, 300)
    lines = ["cohort,role,name,email,matrix_id,timezone,mentor"]
    lines += [f"c{c},mentee,Member {c}-{m},m{c}x{m}@bench.example.org,,,"
              for c in range(cohorts) for m in range(per_cohort)]
    (base / "roster.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    await import_file(hub.settings, base / "roster.csv")
    await asyncio.wait_for(hub.outbox.wait_until_drained(due_only=True, settle=2), 300)
    signer = AddressTokenSigner(SECRET)
    out: list[tuple[str, str, str]] = []
    async with hub.db.session() as s:
        rooms = {r.cohort_id: (r.id, r.room_id) for r in (await s.execute(select(HubRoom).where(
            HubRoom.kind == "lounge"))).scalars().all()}  # type: ignore[arg-type]
        cohort_ids = {c.id for c in (await s.execute(select(Cohort))).scalars().all()}
        for m in (await s.execute(select(Member).order_by(Member.id))).scalars().all():  # type: ignore[arg-type]
            if m.cohort_id in cohort_ids and m.email:
                pk, room_id = rooms[m.cohort_id]
                assert m.id is not None and pk is not None and room_id is not None
                out.append((m.email, reply_address(signer.reply(m.id, pk), DOMAIN), room_id))
    return out


async def through_hub(hub: Hub, people: list[tuple[str, str, str]], per_person: int,
                      connections: int) -> float:
    assert hub.inbound is not None and hub.dispatcher is not None
    jobs = [(addr, to, i) for i in range(per_person) for addr, to, _ in people]
    chunks = [jobs[k::connections] for k in range(connections)]
    start_count = hub.dispatcher.sent_count
    retries: list[int] = []
    began = time.perf_counter()

    async def connection(chunk: list[tuple[str, str, int]]) -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=hub.inbound.bound_port,  # type: ignore[union-attr]
                               start_tls=False)
        await smtp.connect()
        for addr, to, i in chunk:
            data = reply(to, addr, i).as_bytes()
            while True:
                try:
                    await smtp.sendmail(addr, [to], data)
                    break
                except aiosmtplib.SMTPDataError as e:
                    # 451: the hub could not store it now; an MTA queues it and tries again.
                    if e.code != 451:
                        raise
                    retries.append(1)
                    await asyncio.sleep(1.0)
        await smtp.quit()

    await asyncio.gather(*(connection(c) for c in chunks))
    while hub.dispatcher.sent_count - start_count < len(jobs):  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    await hub.dispatcher.flush()
    if retries:
        print(f"  ({len(retries)} deliveries answered 451 and retried)")
    return time.perf_counter() - began


async def raw(client: AsyncClient, people: list[tuple[str, str, str]], per_person: int) -> float:
    by_room: dict[str, list[dict[str, Any]]] = {}
    for i in range(per_person):
        for addr, to, room in people:
            text = reply_text(reply(to, addr, i))
            by_room.setdefault(room, []).append(reply_content(addr.split("@")[0], text, None))

    async def worker(room: str, contents: list[dict[str, Any]]) -> None:
        for content in contents:
            resp = await client.room_send(room, "m.room.message", content)
            assert isinstance(resp, RoomSendResponse), resp

    began = time.perf_counter()
    await asyncio.gather(*(worker(room, contents) for room, contents in by_room.items()))
    return time.perf_counter() - began


async def run(args: argparse.Namespace) -> None:
    per_person = args.replies // (args.cohorts * args.per_cohort)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        sink, port = start_sink()
        try:
            async with synapse_at(base) as synapse:
                bot = await synapse.register("benchhub", secrets.token_urlsafe(12))
                client = matrix_client(synapse.url, bot)
                raws: list[float] = []
                hubs: list[float] = []
                async with scratch_database(base, args.database_url) as url:
                    hub = Hub(settings(base, synapse.url, bot, url, port, args.cohorts))
                    stop = asyncio.Event()
                    task = asyncio.create_task(hub.run(stop))
                    await asyncio.wait_for(hub.ready.wait(), 120)
                    try:
                        people = await setup(hub, base, args.cohorts, args.per_cohort)
                        print(f"{len(people)} members in {args.cohorts} lounges; "
                              f"{len(people) * per_person} replies a round")
                        for i in range(args.rounds):
                            if i % 2:
                                hubs.append(await through_hub(hub, people, per_person, args.connections))
                                raws.append(await raw(client, people, per_person))
                            else:
                                raws.append(await raw(client, people, per_person))
                                hubs.append(await through_hub(hub, people, per_person, args.connections))
                    finally:
                        stop.set()
                        await task
                await client.close()
        finally:
            stop_sink(sink)
    n = args.cohorts * args.per_cohort * per_person
    r, h = min(raws), min(hubs)
    print(f"replies by email: {n} replies into {args.cohorts} rooms, {args.connections} SMTP "
          f"connections, outbox on {backend_name(args.database_url)}, best of {args.rounds}")
    print(f"  raw nio room_send (one worker per room): {r:.2f} s  {n / r:6.1f} msg/s   runs {runs(raws)}")
    print(f"  hub: SMTP -> stored -> posted -> sent:   {h:.2f} s  {n / h:6.1f} msg/s   runs {runs(hubs)}")
    print(f"  ratio hub/raw: {h / r:.2f} (target <= 1.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replies", type=int, default=1000)
    parser.add_argument("--cohorts", type=int, default=10)
    parser.add_argument("--per-cohort", type=int, default=10)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
