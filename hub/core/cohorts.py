"""Cohorts, people and pairs as plain data: names, checks, room specs, video links, texts.

Nothing here talks to the homeserver or the database. The adapters turn a
`RoomSpec` into a createRoom call (hub.matrix.provision) and compare it with
a room's actual state (`state_fixes`); the features decide when.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hub.core.content_format import escape_markdown
from hub.core.membership import RoomKind

__all__ = [
    "CREATOR_POWER_VERSIONS",
    "MEGOLM",
    "MODERATOR_LEVEL",
    "OWNED_STATE",
    "RESTRICTED_VERSIONS",
    "ROLES",
    "ROOM_TAG",
    "RoomSpec",
    "StateFix",
    "Who",
    "direct_spec",
    "display_name",
    "goodbye_text",
    "is_email",
    "is_matrix_id",
    "lounge_spec",
    "not_joined_reminder",
    "pair_room_name",
    "pair_spec",
    "pair_welcome",
    "paired_email",
    "parse_who",
    "room_tag",
    "space_spec",
    "state_fixes",
    "valid_slug",
    "video_name",
    "video_url",
]

ROLES = ("mentor", "mentee", "moderator")
MODERATOR_LEVEL = 50
HUB_LEVEL = 100
ROOM_TAG = "org.cohorthub.room"
# Room versions where creators have unlimited power and must not be listed in
# the power-levels `users` map (room version 12, MSC4289).
CREATOR_POWER_VERSIONS = frozenset({"12", "org.matrix.hydra.11"})
# Versions whose join rules include `restricted` (MSC3083, room version 8+).
RESTRICTED_VERSIONS = frozenset({"8", "9", "10", "11", "12", "org.matrix.hydra.11"})

_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# Matrix user ids: historical localparts allow more than the current grammar,
# but never whitespace, and the server part is a host with an optional port.
_MXID = re.compile(r"^@[A-Za-z0-9._=\-/+]{1,200}:[A-Za-z0-9.\-]{1,200}(:\d{1,5})?$")
_EMAIL = re.compile(r"^[^@\s<>\",;:()\[\]\\]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}[A-Za-z0-9])?)+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def valid_slug(slug: str) -> bool:
    return bool(_SLUG.match(slug))


def is_matrix_id(text: str) -> bool:
    return bool(_MXID.match(text))


def is_email(text: str) -> bool:
    return len(text) <= 254 and bool(_EMAIL.match(text))


@dataclass(frozen=True)
class Who:
    """A person named in a command: by Matrix id or by email address (stored lower-case)."""

    matrix_id: str | None = None
    email: str | None = None

    def __str__(self) -> str:
        return self.matrix_id or self.email or "?"


def parse_who(text: str) -> Who:
    """`@user:server` or `someone@example.org`; ValueError naming the problem otherwise."""
    text = text.strip()
    if text.startswith("@"):
        if not is_matrix_id(text):
            raise ValueError(f"{text!r} is not a Matrix id (like @name:example.org)")
        return Who(matrix_id=text)
    if is_email(text):
        return Who(email=text.lower())
    raise ValueError(f"{text!r} is neither a Matrix id (@name:server) nor an email address")


def display_name(name: str | None, matrix_id: str | None, email: str | None) -> str:
    """The name people see: the roster's, else the Matrix localpart, else the email's local part."""
    clean = _CONTROL.sub("", name or "").strip()
    if clean:
        return clean[:200]
    if matrix_id:
        return matrix_id[1:].split(":", 1)[0]
    if email:
        return email.split("@", 1)[0]
    return "someone"


def pair_room_name(mentor: str, mentee: str) -> str:
    return f"{mentor} & {mentee}"[:255]


def video_name(secret: bytes, nonce: str) -> str:
    """The pair's call name: HMAC(secret, a random per-pair nonce), 26 base32 characters.

    Neither a pair number nor people's names go in, so nobody can guess another
    pair's link; the name is stored with the pair when it is made, so it stays
    the same for the life of the pair even if the secret changes.
    """
    digest = hmac.new(secret, f"pair:{nonce}".encode(), hashlib.sha256).digest()
    return "CohortHub-" + base64.b32encode(digest).decode("ascii").rstrip("=").lower()[:26]


def video_url(base_url: str, name: str) -> str:
    return f"{base_url.rstrip('/')}/{name}"


def room_tag(install: str, key: str, generation: int) -> dict[str, Any]:
    """Content of the state event that names a room's owner and purpose; found on restart."""
    return {"install": install, "key": key, "generation": generation}


