"""Turn nio's sync responses into the plain facts the hub acts on; the message builders.

Only this module and its siblings know nio's event classes. The facts are plain
dataclasses: `InviteSeen` and `SyncFacts` here (for the service), and those the
features see, `IncomingMessage`, `RoomSyncFacts`, `StateChange` and `AnswerEvent`,
in `hub.core.homeserver` (re-exported here). `notice_content` and `prompt_content`
(what every message the hub sends is made with) live in `hub.core.messages`,
without nio, and are re-exported here too.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from nio import (
    InviteMemberEvent,
    MegolmEvent,
    ReactionEvent,
    RoomCreateEvent,
    RoomMemberEvent,
    RoomMessageNotice,
    RoomMessageText,
    SyncResponse,
)

from hub.core.cohorts import CREATOR_POWER_VERSIONS
from hub.core.homeserver import AnswerEvent, IncomingMessage, RoomSyncFacts, StateChange
from hub.core.messages import Mention, notice_content, prompt_content, user_link

# The message builders live in the core (the digest and the content library use them too).
__all__ = [
    "AnswerEvent",
    "IncomingMessage",
    "InviteSeen",
    "Mention",
    "RoomSyncFacts",
    "StateChange",
    "SyncFacts",
    "answer_event",
    "answer_events",
    "extract",
    "notice_content",
    "prompt_content",
    "room_facts",
    "state_changes",
    "user_link",
]


@dataclass(frozen=True)
class InviteSeen:
    room_id: str
    inviter: str
    is_direct: bool = False  # the inviter marked it a direct chat (`is_direct` in the invite)


@dataclass
class SyncFacts:
    messages: list[IncomingMessage] = field(default_factory=list)
    invites: list[InviteSeen] = field(default_factory=list)
    undecryptable: list[tuple[str, MegolmEvent]] = field(default_factory=list)
    # room id -> users with unlimited power (room v12 creators), from m.room.create
    creators: dict[str, frozenset[str]] = field(default_factory=dict)
    left: list[str] = field(default_factory=list)


def _thread_root(source: dict[str, Any]) -> str | None:
    rel = source.get("content", {}).get("m.relates_to") or {}
    if isinstance(rel, dict) and rel.get("rel_type") == "m.thread":
        root = rel.get("event_id")
        return root if isinstance(root, str) else None
    return None


def message_from_event(room_id: str, event: Any) -> IncomingMessage | None:
    if not isinstance(event, (RoomMessageText, RoomMessageNotice)):
        return None
    return IncomingMessage(
        room_id=room_id,
        event_id=event.event_id,
        sender=event.sender,
        body=event.body or "",
        msgtype="m.notice" if isinstance(event, RoomMessageNotice) else "m.text",
        thread_root=_thread_root(event.source),
        origin_server_ts=event.server_timestamp,
        encrypted=bool(getattr(event, "decrypted", False)),
    )


def creators_from_create(event: RoomCreateEvent) -> frozenset[str]:
    """Users with unlimited power in the room: its creators, in room versions that give them that.

    In older versions a creator is whatever the power levels now say (they may have been
    demoted), so creating the room grants nothing by itself.
    """
    content = event.source.get("content", {})
    if str(content.get("room_version", "1")) not in CREATOR_POWER_VERSIONS:
        return frozenset()
    extra = content.get("additional_creators") or []
    users = {event.sender, *[u for u in extra if isinstance(u, str)]}
    return frozenset(users)


def extract(resp: SyncResponse, own_user_id: str) -> SyncFacts:
    facts = SyncFacts()
    for room_id, info in resp.rooms.invite.items():
        for ev in info.invite_state:
            if isinstance(ev, InviteMemberEvent) and ev.state_key == own_user_id:
                if ev.membership == "invite":
                    direct = ev.content.get("is_direct") is True
                    facts.invites.append(InviteSeen(room_id, ev.sender, direct))
    for room_id, joined in resp.rooms.join.items():
        for ev in list(joined.state) + list(joined.timeline.events):
            if isinstance(ev, RoomCreateEvent):
                facts.creators[room_id] = creators_from_create(ev)
        for ev in joined.timeline.events:
            if isinstance(ev, MegolmEvent):
                facts.undecryptable.append((room_id, ev))
                continue
            msg = message_from_event(room_id, ev)
            # Loop guard, with `CommandRunner.handle` refusing m.notice: the hub's own prompts are
            # m.text and quote commands, so its own messages are never taken as commands.
            if msg is not None and msg.sender != own_user_id:
                facts.messages.append(msg)
    facts.left.extend(resp.rooms.leave.keys())
    return facts


def state_changes(resp: SyncResponse, own_user_id: str, types: Collection[str]) -> list[StateChange]:
    """State events of `types` in joined rooms, sent by anyone but the hub, in sync order."""
    out: list[StateChange] = []
    seen: set[str] = set()
    for room_id, joined in resp.rooms.join.items():
        # Both lists: a change inside a gap arrives in `state`, one within the timeline there.
        for ev in [*joined.state, *joined.timeline.events]:
            source = getattr(ev, "source", None)
            if not isinstance(source, dict) or "state_key" not in source:
                continue
            event_id, sender = str(source.get("event_id", "")), str(source.get("sender", ""))
            if source.get("type") in types and sender != own_user_id and event_id not in seen:
                seen.add(event_id)
                out.append(StateChange(room_id, event_id, str(source["type"]), sender))
    return out


def room_facts(resp: SyncResponse, own_user_id: str, owned: Collection[str], *, first: bool) -> RoomSyncFacts:
    """Who joined, left or was invited where, the rooms the hub left, and (after a run's first
    sync, which shows all state) the changes others made to state of the `owned` types."""
    memberships: dict[tuple[str, str], str] = {}
    for room_id, info in resp.rooms.join.items():
        for ev in [*info.state, *info.timeline.events]:
            if isinstance(ev, RoomMemberEvent):
                memberships[(room_id, ev.state_key)] = ev.membership
    drift = [] if first else state_changes(resp, own_user_id, owned)
    return RoomSyncFacts(batch=str(resp.next_batch), memberships=memberships,
                         left=list(resp.rooms.leave.keys()), drift=drift)


# -- answers to prompts: reactions, replies, redactions (hub.features.reactions) -----------------


def _in_reply_to(content: dict[str, Any]) -> str | None:
    rel = content.get("m.relates_to")
    if not isinstance(rel, dict) or rel.get("is_falling_back"):
        return None  # a thread's fallback names the thread's last event, not what was answered
    reply = rel.get("m.in_reply_to")
    target = reply.get("event_id") if isinstance(reply, dict) else None
    return target if isinstance(target, str) else None


def _without_fallback(body: str) -> str:
    """A reply's own text: older clients quote the replied-to message first (`> <@a:x> ...`)."""
    lines = body.split("\n")
    if lines and lines[0].startswith("> "):
        while lines and lines[0].startswith(">"):
            lines.pop(0)
    return "\n".join(lines).strip()


