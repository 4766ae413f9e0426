"""The typed ports command handlers use instead of the whole hub.

Each small Protocol is one thing a handler may need: the command's
transaction, the outbox, the clock, the live settings, the moderators' room,
the program (calendar and content) or the digest. A handler declares the ones
it uses as its context's type parameter (``CommandContext[Store]``), or a
combination its module names (``class PairPorts(Store, Effects, ...)``), so
it is typed against exactly those and a unit test can call it with fakes
(tests/features/test_handlers.py). The runner (hub.inbound) gives every
handler one object with all of them: `CommandPorts`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from hub.clock import Clock
from hub.config import Settings
from hub.core import content as ct
from hub.core.calendar import CalendarItem, Target
from hub.core.ports import Queue
from hub.program import ProgramState

if TYPE_CHECKING:
    from hub.features.digest import Edition
    from hub.features.participants import CohortView
    from hub.features.room_queue import Env

__all__ = [
    "CommandPorts",
    "Configured",
    "Digest",
    "Digesting",
    "Effects",
    "Membership",
    "Moderators",
    "OutboxPort",
    "Program",
    "Programmed",
    "Store",
    "Timed",
]

OutboxPort = Queue[AsyncSession]


class Program(Protocol):
    """The running program (hub.features.program.ProgramService), as commands use it."""

    @property
    def library(self) -> ct.Library: ...

    @property
    def state(self) -> ProgramState: ...

    def poke(self) -> None:
        """Tick soon: something the calendar reads has changed."""
        ...

    async def targets_of(self, item: CalendarItem, now: datetime) -> list[Target]: ...

    async def rows(self, s: AsyncSession, item: CalendarItem, targets: Sequence[Target], *,
                   source: str) -> list[dict[str, Any]]: ...

    def reply_to(self, member_id: int | None, room_pk: int | None) -> dict[str, str]:
        """The Reply-To header of an email to a member about a room; {} without [email.inbound]."""
        ...


class Digest(Protocol):
    """The weekly digest (hub.features.digest.DigestService), as `!hub digest` uses it."""

    async def edition(self, s: AsyncSession, view: CohortView, week: int, now: datetime, *,
                      preview: bool = False) -> Edition: ...


class Store(Protocol):
    @property
    def session(self) -> AsyncSession:
        """The command's transaction: everything a command changes commits with its answer."""
        ...


class Effects(Store, Protocol):
    @property
    def outbox(self) -> OutboxPort:
        """Where messages and emails are queued, in the command's transaction."""
        ...


class Membership(Store, Protocol):
    async def membership(self) -> Env:
        """What the membership operations need (hub.features.room_queue), for this transaction."""
        ...


class Timed(Protocol):
    @property
    def clock(self) -> Clock: ...


class Configured(Protocol):
    def settings(self) -> Settings:
        """The settings now (a config reload replaces them while the hub runs)."""
        ...


class Moderators(Protocol):
    @property
    def control_room(self) -> str | None:
        """The moderators' room, or None while it does not exist yet."""
        ...


class Programmed(Protocol):
    @property
    def program(self) -> Program:
        """The program; raises CommandError while it is not running."""
        ...


class Digesting(Protocol):
    @property
    def digest(self) -> Digest:
        """The digest; raises CommandError while it is not running."""
        ...


class CommandPorts(Effects, Membership, Timed, Configured, Moderators, Programmed, Digesting, Protocol):
    """Everything a handler may be given: what the runner builds for each command."""
