"""Inbound events: run each command once, answer it through the outbox.

For every message addressed to the hub, one transaction records the event id
as handled, applies the command's changes and queues the reply. A replay of
the same sync batch (after a crash) finds the id and does nothing, so a
command is never run or answered twice; a crash before the commit leaves no
trace, so the command is run once after the restart.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from hub.clock import Clock
from hub.config import Settings
from hub.core.commands import CommandContext, CommandRegistry, CommandSpec, Reply, RoomKind
from hub.core.content_format import escape_markdown
from hub.core.effects import Outgoing, RoomMessage
from hub.core.homeserver import IncomingMessage
from hub.core.limits import MAX_COMMAND_CHARS, CommandRateLimiter, OncePerWindow, Verdict, text_too_long
from hub.core.markup import echo, markdown_to_matrix
from hub.core.messages import notice_content, prompt_content
from hub.delivery.effect_writer import enqueue
from hub.delivery.outbox import Outbox
from hub.errors import ArgumentError, CommandError, PermissionDenied, UsageError
from hub.features.direct_rooms import describe_room
from hub.features.people import is_participant
from hub.features.ports import CommandPorts, Digest, Program
from hub.features.room_queue import Env, load_env
from hub.storage.db import Database
from hub.storage.models import AuditEntry, HandledEvent

__all__ = ["CommandRunner", "Services"]

log = logging.getLogger(__name__)

# Rooms only the asker (and the hub) reads: a moderator's own direct room has the two of
# them only (the hub removes others from its direct rooms and gives up an adopted one
# someone else joins). Everywhere else a moderator's answer goes to the control room.
_ASKER_ONLY = frozenset({RoomKind.CONTROL, RoomKind.DIRECT})
ANSWERED_ELSEWHERE = "Answered in the moderators' room."
DONE = "✅"

_OOPS = (
    "Sorry, something went wrong on my side and nothing was changed. "
    "The hub's log has the details for the operators."
)


@dataclass
class Services:
    """The hub's long-lived services that commands use; the wiring (hub.service) fills them in."""

    settings: Callable[[], Settings]
    program: Program | None = None
    digest: Digest | None = None


@dataclass(frozen=True)
class _Ports:
    """One command's ports (hub.features.ports.CommandPorts): its transaction and the services."""

    session: AsyncSession
    outbox: Outbox
    clock: Clock
    control_room: str | None
    services: Services

    def settings(self) -> Settings:
        return self.services.settings()

    async def membership(self) -> Env:
        return await load_env(self.session, self.outbox, self.clock, self.settings())

    @property
    def program(self) -> Program:
        if self.services.program is None:
            raise CommandError("The program is not running yet; try again in a minute.")
        return self.services.program

    @property
    def digest(self) -> Digest:
        if self.services.digest is None:
            raise CommandError("The digest is not running yet; try again in a minute.")
        return self.services.digest


