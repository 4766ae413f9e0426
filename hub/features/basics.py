"""Commands every room has: help, ping; and the moderators' audit log."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial

from sqlalchemy import select

from hub.core.commands import Arg, CommandContext, CommandRegistry, Reply
from hub.core.markup import echo
from hub.features.ports import Store
from hub.storage.models import AuditEntry, audit_table

__all__ = ["audit", "help_", "ping", "register_basics"]


async def help_(registry: CommandRegistry, ctx: CommandContext) -> Reply:
    return registry.help(ctx, ctx.args.get("command"))


async def ping(ctx: CommandContext) -> Reply:
    return Reply("pong")


async def audit(ctx: CommandContext[Store]) -> Reply:
    n = ctx.args.get("n") or 20
    rows = (
        await ctx.ports.session.execute(
            select(AuditEntry).order_by(audit_table.c.id.desc()).limit(n)
        )
    ).scalars().all()
    if not rows:
        return Reply("No moderator actions recorded yet.")
    lines = [f"Last {len(rows)} moderator actions, newest first:"]
    for r in rows:
        when = datetime.fromtimestamp(r.at, UTC).strftime("%Y-%m-%d %H:%M UTC")
        # The command as typed: quoted by echo, so a backtick in it cannot end the code.
        lines.append(f"- {when} {r.actor}: {echo(r.command, limit=200)} ({r.outcome})")
    return Reply("\n".join(lines))


def register_basics(registry: CommandRegistry) -> None:
    # help lists what the registry holds: the one handler that needs the registry itself.
    registry.command("help", "what you may use here", Arg("command", kind="rest", optional=True),
                     open_to_all=True)(partial(help_, registry))
    registry.command("ping", "check that the hub is listening", open_to_all=True)(ping)
    registry.command(
        "audit",
        "the last N moderator actions",
        Arg("n", kind="int", optional=True, minimum=1, maximum=200),
        moderator_only=True, private_answer=True,
    )(audit)
