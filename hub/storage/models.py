"""Tables. Times are UNIX seconds (float) so SQLite and PostgreSQL compare them alike.

The schema itself is owned by the numbered migrations in `migrations/versions`;
these classes must match them (a test compares the two).
"""

from __future__ import annotations

from sqlalchemy import Index, LargeBinary, Table, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel

__all__ = [
    "AuditEntry",
    "CheckinAnswer",
    "Cohort",
    "CommandUse",
    "ContentUse",
    "DigestEdition",
    "EmailSuppression",
    "HandledEvent",
    "HubRoom",
    "InboundMail",
    "KeyValue",
    "LoungePost",
    "LoungeReaction",
    "Member",
    "OutboxRow",
    "Pair",
    "PairMail",
    "PairPlan",
    "PersonPref",
    "PrivateCheckin",
    "ProgramSkipped",
    "ProgramTick",
    "Prompt",
    "PromptAnswer",
    "RematchRequest",
    "RoomActivity",
    "RoomMember",
    "Subscriber",
    "WebinarRow",
    "audit_table",
    "checkin_answer_table",
    "cohort_table",
    "command_use_table",
    "content_use_table",
    "digest_edition_table",
    "email_suppression_table",
    "hub_room_table",
    "inbound_mail_table",
    "lounge_post_table",
    "lounge_reaction_table",
    "member_table",
    "metadata",
    "outbox_table",
    "pair_mail_table",
    "pair_plan_table",
    "pair_table",
    "person_pref_table",
    "private_checkin_table",
    "program_skipped_table",
    "program_tick_table",
    "prompt_answer_table",
    "prompt_table",
    "rematch_request_table",
    "room_activity_table",
    "room_member_table",
    "subscriber_table",
    "webinar_table",
]


class KeyValue(SQLModel, table=True):
    """Small pieces of state: the Matrix session (access token, device id), the sync token."""

    __tablename__ = "kv"
    key: str = Field(primary_key=True, max_length=200)
    value: str


class HandledEvent(SQLModel, table=True):
    """Inbound events already handled, so an event id is handled at most once."""

    __tablename__ = "handled_event"
    event_id: str = Field(primary_key=True, max_length=255)
    room_id: str = Field(max_length=255)
    handled_at: float


class OutboxRow(SQLModel, table=True):
    """One outgoing side effect: a chat message, a state change or one email.

    `seq` orders rows; rows sharing a `lane` (a room id, an email address) are
    sent strictly in `seq` order. `txn_id` is the Matrix transaction id and the
    email Message-ID's local part, stable across retries. `dedupe_key` is the
    natural key of the logical message: queueing the same one twice is a no-op.
    """

    __tablename__ = "outbox"
    # (status, priority, seq), not (status): the claim walks queued rows in priority, then
    # seq order (migrations 0007, 0013).
    __table_args__ = (Index("ix_outbox_status_priority_seq", "status", "priority", "seq"),)
    seq: int | None = Field(default=None, primary_key=True)
    txn_id: str = Field(unique=True, max_length=64)
    dedupe_key: str = Field(unique=True, max_length=400)
    channel: str = Field(max_length=16)  # matrix | email
    kind: str = Field(max_length=64)
    lane: str = Field(index=True, max_length=320)
    payload: str  # JSON
    status: str = Field(default="queued", max_length=16)  # queued|sending|sent|failed
    attempts: int = 0
    not_before: float = 0.0
    claimed_until: float | None = None
    # The dispatcher instance holding the claim: on PostgreSQL its advisory lock
    # tells the living from the dead, so a crashed process's rows are freed at once.
    claimed_by: str | None = Field(default=None, max_length=32)
    created_at: float
    sent_at: float | None = None
    last_error: str | None = None
    result: str | None = Field(default=None, max_length=255)  # event id, SMTP reply
    # hub.core.ports.Priority: 0 answers someone waits for, 1 fan-outs (claimed after).
    priority: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class AuditEntry(SQLModel, table=True):
    """A moderator action (PRODUCT.md: `!hub audit`)."""

    __tablename__ = "audit"
    id: int | None = Field(default=None, primary_key=True)
    at: float
    actor: str = Field(max_length=255)
    room_id: str = Field(max_length=255)
    command: str
    outcome: str = Field(max_length=32)


