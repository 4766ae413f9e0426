"""What a scheduled item could not be made for, and the one control-room notice that says so.

A tick that fails is retried whole by the next one, which is right when the
database is away for a moment and wrong when the failure is in the data: a
name with a line break (stored by an older hub) made every tick fail in the
same place, so nothing after it in the calendar ever went out, and nobody was
told. Now such a failure costs only its recipient (or its item): it is left
out, the moderators get one notice per item (the notice's dedupe key is the
item's), and everything else goes out. Only errors that a retry can cure
(`is_transient`) still fail the tick.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hub.core.calendar import CalendarItem
from hub.core.content_format import escape_markdown
from hub.core.effects import Outgoing, RoomMessage
from hub.core.names import name_problem, one_line
from hub.core.ports import Priority
from hub.delivery.effect_writer import row_spec
from hub.errors import HubError
from hub.storage.db import is_transient as db_transient

__all__ = ["Unsent", "is_transient", "person_reason", "reason_of", "unsent_alert"]

# How many recipients one notice lists by name; the rest are a count.
_LISTED = 10


@dataclass(frozen=True)
class Unsent:
    """One target an item was not made for: how moderators recognise it, and why."""

    who: str
    reason: str


def is_transient(e: BaseException) -> bool:
    """The database or the network was away: retrying the tick can cure it, skipping would lose mail."""
    return db_transient(e) or isinstance(e, OSError)


def reason_of(e: Exception) -> str:
    """A one-line reason for moderators: our own messages as they are, never a traceback."""
    if isinstance(e, (ValueError, HubError)):
        text = one_line(str(e))
        return text if len(text) <= 200 else text[:199] + "…"
    return f"an internal error ({type(e).__name__}); the hub's log has the details"


def person_reason(name: str | None, e: Exception) -> str:
    """`reason_of`, but naming the person's stored name when that is what cannot be used.

    Such a name was accepted by an older hub; `hub.core.names` refuses it now.
    """
    problem = name_problem(name or "") if name else None
    if problem is not None and not problem.startswith("is longer"):  # long names still render
        return f"their name {problem} (stored by an older version of the hub)"
    return reason_of(e)


def _what(item: CalendarItem) -> str:
    week = f"week {item.week} " if item.week else ""
    return f"the {week}{item.kind.value.replace('-', ' ')} of `{item.cohort}`"


def unsent_alert(control_room: str | None, item: CalendarItem, unsent: Sequence[Unsent], *,
                 everything: bool = False) -> dict[str, Any] | None:
    """The outbox row telling moderators what `item` left out (None without a control room or a miss).

    `everything` is for an item that failed as a whole rather than for some recipients.
    """
    if not control_room or not unsent:
        return None
    if everything:
        head = f"**Not sent:** {_what(item)} could not be made, so nobody got it."
    else:
        head = (f"**Not sent:** {_what(item)} could not be made for {len(unsent)} "
                f"recipient{'s' if len(unsent) != 1 else ''}; everyone else got it.")
    lines = [head]
    for u in unsent[:_LISTED]:
        lines.append(f"- {escape_markdown(one_line(u.who))}: {escape_markdown(u.reason)}")
    if len(unsent) > _LISTED:
        lines.append(f"- and {len(unsent) - _LISTED} more (the hub's log lists them)")
    lines.append("Nothing retries it on its own. Fix what is named (a name with a line break: add "
                 "the person again with a new name), then send it again if it still matters.")
    # Once per item, however many ticks or `send` commands meet the same failure.
    # Interactive, like the digest's report: a fan-out's own notice must not wait for the fan-out.
    return {**row_spec(Outgoing(RoomMessage.markdown("\n".join(lines), room_id=control_room), "alert",
                                f"alert:unsent:{item.key}" + (":all" if everything else ""))),
            "priority": Priority.INTERACTIVE}
