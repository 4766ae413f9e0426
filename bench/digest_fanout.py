"""Digest fan-out: render and send the weekly digest to 2,000 recipients through the hub vs raw aiosmtplib.

Hub side, timed from the first render to the last outcome recorded: `DigestBuilder.emails` renders
one email per recipient (subject, text, HTML with inlined CSS, signed unsubscribe link), each is
turned into an outbox payload exactly as `DigestService` does (List-Id plus the builder's
List-Unsubscribe headers), queued in one transaction, then the dispatcher claims, builds, sends
through `EmailSender` and the `SmtpPool` and records every row. Raw side: aiosmtplib over the same
number of connections sending the same 2,000 messages, pre-built (so the same size), not timed.
The SMTP sink runs in its own process (`python -m hub.devserver.smtp --count-only`); the sending
and sink machinery is `bench/email_fanout.py`'s.

Prints rendering ms per recipient, both times and the ratio. Targets: ratio <= 1.5, rendering <= 5 ms
per recipient. Run: `python bench/digest_fanout.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from email_fanout import FROM, hub, raw, start_sink

from hub.core import digest as dg
from hub.core.tokens import TokenSigner, new_handle
from hub.email.message import build_message
from hub.email.payload import EmailPayload, email_payload

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
    webinars = (dg.Webinar("Midpoint: working across time zones", now + timedelta(days=3, hours=8),
                           "https://meet.example.org/midpoint"),
                dg.Webinar("Career paths Q&A", now + timedelta(days=10), "https://meet.example.org/careers"))
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
    """What `DigestService._emails` does for each recipient, without the database."""
    address = {id(r): a for a, r in recipients}
    return [email_payload(to=address[id(r)], subject=mail.subject, text=mail.text, html=mail.html,
                          to_name=r.name, headers={"List-Id": LIST_ID, **mail.headers})
            for r, mail in builder.emails(issue, (r for _, r in recipients))]


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
    enqueues: list[float] = []
    dispatches: list[float] = []
    hubs: list[float] = []
    raws: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
            async def hub_round() -> list[EmailPayload]:
                began = time.perf_counter()
                payloads = render(builder, issue, recipients)
                rendered = time.perf_counter() - began
                enqueue, dispatch, _ = await hub(port, payloads, args.connections, url)
                renders.append(rendered)
                enqueues.append(enqueue)
                dispatches.append(dispatch)
                hubs.append(rendered + enqueue + dispatch)
                return payloads

            for i in range(args.rounds):
                if i % 2:  # alternate which goes first; raw sends the messages just rendered
                    payloads = await hub_round()
                    raws.append((await raw(port, payloads, args.connections))[0])
                else:  # the same messages (same size), rendered here untimed
                    raws.append((await raw(port, render(builder, issue, recipients), args.connections))[0])
                    await hub_round()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    received = int(out.strip().splitlines()[-1])
    best = min(range(len(hubs)), key=hubs.__getitem__)
    h, r = hubs[best], min(raws)
    backend = "postgresql" if args.database_url else "sqlite"
    print(f"digest fan-out: {n} recipients, {min(sizes) / 1024:.1f}-{max(sizes) / 1024:.1f} KiB per message, "
          f"{args.connections} connections, sink in its own process, outbox on {backend}, "
          f"best of {args.rounds}")
    print(f"  rendering: {1000 * min(renders) / n:.2f} ms/recipient (target <= 5), "
          f"runs {[round(1000 * x / n, 2) for x in renders]}")
    print(f"  raw aiosmtplib, pre-built:          {r:.2f} s  runs {[round(x, 2) for x in raws]}")
    print(f"  hub render + enqueue + dispatch:    {h:.2f} s  "
          f"(render {renders[best]:.2f} + enqueue {enqueues[best]:.2f} + dispatch {dispatches[best]:.2f})  "
          f"runs {[round(x, 2) for x in hubs]}")
    print(f"  ratio hub/raw: {h / r:.2f} (target <= 1.5); dispatch alone / raw: {min(dispatches) / r:.2f}")
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