def answer_event(room_id: str, event: Any) -> AnswerEvent | None:
    """The reaction, reply or redaction in `event`, if it is one (decrypted events included)."""

    def seen(kind: str, target: str, key: str) -> AnswerEvent:
        return AnswerEvent(room_id=room_id, event_id=str(getattr(event, "event_id", "")),
                           sender=str(getattr(event, "sender", "")), kind=kind, target=target, key=key,
                           origin_server_ts=int(getattr(event, "server_timestamp", 0) or 0),
                           encrypted=bool(getattr(event, "decrypted", False)))

    if isinstance(event, ReactionEvent):
        return seen("reaction", event.reacts_to, event.key)
    source = getattr(event, "source", None) or {}
    if isinstance(source, dict) and source.get("type") == "m.room.redaction":
        # From the source: room version 11 moved `redacts` into the content.
        content = source.get("content") or {}
        target = source.get("redacts") or (content.get("redacts") if isinstance(content, dict) else None)
        return seen("redaction", target, "") if isinstance(target, str) else None
    if isinstance(event, RoomMessageText):
        replied = _in_reply_to(event.source.get("content") or {})
        if replied is not None:
            return seen("reply", replied, _without_fallback(event.body or ""))
    return None


def answer_events(resp: SyncResponse, own_user_id: str) -> list[AnswerEvent]:
    """Reactions, replies and redactions by anyone but the hub in joined rooms, in timeline order."""
    out: list[AnswerEvent] = []
    for room_id, joined in resp.rooms.join.items():
        for ev in joined.timeline.events:
            found = answer_event(room_id, ev)
            if found is not None and found.sender != own_user_id:
                out.append(found)
    return out
