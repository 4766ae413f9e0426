"""Digest fan-out: render and send the weekly digest to 2,000 recipients through the hub vs raw aiosmtplib.

Hub side, timed from the fan-out to the last outcome recorded, on the path `hub run` takes
(`DigestService.rows`): the week's edition is stored once and one reference row per recipient
(their part and signed unsubscribe token, `hub.features.digest.email_refs`) is queued, in one
transaction; the dispatcher (already running, idle) claims each row, renders the person's email
(`hub.features.digest_mail`: subject, text, HTML with inlined CSS, List-Id plus List-Unsubscribe
headers), builds, sends through `EmailSender` and the `SmtpPool` and records it. Only the database
reads `DigestService` does before (cohort, members, handles) are left out. Raw side:
aiosmtplib over the same number of connections sending the same 2,000 messages, pre-built (so
the same size), not timed. The SMTP sink runs in its own process
(`python -m hub.devserver.smtp --count-only`).

Prints rendering ms/recipient (rendering alone, as the hub rendered at fan-out before, timed while
preparing the raw side's messages),
both times and the ratio. Targets: ratio <= 1.5, rendering <= 5 ms per recipient.
Run: `python bench/digest_fanout.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from _common import (
    FROM,
    EmailRig,
    backend_name,
    prebuild,
    raw_smtp,
    runs,
    scratch_database,
    start_sink,
    stop_sink,
)

from hub.core import digest as dg
from hub.core.calendar import Webinar
from hub.core.effects import Email
from hub.core.tokens import TokenSigner, new_handle
from hub.delivery.effect_writer import email_row_payload
from hub.email.message import build_message
from hub.email.payload import EmailPayload
from hub.features.digest import email_refs
from hub.features.digest_mail import store_edition

__all__ = ["main"]

PUBLIC_URL = "https://hub.example.org"
LOUNGE = "!lounge-winter:example.org"
LIST_ID = "Winter 2027 <winter.hub.example.org>"
ZONES = [ZoneInfo(z) for z in ("Europe/Berlin", "Asia/Tokyo", "America/Los_Angeles", "Europe/London",
                               "America/Sao_Paulo", "Asia/Kolkata")]


def make_issue(now: datetime) -> dg.DigestIssue:
    """A full week: three prompts, two webinars, a busy lounge with reacted posts, a tip."""
    berlin = ZoneInfo("Europe/Berlin")
    summary = ("Take ten minutes with your pair: each of you names one thing that went well this week "
               "and one thing you would try differently.\n\nThere are no wrong answers.")
    prompts = (dg.Prompt("Icebreaker", "Three questions about your first job", summary),
               dg.Prompt("Check-in", "Did you meet this week, and how?", "Video, voice or text all count."),
               dg.Prompt("Reflection", "What surprised you so far", summary))
    webinars = (Webinar(now + timedelta(days=3, hours=8), "Midpoint: working across time zones",
                        "https://meet.example.org/midpoint"),
                Webinar(now + timedelta(days=10), "Career paths Q&A", "https://meet.example.org/careers"))
    posts = tuple(dg.LoungePost(LOUNGE, f"$post{i}", f"Member {i}",
                                f"Post {i}: when a call drops, switching to mobile data and rejoining with "
                                "audio only worked every time for us, and the notes we kept in the pair "
                                "room meant nobody lost track of what we were discussing. " * 2, 10 - i)
                  for i in range(6))
    tip = dg.Tip("Keep a running agenda",
                 "Pin a short list of topics in your pair room.\n\nAdd to it between meetings; "
                 "start each call by picking one item.")
    return dg.DigestIssue(
        cohort=dg.CohortInfo("winter", "Winter 2027", berlin, LOUNGE), week=3, weeks=12,
        generated_at=now, prompts=prompts, webinars=webinars,
        pulse=dg.CohortPulse(new_members=4, lounge_messages=87, posts=posts), tip=tip)


def make_recipients(n: int) -> list[tuple[str, dg.Recipient]]:
    out: list[tuple[str, dg.Recipient]] = []
    for i in range(n):
        pairs = tuple(dg.PairCounts(days_since_active=(i % 20) or None, backup_plan_set=bool(i % 3))
                      for _ in range(1 + (i % 10 == 0)))  # every tenth a mentor with two pairs
        out.append((f"p{i}@example.org", dg.Recipient(
            handle=new_handle(), name=f"Participant {i}", timezone=ZONES[i % len(ZONES)],
            pairs=pairs, on_matrix=bool(i % 2))))
    return out


def render(builder: dg.DigestBuilder, issue: dg.DigestIssue,
           recipients: list[tuple[str, dg.Recipient]]) -> list[EmailPayload]:
    """Every recipient's payload at once, as the hub rendered them at fan-out (for the raw side)."""
    one = builder.email_renderer(issue)
    out: list[EmailPayload] = []
    for address, r in recipients:
        mail = one(r)
        out.append(email_row_payload(Email(to=address, subject=mail.subject, text=mail.text, html=mail.html,
                                           to_name=r.name, headers={"List-Id": LIST_ID, **mail.headers})))
    return out


