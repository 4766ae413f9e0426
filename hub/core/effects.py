"""What the hub wants done outside its database, as values: one frozen dataclass per kind.

A feature (or a pure transition in `hub.core.membership`) decides on effects; the
effect writer (`hub.delivery.effect_writer`) turns each into an outbox row, and the
channel's sender turns the row back into an effect (`effect_from_payload`) and
carries it out. The payload of every effect is exactly the dict the hub has always
queued for it (same keys, same order), so rows queued by an older version still
send after an upgrade, and rows queued now by this one read the same to an older
sender while a deploy rolls.

Matrix payloads carry ``op``; a missing ``op`` has always meant ``message``.
Email payloads carry none: they are the `hub.email.payload.EmailPayload` dict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from hub.core.markup import markdown_to_matrix
from hub.core.messages import notice_content
from hub.errors import UnknownEffectError

__all__ = [
    "CreateRoom",
    "Effect",
    "Email",
    "FixState",
    "Invite",
    "Join",
    "Kick",
    "Leave",
    "LeaveRoom",
    "MatrixEffect",
    "Op",
    "Outgoing",
    "PinPlan",
    "RoomMessage",
    "StateEvent",
    "effect_from_payload",
]

MESSAGE_TYPE = "m.room.message"


class Op(StrEnum):
    """The ``op`` of a Matrix outbox row (the value stored in its payload)."""

    MESSAGE = "message"
    STATE = "state"
    CREATE_ROOM = "create_room"
    INVITE = "invite"
    KICK = "kick"
    LEAVE = "leave"  # the hub leaves a room it owns, by key (a closed pair's room)
    LEAVE_ROOM = "leave_room"  # the hub leaves a room by id (one it no longer records)
    ROOM_FIX = "room_fix"
    PIN_PLAN = "pin_plan"
    JOIN = "join"  # the hub joins a room: on an invite it accepts, or back into one of its own


def _room(room_key: str | None, room_id: str | None) -> dict[str, Any]:
    """The address part of a payload: by key (resolved at send time) and/or by id."""
    out: dict[str, Any] = {}
    if room_key is not None:
        out["room_key"] = room_key
    if room_id is not None:
        out["room_id"] = room_id
    return out


@dataclass(frozen=True)
class RoomMessage:
    """An event sent to a room: by its key (a hub room, maybe not created yet) or by its id.

    `type` is ``m.room.message`` for notices and prompts, ``m.reaction`` for a prompt's
    options. `prompt` says what a prompt asks of whom (`hub.features.program_rows.prompt_row`);
    the sender ignores it, the after-sent hooks read it.
    """

    content: dict[str, Any]
    room_key: str | None = None
    room_id: str | None = None
    type: str = MESSAGE_TYPE
    prompt: dict[str, Any] | None = None

    op: Literal[Op.MESSAGE] = field(default=Op.MESSAGE, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.room_key is None and self.room_id is None:
            raise ValueError("a room message needs a room_key or a room_id")

    @classmethod
    def notice(cls, body: str, html: str | None = None, *, room_key: str | None = None,
               room_id: str | None = None, reply_to: str | None = None,
               thread_root: str | None = None) -> RoomMessage:
        """An m.notice that pings nobody (`hub.core.messages.notice_content`)."""
        return cls(notice_content(body, html, reply_to=reply_to, thread_root=thread_root),
                   room_key=room_key, room_id=room_id)

    @classmethod
    def markdown(cls, text: str, *, room_key: str | None = None, room_id: str | None = None,
                 reply_to: str | None = None) -> RoomMessage:
        """An m.notice from Markdown, rendered to plain text and sanitised HTML."""
        body, html = markdown_to_matrix(text)
        return cls.notice(body, html, room_key=room_key, room_id=room_id, reply_to=reply_to)

    def to_payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": str(Op.MESSAGE), **_room(self.room_key, self.room_id),
                               "type": self.type, "content": self.content}
        if self.prompt is not None:
            out["prompt"] = self.prompt
        return out


@dataclass(frozen=True)
class StateEvent:
    """One state event put into a room (e.g. removing a lost lounge from its space)."""

    type: str
    content: dict[str, Any]
    state_key: str = ""
    room_key: str | None = None
    room_id: str | None = None

    op: Literal[Op.STATE] = field(default=Op.STATE, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.room_key is None and self.room_id is None:
            raise ValueError("a state event needs a room_key or a room_id")

    def to_payload(self) -> dict[str, Any]:
        return {"op": str(Op.STATE), **_room(self.room_key, self.room_id), "type": self.type,
                "state_key": self.state_key, "content": self.content}


@dataclass(frozen=True)
class CreateRoom:
    """Create (or find after a crash) the hub room `room_key` at `generation`, inviting its members."""

    room_key: str
    generation: int | None  # None (a row from before generations): whatever the room's is now

    op: Literal[Op.CREATE_ROOM] = field(default=Op.CREATE_ROOM, init=False, repr=False)

    def to_payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": str(Op.CREATE_ROOM), "room_key": self.room_key}
        if self.generation is not None:
            out["generation"] = self.generation
        return out


@dataclass(frozen=True)
class Invite:
    """Invite `users` (and everyone else still pending there) to the hub room `room_key`.

    `after`: a continuation (`hub.features.room_ops`): only the pending people whose ids
    sort after it, the ones an earlier row of the same run left for later.
    """

    room_key: str
    users: tuple[str, ...]
    after: str | None = None

    op: Literal[Op.INVITE] = field(default=Op.INVITE, init=False, repr=False)

    def to_payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": str(Op.INVITE), "room_key": self.room_key, "users": list(self.users)}
        if self.after is not None:
            out["after"] = self.after
        return out


@dataclass(frozen=True)
class Kick:
    room_key: str
    user: str
    reason: str = ""

    op: Literal[Op.KICK] = field(default=Op.KICK, init=False, repr=False)

    def to_payload(self) -> dict[str, Any]:
        return {"op": str(Op.KICK), "room_key": self.room_key, "user": self.user, "reason": self.reason}


@dataclass(frozen=True)
class Leave:
    """The hub leaves its room `room_key` (then marks it closed); the people keep the history."""

    room_key: str

    op: Literal[Op.LEAVE] = field(default=Op.LEAVE, init=False, repr=False)

    def to_payload(self) -> dict[str, Any]:
        return {"op": str(Op.LEAVE), "room_key": self.room_key}


@dataclass(frozen=True)
class LeaveRoom:
    """The hub leaves a room by id: one it no longer records as anything (a replaced direct chat)."""

    room_id: str

    op: Literal[Op.LEAVE_ROOM] = field(default=Op.LEAVE_ROOM, init=False, repr=False)

    def to_payload(self) -> dict[str, Any]:
        return {"op": str(Op.LEAVE_ROOM), "room_id": self.room_id}


@dataclass(frozen=True)
class Join:
    """The hub joins `room_id`: invited by `inviter` (a direct chat if `direct`), or back into
    its own room `room_key` after being removed (the room check then looks at it again)."""

    room_id: str
    inviter: str | None = None
    direct: bool = False
    room_key: str | None = None

    op: Literal[Op.JOIN] = field(default=Op.JOIN, init=False, repr=False)

    def to_payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": str(Op.JOIN), "room_id": self.room_id}
        if self.inviter is not None:
            out["inviter"] = self.inviter
        if self.direct:
            out["direct"] = True
        if self.room_key is not None:
            out["room_key"] = self.room_key
        return out


@dataclass(frozen=True)
class FixState:
    """Bring the room's state in line with the database at send time (``room_fix``).

    `demote`: former moderators whose power level goes back to the default. `drift`:
    the fix answers a change someone made, which the moderators are told about.
    """

    room_key: str
    demote: tuple[str, ...] = ()
    drift: bool = False

    op: Literal[Op.ROOM_FIX] = field(default=Op.ROOM_FIX, init=False, repr=False)

    def to_payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": str(Op.ROOM_FIX), "room_key": self.room_key, "demote": list(self.demote)}
        if self.drift:
            out["drift"] = True
        return out


@dataclass(frozen=True)
class PinPlan:
    """Pin the message queued as `message_key` in a pair's room (None: unpin the old plan)."""

    room_id: str
    pair_id: int
    message_key: str | None

    op: Literal[Op.PIN_PLAN] = field(default=Op.PIN_PLAN, init=False, repr=False)

    def to_payload(self) -> dict[str, Any]:
        return {"op": str(Op.PIN_PLAN), "room_id": self.room_id, "pair_id": self.pair_id,
                "message_key": self.message_key}