class CommandRunner:
    def __init__(
        self,
        db: Database,
        outbox: Outbox,
        clock: Clock,
        registry: CommandRegistry,
        *,
        room_kind: Callable[[str], Awaitable[RoomKind]],
        is_moderator: Callable[[str], Awaitable[bool]],
        control_room: Callable[[], str | None],
        services: Services,
        after_change: Callable[[], None] | None = None,
        rate_limiter: CommandRateLimiter | None = None,
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.clock = clock
        self.registry = registry
        self.room_kind = room_kind
        self.is_moderator = is_moderator
        self.control_room = control_room
        self.services = services
        self.after_change = after_change
        # Moderators are exempt: they run bulk set-up (a cohort, 30 adds) and are trusted.
        self.rate_limiter = rate_limiter or CommandRateLimiter(clock)
        self.strangers = OncePerWindow(clock, 86400.0)

    async def handle(self, msg: IncomingMessage) -> bool:
        """Handle one message; True if it was a command handled now (False: not for us, or seen)."""
        if msg.msgtype != "m.text":
            # Never answer notices: that is how bots end up talking to each other. The hub's own
            # messages (its prompts are m.text) never get here: `events.extract` drops them.
            return False
        rest = self.registry.addressed(msg.body)
        if rest is None:
            return False
        kind = await self.room_kind(msg.room_id)
        moderator = await self.is_moderator(msg.sender)
        verdict = Verdict.ALLOW if moderator else self.rate_limiter.check(msg.sender)
        if verdict is Verdict.DROP:
            # Told once already: a flood must not become a flood of answers (or of writes).
            log.info("dropped a command from %s in %s: over the rate limit", msg.sender, msg.room_id)
            return False
        try:
            async with self.db.transaction() as s:
                if await s.get(HandledEvent, msg.event_id) is not None:
                    return False
                s.add(HandledEvent(event_id=msg.event_id, room_id=msg.room_id,
                                   handled_at=self.clock.now().timestamp()))
                await s.flush()
                if verdict is Verdict.WARN:
                    reply: Reply | None = Reply(self._slow_down(msg.sender))
                    audited = None
                else:
                    reply, audited = await self._run(s, msg, rest, kind, moderator)
                routed = reply is not None and await self._reply(s, msg, reply, done=audited == "ok")
                if audited is not None:
                    # A routed answer names the asker and the command: it is the audit notice.
                    await self._audit(s, msg, audited, notice=not routed)
        except IntegrityError:
            return False  # another process handled the same event first
        if audited == "ok" and self.after_change is not None:
            # After the commit, so whoever reacts (the program's calendar) sees the change.
            self.after_change()
        return True

    async def _reply(self, s: AsyncSession, msg: IncomingMessage, reply: Reply, *,
                     done: bool = False) -> bool:
        """Queue the answer under the command; True if it went to the control room instead."""
        if reply.private:
            await self._answer_among_moderators(s, msg, reply, done=done)
            return True
        body, html = markdown_to_matrix(reply.text)
        reply_to = msg.reply_to or msg.event_id  # a reaction's answer goes under its prompt
        # A reply that asks someone to act (the plan after `!hub dropped`, for the partner) notifies them.
        content = (prompt_content(body, reply.html or html, reply.mentions, reply_to=reply_to,
                                  thread_root=msg.thread_root) if reply.mentions
                   else notice_content(body, reply.html or html, reply_to=reply_to,
                                       thread_root=msg.thread_root))
        await enqueue(self.outbox, s, Outgoing(RoomMessage(content, room_id=msg.room_id), "reply",
                                               f"reply:{msg.event_id}"))
        return False

    async def _answer_among_moderators(self, s: AsyncSession, msg: IncomingMessage, reply: Reply, *,
                                       done: bool) -> None:
        """A moderator's answer with data in it, asked where others read: to the control room.

        The room asked in gets a ✅ on the command when it was carried out, else a short
        pointer: neither says anything but that. The control room's notice names who asked,
        where and what, so moderators can tell whose answer it is.
        """
        control = self.control_room()
        if not control:
            await self._reply(s, msg, Reply("That answer is for moderators only, and the moderators' "
                                            "room is not ready yet: ask again there in a minute."))
            return
        asked = f"{self.registry.prefix} {self.registry.addressed(msg.body) or ''}".strip()
        where = await describe_room(s, msg.room_id)
        failed = "" if done else " (not done)"
        head_body, head_html = markdown_to_matrix(f"{escape_markdown(msg.sender)} asked in {where} "
                                                  f"({msg.room_id}): {echo(asked, limit=300)}{failed}")
        body, html = (reply.text, reply.html) if reply.html else markdown_to_matrix(reply.text)
        answer = RoomMessage.notice(f"{head_body}\n\n{body}", f"{head_html}\n{html}", room_id=control)
        await enqueue(self.outbox, s, Outgoing(answer, "reply", f"answer:{msg.event_id}"))
        if not done:
            await self._reply(s, msg, Reply(ANSWERED_ELSEWHERE))
            return
        done_mark = RoomMessage({"m.relates_to": {"rel_type": "m.annotation", "event_id": msg.event_id,
                                                  "key": DONE}}, room_id=msg.room_id, type="m.reaction")
        await enqueue(self.outbox, s, Outgoing(done_mark, "reply", f"reply:{msg.event_id}"))

    def _slow_down(self, sender: str) -> str:
        wait = max(1, round(self.rate_limiter.wait_seconds(sender)))
        return (f"Slow down, please: I take at most {self.rate_limiter.per_minute:g} commands a "
                f"minute from one person. I'll ignore your commands for the next {wait} s "
                "without answering; the ones I ignore change nothing.")

    async def _run(
        self, s: AsyncSession, msg: IncomingMessage, rest: str, kind: RoomKind, moderator: bool
    ) -> tuple[Reply | None, str | None]:
        """Run the command inside a savepoint, so a refusal or a crash changes nothing.

        The reply is None when the hub stays silent: a stranger it has already refused.
        """
        if len(msg.body) > MAX_COMMAND_CHARS:
            # Never echoed: an answer quoting it could be too large to send, and go unanswered.
            return Reply(f"That command is {len(msg.body):,} characters long; I take at most "
                         f"{MAX_COMMAND_CHARS:,}. Nothing was changed: please shorten it."), None
        # One indexed lookup per command: it decides what a stranger may use and what help lists.
        participant = moderator or await is_participant(s, msg.sender)
        ports: CommandPorts = _Ports(s, self.outbox, self.clock, self.control_room(), self.services)
        ctx = CommandContext(
            sender=msg.sender, room_id=msg.room_id, room_kind=kind, is_moderator=moderator,
            event_id=msg.event_id, is_participant=participant, services=ports,
            prefix=self.registry.prefix,
        )
        spec = None
        try:
            parsed = self.registry.parse(rest)
            spec = parsed.spec
            ctx.args = parsed.args
            if not participant and not spec.open_to_all:
                try:
                    self.registry.authorize(spec, ctx)  # the most specific reason, if there is one
                except PermissionDenied as e:
                    return self._refuse_stranger(msg, str(e)), None
                return self._refuse_stranger(msg), None
            self.registry.authorize(spec, ctx)
            too_long = text_too_long(spec, parsed.args)
            if too_long is not None:
                return Reply(too_long), None
            # What the words mean (a person, a slug, a time...): checked where the handler used to.
            ctx.args = self.registry.check(parsed).args
            async with s.begin_nested():
                reply = await spec.handler(ctx)
        except PermissionDenied as e:
            log.info("refused %s from %s in %s: %s", spec.name if spec else "?", msg.sender,
                     msg.room_id, e)
            # A refusal changes nothing, the audit log included; it is only logged.
            return Reply(str(e)), None
        except ArgumentError as e:
            # A handler's finding: the usage line comes from the declaration, as the parser's does.
            assert spec is not None
            return Reply(str(self.registry.usage_error(spec, str(e)))), None
        except UsageError as e:
            if spec is None and not participant:
                return self._refuse_stranger(msg), None  # no lesson in commands they may not use
            return Reply(str(e)), None
        except CommandError as e:
            outcome = "error" if spec and spec.moderator_only else None
            return self._placed(spec, kind, Reply(str(e))), outcome
        except Exception:
            log.exception("command %r from %s failed", rest[:80], msg.sender)
            return Reply(_OOPS), ("crashed" if spec and spec.moderator_only else None)
        return self._placed(spec, kind, reply), ("ok" if spec.moderator_only else None)

    @staticmethod
    def _placed(spec: CommandSpec | None, kind: RoomKind, reply: Reply) -> Reply:
        """Mark an answer that must not be shown where it was asked (see `_answer_among_moderators`).

        Only what the command itself answered: usage errors and refusals say nothing
        about anyone, so they stay in place where the asker sees them.
        """
        if spec is not None and spec.private_answer and kind not in _ASKER_ONLY:
            return replace(reply, private=True)
        return reply

    def _refuse_stranger(self, msg: IncomingMessage, reason: str | None = None) -> Reply | None:
        """One polite refusal per stranger and room a day; silence after that."""
        log.info("refused a command from %s in %s: not a participant or moderator",
                 msg.sender, msg.room_id)
        if not self.strangers.first((msg.sender, msg.room_id)):
            return None
        p = self.registry.prefix
        why = reason or ("Sorry, I only take commands from this mentoring program's participants "
                         "and moderators, so nothing was done.")
        return Reply(f"{why} `{p} help` and `{p} ping` work for everyone; I won't answer your "
                     "other commands here again today.")

    async def _audit(self, s: AsyncSession, msg: IncomingMessage, outcome: str, *,
                     notice: bool = True) -> None:
        command = f"{self.registry.prefix} {self.registry.addressed(msg.body) or ''}".strip()
        s.add(AuditEntry(at=self.clock.now().timestamp(), actor=msg.sender, room_id=msg.room_id,
                         command=command[:1000], outcome=outcome))
        control = self.control_room()
        if notice and control and control != msg.room_id:
            text = f"{msg.sender} ran {echo(command, limit=300)} ({outcome})"
            await enqueue(self.outbox, s, Outgoing(RoomMessage.markdown(text, room_id=control), "audit",
                                                   f"audit:{msg.event_id}"))
