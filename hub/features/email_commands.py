"""Moderators' email commands: `email unsuppress ADDRESS`.

A suppression (an address the SMTP server refused for good) used to be
forever. A person who fixes their mailbox, or an address suppressed by a
server's mistake, needs a way back that does not involve editing the
database: a moderator lifts it here, the audit log records who did, and the
next email to the address goes out (and is suppressed again if it bounces
the same way).
"""

from __future__ import annotations

from datetime import UTC, datetime

from hub.core.cohorts import is_email
from hub.core.commands import Arg, CommandContext, CommandRegistry, Reply, RoomKind
from hub.core.markup import echo
from hub.email.payload import normalize_address
from hub.email.sender import lift_suppression
from hub.errors import UsageError
from hub.inbound import Ports

__all__ = ["register_email_commands"]

# Addresses are personal: the answer names one, so it stays where only moderators read.
PRIVATE = frozenset({RoomKind.CONTROL, RoomKind.DIRECT})


def register_email_commands(registry: CommandRegistry) -> None:
    @registry.command("email unsuppress", "send mail to an address again after it bounced",
                      Arg("address"), moderator_only=True, private_answer=True, where=PRIVATE)
    async def unsuppress(ctx: CommandContext) -> Reply:
        ports: Ports = ctx.services
        raw = str(ctx.args["address"])
        if not is_email(raw):
            spec = registry.get("email unsuppress")
            usage = f" Usage: `{spec.usage(registry.prefix)}`" if spec else ""
            raise UsageError(f"{echo(raw)} is not an email address; nothing changed.{usage}")
        address = normalize_address(raw)
        lifted = await lift_suppression(ports.session, address)
        if lifted is None:
            return Reply(f"{address} is not suppressed; nothing changed.")
        since = datetime.fromtimestamp(lifted.created_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
        return Reply(f"Lifted the suppression of {address} (SMTP {lifted.code} since {since}: "
                     f"{lifted.reason[:300]}). The next email to it is sent; mail that already "
                     "failed is not resent. If it bounces the same way, it is suppressed again.")