@dataclass(frozen=True)
class Email:
    """One email, with the fields of `hub.email.payload.EmailPayload`.

    Not validated here: the effect writer builds the row through `email_payload`, which
    refuses an address or header that could break the message.
    """

    to: str
    subject: str
    text: str
    html: str | None = None
    to_name: str | None = None
    headers: Mapping[str, str] | None = None
    attachments: Sequence[Mapping[str, Any]] | None = None

    def to_payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"to": self.to, "subject": self.subject, "text": self.text}
        if self.to_name:
            out["to_name"] = self.to_name
        if self.html:
            out["html"] = self.html
        if self.headers:
            out["headers"] = dict(self.headers)
        if self.attachments:
            out["attachments"] = [dict(a) for a in self.attachments]
        return out


MatrixEffect = (RoomMessage | StateEvent | CreateRoom | Invite | Kick | Leave | LeaveRoom | FixState | PinPlan
                | Join)
Effect = MatrixEffect | Email


@dataclass(frozen=True)
class Outgoing:
    """An effect with what the outbox needs to queue it: kind (for reports), dedupe key, lane.

    The effect writer (`hub.delivery.effect_writer`) turns it into a row.
    """

    effect: Effect
    kind: str
    dedupe_key: str
    lane: str | None = None  # None: the writer's default (an email's address, a room id)