# -- room specs -------------------------------------------------------------------------


@dataclass(frozen=True)
class RoomSpec:
    """Everything the hub wants a room to be; built from the database, compared with the room."""

    key: str
    kind: str  # space | lounge | pair | direct
    name: str | None
    topic: str | None
    encrypted: bool
    join_rule: str  # invite | restricted
    # The space whose members may join (restricted join rule) and which lists the room.
    parent_space: str | None = None
    moderators: Mapping[str, int] = field(default_factory=dict)  # user -> power level
    invite_level: int = 0
    events_level: int = 0
    is_space: bool = False
    is_direct: bool = False
    history_visibility: str = "shared"
    tag: Mapping[str, Any] = field(default_factory=dict)


def space_spec(key: str, cohort_name: str, moderators: Mapping[str, int], tag: Mapping[str, Any]) -> RoomSpec:
    return RoomSpec(
        key=key, kind=RoomKind.SPACE, name=cohort_name,
        topic=f"The {cohort_name} mentoring cohort: the lounge and everything shared.",
        encrypted=False, join_rule="invite", moderators=moderators,
        # Only moderators and the hub add people or rooms to the cohort's space.
        invite_level=MODERATOR_LEVEL, events_level=MODERATOR_LEVEL, is_space=True, tag=tag,
    )


def lounge_spec(
    key: str, cohort_name: str, space_room_id: str | None, moderators: Mapping[str, int],
    tag: Mapping[str, Any], prefix: str,
) -> RoomSpec:
    return RoomSpec(
        key=key, kind=RoomKind.LOUNGE, name=f"{cohort_name} lounge",
        topic=(f"Say hello to the {cohort_name} cohort. Try `{prefix} icebreaker`; "
               f"`{prefix} help` lists what the hub can do."),
        # The lounge is the cohort's commons: readable by members who join later,
        # which end-to-end encryption would deny them.
        encrypted=False,
        join_rule="restricted" if space_room_id else "invite",
        # Space members join by themselves; only moderators invite anyone else in.
        parent_space=space_room_id, moderators=moderators, invite_level=MODERATOR_LEVEL, tag=tag,
    )


def pair_spec(
    key: str, mentor: str, mentee: str, link: str, *, encrypted: bool, tag: Mapping[str, Any],
    prefix: str,
) -> RoomSpec:
    return RoomSpec(
        key=key, kind=RoomKind.PAIR, name=pair_room_name(mentor, mentee),
        topic=f"Your video call: {link} · `{prefix} call` for the link, `{prefix} plan` for your backup plan",
        encrypted=encrypted, join_rule="invite",
        # Nobody but the hub invites: the members are exactly the pair and the hub.
        invite_level=HUB_LEVEL, history_visibility="invited", tag=tag,
    )


def direct_spec(key: str, tag: Mapping[str, Any]) -> RoomSpec:
    return RoomSpec(
        key=key, kind=RoomKind.DIRECT, name=None, topic=None, encrypted=True, join_rule="invite",
        invite_level=HUB_LEVEL, is_direct=True, history_visibility="invited", tag=tag,
    )


# The state `state_fixes` compares: a change to one of these by anyone but the hub, in a
# room the hub owns, is drift to put back (and to tell the moderators about).
OWNED_STATE = frozenset({
    "m.room.name", "m.room.topic", "m.room.encryption", "m.room.join_rules", "m.room.power_levels",
    "m.room.history_visibility", "m.room.guest_access", ROOM_TAG, "m.space.parent", "m.space.child",
})
MEGOLM = "m.megolm.v1.aes-sha2"


