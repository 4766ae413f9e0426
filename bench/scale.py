"""Scale: a programme of --people (10,000) and --rooms (5,000 pair rooms) on a local Synapse, with
the hub in its own process (`hub run`), measured.

Build (timed, kept in a folder with --keep DIR and grown or reused with --reuse DIR): accounts
registered on Synapse, the roster through `hub roster import` beside the running hub, provisioning
by the hub (rooms/s), then one person in ten logs in with nio, uploads device keys and one-time
keys and joins what the hub invited them to (space, lounge, pair room). PostgreSQL for Synapse and
both hubs when one answers at 127.0.0.1:5432 (--sqlite forces SQLite); rate limits loosened as in
every benchmark here.

Measured, with the hub in its own process and the moderator a real nio client in the control room:
restart to the first answered `!hub ping` (sent while the hub is down) and to the end of the
reconcile (3 runs); RSS idle; hub and Synapse CPU while idle for 60 s; `!hub ping` p50/p95 against
a second hub in no rooms, interleaved in the same run, and against a bot in plain nio answering
from the hub's own account (same rooms; after the raw icebreaker, the hub stopped); `!hub send
icebreaker` to every pair room and the lounge against raw nio sends of the same events from the
hub's own device (store and keys), with a ping sent during the fan-out; `!hub digest SLUG send`
for everyone (time to queue, time until every email is recorded as sent through the SMTP sink in
its own process). `--icebreaker-only --proxy` lists the hub's requests during its fan-out by kind.
Run: `python bench/scale.py --people 400 --rooms 200 --keep /tmp/scale-200`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import cpu_seconds
from _scale_build import IGNORED, devices, grow, pending_invites, register_accounts, unsent
from _scale_env import (
    SLUG,
    HubProcess,
    State,
    analyze_databases,
    drop_databases,
    hub_config,
    load,
    new_databases,
    pg_answers,
    rss_mb,
    start_sink,
    start_synapse,
    status_line,
)
from _scale_measure import Moderator, digest, icebreaker, pings, raw_icebreaker, settle
from sqlalchemy import select, update

from hub.devserver.proxy import RecordingProxy
from hub.storage.db import open_database
from hub.storage.models import outbox_table

__all__ = ["main"]

MODS, EMPTY_MODS = "#scale-mods:localhost", "#scale-empty:localhost"
# The log line that ends a room check's pass: "checked N rooms: N repaired, ..." on main since the
# paged room check, "reconciled N rooms: N repaired, ..." before; waiting for "reconciled" alone
# now times out.
CHECK_DONE = " repaired, "


def commit() -> str:
    import hub

    root = Path(hub.__file__).resolve().parent.parent
    out = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h %cI %s"], capture_output=True,
                         text=True)
    return out.stdout.strip()[:100]


async def restart(hub: HubProcess, mod: Moderator, room: str,
                  wait_check: bool = True) -> dict[str, float | None]:
    """Stop the hub, send `!hub ping` while it is down, start it: seconds to the answer and the reconcile
    (not awaited with `wait_check` False: the paged check of 2,000 rooms takes 8+ min by design)."""
    await hub.stop()
    await asyncio.sleep(1)
    event = await mod.send(room, "!hub ping")
    await hub.start()
    await mod.reply(room, event, 600)
    ping = time.monotonic() - hub.started
    ready = await hub.wait_for("hub ready", 600)
    reconciled: float | None = None
    if wait_check:
        try:
            reconciled = await hub.wait_for(CHECK_DONE, 900)
        except TimeoutError:
            pass
    return {"ping_s": round(ping, 2), "ready_s": round(ready, 2),
            "reconciled_s": round(reconciled, 2) if reconciled is not None else None}


async def quiet(db: Any, timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while await unsent(db):
        if time.monotonic() > deadline:
            raise TimeoutError("the outbox did not drain")
        await asyncio.sleep(1)


HOLD_SECONDS = 10**7  # --hold-invites: the queued invite rows' not_before moved this far ahead


async def hold_invites(db: Any, seconds: float) -> None:
    """Move the unsent invite rows' time ahead (or back), with the hub stopped: a cohort's
    invites of thousands take hours on this machine, and held they leave the hub and Synapse
    to the measurements. A row a stopped hub left claimed (`sending`) is queued again first:
    otherwise the next start takes it over as an orphan and it goes on inviting."""
    t = outbox_table.c
    async with db.transaction() as s:
        await s.execute(update(outbox_table).where((t.kind == "room-invite") & (t.status == "sending"))
                        .values(status="queued", claimed_by=None, claimed_until=None))
        await s.execute(update(outbox_table).where((t.kind == "room-invite") & (t.status == "queued"))
                        .values(not_before=t.not_before + seconds))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(args.reuse or args.keep or tempfile.mkdtemp(prefix="scale-"))
    folder.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, before anything runs)
    state = State.open(folder)
    fresh = not state.hub_db
    if fresh:
        await new_databases(state, pg_answers() and not args.sqlite)
    state.runs += 1
    state.save()
    result: dict[str, Any] = {"people": args.people, "rooms": args.rooms, "backend": state.backend,
                              "commit": commit(), "load_start": load(), "folder": str(folder)}
    status_line(f"programme in {folder} ({state.backend}): {state.people} people, {state.rooms} rooms built; "
                f"want {args.people} / {args.rooms}; commit {result['commit']}")
    sink, port = start_sink()
    try:
        async with start_synapse(state) as synapse:
            spid = synapse._process.pid if synapse._process is not None else None  # bench-only peek
            build: dict[str, Any] = {"people": args.people, "rooms": args.rooms, "load_start": load()}
            if args.people > state.people or not state.accounts:
                build["register_s"] = round(await register_accounts(synapse, state, args.people), 1)
                status_line(f"registered in {build['register_s']} s")
            mod = Moderator(synapse.url, state.user("lead"), folder / "lead-store")
            await mod.start()
            proxy = RecordingProxy(synapse.url) if args.proxy else None
            if proxy is not None:
                await proxy.start()
            config = hub_config(state, name="bot", homeserver=proxy.url if proxy else synapse.url,
                                smtp_port=port, control_room=MODS, with_cohort=True)
            hub = HubProcess(config, folder / "hub.log")
            db = await open_database(state.hub_db)
            if args.hold_invites:
                await hold_invites(db, HOLD_SECONDS)
            try:
                await hub.start()
                result["first_start_ready_s"] = round(await hub.wait_for("hub ready", 1800), 2)
                if not args.during_check:
                    await hub.wait_for(CHECK_DONE, 1800)  # nothing is measured during the start's room check
                if args.rooms > state.rooms:
                    build.update(await grow(synapse, state, hub, config, db, args.people, args.rooms))
                    status_line(f"provisioned: {build}")
                n, secs = await devices(synapse.url, state)
                build["e2ee_devices_added"], build["e2ee_s"] = n, round(secs, 1)
                if "provision_s" in build or n:
                    build.update(commit=result["commit"], load_end=load())
                    state.builds.append(build)
                    state.save()
                result["build"] = build
                result["e2ee_devices"] = sum(1 for u in state.e2ee.values() if u.get("keys"))
                await quiet(db)
                result["analyzed"] = await analyze_databases(state)
                result["invites_pending_start"] = await pending_invites(db)
                mods_room = await mod.room(MODS)
                if args.digest_only:
                    result["digest"] = await digest(db, mod, mods_room, SLUG)
                    status_line(f"digest: {result['digest']}")
                    result["hub_hwm_mb"] = round(rss_mb(hub.pid)[1], 1)
                    return result

                async def hub_side(profile: Path) -> None:
                    """The icebreaker through the hub; behind the proxy, its requests by kind."""
                    if proxy is not None:
                        proxy.clear()
                    result["icebreaker"] = await icebreaker(hub, db, mod, mods_room, SLUG,
                                                            profile=profile if args.profile else None,
                                                            pairs_only=args.background_invites)
                    status_line(f"icebreaker through the hub: {result['icebreaker']}")
                    if proxy is not None:
                        result["requests"] = request_stats(proxy)
                        for line in result["requests"]:
                            status_line(f"  hub: {line}")

                if args.icebreaker_only:
                    await hub_side(folder / "icebreaker-profile.txt")
                    return result
                # -- restarts ------------------------------------------------------------
                result["restarts"] = []
                for i in range(args.restarts):
                    r = await restart(hub, mod, mods_room, wait_check=not args.during_check)
                    result["restarts"].append(r)
                    status_line(f"restart {i + 1}: {r}")
                await quiet(db)
                await asyncio.sleep(10)
                # -- idle ------------------------------------------------------------------
                rss, hwm = rss_mb(hub.pid)
                h0, s0, l0 = cpu_seconds(hub.pid), cpu_seconds(spid), load()
                await asyncio.sleep(args.idle)
                result["idle"] = {"rss_mb": round(rss, 1), "hwm_mb": round(hwm, 1), "seconds": args.idle,
                                  "hub_cpu_pct": round(100 * (cpu_seconds(hub.pid) - h0) / args.idle, 2),
                                  "synapse_cpu_pct": round(100 * (cpu_seconds(spid) - s0) / args.idle, 2),
                                  "load": [l0, load()]}
                status_line(f"idle: {result['idle']}")
                # -- pings against a hub in no rooms ----------------------------------------
                empty_config = hub_config(state, name="empty", homeserver=synapse.url, smtp_port=port,
                                          control_room=EMPTY_MODS, with_cohort=False)
                empty = HubProcess(empty_config, folder / "empty-hub.log")
                await empty.start()
                try:
                    await empty.wait_for("hub ready", 300)
                    empty_room = await mod.room(EMPTY_MODS)
                    result["pings"] = await pings(mod, {"hub": mods_room, "empty": empty_room}, args.pings)
                finally:
                    await empty.stop()
                status_line(f"pings: {result['pings']}")
                # -- icebreaker, hub then raw nio (or raw first) ----------------------------------
                # Whichever goes second finds Synapse's caches warm for the 5,000 rooms (the raw
                # side went second until --raw-first: 110-136 s against 180 s when first).
                async def raw_side(event: str, label: str) -> None:
                    # The hub stopped (one writer per device), the raw client on its device, then
                    # the hub started again.
                    await hub.stop()
                    if proxy is not None:  # the raw side's requests too, to compare kind by kind
                        proxy.clear()
                    result["raw_icebreaker"] = await raw_icebreaker(proxy.url if proxy else synapse.url,
                                                                    state, db, event,
                                                                    pairs_only=args.background_invites,
                                                                    ping=(mod, mods_room, args.pings))
                    status_line(f"icebreaker, raw nio ({label}): {result['raw_icebreaker']}")
                    if proxy is not None:
                        result["raw_requests"] = request_stats(proxy)
                        for line in result["raw_requests"]:
                            status_line(f"  raw: {line}")
                    await hub.start()
                    await hub.wait_for("hub ready", 900)
                    await quiet(db)
                    # Its first syncs carry the raw client's thousands of events (its own
                    # account's): not what a weekly icebreaker meets, so not in its time.
                    result["settled_after_raw_s"] = await settle(mod, mods_room)

                if args.raw_first:
                    await raw_side(await last_icebreaker(db), "first")
                await hub_side(folder / "icebreaker.speedscope.json")
                await quiet(db)
                if args.during_check and result["restarts"] and not args.raw_first:
                    # The last restart's room check ran beside the measurements: its end from the log.
                    done = hub.seen(CHECK_DONE)
                    result["restarts"][-1]["reconciled_s"] = round(done, 2) if done is not None else None
                    status_line(f"the last restart's room check ended after {done} s")
                if not args.raw_first:
                    await raw_side(result["icebreaker"]["event"], "after the hub's")
                result["icebreaker_ratio"] = round(result["icebreaker"]["fanout_s"]
                                                   / result["raw_icebreaker"]["send_s"], 2)
                # -- digest ---------------------------------------------------------------------
                result["digest"] = await digest(db, mod, mods_room, SLUG)
                status_line(f"digest: {result['digest']}")
                result["hub_hwm_mb"] = round(rss_mb(hub.pid)[1], 1)
                result["invites_pending_end"] = await pending_invites(db)
            finally:
                await hub.stop()
                if proxy is not None:
                    await proxy.stop()
                if args.hold_invites:
                    await hold_invites(db, -HOLD_SECONDS)
                await db.close()
                await mod.stop()
    finally:
        sink.terminate()
        sink.communicate(timeout=10)
    result["load_end"] = load()
    if not (args.keep or args.reuse):
        await drop_databases(state)
        shutil.rmtree(folder, ignore_errors=True)
    return result


async def last_icebreaker(db: Any) -> str:
    """The command event of the newest icebreaker sent (its rows are what the raw side sends)."""
    async with db.session() as s:
        key = (await s.execute(select(outbox_table.c.dedupe_key).where(
            outbox_table.c.dedupe_key.like(f"icebreaker:{SLUG}:send:%")).order_by(
            outbox_table.c.seq.desc()).limit(1))).scalar_one()
    return str(key.split(":send:", 1)[1].split(":", 1)[0])


def request_stats(proxy: RecordingProxy) -> list[str]:
    """The proxy's requests by kind (room ids and transaction ids folded): count, p50, mean, total."""
    kinds: dict[str, list[float]] = {}
    for e in proxy.exchanges:
        kind = re.sub(r"/rooms/[^/]+", "/rooms/R", e.path)
        kind = re.sub(r"/(send|sendToDevice)/([^/]+)/[^/]+$", r"/\1/\2/T", kind)
        kind = re.sub(r"/(state)/([^/]+)/.*$", r"/\1/\2/K", kind)
        kinds.setdefault(f"{e.method} {kind}", []).append(1000 * (e.ended - e.began))
    lines = []
    for kind, ms in sorted(kinds.items(), key=lambda kv: -sum(kv[1])):
        ms.sort()
        lines.append(f"{kind}: {len(ms)}, p50 {ms[len(ms) // 2]:.0f} ms, mean {statistics.fmean(ms):.0f} ms, "
                     f"total {sum(ms) / 1000:.0f} s")
    return lines


