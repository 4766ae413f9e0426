"""The one place that wires the hub together: config, storage, Matrix, outbox, web.

Everything else receives what it needs as arguments; this module decides
which concrete adapters run and in which order they start and stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nio import AsyncClient, MegolmEvent, SyncResponse
from sqlalchemy.exc import SQLAlchemyError

from hub.activity import ActivityRecorder
from hub.clock import Clock, SystemClock
from hub.config import Settings
from hub.core.cohorts import OWNED_STATE
from hub.core.commands import CommandRegistry, RoomKind
from hub.core.effects import (
    CreateRoom,
    FixState,
    Invite,
    Join,
    Kick,
    Leave,
    LeaveRoom,
    MatrixEffect,
    Outgoing,
    PinPlan,
)
from hub.core.limits import AlertAggregator
from hub.core.tokens import AddressTokenSigner
from hub.delivery.dispatcher import Claimed, Dispatcher, Sender
from hub.delivery.effect_writer import enqueue
from hub.delivery.outbox import EMAIL, MATRIX, SENT_PAYLOAD_DAYS, Outbox
from hub.delivery.ratelimit import SharedPause
from hub.email.inbound import InboundHandler, InboundServer
from hub.email.pool import SmtpPool
from hub.errors import DeliveryError, TemporaryDeliveryError
from hub.features.answers import SqlAnswerStore
from hub.features.basics import register_basics
from hub.features.cohorts import register_cohorts
from hub.features.digest import DigestService
from hub.features.digest_commands import register_digest_commands
from hub.features.email_commands import register_email_commands
from hub.features.email_replies import ReplyPoster, reply_headers
from hub.features.match_commands import register_match_commands
from hub.features.pair_commands import register_pair_commands
from hub.features.pair_mail import PairMailer, RoomText
from hub.features.person_commands import register_person_commands
from hub.features.program import ProgramService
from hub.features.program_commands import register_program_commands
from hub.features.prompts import PromptRecorder
from hub.features.reactions import Answers
from hub.features.rooms import RoomKeeper
from hub.features.subscribers import SqlSubscriptionStore, signing_secret
from hub.inbound import CommandRunner, Services
from hub.logs import add_secrets
from hub.mailer import CONTROL_ROOM_KEY, DeliveryAlerts, email_sender, envelope_for, watch_smtp
from hub.matrix.device_tracking import DeviceTracking
from hub.matrix.events import (
    IncomingMessage,
    answer_event,
    answer_events,
    extract,
    message_from_event,
    room_facts,
)
from hub.matrix.provision import Provision
from hub.matrix.rooms import ensure_control_room
from hub.matrix.sender import EffectHandler, MatrixSender
from hub.matrix.session import MatrixSession
from hub.matrix.sync import SyncLoop
from hub.storage.db import Database, open_database, private_dir
from hub.storage.lock import InstanceLock
from hub.waiting import until_reachable
from hub.web import ControlRoomFailures, HealthSource, WebServer
from hub.web_answer import routes as answer_routes
from hub.web_unsubscribe import routes as unsubscribe_routes

__all__ = ["Hub", "build_registry"]

log = logging.getLogger(__name__)
_PARKED_LIMIT = 2000


def build_registry(prefix: str) -> CommandRegistry:
    registry = CommandRegistry(prefix)
    register_basics(registry)
    register_cohorts(registry)
    register_pair_commands(registry)
    register_person_commands(registry)
    register_program_commands(registry)
    register_digest_commands(registry)
    register_email_commands(registry)
    register_match_commands(registry)
    return registry


class Hub:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        shutdown_grace: float = 10.0,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.shutdown_grace = shutdown_grace
        self.registry = build_registry(settings.matrix.command_prefix)
        self.db: Database | None = None
        self.instance_lock: InstanceLock | None = None
        self.session: MatrixSession | None = None
        self.client: AsyncClient | None = None
        self.outbox: Outbox | None = None
        self.dispatcher: Dispatcher | None = None
        self.sync: SyncLoop | None = None
        self.web: WebServer | None = None
        self.runner: CommandRunner | None = None
        self.rooms: RoomKeeper | None = None  # cohorts' rooms: provisioning, reconcile, membership
        self.program: ProgramService | None = None  # the calendar, its emitter and scheduler
        self.digest: DigestService | None = None  # the program's digest hook, `!hub digest`
        self.activity: ActivityRecorder | None = None  # counts from the sync; lounge excerpts only
        self.answers: Answers | None = None  # reactions and replies answering prompts
        self.control_room_id: str | None = None
        self.creators: dict[str, frozenset[str]] = {}
        # Power in the control room makes moderators only in a control room the hub
        # created alone: in anyone else's, its creator decides who has power 50.
        self.control_room_owned = False
        self._parked: dict[str, tuple[str, MegolmEvent]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # Invites being accepted (room id -> set once its join row is done): a command from
        # such a room waits for it, since joining may adopt the room as someone's direct room.
        self._joining: dict[str, asyncio.Event] = {}
        self.ready = asyncio.Event()
        # Set once the control room's id is known (after the first sync): Matrix rows wait for
        # it, since what they carry out may alert the moderators there (`RoomBase._alert`).
        self.control_known = asyncio.Event()
        self.extra_senders: dict[str, Sender] = {}
        self.smtp_pool: SmtpPool | None = None
        self.after_start: list[Callable[[Hub], Awaitable[None]]] = []
        # Failed rows and bounces, told to the moderators (hub.mailer, shared with `hub worker`).
        self.delivery_alerts = DeliveryAlerts(self.clock, control_room=lambda: self.control_room_id,
                                              command_prefix=lambda: self.settings.matrix.command_prefix)
        self.control_room_failures: ControlRoomFailures = self.delivery_alerts.control_room_failures
        # Replies by email ([email.inbound]): the listener, the poster and the pair-room mailer.
        self.address_signer: AddressTokenSigner | None = None
        self.inbound: InboundServer | None = None
        self.reply_poster: ReplyPoster | None = None
        self.pair_mail: PairMailer | None = None

    @property
    def alerts(self) -> AlertAggregator:
        """"Failed for good" alerts: one per kind and target an hour (a test shortens the hour)."""
        return self.delivery_alerts.aggregator

    @alerts.setter
    def alerts(self, value: AlertAggregator) -> None:
        self.delivery_alerts.aggregator = value

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        add_secrets(s.secrets)
        private_dir(s.hub.data_dir)  # 0700: the database, token and crypto store live here
        self.db = await open_database(s.database.url)
        # Before the Matrix session: only one process may drive the hub's device.
        self.instance_lock = InstanceLock(self.db, clock=self.clock)
        await self.instance_lock.acquire()
        self.outbox = Outbox(self.db, self.clock)
        self.delivery_alerts.outbox = self.outbox
        self.session = MatrixSession(s.matrix, self.db, s.hub.data_dir)
        # A homeserver that is down (or not up yet: one reboot restarting both) is waited
        # for, one log line per try; SIGTERM ends the wait (`run` cancels `start`). Real
        # time: a demo's fake clock must not spin through the backoff.
        self.client = await until_reachable(self.session.open, SystemClock())
        await self._cross_sign()
        pause = SharedPause(self.clock, "the homeserver")
        provision = Provision(self.client, pause)
        self.rooms = RoomKeeper(
            db=self.db, outbox=self.outbox, clock=self.clock, provision=provision,
            settings=lambda: self.settings, control_room=lambda: self.control_room_id,
            on_settings=self._apply_settings, on_config_applied=self._poke_program,
        )
        provision.invitees = self.rooms.invitees  # who the room key goes to besides the joined
        self.program = ProgramService(db=self.db, outbox=self.outbox, clock=self.clock,
                                      settings=lambda: self.settings,
                                      control_room=lambda: self.control_room_id, homeserver=provision)
        # Which handler carries out which room effect: all known before the dispatcher runs,
        # since rows of every kind may be left from the last run.
        rooms = self.rooms
        handlers: dict[type[MatrixEffect], EffectHandler] = {
            CreateRoom: rooms.create_room, Invite: rooms.invite, Kick: rooms.kick, Leave: rooms.leave,
            LeaveRoom: rooms.leave_room, FixState: rooms.fix_state, Join: self._join,
            PinPlan: self.program.pin_plan,
        }
        matrix_sender = MatrixSender(self.client, pause, handlers=handlers,
                                     resolve_room_keys=rooms.resolve_many, load_room=provision.load_room)
        senders: dict[str, Sender] = {MATRIX: matrix_sender}
        self.digest = DigestService(self.program, control_room=lambda: self.control_room_id)
        self.program.digest = self.digest.rows
        self.activity = ActivityRecorder(self.db, s.matrix.user_id, display_name=self._display_name,
                                         command_prefix=s.matrix.command_prefix, clock=self.clock)
        # Ticks start after the first sync and the rooms' reconcile (`after_start` runs then).
        self.after_start.insert(0, _start_program)
        async with self.db.transaction() as tx:
            secret = await signing_secret(tx, s)
        inbound = s.email.inbound if s.email.enabled else None
        if inbound is not None:
            signer = self.address_signer = AddressTokenSigner(secret)
            self.program.reply_headers = lambda member, room: reply_headers(signer, inbound, member, room)
            self.reply_poster = ReplyPoster(self.db, self.outbox, self.clock, signer,
                                            on_suppressed=self.delivery_alerts.suppressed)
            self.inbound = InboundServer(inbound, InboundHandler(
                self.db, signer, inbound.domain, self.clock, max_bytes=inbound.max_size_kb * 1024,
                on_stored=self.reply_poster.poke))
            self.pair_mail = PairMailer(self.db, self.outbox, self.clock, settings=lambda: self.settings,
                                        signer=lambda: self.address_signer, own_user_id=s.matrix.user_id)
        if s.email.enabled:
            self.smtp_pool = SmtpPool(s.email, self.clock)
            senders[EMAIL] = email_sender(s, self.db, self.smtp_pool, self.clock, alerts=self.delivery_alerts,
                                          envelope=envelope_for(s, secret))
        senders.update(self.extra_senders)
        self.dispatcher = Dispatcher(self.db, self.outbox, self.clock, senders,
                                     on_failed=self.delivery_alerts.report_failure)
        released = await self.dispatcher.open()
        if released:
            log.info("requeued %d rows left in flight by the previous run", released)
        self.runner = CommandRunner(
            self.db, self.outbox, self.clock, self.registry,
            room_kind=self.room_kind, is_moderator=self.is_moderator,
            control_room=lambda: self.control_room_id,
            # What handlers may use of the running hub (hub.features.ports), never the hub itself.
            services=Services(settings=lambda: self.settings, program=self.program, digest=self.digest),
            # A new cohort, person or pair may be due calendar items now (the launch post
            # of a cohort that starts today): tick at once instead of within 30 s.
            after_change=self._poke_program,
        )
        self.answers = Answers(self.db, self.outbox, self.clock, self.runner, s.matrix.user_id)
        # Prompts are recorded, and their options queued, once sent: only then is their id known.
        matrix_sender.after_sent.append(PromptRecorder(self.db, self.outbox, self.clock).sent)
        dispatcher = self.dispatcher
        self.sync = SyncLoop(self.client, self.db, self.clock, self._on_sync,
                             busy=lambda: dispatcher.sending(MATRIX) >= dispatcher.concurrency // 2,
                             tracking=DeviceTracking(self.client, self.db, self.clock))
        # Not before the control room is known: a room fix queued by the first sync (drift made
        # while the hub was down) tells the moderators, and with no control room id yet that
        # alert would only reach the log.
        matrix_sender.ready = self.control_known
        self.web = WebServer(
            s.web.host, s.web.port,
            HealthSource(
                sync_ok=lambda: bool(self.sync and self.sync.healthy),
                database_ok=self.db.ping,
                smtp_ok=lambda: self.smtp_pool is None or self.smtp_pool.healthy is not False,
                outbox=self.outbox,
                control_room=self.control_room_failures,
                monotonic=self.clock.monotonic,
            ),
        )
        self.web.add_routes(unsubscribe_routes(SqlSubscriptionStore(self.db, self.clock), secret,
                                               command_prefix=s.matrix.command_prefix))
        self.web.add_routes(answer_routes(SqlAnswerStore(self.db, secret), secret, self.clock))
        await self.web.start()
        if self.inbound is not None:
            await self.inbound.start()
        # The SMTP greeting first: it borrows the pool's connections before the dispatcher
        # can take one, so mail at start waits for its outcome (SmtpPool.greet).
        if self.smtp_pool is not None:
            self._tasks.append(asyncio.create_task(watch_smtp(self.smtp_pool, self.clock),
                                                   name="smtp-health"))
        self._tasks.append(asyncio.create_task(self.sync.run(), name="sync"))
        self._tasks.append(asyncio.create_task(self.dispatcher.run(), name="dispatcher"))
        self._tasks.append(asyncio.create_task(self._after_first_sync(), name="setup"))
        self._tasks.append(asyncio.create_task(self._compact_outbox(), name="outbox-compaction"))
        self._tasks.append(asyncio.create_task(self.delivery_alerts.summarise(), name="alert-summaries"))
        if self.reply_poster is not None:
            self._tasks.append(asyncio.create_task(self.reply_poster.run(), name="email-replies"))
        if self.pair_mail is not None:
            self._tasks.append(asyncio.create_task(self.pair_mail.run(), name="pair-mail"))

    async def _cross_sign(self) -> None:
        from hub.matrix.crosssign import ensure_cross_signing

        assert self.client is not None
        c = self.client
        # The device's keys must be on the server before they can be signed.
        if c.should_upload_keys:
            await c.keys_upload()
        await ensure_cross_signing(
            self.settings.matrix.homeserver,
            c.access_token,
            c.user_id,
            c.device_id,
            c.olm.account.identity_keys["ed25519"] if c.olm else "",
            None,
            self.settings.hub.data_dir / "cross-signing.json",
            password=self.settings.matrix.password,
            reset=self.settings.matrix.reset_cross_signing,
        )

    async def _after_first_sync(self) -> None:
        assert self.sync is not None and self.client is not None
        await self.sync.first_done.wait()
        # The one Matrix write that does not go through the outbox (issue 15), on purpose:
        # * everything else needs the room id first: the command runner tells moderators'
        #   commands by it, alerts are addressed to it, and `DeliveryAlerts.report_failure` tells an
        #   alert's own failure by its lane; a Join/CreateRoom row only gives the id once
        #   the dispatcher has sent it, so the start would wait on a row's result anyway,
        #   and a row being retried (a 429, a server down) would hold it with no error;
        # * its failure must stop the start with what to do ("invite the hub's account to it"):
        #   a row that fails for good is reported to the control room, which is the room
        #   that failed, so the hub would run on with no moderators' room and no one told;
        # * `CreateRoom` carries out a hub room row (`hub_room`, a room key, a generation,
        #   members from the database); this room is named by the config's alias, has no row
        #   and is created once, with the configured moderators and an alias, which no hub
        #   room has.
        # It runs once per start (a lookup, and a join or create only the first time), so the
        # outbox's rate-limit pause and retries buy little here.
        self.control_room_id = await ensure_control_room(self.client, self.settings.matrix)
        self.control_known.set()
        # For `hub worker`s' alerts: they never look anything up on the homeserver.
        assert self.db is not None
        await self.db.set_state(CONTROL_ROOM_KEY, self.control_room_id)
        await self._check_control_room_owner()
        if self.rooms is not None:
            await self.rooms.start()
        for hook in self.after_start:
            await hook(self)
        self.ready.set()
        log.info("hub ready as %s (device %s)", self.client.user_id, self.client.device_id)

    async def run(self, stop: asyncio.Event) -> None:
        """Start, then run until `stop` is set or a component fails for good."""
        waiter: asyncio.Task[Any] = asyncio.create_task(stop.wait())
        # Starting can wait indefinitely (a standby behind another process), so a stop
        # request must be able to end it, not only a running hub.
        starting = asyncio.create_task(self.start())
        try:
            await asyncio.wait({starting, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # raises what start() raised
        except BaseException:
            waiter.cancel()
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            await self.stop()
            raise
        if not starting.done():  # asked to stop while still starting (or standing by)
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            await self.stop()
            return
        try:
            pending: set[asyncio.Task[Any]] = {waiter, *self._tasks}
            while not waiter.done():
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    # The set-up task finishes normally; any task failing stops the hub.
                    if task is not waiter and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                    if task is not waiter and task.get_name() != "setup":
                        raise RuntimeError(f"{task.get_name()} stopped unexpectedly")
        finally:
            waiter.cancel()
            await self.stop()

    async def stop(self) -> None:
        """Stop syncing, let in-flight sends finish (bounded), save state, close."""
        if self.sync is not None:
            self.sync.stop()
        if self.inbound is not None:
            await self.inbound.stop()  # no 250 is answered for mail that could not be kept now
        if self.rooms is not None:
            await self.rooms.stop()
        if self.program is not None:
            await self.program.stop()
        others = [t for t in self._tasks if t.get_name() != "dispatcher"]
        for task in others:
            task.cancel()
        # Let cancelled tasks finish unwinding (rolling back any open transaction)
        # before the dispatcher's last commit, or on SQLite that commit can wait on
        # a write lock held by a task that was cancelled mid-transaction.
        await asyncio.gather(*others, return_exceptions=True)
        if self.dispatcher is not None:
            await self.dispatcher.stop(self.shutdown_grace)
        if self.sync is not None and self.sync.tracking is not None:
            with contextlib.suppress(Exception):  # not saved: the next run queries more keys
                await self.sync.tracking.save_if_due(force=True)
        if self.smtp_pool is not None:
            await self.smtp_pool.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.web is not None:
            await self.web.stop()
        if self.session is not None:
            await self.session.close()
        if self.instance_lock is not None:
            await self.instance_lock.release()
            self.instance_lock = None
        if self.db is not None:
            await self.db.close()

    # -- inbound -------------------------------------------------------------------

    async def _on_sync(self, resp: SyncResponse, first: bool) -> None:
        assert self.client is not None and self.runner is not None
        facts = extract(resp, self.client.user_id)
        self.creators.update(facts.creators)
        for invite in facts.invites:
            await self._consider_invite(invite.room_id, invite.inviter, str(resp.next_batch),
                                        direct=invite.is_direct)
        if self.rooms is not None:
            await self.rooms.on_sync(room_facts(resp, self.client.user_id, OWNED_STATE, first=first), first)
        if self.activity is not None:
            try:
                await self.activity.on_sync(resp)
            except Exception:
                # Digest counters are not worth stalling the sync (and every command) for.
                log.exception("recording room activity failed; this batch is not counted")
        if first:
            # The very first start does not replay room history.
            return
        for msg in facts.messages:
            await self.runner.handle(msg)
        await self._record_pair_mail(facts.messages)
        if self.answers is not None:
            await self.answers.on_sync(answer_events(resp, self.client.user_id))
        for room_id, event in facts.undecryptable:
            self._park(room_id, event)
        await self._retry_parked()

    async def _record_pair_mail(self, messages: list[IncomingMessage]) -> None:
        """An email-only member's partner wrote in their pair room: kept for the next batch."""
        if self.pair_mail is None or not messages:
            return
        try:
            await self.pair_mail.record([RoomText(m.room_id, m.event_id, m.sender, m.body, m.msgtype,
                                                  m.origin_server_ts) for m in messages])
        except (SQLAlchemyError, OSError):
            # Not worth stalling every command for; the message stays in the room.
            log.exception("recording pair-room messages for email failed; this batch is not mailed")

    def _display_name(self, room_id: str, user_id: str) -> str:
        room = self.client.rooms.get(room_id) if self.client is not None else None
        return str(room.user_name(user_id) or user_id) if room is not None else user_id

    def _park(self, room_id: str, event: MegolmEvent) -> None:
        """Keep an undecryptable event and ask for its key; never answer it with noise."""
        assert self.client is not None
        if len(self._parked) >= _PARKED_LIMIT:
            self._parked.pop(next(iter(self._parked)))
        self._parked[event.event_id] = (room_id, event)
        task = asyncio.create_task(self._request_key(event))
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _request_key(self, event: MegolmEvent) -> None:
        assert self.client is not None
        try:
            await self.client.request_room_key(event)
        except Exception as e:  # nio raises if a request for this session is already out
            log.debug("room key request for %s not sent: %s", event.event_id, e)

    async def _retry_parked(self) -> None:
        assert self.client is not None and self.runner is not None
        for event_id, (room_id, event) in list(self._parked.items()):
            try:
                decrypted = self.client.decrypt_event(event)
            except Exception:
                continue
            self._parked.pop(event_id, None)
            msg = message_from_event(room_id, decrypted)
            if msg is not None and msg.sender != self.client.user_id:
                await self.runner.handle(IncomingMessage(**{**msg.__dict__, "encrypted": True}))
                await self._record_pair_mail([msg])
            answer = answer_event(room_id, decrypted)
            if self.answers is not None and answer is not None:
                await self.answers.on_event(answer)

    async def _consider_invite(self, room_id: str, inviter: str, batch: str, *, direct: bool = False) -> None:
        """Accept (a `Join` row) or decline (a `LeaveRoom` row) an invite to the hub.

        Both are Matrix writes, so outbox rows, queued here and sent by the dispatcher (the
        sync handler does no network work); keyed by the sync batch that showed the invite,
        so a batch replayed after a crash queues nothing twice.
        """
        assert self.outbox is not None and self.db is not None
        if room_id in self._joining:
            return
        if await self.may_invite(inviter):
            self._joining[room_id] = asyncio.Event()
            effect: Join | LeaveRoom = Join(room_id, inviter, direct=direct)
            kind, key = "invite-join", f"join:{room_id}:{batch}"
        else:
            log.info("declining invite to %s from %s (not a moderator or participant)",
                     room_id, inviter)
            effect, kind, key = LeaveRoom(room_id), "invite-decline", f"decline:{room_id}:{batch}"
        async with self.db.transaction() as s:
            await enqueue(self.outbox, s, Outgoing(effect, kind, key, lane=f"join:{room_id}"))

    async def _join(self, row: Claimed, effect: Join) -> str:
        """The `Join` handler (hub.features.room_joins), telling a command that waits for it."""
        assert self.rooms is not None
        try:
            result = await self.rooms.join(row, effect)
        except TemporaryDeliveryError:
            raise  # tried again: still joining
        except BaseException:
            self._joined(effect.room_id)
            raise
        self._joined(effect.room_id)
        return result

    def _joined(self, room_id: str) -> None:
        done = self._joining.pop(room_id, None)
        if done is not None:
            done.set()

    async def may_invite(self, user_id: str) -> bool:
        """Invites are accepted from moderators and from the cohorts' participants."""
        if await self.is_moderator(user_id):
            return True
        return self.rooms is not None and await self.rooms.is_participant(user_id)

    def _apply_settings(self, settings: Settings) -> None:
        """A changed config file (hub.features.rooms watches it): cohorts and moderators apply live."""
        add_secrets(settings.secrets)
        self.settings = settings

    # -- policy --------------------------------------------------------------------

    async def _check_control_room_owner(self) -> None:
        """Whether power in the control room may make moderators (see `is_moderator`).

        The control room is found by alias; whoever registered the alias first (a
        stranger, before the hub's first start) created the room and so decides who
        has power 50 in it. Only a room the hub created alone lends its power levels.
        """
        assert self.rooms is not None and self.control_room_id is not None
        try:
            snapshot = await self.rooms.provision.snapshot(self.control_room_id)
        except DeliveryError as e:  # unreadable now: listed moderators only, until the next start
            log.warning("could not read the control room's creator: %s", e)
            snapshot = None
        self.control_room_owned = snapshot is not None and snapshot.owned_by(self.rooms.provision.user_id)
        if snapshot is not None:
            # The sync resumes without full state (hub.matrix.sync), so it shows the control
            # room's power levels and creators only when they change: `is_moderator` reads them
            # from nio's room, taught here from the state just read.
            self.creators[self.control_room_id] = snapshot.creators
            self.rooms.provision.feed(self.control_room_id, snapshot.events)
        if not self.control_room_owned:
            log.warning("the control room %s was not created by the hub: only matrix.moderators "
                        "count as moderators, whatever their power there", self.settings.matrix.control_room)

    async def is_moderator(self, user_id: str) -> bool:
        if user_id in self.settings.matrix.moderators:
            return True
        room_id = self.control_room_id
        if not room_id or self.client is None or not self.control_room_owned:
            return False
        if user_id in self.creators.get(room_id, frozenset()):
            return True  # room v12: creators have unlimited power
        room = self.client.rooms.get(room_id)
        if room is None or user_id not in room.users:
            return False
        return bool(room.power_levels.get_user_level(user_id) >= 50)

    def _poke_program(self) -> None:
        if self.program is not None:
            self.program.poke()

    async def room_kind(self, room_id: str) -> RoomKind:
        if room_id == self.control_room_id:
            return RoomKind.CONTROL
        joining = self._joining.get(room_id)
        if joining is not None:
            # A command sent before the hub had joined (clients let people type at once):
            # its room may be about to become their direct room. Bounded: joining retries.
            await self.clock.wait(joining, 10)
        kind = await self.rooms.kind_of(room_id) if self.rooms is not None else None
        return kind or RoomKind.OTHER

    async def _compact_outbox(self, every: float = 6 * 3600.0) -> None:
        """Empty the payloads of long-sent outbox rows, at start and every few hours."""
        assert self.outbox is not None
        while True:
            try:
                emptied = await self.outbox.compact()
            except (SQLAlchemyError, OSError) as e:  # the database is away: try again next time
                log.warning("outbox compaction failed, retrying in %d h: %s", every // 3600, e)
            else:
                if emptied:
                    log.info("emptied the payloads of %d outbox rows sent more than %d days ago",
                             emptied, SENT_PAYLOAD_DAYS)
            await self.clock.sleep(every)



async def _start_program(hub: Hub) -> None:
    if hub.program is not None:
        await hub.program.start()