@dataclass(frozen=True)
class StateFix:
    """One state event to (re)send so a room matches its spec."""

    event_type: str
    state_key: str
    content: dict[str, Any]
    reason: str


def _power_users_ok(actual: Mapping[str, Any], wanted: Mapping[str, int]) -> bool:
    users = actual.get("users") or {}
    return all(isinstance(users.get(u), int) and users.get(u) == lvl for u, lvl in wanted.items())


def state_fixes(
    spec: RoomSpec,
    state: Mapping[tuple[str, str], Mapping[str, Any]],
    *,
    hub: str,
    room_version: str,
    child_rooms: Mapping[str, list[str]] | None = None,
) -> list[StateFix]:
    """What must change for the room's `state` ((type, state_key) -> content) to match `spec`.

    Only what the hub owns is compared: name, topic, encryption, history
    visibility, guest access, join rule, who may invite and post, moderators'
    power levels, the hub's tag and the space links (`OWNED_STATE`). Anything a
    member added on top (an avatar, a pinned message) is left alone.
    """
    fixes: list[StateFix] = []

    def get(event_type: str, state_key: str = "") -> Mapping[str, Any] | None:
        return state.get((event_type, state_key))

    if spec.name is not None and (get("m.room.name") or {}).get("name") != spec.name:
        fixes.append(StateFix("m.room.name", "", {"name": spec.name}, "name"))
    if spec.topic is not None and (get("m.room.topic") or {}).get("topic") != spec.topic:
        fixes.append(StateFix("m.room.topic", "", {"topic": spec.topic}, "topic"))
    if spec.encrypted and (get("m.room.encryption") or {}).get("algorithm") != MEGOLM:
        fixes.append(StateFix("m.room.encryption", "", {"algorithm": MEGOLM}, "encryption"))
    # A missing event means the Matrix default: "shared" history, guests forbidden.
    history = (get("m.room.history_visibility") or {}).get("history_visibility", "shared")
    if history != spec.history_visibility:
        fixes.append(StateFix("m.room.history_visibility", "",
                              {"history_visibility": spec.history_visibility}, "history visibility"))
    if (get("m.room.guest_access") or {}).get("guest_access", "forbidden") != "forbidden":
        fixes.append(StateFix("m.room.guest_access", "", {"guest_access": "forbidden"}, "guest access"))
    wanted_rule = join_rule_content(spec, room_version)
    actual_rule = dict(get("m.room.join_rules") or {})
    if (actual_rule.get("join_rule") != wanted_rule["join_rule"]
            or actual_rule.get("allow", []) != wanted_rule.get("allow", [])):
        # The allow list too: a replaced space must be the one whose members may join.
        fixes.append(StateFix("m.room.join_rules", "", wanted_rule, "join rule"))
    power = dict(get("m.room.power_levels") or {})
    # Who may invite and post is the hub's to say: a pair room where anyone may invite is
    # not private. A level left out of the event is Matrix's default, 0.
    levels = {"invite": spec.invite_level, "events_default": spec.events_level}
    wrong_levels = {k: v for k, v in levels.items() if power.get(k, 0) != v}
    if (spec.moderators and not _power_users_ok(power, spec.moderators)) or wrong_levels:
        users = dict(power.get("users") or {})
        users.update(spec.moderators)
        if room_version in CREATOR_POWER_VERSIONS:
            users.pop(hub, None)
        fixes.append(StateFix("m.room.power_levels", "", {**power, **wrong_levels, "users": users},
                              "power levels"))
    if spec.tag and dict(get(ROOM_TAG) or {}) != dict(spec.tag):
        fixes.append(StateFix(ROOM_TAG, "", dict(spec.tag), "hub tag"))
    if spec.parent_space and get("m.space.parent", spec.parent_space) is None:
        fixes.append(StateFix("m.space.parent", spec.parent_space,
                              {"via": [_server_of(hub)], "canonical": True}, "space parent"))
    for child, via in (child_rooms or {}).items():
        if not (get("m.space.child", child) or {}).get("via"):
            fixes.append(StateFix("m.space.child", child, {"via": via, "suggested": True},
                                  "space child"))
    return fixes


