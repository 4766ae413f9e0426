"""The sync loop: fetch, hand the events over, and only then save the position.

Saving the sync token *after* the events are handled (and each handled event
id is recorded in the same transaction as its effects) is what makes inbound
handling at-most-once and never-lost across crashes: a crash before the save
replays the batch, and the replayed events are skipped by id.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from nio import AsyncClient, SyncError, SyncResponse, UploadFilterResponse

from hub.clock import Clock
from hub.core.cohorts import OWNED_STATE, ROOM_TAG
from hub.core.names import one_line
from hub.errors import InvalidTokenError
from hub.matrix.device_tracking import DeviceTracking
from hub.storage.db import Database, is_transient

__all__ = ["BUSY_POLL", "STATE_TYPES", "TIMELINE_TYPES", "SyncLoop", "sync_filter"]

log = logging.getLogger(__name__)
_TOKEN_KEY = "sync.next_batch"
# Seconds between syncs while the hub sends a fan-out (`SyncLoop.busy`): what a command sent
# meanwhile may wait at most before the hub sees it.
BUSY_POLL = 0.3

# The event types the hub acts on in a room's timeline: messages, answers and the state it
# watches. Everything else (receipts, typing, other apps' events) is left on the server.
TIMELINE_TYPES = (
    "m.room.message",
    "m.room.encrypted",
    "m.reaction",
    # Taking back a reaction (an answer to a prompt, hub.features.reactions).
    "m.room.redaction",
    "m.room.member",
    "m.room.create",
    "m.room.power_levels",
    "m.room.encryption",
    "m.room.name",
    "m.room.topic",
    # The rest of what the hub owns in its rooms: changed by others, it is
    # put back at once (hub.features.rooms), so the sync must show it.
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    ROOM_TAG,
    "m.room.pinned_events",
    "m.room.tombstone",
    "m.space.child",
    "m.space.parent",
)

# The state the hub reads from a sync's `state` section (a room it newly joined, an initial
# sync, a change that fell into a gap of a limited timeline): what it owns and puts back
# (`OWNED_STATE`: drift inside a gap arrives here, hub.matrix.events.state_changes), who is
# in the room (lazy-loaded), the room's creators (`m.room.create`), and what nio needs to
# encrypt (`m.room.encryption`, members) and follow an upgrade (`m.room.tombstone`). Without
# a `types` list every other state event (avatars, aliases, ACLs, widgets...) came too.
STATE_TYPES = tuple(sorted(OWNED_STATE | {"m.room.member", "m.room.create", "m.room.tombstone"}))


def sync_filter(own_user_id: str) -> dict[str, Any]:
    """The sync filter: only what the hub uses, and none of the hub's own timeline events.

    The hub's own events (its messages, encrypted, in every room; its invites; its state
    fixes and pins) were sent back to it on the next sync, to be parsed, decrypted and
    ignored: nothing the hub does depends on seeing them (hub.matrix.events drops them by
    sender everywhere). What it must still know arrives another way: a room it joins comes
    with its state (Synapse sends a newly joined room's state in the `state` section, which
    `not_senders` does not filter); what it does itself is applied to nio's room at once
    (hub.matrix.provision): a room it creates or turns encryption on in (marked encrypted
    in nio's store too: a sync during createRoom shows the room before its encryption
    event), and its invites and kicks.
    """
    return {
        "presence": {"types": []},
        "account_data": {"types": []},
        "room": {
            "ephemeral": {"types": []},
            "account_data": {"types": []},
            # Lazy-loaded members, so a 5,000-room account does not download every
            # membership: only those of the senders in the timeline.
            "state": {"lazy_load_members": True, "types": list(STATE_TYPES)},
            "timeline": {
                "limit": 100,
                "lazy_load_members": True,
                "types": list(TIMELINE_TYPES),
                "not_senders": [own_user_id],
            },
        },
    }


SyncHandler = Callable[[SyncResponse, bool], Awaitable[None]]


class SyncLoop:
    def __init__(
        self,
        client: AsyncClient,
        db: Database,
        clock: Clock,
        handler: SyncHandler,
        *,
        timeout_ms: int = 30_000,
        max_backoff: float = 60.0,
        probe_seconds: float = 2.0,
        busy: Callable[[], bool] | None = None,
        busy_poll: float = BUSY_POLL,
        tracking: DeviceTracking | None = None,
    ) -> None:
        self.client = client
        # Whose device lists nio follows, saved and restored around runs (hub.matrix.device_tracking).
        self.tracking = tracking
        # While `busy` (the hub is sending a fan-out), poll every `busy_poll` seconds instead of
        # holding a long poll open: Synapse computes an open long poll's answer again for every
        # new event in any of the account's rooms, the hub's own included, until one is not
        # empty; at 5,000 rooms that was a sync computed for every icebreaker sent.
        self.busy = busy
        self.busy_poll = busy_poll
        self.db = db
        self.clock = clock
        self.handler = handler
        self.timeout_ms = timeout_ms
        self.max_backoff = max_backoff
        self.probe_seconds = probe_seconds
        self.healthy = False
        self.last_success: float | None = None
        self.synced = asyncio.Event()  # set after every successful handled sync
        self.first_done = asyncio.Event()  # set once, after the first handled sync
        self._filter_id: str | None = None
        self._stop = False

    async def _upload_filter(self) -> str | None:
        wanted = sync_filter(str(self.client.user_id))
        resp = await self.client.upload_filter(
            presence=wanted["presence"], account_data=wanted["account_data"], room=wanted["room"],
        )
        if isinstance(resp, UploadFilterResponse):
            return str(resp.filter_id)
        log.warning("could not upload the sync filter (%s); syncing unfiltered", resp)
        return None

    def stop(self) -> None:
        self._stop = True

    async def run(self) -> None:
        since = await self.db.get_state(_TOKEN_KEY) or None
        if self.tracking is not None and since is not None:  # an initial sync tracks afresh
            restored = await self.tracking.restore()
            log.info("following the device lists of %d users, as the last run did", restored)
        failures = 0
        while not self._stop:
            try:
                if self._filter_id is None:
                    self._filter_id = await self._upload_filter()
                timeout = self.timeout_ms if self.first_done.is_set() else 0
                if timeout and self.busy is not None and self.busy():
                    await self.clock.sleep(self.busy_poll)
                    timeout = 0
                resp = await self.client.sync(
                    # The first sync of a run returns at once, so start-up
                    # does not wait a whole long-poll for a quiet account.
                    timeout=timeout,
                    sync_filter=self._filter_id,
                    since=since,
                    # Never `full_state`, not even on a run's first sync: resuming from the
                    # saved token brings only what changed while the hub was down (with
                    # full state, 6.6 MB at 2,000 rooms on every start). nio learns the rest
                    # when it is needed: a room before the hub's first send to it
                    # (`Provision.load_room`), every room from the room check's pages, the
                    # control room at start; and which rooms are encrypted is in nio's store.
                )
            except (TimeoutError, OSError) as e:
                resp, unreachable = SyncError(f"{e.__class__.__name__}: {e}"), True
            except Exception as e:  # aiohttp raises its own connection errors
                resp, unreachable = SyncError(f"{e.__class__.__name__}: {e}"), True
            else:
                unreachable = False
            if isinstance(resp, SyncError):
                if getattr(resp, "status_code", None) == "M_UNKNOWN_TOKEN":
                    self.healthy = False
                    raise InvalidTokenError(
                        "the homeserver rejected the hub's access token (M_UNKNOWN_TOKEN); "
                        "it was logged out or revoked. Set a fresh matrix.access_token or run "
                        "`hub run --new-session` to log in again with the password."
                    )
                if since is not None and _stale_position(resp):
                    # Only a position the server cannot read (a restored database, a reset
                    # homeserver) starts over with an initial sync, the one kind that brings
                    # the whole state. Handled as a first sync: what the hub missed cannot
                    # be told from history it may already have answered.
                    log.warning("the homeserver refused the saved sync position (%s); starting "
                                "over with an initial sync", resp.message)
                    # nio falls back on the last position it saw when `since` is None.
                    since, self.client.next_batch = None, ""
                    continue
                if _filter_gone(resp):
                    self._filter_id = None  # uploaded again on the next try
                failures += 1
                self.healthy = False
                delay = self._backoff(failures)
                log.warning("sync failed (%s); retrying in %.1fs", resp.message, delay)
                await self._back_off(delay, unreachable=unreachable)
                continue
            first = since is None
            if self.tracking is not None:
                self.tracking.note_changes(resp.device_list.changed, resp.device_list.left)
            # Handle first, then persist the position (see module docstring).
            if not await self._handle(resp, first):
                return  # stopped while the database was away: the batch is handled next run
            # Key upkeep after the batch, as nio's own sync_forever orders it: before, every
            # command waited for a key query whenever the room check had just taught nio new
            # members (a page every few seconds at 5,000 rooms), which is what the hub added to
            # a `!hub ping` at p95. A send needs no upkeep first: the sender queries the keys
            # of anyone new before each encrypted send (`Provision.load_room`).
            await self._housekeeping()
            if self.tracking is not None:
                await self._save_tracking()
            since = resp.next_batch
            failures = 0
            self.healthy = True
            self.last_success = self.clock.monotonic()
            self.first_done.set()
            self.synced.set()
            self.synced.clear()

    async def _handle(self, resp: SyncResponse, first: bool) -> bool:
        """Handle a batch and save the position after it; False if stopped before that.

        When the database is away (SQLite locked past the busy timeout by another writer, a
        lost PostgreSQL connection), the same batch is handled again after a backoff, until
        it goes through: stopping the hub for it lost every command until someone restarted
        it. The very same response, not a new sync from the old position: nio has already
        taken it in (room keys, decrypted messages), and a second sync of it fails to
        decrypt what the first did. Handling is replay-safe (as after a crash), so the part
        of a batch that went through before the failure is not done twice.
        """
        failures = 0
        while True:
            try:
                await self.handler(resp, first)
                async with self.db.transaction() as session:
                    await self.db.set_state(_TOKEN_KEY, resp.next_batch, session)
                    if self.tracking is not None:
                        await self.tracking.with_position(session)
                return True
            except Exception as e:
                if not is_transient(e):
                    raise
                failures += 1
                self.healthy = False
                delay = self._backoff(failures)
                # The driver's own message only: the wrapper's text carries the statement's
                # parameters, which may be a token being saved.
                log.warning("handling a sync failed (database: %s); handling it again in %.1fs",
                            one_line(str(getattr(e, "orig", None) or e))[:200], delay)
                await self.clock.sleep(delay)
                if self._stop:
                    return False

    def _backoff(self, failures: int) -> float:
        """Seconds to wait after `failures` in a row: doubling from 0.5 s up to `max_backoff`,
        with jitter so many hubs on one homeserver do not retry in step."""
        delay = min(self.max_backoff, 0.5 * 2 ** min(failures, 10))
        return random.uniform(delay / 2, delay)

    async def _back_off(self, delay: float, *, unreachable: bool) -> None:
        """Wait `delay` before syncing again, or less once a homeserver that was down answers.

        After a long outage the backoff reaches `max_backoff`, and commands sent right
        after the homeserver's return waited for it to run out. Meanwhile the server is
        asked for its versions every `probe_seconds`: an unauthenticated GET that costs
        it nothing, and costs an unreachable server nothing at all. The first answer ends
        the wait. Only after the server was seen down (the sync itself got no answer, or
        a probe did not): a server that answers while its syncs fail keeps the backoff.
        """
        deadline = self.clock.monotonic() + delay
        seen_down = unreachable
        while (left := deadline - self.clock.monotonic()) > 0:
            await self.clock.sleep(min(self.probe_seconds, left))
            if self._stop or self.clock.monotonic() >= deadline:
                return
            if await self._answers():
                if seen_down:
                    log.info("the homeserver answers again; syncing now")
                    return
            else:
                seen_down = True

    async def _answers(self) -> bool:
        """True if the homeserver answers GET /_matrix/client/versions with 200."""
        try:
            resp = await self.client.send("GET", "/_matrix/client/versions",
                                          timeout=min(5.0, self.probe_seconds * 2))
        except Exception:  # refused, reset, timed out, a proxy's broken answer: not yet
            return False
        try:
            return bool(resp.status == 200)
        finally:
            resp.release()

    async def _save_tracking(self) -> None:
        assert self.tracking is not None
        try:
            await self.tracking.save_if_due(force=self._stop)
        except Exception as e:  # saved next time; meanwhile a restart queries more keys, no harm
            log.warning("could not save whose device lists the hub follows (%s)", e.__class__.__name__)

    async def _housekeeping(self) -> None:
        """Keep end-to-end encryption working: what nio's sync_forever would do for us."""
        c = self.client
        try:
            if c.should_upload_keys:
                await c.keys_upload()
            if c.should_query_keys:
                await c.keys_query()
            if c.should_claim_keys:
                await c.keys_claim(c.get_users_for_key_claiming())
            await c.send_to_device_messages()
        except Exception as e:
            # Key maintenance is retried on the next sync; never let it stop the loop.
            log.warning("encryption housekeeping failed (%s: %s); will retry", e.__class__.__name__, e)


def _http_status(resp: SyncError) -> int | None:
    status = getattr(getattr(resp, "transport_response", None), "status", None)
    return status if isinstance(status, int) else None


def _filter_gone(resp: SyncError) -> bool:
    """The server no longer knows the uploaded filter (Synapse: 400 "No such filter")."""
    return _http_status(resp) == 400 and "filter" in (resp.message or "").lower()


def _stale_position(resp: SyncError) -> bool:
    """The server cannot read the `since` token (Synapse: 400 "Invalid stream token").

    The hub's requests are otherwise the same on every sync, so a 400 that is not about
    the filter is about the position.
    """
    return _http_status(resp) == 400 and not _filter_gone(resp)