def _get(p: Mapping[str, Any], key: str, op: str) -> Any:
    try:
        return p[key]
    except KeyError:
        raise UnknownEffectError(f"outbox op {op!r} without {key!r}") from None


def _opt_str(p: Mapping[str, Any], key: str) -> str | None:
    value = p.get(key)
    return None if value is None else str(value)


def effect_from_payload(p: Mapping[str, Any], channel: Literal["matrix", "email"] | None = None) -> Effect:
    """The effect a queued payload stands for; `UnknownEffectError` for an op this hub does not know.

    `channel` (the row's) tells an email from a Matrix row; without it a payload with
    no ``op`` and a ``to`` is an email.
    """
    if channel == "email" or (channel is None and "op" not in p and "to" in p):
        return Email(to=str(_get(p, "to", "email")), subject=str(_get(p, "subject", "email")),
                     text=str(_get(p, "text", "email")), html=_opt_str(p, "html"),
                     to_name=_opt_str(p, "to_name"), headers=p.get("headers"),
                     attachments=p.get("attachments"))
    raw = p.get("op", Op.MESSAGE)
    try:
        op = Op(raw)
    except ValueError:
        raise UnknownEffectError(f"unknown matrix outbox op {raw!r}") from None
    key, rid = _opt_str(p, "room_key"), _opt_str(p, "room_id")
    if op in (Op.MESSAGE, Op.STATE) and key is None and rid is None:
        raise UnknownEffectError(f"outbox op {str(op)!r} names no room")
    match op:
        case Op.MESSAGE:
            return RoomMessage(dict(_get(p, "content", op)), room_key=key, room_id=rid,
                               type=str(p.get("type", MESSAGE_TYPE)), prompt=p.get("prompt"))
        case Op.STATE:
            return StateEvent(str(_get(p, "type", op)), dict(_get(p, "content", op)),
                              state_key=str(p.get("state_key", "")), room_key=key, room_id=rid)
        case Op.CREATE_ROOM:
            gen = p.get("generation")
            return CreateRoom(str(_get(p, "room_key", op)), None if gen is None else int(gen))
        case Op.INVITE:
            return Invite(str(_get(p, "room_key", op)), tuple(str(u) for u in p.get("users", [])),
                          _opt_str(p, "after"))
        case Op.KICK:
            return Kick(str(_get(p, "room_key", op)), str(_get(p, "user", op)), str(p.get("reason", "")))
        case Op.LEAVE:
            return Leave(str(_get(p, "room_key", op)))
        case Op.LEAVE_ROOM:
            return LeaveRoom(str(_get(p, "room_id", op)))
        case Op.ROOM_FIX:
            return FixState(str(_get(p, "room_key", op)), tuple(str(u) for u in p.get("demote", [])),
                            drift=bool(p.get("drift", False)))
        case Op.JOIN:
            inviter = p.get("inviter")
            return Join(str(_get(p, "room_id", op)), None if inviter is None else str(inviter),
                        direct=bool(p.get("direct", False)), room_key=key)
        case Op.PIN_PLAN:
            mk = p.get("message_key")
            return PinPlan(str(_get(p, "room_id", op)), int(_get(p, "pair_id", op)),
                           None if mk is None else str(mk))