class EmailSuppression(SQLModel, table=True):
    """An address that bounced permanently (SMTP 5xx): no more mail goes to it.

    `address` is normalised (trimmed, lower case). Removing the row lifts the
    suppression, e.g. when a participant gives a corrected address.
    """

    __tablename__ = "email_suppression"
    address: str = Field(primary_key=True, max_length=320)
    code: int  # the SMTP reply code, e.g. 550
    reason: str  # the server's reply text
    txn_id: str | None = Field(default=None, max_length=64)  # the message that bounced
    created_at: float


class ProgramTick(SQLModel, table=True):
    """Calendar bookkeeping: per cohort, the instant up to which due items were handled."""

    __tablename__ = "program_tick"
    cohort: str = Field(primary_key=True, max_length=63)
    last_tick: float


class ProgramSkipped(SQLModel, table=True):
    """A calendar item missed by `catch_up_hours` or more, not sent; listed in `!hub report`."""

    __tablename__ = "program_skipped"
    item_key: str = Field(primary_key=True, max_length=200)
    cohort: str = Field(index=True, max_length=63)
    kind: str = Field(max_length=32)
    week: int | None = None
    due_at: float
    skipped_at: float


# -- cohorts, people, pairs and the rooms the hub owns (migration 0003) ----------------


class Cohort(SQLModel, table=True):
    """A cohort, from `[[cohort]]` in the config or `!hub cohort create` (`source`)."""

    __tablename__ = "cohort"
    id: int | None = Field(default=None, primary_key=True)
    slug: str = Field(unique=True, max_length=63)
    name: str = Field(max_length=200)
    timezone: str = Field(max_length=64)
    start_date: str = Field(max_length=10)  # YYYY-MM-DD, a day in the cohort's time zone
    weeks: int
    source: str = Field(max_length=16)  # config | command
    created_at: float


class Member(SQLModel, table=True):
    """A person's place in one cohort. Email-only people (no matrix_id) are members too.

    A removed member keeps the row (status `removed`) so history and counts
    stay intact; adding them again reactivates it.
    """

    __tablename__ = "member"
    __table_args__ = (
        UniqueConstraint("cohort_id", "matrix_id", name="uq_member_cohort_matrix_id"),
        UniqueConstraint("cohort_id", "email", name="uq_member_cohort_email"),
    )
    id: int | None = Field(default=None, primary_key=True)
    cohort_id: int = Field(foreign_key="cohort.id", index=True)
    role: str = Field(max_length=16)  # mentor | mentee | moderator
    name: str = Field(max_length=200)
    email: str | None = Field(default=None, max_length=254)  # stored lower-case
    matrix_id: str | None = Field(default=None, max_length=255, index=True)
    timezone: str | None = Field(default=None, max_length=64)
    status: str = Field(default="active", max_length=16)  # active | removed
    created_at: float
    removed_at: float | None = None
    reminded_at: float | None = None  # the one "you have not joined yet" email
    # Matching (migration 0011, hub.core.matching): `;`-separated, lower case; NULL when not given.
    languages: str | None = Field(default=None, sa_type=Text)
    topics: str | None = Field(default=None, sa_type=Text)
    capacity: int | None = None  # mentors: how many mentees at once; NULL is 1
    # Matrix ids and emails never to pair with. Private: only the matcher reads it.
    avoid: str | None = Field(default=None, sa_type=Text)


class Pair(SQLModel, table=True):
    """A mentor and a mentee in one cohort; `closed` pairs are kept for history."""

    __tablename__ = "pair"
    __table_args__ = (
        # A mentee has at most one open pair; a mentor may have several.
        Index(
            "uq_pair_open_mentee",
            "mentee_id",
            unique=True,
            sqlite_where=text("status != 'closed'"),
            postgresql_where=text("status != 'closed'"),
        ),
    )
    id: int | None = Field(default=None, primary_key=True)
    cohort_id: int = Field(foreign_key="cohort.id", index=True)
    mentor_id: int = Field(foreign_key="member.id", index=True)
    mentee_id: int = Field(foreign_key="member.id")
    status: str = Field(default="active", max_length=16)  # active | paused | closed
    video_name: str = Field(max_length=64)  # unguessable, fixed when the pair is made
    created_at: float
    paused_at: float | None = None
    closed_at: float | None = None