def summary(r: dict[str, Any]) -> str:
    rs = r["restarts"]
    lines = [
        f"scale: {r['people']} people, {r['rooms']} pair rooms, {r['e2ee_devices']} with E2EE devices, "
        f"{r['backend']}; commit {r['commit']}",
        f"  build this run: {r.get('build')}",
        f"  space/lounge invites still pending (sent in the background): {r['invites_pending_start']} at the "
        f"start of the measurements, {r['invites_pending_end']} at the end",
        f"  restart -> ping answered: {[x['ping_s'] for x in rs]} s (target < 30 s); -> ready "
        f"{[x['ready_s'] for x in rs]} s; -> reconciled {[x['reconciled_s'] for x in rs]} s",
        f"  idle: RSS {r['idle']['rss_mb']} MB (target < 400), hub CPU {r['idle']['hub_cpu_pct']} % "
        f"(target < 2 %), Synapse CPU {r['idle']['synapse_cpu_pct']} % over {r['idle']['seconds']} s",
    ]
    p = r["pings"]
    for name in ("hub", "empty"):
        lines.append(f"  ping {name}: p50 {p[name]['p50_ms']} ms, p95 {p[name]['p95_ms']} ms, max "
                     f"{p[name]['max_ms']} ms (server timestamps: p50 {p[name]['ts_p50_ms']}, "
                     f"p95 {p[name]['ts_p95_ms']})")
    added = round(p["hub"]["p95_ms"] - p["empty"]["p95_ms"], 1)
    lines.append(f"  the hub adds at p95 over a hub in no rooms: {added} ms (target <= 10)")
    ice, raw = r["icebreaker"], r["raw_icebreaker"]
    if "pings" in raw:
        q = raw["pings"]
        lines.append(f"  ping raw nio bot, same account and rooms (hub stopped, by the raw icebreaker): p50 "
                     f"{q['p50_ms']} ms, p95 {q['p95_ms']} ms, max {q['max_ms']} ms (server timestamps: p50 "
                     f"{q['ts_p50_ms']}, p95 {q['ts_p95_ms']}); the hub adds at p95: "
                     f"{round(p['hub']['p95_ms'] - q['p95_ms'], 1)} ms")
    lines += [
        f"  icebreaker via hub: {ice['rows']} rows in {ice['fanout_s']} s ({ice['per_s']}/s); moderator's "
        f"reply after {ice['reply_s']} s; a ping sent 1 s in answered after {ice['ping_during_s']} s",
        f"  icebreaker raw nio: {raw['rows']} sends in {raw['send_s']} s ({raw['per_s']}/s); ratio hub/raw "
        f"{r['icebreaker_ratio']} (target <= 1.15)",
        f"  digest: {r['digest']}",
        f"  hub peak RSS {r['hub_hwm_mb']} MB; load {r['load_start']} -> {r['load_end']}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--rooms", type=int, default=5_000, help="pair rooms (2 x rooms people are paired)")
    parser.add_argument("--keep", metavar="DIR", help="build in DIR and keep it (Synapse, databases, stores)")
    parser.add_argument("--reuse", metavar="DIR", help="a programme kept with --keep: grown if smaller")
    parser.add_argument("--sqlite", action="store_true", help="SQLite even when PostgreSQL answers")
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--idle", type=int, default=60, help="seconds of idle CPU measured")
    parser.add_argument("--pings", type=int, default=100, help="pings to each hub")
    parser.add_argument("--background-invites", action="store_true",
                        help="do not wait for the space's and lounge's invites of everyone (one slow row "
                             "each); they go on during the measurements, which say how many were pending")
    parser.add_argument("--during-check", action="store_true",
                        help="do not wait for the room check after a start (paged: 20 rooms every 5 s, "
                             "8+ min at 2,000 rooms); measure beside it and read the last restart's end "
                             "of the check from the log before the hub stops for the raw side")
    parser.add_argument("--profile", action="store_true", help="py-spy the hub during the icebreaker")
    parser.add_argument("--hold-invites", action="store_true",
                        help="with --reuse: hold the queued space and lounge invites for the run (their "
                             "time moved ahead, then back), so the hub and Synapse are measured without them")
    parser.add_argument("--raw-first", action="store_true",
                        help="the raw nio icebreaker (the last icebreaker's events) before the hub's")
    parser.add_argument("--icebreaker-only", action="store_true",
                        help="with --reuse: only the icebreaker through the hub after the start")
    parser.add_argument("--proxy", action="store_true",
                        help="the hub and the raw side talk to Synapse through a recording proxy; each "
                             "side's requests during its icebreaker are listed by kind (count, p50, mean)")
    parser.add_argument("--digest-only", action="store_true",
                        help="with --reuse: only the weekly digest after the start (to re-measure it)")
    args = parser.parse_args()
    if args.people < 2 * args.rooms:
        parser.error("--people must be at least 2 x --rooms")
    if args.background_invites:
        IGNORED.add("room-invite")
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    result = asyncio.run(run(args))
    print(summary(result) if not (args.digest_only or args.icebreaker_only)
          else f"  {result.get('digest') or result.get('icebreaker')}")
    out = Path(result["folder"] if (args.keep or args.reuse) else ".") / f"scale-{int(time.time())}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"  figures: {out}")


if __name__ == "__main__":
    main()
