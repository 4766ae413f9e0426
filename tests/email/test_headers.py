"""Email header injection: whatever a field holds, the message parsed back has exactly the
headers the hub meant to write, and the one recipient it meant.

The payloads here are built as a row could be stored (bypassing `email_payload`, as
the welcome email and the 48-hour reminder once did), so the property is about the
header builder itself, the defence that holds whoever queued the row.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import update

from hub.clock import SystemClock
from hub.config import EmailSettings, settings_from_dict
from hub.core.cohorts import Who
from hub.delivery.dispatcher import Dispatcher
from hub.delivery.outbox import EMAIL, Outbox
from hub.devserver.smtp import ReceivedMail, SmtpSink
from hub.email.message import build_message, header_line
from hub.email.payload import EmailPayload, email_payload, fold_header_text, is_address
from hub.email.pool import SmtpPool
from hub.email.sender import EmailSender
from hub.errors import PermanentDeliveryError, UnsafeHeaderError
from hub.features.cohort_setup import get_cohort
from hub.features.config_sync import sync_config
from hub.features.members import add_member
from hub.features.room_queue import Env, load_env
from hub.features.rooms import RoomKeeper
from hub.storage.db import Database, open_database
from hub.storage.models import cohort_table, hub_room_table, room_member_table

from tests.support.live_hub import sink_email

FROM = "Mentoring Hub <hub@example.org>"
NOW = datetime(2027, 1, 11, 9, 0, tzinfo=UTC)
TO = "ada@example.org"
BASE = {"from", "to", "subject", "date", "message-id", "mime-version", "auto-submitted",
        "content-type", "content-transfer-encoding"}

# Text an attacker would type: line breaks of every kind, header-looking words, quotes,
# encoded-word look-alikes and plain Unicode, long enough to need folding now and then.
_NASTY = ["\r\n", "\n", "\r", "\x00", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029", "\t",
          "Bcc: victim@example.org", "X-Injected: yes", "\r\n\r\n", ": ", ",", "<", ">", '"',
          "\\", "=?utf-8?q?x?=", "@", "é", " "]
hostile = st.lists(st.one_of(st.sampled_from(_NASTY), st.text(max_size=12)), max_size=12).map("".join)


def _parse(data: bytes) -> EmailMessage:
    # As an SMTPUTF8 reader does: a non-ASCII address is raw UTF-8 (RFC 6532); bodies are ASCII.
    msg = email.message_from_string(data.decode("utf-8"), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def _norm(text: str) -> str:
    """Compare text values without whitespace, which folding and encoding may re-space
    (the stdlib drops a blank between two encoded words, as RFC 2047 readers do).

    Text that already looks like an RFC 2047 encoded word is decoded by any reader (the
    stdlib's folder treats it so too); that changes what is shown, never which headers
    there are, so such values are only checked for the latter.
    """
    return "".join(fold_header_text(text).split())


def _same(shown: str, given: str) -> None:
    if "=?" not in given:
        assert _norm(shown) == _norm(given)


def _check(payload: EmailPayload, *, from_header: str = FROM, txn_id: str = "t1") -> EmailMessage:
    built = build_message(payload, txn_id=txn_id, from_header=from_header, date=NOW)
    assert built.recipient == payload["to"].strip()
    head = built.data.split(b"\r\n\r\n", 1)[0]
    # Every physical header line is a field start or a continuation; nothing else.
    for line in head.split(b"\r\n"):
        assert line[:1] in (b" ", b"\t") or b":" in line, line
        assert b"\r" not in line and b"\n" not in line and b"\0" not in line
    msg = _parse(built.data)
    extra = {k.lower() for k in (payload.get("headers") or {})}
    assert {k.lower() for k in msg.keys()} == BASE | extra
    assert len(msg.keys()) == len(BASE | extra)  # none twice
    to = payload["to"].strip()
    # One recipient; the same one, unless it looks like an encoded word (which the stdlib's
    # reader decodes even inside an address, against RFC 2047; the envelope is literal).
    got = [a.addr_spec for a in msg["To"].addresses]
    assert got == [to] or ("=?" in to and len(got) == 1)
    _same(str(msg["Subject"]), payload["subject"])
    _same(msg["To"].addresses[0].display_name, payload.get("to_name") or "")
    for key, value in (payload.get("headers") or {}).items():
        if key == "Reply-To":  # an address list: the same addresses, names only ever names
            meant = [a for _, a in getaddresses([fold_header_text(value)])]
            assert [a.addr_spec for a in msg[key].addresses] == meant
        else:
            _same(str(msg[key]), value)
    return msg


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Found by this test: a trailing dot passed the address pattern, and the reader's parser
# then found no address in the Reply-To the hub wrote.
@example(subject="s", to_name="", list_name="", reply_to="Bcc: victim@example.org.", in_reply_to="",
         references="", x_value="")
# And: an ASCII name beside a non-ASCII address, which formataddr refuses with a traceback.
@example(subject="s", to_name="", list_name="", reply_to="Bcc: victim@example.org\u00a1(0",
         in_reply_to="", references="", x_value="")
@given(subject=hostile, to_name=hostile, list_name=hostile, reply_to=hostile, in_reply_to=hostile,
       references=hostile, x_value=hostile)
def test_no_field_adds_a_header_or_a_recipient(
    subject: str, to_name: str, list_name: str, reply_to: str, in_reply_to: str, references: str,
    x_value: str,
) -> None:
    headers = {"List-Id": f"{list_name} <winter.hub.example.org>", "In-Reply-To": in_reply_to,
               "References": references, "X-Hub-Note": x_value}
    payload: EmailPayload = {"to": TO, "subject": subject, "to_name": to_name, "text": "hi\n",
                             "headers": {**headers, "Reply-To": reply_to}}
    try:
        _check(payload)
    except UnsafeHeaderError as e:
        # Reply-To is an address list: garbage the stdlib cannot parse is refused (the row
        # fails, moderators are told). Text fields never are: without it, the mail is built.
        assert "Reply-To" in str(e)
        _check({**payload, "headers": headers})


@settings(max_examples=200, deadline=None)
@given(name=hostile, txn=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=40))
@example(name='"Bcc: victim@example.org', txn="t")  # parseaddr made victim the From address
def test_the_from_name_and_message_id_inputs_cannot_add_a_header(name: str, txn: str) -> None:
    """`email.from` as an operator could write it (a name with anything in it, quoted)."""
    msg = _check({"to": TO, "subject": "s", "text": "t"}, from_header=f'"{name}" <hub@example.org>',
                 txn_id=txn)
    # The address in the brackets is who the mail is from, whatever the name holds.
    assert [a.addr_spec for a in msg["From"].addresses] == ["hub@example.org"]
    assert msg["Message-ID"] == f"<{txn}@example.org>"


@settings(max_examples=200, deadline=None)
@given(local=hostile)
def test_an_address_is_one_recipient_or_refused(local: str) -> None:
    address = f"{local}@example.org"
    payload: EmailPayload = {"to": address, "subject": "s", "text": "t"}
    if not is_address(address.strip()):
        with pytest.raises(UnsafeHeaderError):
            build_message(payload, txn_id="t", from_header=FROM, date=NOW)
        return
    _check(payload)


def test_an_injected_bcc_in_the_subject_and_name_stays_text() -> None:
    """The reported attack, as a stored row: the welcome email of cohort ``X\\r\\nBcc: ...``."""
    payload: EmailPayload = {
        "to": TO, "to_name": "Ada\r\nBcc: victim@example.org", "text": "hi\n",
        "subject": "Welcome to X\r\nBcc: victim@example.org\r\nX-Injected: yes",
    }
    built = build_message(payload, txn_id="w", from_header=FROM, date=NOW)
    assert b"\r\nBcc:" not in built.data and b"\r\nX-Injected:" not in built.data
    msg = _check(payload)
    assert str(msg["Subject"]) == "Welcome to X Bcc: victim@example.org X-Injected: yes"
    assert msg["To"].addresses[0].display_name == "Ada Bcc: victim@example.org"


@pytest.mark.parametrize("name", ["X-A\r\nBcc", "X-A: b", "Bcc ", "", "X-\u00e9"])
def test_a_bad_header_name_is_refused_by_the_builder_and_the_payload(name: str) -> None:
    with pytest.raises(UnsafeHeaderError):
        header_line(name, "v")
    with pytest.raises(ValueError):
        email_payload(to=TO, subject="s", text="t", headers={name: "v"})


@pytest.mark.parametrize("field", [
    {"to": "a@example.org\x00"}, {"to": "a\x0b@example.org"}, {"subject": "a\x00b"},
    {"subject": "a\u2028Bcc: v@example.org"}, {"to_name": "a\x85b"},
])
def test_the_payload_refuses_every_line_breaking_character(field: dict[str, Any]) -> None:
    base: dict[str, Any] = {"to": TO, "subject": "s", "text": "t", **field}
    with pytest.raises(UnsafeHeaderError) as e:
        email_payload(**base)
    # The message names the field and shows the value escaped, never a raw line break.
    assert "\n" not in str(e.value) and "\x00" not in str(e.value)


def test_an_unsafe_row_is_a_permanent_failure_not_a_retry() -> None:
    """The dispatcher marks a PermanentDeliveryError failed and tells the moderators."""
    payload: EmailPayload = {"to": "a@example.org\r\nRCPT TO:<victim@example.org>", "subject": "s",
                             "text": "t"}
    with pytest.raises(PermanentDeliveryError):
        build_message(payload, txn_id="t", from_header=FROM, date=NOW)


# -- through the hub's own email paths, to a real SMTP server -------------------------------------

HOSTILE_COHORT = "X\r\nBcc: victim@example.org\r\nX-Injected: yes"


@pytest.fixture
async def mail_rig(tmp_path: Path) -> AsyncIterator[tuple[Database, Outbox, Env, SmtpSink]]:
    db = await open_database(f"sqlite:///{tmp_path / 'hub.db'}")
    clock = SystemClock()
    outbox = Outbox(db, clock)
    sink = SmtpSink()
    sink.start()
    settings = settings_from_dict({
        "hub": {"data_dir": str(tmp_path / "hub")},
        "database": {"url": f"sqlite:///{tmp_path / 'hub.db'}"},
        "matrix": {"homeserver": "https://example.org", "user_id": "@hub:example.org", "password": "x",
                   "moderators": ["@lead:example.org"]},
        "email": sink_email(sink, **{"from": FROM}),
        "web": {"secret": "test-secret", "public_url": "https://hub.example.org"},
        "cohort": [{"slug": "winter", "name": "Winter", "timezone": "Europe/Berlin",
                    "start": "2027-01-11", "weeks": 12}],
    }, base=tmp_path, env={})
    async with db.transaction() as s:
        env = await load_env(s, outbox, clock, settings)
        await sync_config(s, env)
        # Straight into the database: the name check at entry is another layer; this is
        # about what the email builders do with such a name if it is there anyway.
        await s.execute(update(cohort_table).where(cohort_table.c.slug == "winter")
                        .values(name=HOSTILE_COHORT))
    yield db, outbox, env, sink
    sink.stop()
    await db.close()


async def _deliver(db: Database, outbox: Outbox, sink: SmtpSink, count: int) -> None:
    pool = SmtpPool(EmailSettings(enabled=True, sender=FROM, smtp_host=sink.hostname, smtp_port=sink.port,
                                  security="none", connections=1), SystemClock())
    sender = EmailSender(db, pool, SystemClock(), from_header=FROM)
    dispatcher = Dispatcher(db, outbox, SystemClock(), {EMAIL: sender}, poll_seconds=0.1)
    await dispatcher.open()
    task = asyncio.create_task(dispatcher.run())
    try:
        await sink.wait_for(count, timeout=15)
    finally:
        await dispatcher.stop(grace=2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pool.close()


def _assert_clean(mail: ReceivedMail, to: str) -> None:
    assert mail.rcpt_tos == (to,)  # the envelope: no extra recipient
    msg = _parse(mail.raw)
    names = {k.lower() for k in msg.keys()}
    assert "bcc" not in names and "x-injected" not in names and "cc" not in names
    # List mail (the welcome of an email-only member) adds its list headers, which hold
    # the cohort's name as one line of text.
    names -= {"list-id", "list-unsubscribe", "list-unsubscribe-post"}
    assert names == BASE - {"content-transfer-encoding"}, names  # multipart/alternative at the top
    assert [a.addr_spec for a in msg["To"].addresses] == [to]
    assert "Bcc: victim@example.org" in str(msg["Subject"])  # still there, as text


async def test_a_cohort_named_with_a_bcc_line_mails_only_the_member(
    mail_rig: tuple[Database, Outbox, Env, SmtpSink],
) -> None:
    db, outbox, env, sink = mail_rig
    async with db.transaction() as s:
        cohort = await get_cohort(s, "winter")
        assert cohort is not None and cohort.name == HOSTILE_COHORT
        await add_member(s, env, cohort, "mentee", Who(email="ada@example.org"), name="Ada",
                            email="ada@example.org")
    await _deliver(db, outbox, sink, 1)
    (mail,) = sink.messages
    _assert_clean(mail, "ada@example.org")
    assert str(_parse(mail.raw)["Subject"]).startswith("Welcome to X Bcc: victim@example.org")


async def test_the_48_hour_reminder_with_that_cohort_name_mails_only_the_member(
    mail_rig: tuple[Database, Outbox, Env, SmtpSink],
) -> None:
    db, outbox, env, sink = mail_rig
    async with db.transaction() as s:
        cohort = await get_cohort(s, "winter")
        assert cohort is not None
        await add_member(s, env, cohort, "mentee", Who(matrix_id="@ada:example.org"), name="Ada",
                            email="ada@example.org")
        # As if the lounge had been made and Ada invited three days ago, never joining.
        long_ago = env.now() - 3 * 86400
        await s.execute(update(hub_room_table).values(status="ready",
                                                      room_id="!" + hub_room_table.c.key + ":example.org"))
        await s.execute(update(room_member_table).where(room_member_table.c.user_id == "@ada:example.org")
                        .values(state="invited", invited_at=long_ago))
    keeper = RoomKeeper(db=db, outbox=outbox, clock=SystemClock(), provision=None,  # type: ignore[arg-type]
                        settings=lambda: env.settings, control_room=lambda: None)
    assert await keeper.send_reminders() == 1
    await _deliver(db, outbox, sink, 1)
    (mail,) = sink.messages
    _assert_clean(mail, "ada@example.org")
    assert "your invitations are waiting" in str(_parse(mail.raw)["Subject"])