class HubRoom(SQLModel, table=True):
    """A room the hub owns: a cohort's space or lounge, a pair room, a direct room.

    `key` is the stable local name ("pair:17"); the room is tagged with it
    (state event `org.cohorthub.room`) so a room created just before a crash
    is found again instead of created twice. `generation` grows when a room
    that was lost (deleted, or the hub removed) is replaced.
    """

    __tablename__ = "hub_room"
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(unique=True, max_length=200)
    kind: str = Field(max_length=16)  # space | lounge | pair | direct | dm (theirs, joined)
    generation: int = 1
    room_id: str | None = Field(default=None, unique=True, max_length=255)
    status: str = Field(default="pending", max_length=16)  # pending|creating|ready|closing|closed
    cohort_id: int | None = Field(default=None, foreign_key="cohort.id", index=True)
    pair_id: int | None = Field(default=None, foreign_key="pair.id", index=True)
    user_id: str | None = Field(default=None, max_length=255, index=True)  # direct rooms
    room_version: str | None = Field(default=None, max_length=32)
    created_at: float
    ready_at: float | None = None
    problem: str | None = Field(default=None, sa_type=Text)  # the last thing reconcile replaced


class RoomMember(SQLModel, table=True):
    """Who should be in a hub room, and what the homeserver last said about them."""

    __tablename__ = "room_member"
    __table_args__ = (UniqueConstraint("room_pk", "user_id", name="uq_room_member"),)
    id: int | None = Field(default=None, primary_key=True)
    room_pk: int = Field(foreign_key="hub_room.id", index=True)
    user_id: str = Field(max_length=255, index=True)
    # pending (invite queued) | invited | joined | left | banned | removed (kick queued)
    state: str = Field(default="pending", max_length=16)
    invited_at: float | None = None
    joined_at: float | None = None
    updated_at: float


# -- the participants' side of the program (migration 0005, hub.features.participants) ---


class PairPlan(SQLModel, table=True):
    """A pair's backup plan (`!hub plan set`); `event_id` is the pinned plan message once sent."""

    __tablename__ = "pair_plan"
    pair_id: int = Field(foreign_key="pair.id", primary_key=True)
    text: str = Field(sa_type=Text)
    set_at: float
    message_key: str | None = Field(default=None, max_length=400)  # outbox dedupe key of the message
    event_id: str | None = Field(default=None, max_length=255)


class ContentUse(SQLModel, table=True):
    """One rotating item (icebreaker, reflection prompt, video nudge) given to one room (`scope`)."""

    __tablename__ = "content_use"
    __table_args__ = (Index("ix_content_use_scope_kind", "scope", "kind"),)
    id: int | None = Field(default=None, primary_key=True)
    scope: str = Field(max_length=200)  # the room's key: "pair:17", "lounge:3"
    kind: str = Field(max_length=32)
    item_id: str = Field(max_length=80)
    source: str = Field(max_length=16)  # schedule | command | send
    used_at: float


class CheckinAnswer(SQLModel, table=True):
    """A pair's answer to "did you meet, and how?" for one program week (the latest wins)."""

    __tablename__ = "checkin_answer"
    __table_args__ = (UniqueConstraint("pair_id", "week", name="uq_checkin_answer_pair_week"),)
    id: int | None = Field(default=None, primary_key=True)
    pair_id: int = Field(foreign_key="pair.id")
    cohort_id: int = Field(foreign_key="cohort.id", index=True)
    week: int
    mode: str = Field(max_length=16)  # video | voice | text | notyet
    answered_at: float


class PrivateCheckin(SQLModel, table=True):
    """A private 1-5 score. Deliberately without the person: only counts can ever come out."""

    __tablename__ = "private_checkin"
    id: int | None = Field(default=None, primary_key=True)
    cohort_id: int | None = Field(default=None, foreign_key="cohort.id", index=True)
    week: int
    score: int
    at: float


class PersonPref(SQLModel, table=True):
    """Per Matrix user: email preferences (`!hub email`) and snooze (`!hub snooze`)."""

    __tablename__ = "person_pref"
    user_id: str = Field(primary_key=True, max_length=255)
    email_mode: str = Field(default="all", max_length=16)  # all | weekly | off
    email: str | None = Field(default=None, max_length=254)  # a confirmed replacement address
    pending_email: str | None = Field(default=None, max_length=254)
    pending_code: str | None = Field(default=None, max_length=64)  # sha256 of the mailed code
    pending_at: float | None = None
    snooze_until: float | None = None
    updated_at: float