async def hub(port: int, builder: dg.DigestBuilder, issue: dg.DigestIssue,
              recipients: list[tuple[str, dg.Recipient]], connections: int, url: str) -> tuple[float, float]:
    """Queue and send (rendering each) through the hub; (seconds until all are queued, total)."""
    rig = await EmailRig.open(url, port, connections)
    rig.start()  # idle until the first rows are queued, as in a running hub
    tag = secrets.token_hex(4)
    began = time.perf_counter()
    async with rig.db.transaction() as s:
        edition = await store_edition(s, builder, issue, LIST_ID, time.time())
        mails = [(r, address, f"bench:{tag}:{address}") for address, r in recipients]
        await rig.outbox.enqueue_many(s, email_refs(builder, issue, mails, edition))
    rig.outbox.notify()
    queued = time.perf_counter() - began
    await rig.sent(len(recipients))
    total = time.perf_counter() - began
    await rig.close(tag=tag, expect=len(recipients))
    return queued, total


def load() -> float:
    return os.getloadavg()[0]


async def run(args: argparse.Namespace) -> None:
    n = args.recipients
    builder = dg.DigestBuilder(public_url=PUBLIC_URL, signer=TokenSigner(secrets.token_hex(32)),
                               hub_user_id="@hub:example.org")
    issue = make_issue(datetime.now(UTC))
    recipients = make_recipients(n)
    render(builder, issue, recipients[:20])  # warm-up: template and CSS caches, as in a running hub
    sizes = [len(build_message(p, txn_id="x" * 32, from_header=FROM, date=datetime.now(UTC)).data)
             for p in render(builder, issue, recipients[:50])]
    proc, port = start_sink()
    renders: list[float] = []
    queued: list[float] = []
    hubs: list[float] = []
    raws: list[float] = []
    loads = [load()]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            async with scratch_database(Path(tmp), args.database_url) as url:

                async def raw_round() -> None:
                    began = time.perf_counter()
                    payloads = render(builder, issue, recipients)  # rendering alone: ms/recipient
                    renders.append(time.perf_counter() - began)
                    raws.append((await raw_smtp(port, prebuild(payloads), args.connections))[0])

                async def hub_round() -> None:
                    q, total = await hub(port, builder, issue, recipients, args.connections, url)
                    queued.append(q)
                    hubs.append(total)

                for i in range(args.rounds):
                    rounds: list[Any] = [hub_round, raw_round] if i % 2 else [raw_round, hub_round]
                    for one in rounds:  # alternate which goes first
                        await one()
                    loads.append(load())
    finally:
        received = stop_sink(proc)
    best = min(range(len(hubs)), key=hubs.__getitem__)
    h, r = hubs[best], min(raws)
    print(f"digest fan-out: {n} recipients, {min(sizes) / 1024:.1f}-{max(sizes) / 1024:.1f} KiB per message, "
          f"{args.connections} connections, sink in its own process, outbox on "
          f"{backend_name(args.database_url)}, "
          f"best of {args.rounds}; load average {runs(loads)}")
    print(f"  rendering alone: {1000 * min(renders) / n:.2f} ms/recipient (target <= 5), "
          f"runs {runs(renders, 1000 / n)}")
    print(f"  raw aiosmtplib, pre-built:            {r:.2f} s  {n / r:5.0f}/s  runs {runs(raws)}")
    print(f"  hub queue + render + send:             {h:.2f} s  {n / h:5.0f}/s  "
          f"(all queued after {queued[best]:.2f} s)  runs {runs(hubs)}")
    print(f"  ratio hub/raw: {h / r:.2f} (target <= 1.5)")
    print(f"  sink received {received} (expected {2 * n * args.rounds})")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--recipients", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
