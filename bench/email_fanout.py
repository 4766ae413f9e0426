"""Email fan-out: 2,000 digest-sized messages through the hub's outbox vs raw aiosmtplib.

Both sides use the same number of long-lived SMTP connections (`--connections`,
the config's default 4) to the same SMTP sink, which runs in its own process
(`python -m hub.devserver.smtp --count-only`). The raw side sends pre-built
messages in a plain loop per connection; the hub side queues one outbox row per
recipient (timed separately, it is the feature's transaction) and then the
dispatcher claims, builds, sends and records every row. Prints both rates and
the ratio (hub time / raw time). Run: `python bench/email_fanout.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

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

from hub.delivery.outbox import EMAIL
from hub.email.message import build_message
from hub.email.payload import EmailPayload, email_payload, normalize_address

__all__ = ["main"]


def digest_payload(i: int) -> EmailPayload:
    """About the size of a weekly digest: ~4 KB of text, ~12 KB of inlined-CSS HTML."""
    name = f"Participant {i}"
    para = ("This week in Winter 2027: three new members joined the lounge, the most-reacted "
            "post was about switching to mobile when a call drops, and your pair room was "
            "active 2 days ago. ")
    text = f"Hello {name},\n\n" + (para + "\n\n") * 12 + "Unsubscribe: https://hub.example.org/u/x\n"
    html = (f"<html><body><h1 style=\"font-family:sans-serif;color:#222\">Hello {name}</h1>"
            + "".join(f"<p style=\"font-family:sans-serif;color:#333;line-height:1.5\">{para}</p>\n"
                      for _ in range(30))
            + "</body></html>")
    return email_payload(
        to=f"p{i}@example.org", to_name=name, subject="Winter 2027 — your week 3 digest",
        text=text, html=html,
        headers={"List-Id": "Winter 2027 <winter-2027.hub.example.org>",
                 "List-Unsubscribe": f"<https://hub.example.org/unsubscribe/{i:08d}>",
                 "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
    )


async def hub(
    port: int, payloads: list[EmailPayload], connections: int, url: str
) -> tuple[float, float, float]:
    """Queue one row per payload (timed on its own), then dispatch them all; (enqueue, dispatch, CPU)."""
    rig = await EmailRig.open(url, port, connections)
    tag = secrets.token_hex(4)
    rows = [dict(channel=EMAIL, kind="digest", lane=normalize_address(p["to"]),
                 dedupe_key=f"bench:{tag}:{p['to']}", payload=dict(p)) for p in payloads]
    began = time.perf_counter()
    async with rig.db.transaction() as s:
        await rig.outbox.enqueue_many(s, rows)
    enqueue = time.perf_counter() - began
    began, cpu = time.perf_counter(), time.process_time()
    rig.start()
    await rig.sent(len(payloads))
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    await rig.close(tag=tag, expect=len(payloads))
    return enqueue, elapsed, cpu


async def run(args: argparse.Namespace) -> None:
    payloads = [digest_payload(i) for i in range(args.messages)]
    size = len(build_message(payloads[0], txn_id="x" * 32, from_header=FROM, date=datetime.now(UTC)).data)
    proc, port = start_sink()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            async with scratch_database(Path(tmp), args.database_url) as url:
                raws: list[float] = []
                hubs: list[float] = []
                enqueues: list[float] = []
                raw_cpu: list[float] = []
                hub_cpu: list[float] = []
                for i in range(args.rounds):
                    if i % 2:  # alternate which goes first
                        enqueue, dispatch, cpu = await hub(port, payloads, args.connections, url)
                        r_time, r_cpu = await raw_smtp(port, prebuild(payloads), args.connections)
                    else:
                        r_time, r_cpu = await raw_smtp(port, prebuild(payloads), args.connections)
                        enqueue, dispatch, cpu = await hub(port, payloads, args.connections, url)
                    raws.append(r_time)
                    raw_cpu.append(r_cpu)
                    enqueues.append(enqueue)
                    hubs.append(dispatch)
                    hub_cpu.append(cpu)
    finally:
        received = stop_sink(proc)
    n = args.messages
    r, h = min(raws), min(hubs)
    backend = backend_name(args.database_url)
    print(f"email fan-out: {n} messages of {size / 1024:.1f} KiB, {args.connections} connections, "
          f"sink in its own process, outbox on {backend}, best of {args.rounds}")
    print(f"  raw aiosmtplib, pre-built:  {r:.2f} s  {n / r:7.0f} emails/s   "
          f"runs {runs(raws)}")
    print(f"  hub outbox (dispatch):      {h:.2f} s  {n / h:7.0f} emails/s   "
          f"runs {runs(hubs)}")
    print(f"  hub enqueue (one transaction for all rows): {min(enqueues):.2f} s")
    print(f"  client CPU per email (process, all threads): raw {1000 * min(raw_cpu) / n:.2f} ms, "
          f"hub {1000 * min(hub_cpu) / n:.2f} ms")
    print(f"  ratio hub/raw: {h / r:.2f} (target <= 1.3), hub rate {n / h:.0f}/s (target >= 300/s)")
    print(f"  sink received {received} (expected {2 * n * args.rounds})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