class WebinarRow(SQLModel, table=True):
    """A webinar scheduled with `!hub webinar` (config webinars stay in the config)."""

    __tablename__ = "webinar"
    __table_args__ = (UniqueConstraint("cohort_id", "at", name="uq_webinar_cohort_at"),)
    id: int | None = Field(default=None, primary_key=True)
    cohort_id: int = Field(foreign_key="cohort.id")
    at: float  # UTC instant
    title: str = Field(max_length=200)
    url: str | None = Field(default=None, max_length=2000)
    created_by: str = Field(max_length=255)
    created_at: float
    announce_at: float


# -- the digest's inputs (migration 0006, hub.activity and hub.features.subscribers) ---------


class RoomActivity(SQLModel, table=True):
    """Per hub room: a count and a time, never words (pair and direct rooms included)."""

    __tablename__ = "room_activity"
    room_id: str = Field(primary_key=True, max_length=255)
    kind: str = Field(max_length=16)  # lounge | pair | direct
    messages: int
    last_active_at: float


class LoungePost(SQLModel, table=True):
    """A lounge message's short excerpt; lounge rooms only, ever."""

    __tablename__ = "lounge_post"
    __table_args__ = (Index("ix_lounge_post_room_sent", "room_id", "sent_at"),)
    event_id: str = Field(primary_key=True, max_length=255)
    room_id: str = Field(max_length=255)
    sender: str = Field(max_length=255)
    sender_name: str = Field(max_length=200)
    excerpt: str = Field(sa_type=Text)
    sent_at: float


class LoungeReaction(SQLModel, table=True):
    """One m.reaction annotation on a lounge post."""

    __tablename__ = "lounge_reaction"
    __table_args__ = (Index("ix_lounge_reaction_post", "post_event_id"),)
    event_id: str = Field(primary_key=True, max_length=255)
    post_event_id: str = Field(max_length=255)
    sender: str = Field(max_length=255)
    sent_at: float


class Subscriber(SQLModel, table=True):
    """The opaque handle in a person's unsubscribe links; `person` is their person_pref key."""

    __tablename__ = "subscriber"
    handle: str = Field(primary_key=True, max_length=64)
    person: str = Field(unique=True, max_length=300)
    created_at: float


class CommandUse(SQLModel, table=True):
    """One use of a rate-limited command under one key (migration 0009, hub.features.person_commands)."""

    __tablename__ = "command_use"
    __table_args__ = (Index("ix_command_use_key_at", "key", "at"),)
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=400)
    at: float


class RematchRequest(SQLModel, table=True):
    """One `!hub rematch` (migration 0011): counted in `!hub report`, deliberately without the person."""

    __tablename__ = "rematch_request"
    id: int | None = Field(default=None, primary_key=True)
    cohort_id: int | None = Field(default=None, foreign_key="cohort.id", index=True)
    source: str = Field(max_length=16)  # participant | moderator
    at: float


class Prompt(SQLModel, table=True):
    """A sent message that takes answers by reaction (migration 0010, hub.features.prompts)."""

    __tablename__ = "prompt"
    event_id: str = Field(primary_key=True, max_length=255)
    room_id: str = Field(max_length=255)
    kind: str = Field(max_length=16)  # met | checkin
    cohort_id: int | None = Field(default=None, foreign_key="cohort.id")
    pair_id: int | None = Field(default=None, foreign_key="pair.id")  # met: the pair it asks
    user_id: str | None = Field(default=None, max_length=255)  # checkin: the person it asks
    week: int  # the program week it asks about
    sent_at: float = Field(index=True)


class PromptAnswer(SQLModel, table=True):
    """A person's current answer to a prompt by reaction or reply: what a later one replaces."""

    __tablename__ = "prompt_answer"
    __table_args__ = (UniqueConstraint("prompt_event_id", "sender", name="uq_prompt_answer_sender"),)
    id: int | None = Field(default=None, primary_key=True)
    prompt_event_id: str = Field(foreign_key="prompt.event_id", max_length=255)
    sender: str = Field(max_length=255)
    answer_event_id: str = Field(max_length=255, unique=True, index=True)  # the reaction (or reply)
    option: str = Field(max_length=16)  # video | ... | notyet, or 1-5
    at: float


# -- replies by email (migration 0012, hub.email.inbound, hub.features.email_replies) ----


