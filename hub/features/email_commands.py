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

from hub.core.commands import Arg, CommandContext, CommandRegistry, Reply, RoomKind
from hub.core.converters import to_email
from hub.email.payload import normalize_address
from hub.email.sender import lift_suppression
from hub.features.ports import Store

__all__ = ["register_email_commands", "unsuppress"]

# Addresses are personal: the answer names one, so it stays where only moderators read.
PRIVATE = frozenset({RoomKind.CONTROL, RoomKind.DIRECT})


async def unsuppress(ctx: CommandContext[Store]) -> Reply:
    address = normalize_address(str(ctx.args["address"]))  # an email address: the parser checked
    lifted = await lift_suppression(ctx.ports.session, address)
    if lifted is None:
        return Reply(f"{address} is not suppressed; nothing changed.")
    since = datetime.fromtimestamp(lifted.created_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return Reply(f"Lifted the suppression of {address} (SMTP {lifted.code} since {since}: "
                 f"{lifted.reason[:300]}). The next email to it is sent; mail that already "
                 "failed is not resent. If it bounces the same way, it is suppressed again.")


def register_email_commands(registry: CommandRegistry) -> None:
    registry.command("email unsuppress", "send mail to an address again after it bounced",
                     Arg("address", to=to_email), moderator_only=True, private_answer=True,
                     where=PRIVATE)(unsuppress)