def join_rule_content(spec: RoomSpec, room_version: str) -> dict[str, Any]:
    if spec.join_rule == "restricted" and spec.parent_space and room_version in RESTRICTED_VERSIONS:
        return {"join_rule": "restricted",
                "allow": [{"type": "m.room_membership", "room_id": spec.parent_space}]}
    return {"join_rule": "invite"}


def _server_of(user_id: str) -> str:
    return user_id.split(":", 1)[1]


# -- texts -------------------------------------------------------------------------------
# Placeholders until the content library provides these; each text lives in one
# function so it can be swapped without touching the callers.


def pair_welcome(
    *, mentor: str, mentee: str, cohort: str, link: str, prefix: str, for_name: str | None = None
) -> str:
    """The pair room's welcome (Markdown): who is here, the video link, the backup-plan prompt.

    Names and the cohort's name are people's words: escaped so `**`, `[..](..)` or HTML in a
    name shows as typed instead of becoming formatting or a link in the welcome.
    """
    mentor, mentee, cohort = escape_markdown(mentor), escape_markdown(mentee), escape_markdown(cohort)
    hello = f"Welcome, {escape_markdown(for_name)}!" if for_name else f"Welcome, {mentor} and {mentee}!"
    return (
        f"{hello} This is your private pair room in **{cohort}**: just the two of you and the hub. "
        "Moderators are not in this room.\n\n"
        f"**Your video call:** {link}\n"
        "Meeting on video works better than voice or text: it is the closest thing to being in "
        "the same room. The link is the same every time.\n\n"
        "**Agree a backup plan now**, for when a call drops (for example \"switch to the mobile "
        f"app\" or \"call my phone\"): `{prefix} plan set TEXT`. If a call fails, `{prefix} dropped` "
        "brings the plan back."
    )


def goodbye_text(cohort: str) -> str:
    return (
        f"This pair has been closed by the {cohort} moderators, so the hub is leaving the room. "
        "Everything said here stays with you two. Thank you for taking part!"
    )


def paired_email(*, name: str, cohort: str, partner: str, partner_role: str) -> tuple[str, str]:
    """(subject, Markdown body): an email-only participant, welcomed earlier, now has a partner.

    Not a second welcome (that comes once, from the content library): a short notice; the
    email around it adds the video call. Names are escaped, so one cannot become a link.
    """
    who = "mentee" if partner_role == "mentee" else "mentor"
    subject = f"{cohort}: your {who} is {partner}"
    name, cohort, partner = escape_markdown(name), escape_markdown(cohort), escape_markdown(partner)
    return (
        subject,
        f"Hello {name},\n\ngood news: in **{cohort}** your {who} is now **{partner}**. Below is your "
        "video call link, the same for every call you have together.\n\nThe weekly digest and the "
        "check-in questions keep coming to this address.",
    )


def not_joined_reminder(*, name: str, cohort: str, rooms: list[str], homeserver: str) -> tuple[str, str]:
    """(subject, Markdown body): the one reminder for invites still pending after 48 h."""
    # Names are people's words: escaped so a `[x](https://...)` in one cannot become a link.
    listed = "\n".join(f"- {escape_markdown(r)}" for r in rooms)
    subject = f"{cohort}: your invitations are waiting"
    name, cohort = escape_markdown(name), escape_markdown(cohort)
    return (
        subject,
        f"Hello {name},\n\nyou have been invited to these rooms for **{cohort}** but have not "
        f"joined yet:\n\n{listed}\n\nOpen your Matrix app (for example Element, signed in at "
        f"{homeserver}) and accept the invitations. This is the only reminder we send.",
    )