class InboundMail(SQLModel, table=True):
    """A message the hub's SMTP listener accepted, kept raw; written before it answers 250."""

    __tablename__ = "inbound_mail"
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16)  # reply | bounce
    token: str = Field(max_length=64)  # verified at RCPT time
    mail_from: str = Field(max_length=320)  # the envelope sender
    message_id: str | None = Field(default=None, max_length=400)
    raw: bytes = Field(sa_type=LargeBinary)
    received_at: float
    status: str = Field(max_length=16, index=True)  # new | posted | bounce | dropped
    outcome: str | None = Field(default=None, sa_type=Text)  # why it was dropped, what it did
    handled_at: float | None = None


class PairMail(SQLModel, table=True):
    """A pair-room message for an email-only member, until it goes out in a batch."""

    __tablename__ = "pair_mail"
    __table_args__ = (UniqueConstraint("event_id", "member_id", name="uq_pair_mail_event_member"),)
    id: int | None = Field(default=None, primary_key=True)
    room_pk: int = Field(foreign_key="hub_room.id")
    member_id: int = Field(foreign_key="member.id", index=True)  # the email-only recipient
    event_id: str = Field(max_length=255)
    sender_name: str = Field(max_length=200)
    body: str = Field(sa_type=Text)
    sent_at: float  # the message's own time (origin_server_ts), shown in the email
    recorded_at: float  # the hub's clock when it saw it: batches are timed by this
    mailed_at: float | None = None


class DigestEdition(SQLModel, table=True):
    """One fan-out of a cohort's weekly digest, shared by its recipients' rows (migration 0014).

    `data` is JSON (hub.features.digest_mail): what every recipient's email has in
    common. Each digest email row names its edition and is rendered when it is sent.
    """

    __tablename__ = "digest_edition"
    id: int | None = Field(default=None, primary_key=True)
    cohort: str = Field(max_length=63)
    week: int
    data: str = Field(sa_type=Text)
    created_at: float


metadata = SQLModel.metadata

# Typed handles on the tables for SQL expressions (SQLModel's class attributes
# look like plain values to mypy).
outbox_table: Table = OutboxRow.__table__  # type: ignore[attr-defined]
audit_table: Table = AuditEntry.__table__  # type: ignore[attr-defined]
email_suppression_table: Table = EmailSuppression.__table__  # type: ignore[attr-defined]
cohort_table: Table = Cohort.__table__  # type: ignore[attr-defined]
member_table: Table = Member.__table__  # type: ignore[attr-defined]
pair_table: Table = Pair.__table__  # type: ignore[attr-defined]
hub_room_table: Table = HubRoom.__table__  # type: ignore[attr-defined]
room_member_table: Table = RoomMember.__table__  # type: ignore[attr-defined]
program_tick_table: Table = ProgramTick.__table__  # type: ignore[attr-defined]
program_skipped_table: Table = ProgramSkipped.__table__  # type: ignore[attr-defined]
pair_plan_table: Table = PairPlan.__table__  # type: ignore[attr-defined]
content_use_table: Table = ContentUse.__table__  # type: ignore[attr-defined]
checkin_answer_table: Table = CheckinAnswer.__table__  # type: ignore[attr-defined]
private_checkin_table: Table = PrivateCheckin.__table__  # type: ignore[attr-defined]
person_pref_table: Table = PersonPref.__table__  # type: ignore[attr-defined]
webinar_table: Table = WebinarRow.__table__  # type: ignore[attr-defined]
room_activity_table: Table = RoomActivity.__table__  # type: ignore[attr-defined]
lounge_post_table: Table = LoungePost.__table__  # type: ignore[attr-defined]
lounge_reaction_table: Table = LoungeReaction.__table__  # type: ignore[attr-defined]
subscriber_table: Table = Subscriber.__table__  # type: ignore[attr-defined]
command_use_table: Table = CommandUse.__table__  # type: ignore[attr-defined]
prompt_table: Table = Prompt.__table__  # type: ignore[attr-defined]
prompt_answer_table: Table = PromptAnswer.__table__  # type: ignore[attr-defined]
inbound_mail_table: Table = InboundMail.__table__  # type: ignore[attr-defined]
pair_mail_table: Table = PairMail.__table__  # type: ignore[attr-defined]
rematch_request_table: Table = RematchRequest.__table__  # type: ignore[attr-defined]
digest_edition_table: Table = DigestEdition.__table__  # type: ignore[attr-defined]
