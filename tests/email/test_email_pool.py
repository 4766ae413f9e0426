"""The SMTP pool against a real SMTP server (aiosmtpd): reuse, recycling, pacing, errors."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.clock import SystemClock
from hub.config import EmailSettings
from hub.devserver.smtp import SmtpSink
from hub.email.message import BuiltMessage, build_message
from hub.email.payload import email_payload
from hub.email.pool import MAILBOX_FULL_RETRY, SmtpPool, dot_stuffed, refusal_kind
from hub.errors import (
    MessageRejectedError,
    PermanentDeliveryError,
    RecipientRejectedError,
    TemporaryDeliveryError,
)

FROM = "Hub <hub@example.org>"


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


def _settings(sink: SmtpSink, **kw: object) -> EmailSettings:
    base: dict[str, object] = dict(enabled=True, sender=FROM, smtp_host=sink.hostname,
                                   smtp_port=sink.port, security="none", connections=2)
    base.update(kw)
    return EmailSettings(**base)  # type: ignore[arg-type]


def _msg(to: str, n: int = 0) -> BuiltMessage:
    return build_message(email_payload(to=to, subject=f"hello {n}", text=f"body {n}\n"),
                         txn_id=f"t{n}", from_header=FROM, date=datetime.now(UTC))


async def test_connections_are_reused_then_recycled(sink: SmtpSink) -> None:
    pool = SmtpPool(_settings(sink), SystemClock(), recycle_after=10)
    await asyncio.gather(*(pool.send(_msg(f"u{i}@example.org", i)) for i in range(40)))
    mails = await sink.wait_for(40)
    assert sorted(m.rcpt_tos[0] for m in mails) == sorted(f"u{i}@example.org" for i in range(40))
    # 2 connections, each replaced after 10 messages: 40 messages need 4 connects, not 40
    # (5 when the two connections' shares come out uneven, leaving one part-used).
    assert 4 <= pool.connects <= 5
    assert pool.healthy is True
    await pool.close()


async def test_auth_when_username_is_set() -> None:
    with SmtpSink(credentials=("hub", "s3cret-pass")) as sink:
        pool = SmtpPool(_settings(sink, username="hub", password="s3cret-pass"), SystemClock())
        await pool.send(_msg("a@example.org"))
        assert (await sink.wait_for(1))[0].rcpt_tos == ("a@example.org",)
        await pool.close()
        wrong = SmtpPool(_settings(sink, username="hub", password="wrong"), SystemClock())
        with pytest.raises(TemporaryDeliveryError, match="535"):
            await wrong.send(_msg("b@example.org"))
        await wrong.close()


async def test_max_per_second_paces_all_connections(sink: SmtpSink) -> None:
    pool = SmtpPool(_settings(sink, connections=4, max_per_second=20.0), SystemClock())
    began = time.monotonic()
    await asyncio.gather(*(pool.send(_msg(f"p{i}@example.org", i)) for i in range(11)))
    # 11 sends at 20/s: the last may start 0.5 s after the first, not sooner.
    assert time.monotonic() - began >= 0.48
    await pool.close()


@pytest.mark.parametrize("stage", ["RCPT", "DATA"])
async def test_4xx_is_temporary_5xx_is_a_rejected_recipient(sink: SmtpSink, stage: str) -> None:
    def reply(rcpt: str) -> str | None:
        return ("451 4.3.0 try later" if rcpt.startswith("busy") else
                "550 5.1.1 no such user" if rcpt.startswith("gone") else None)

    if stage == "RCPT":
        sink.fault = lambda rcpt, attempt: reply(rcpt)
    else:  # the server takes the whole message, then refuses it
        sink.data_fault = lambda rcpts: reply(rcpts[0])
    pool = SmtpPool(_settings(sink, connections=1), SystemClock())
    with pytest.raises(TemporaryDeliveryError, match=f"451 at {stage}"):
        await pool.send(_msg("busy@example.org"))
    with pytest.raises(RecipientRejectedError, match=f"550 at {stage}") as info:
        await pool.send(_msg("gone@example.org"))
    assert info.value.code == 550
    # The connection survived both refusals (RSET) and still delivers.
    await pool.send(_msg("fine@example.org"))
    assert [m.rcpt_tos for m in await sink.wait_for(1)] == [("fine@example.org",)]
    assert sink.count == 1 and pool.connects == 1
    await pool.close()


@pytest.mark.parametrize(("code", "text", "stage", "kind"), [
    (550, "5.1.1 no such user", "RCPT", "recipient"),
    (550, "5.1.1 no such user", "DATA", "recipient"),
    (550, "5.2.1 mailbox disabled", "DATA", "recipient"),
    (552, "5.2.2 mailbox full", "RCPT", "mailbox-full"),
    (552, "5.2.3 message too long", "DATA", "message"),
    (554, "5.7.1 rejected as spam", "DATA", "message"),
    (554, "5.7.1 client host blocked using zen.spamhaus.org", "RCPT", "message"),
    (550, "5.6.0 content rejected", "DATA", "message"),
    (552, "5.3.4 message size exceeds fixed limit", "DATA", "message"),
    (550, "no such user here", "RCPT", "recipient"),  # no enhanced code: as before
    (554, "Transaction failed", "DATA", "message"),  # the address was accepted at RCPT
    (553, "5.1.8 sender domain does not exist", "MAIL FROM", "message"),
    (530, "5.7.0 Authentication required", "MAIL FROM", "session"),
    (550, "5.5.0 syntax", "RCPT", "recipient"),
    (550, "5.1.1\n5.1.1 more lines", "RCPT", "recipient"),
])
def test_refusals_are_told_apart_by_enhanced_code_and_stage(
        code: int, text: str, stage: str, kind: str) -> None:
    assert refusal_kind(code, text, stage) == kind


async def test_spam_at_data_is_the_message_not_the_recipient(sink: SmtpSink) -> None:
    """The defect: a DATA-stage 554 5.7.1 was a RecipientRejectedError, so the address was suppressed."""
    sink.data_fault = lambda rcpts: "554 5.7.1 rejected as spam"
    pool = SmtpPool(_settings(sink, connections=1), SystemClock())
    with pytest.raises(MessageRejectedError, match=r"554 at DATA: 5\.7\.1 rejected as spam") as info:
        await pool.send(_msg("ada@example.org"))
    assert not isinstance(info.value, RecipientRejectedError)
    assert (info.value.code, info.value.enhanced) == (554, "5.7.1")
    sink.data_fault = lambda rcpts: "552 5.2.2 mailbox full"
    with pytest.raises(TemporaryDeliveryError, match=r"552 at DATA: 5\.2\.2") as full:
        await pool.send(_msg("ada@example.org", 1))
    assert full.value.retry_after == MAILBOX_FULL_RETRY
    sink.data_fault = None
    await pool.send(_msg("ada@example.org", 2))  # the same connection, after RSET
    assert [m.subject for m in await sink.wait_for(1)] == ["hello 2"] and pool.connects == 1
    await pool.close()


async def test_a_refused_sender_is_a_message_problem_and_auth_required_is_temporary(
        sink: SmtpSink) -> None:
    pool = SmtpPool(_settings(sink, connections=1), SystemClock())
    sink.mail_fault = lambda sender: "550 5.7.1 sender address rejected by policy"
    with pytest.raises(MessageRejectedError, match="550 at MAIL FROM"):
        await pool.send(_msg("ada@example.org"))
    sink.mail_fault = lambda sender: "530 5.7.0 Authentication required"
    with pytest.raises(TemporaryDeliveryError, match="530 at MAIL FROM"):
        await pool.send(_msg("ada@example.org"))
    sink.mail_fault = None
    await pool.send(_msg("ada@example.org", 1))
    assert [m.subject for m in await sink.wait_for(1)] == ["hello 1"]
    await pool.close()


async def test_server_down_is_temporary_pauses_and_recovers(sink: SmtpSink) -> None:
    pool = SmtpPool(_settings(sink), SystemClock())
    await pool.send(_msg("before@example.org"))
    sink.stop()
    results = await asyncio.gather(*(pool.send(_msg(f"d{i}@example.org", i)) for i in range(2)),
                                   return_exceptions=True)
    assert all(isinstance(r, TemporaryDeliveryError) for r in results), results
    assert all(r.retry_after is not None and r.retry_after > 0 for r in results
               if isinstance(r, TemporaryDeliveryError))
    assert pool.healthy is False and pool.pause.down
    assert await pool.probe() is False
    sink.start()
    await pool.pause.wait()
    await pool.send(_msg("after@example.org"))
    assert pool.healthy is True and not pool.pause.down
    assert await pool.probe() is True
    await pool.close()


async def test_non_ascii_address_goes_out_with_smtputf8(sink: SmtpSink) -> None:
    pool = SmtpPool(_settings(sink, connections=1), SystemClock())
    await pool.send(_msg("zoë@exämple.org"))
    await pool.send(_msg("plain@example.org"))
    mails = await sink.wait_for(2)
    assert [m.rcpt_tos for m in mails] == [("zoë@exämple.org",), ("plain@example.org",)]
    assert mails[0].subject == "hello 0"
    await pool.close()


async def test_an_address_that_would_break_out_of_the_smtp_command_is_refused(sink: SmtpSink) -> None:
    """MAIL/RCPT are written by hand (no second address parse), so the pool itself must refuse
    anything that could end the command line or add a second recipient."""
    pool = SmtpPool(_settings(sink, connections=1), SystemClock())
    good = _msg("a@example.org")
    for bad in ("a@example.org>\r\nRCPT TO:<evil@example.org", "a b@example.org", "<a@example.org>"):
        with pytest.raises(PermanentDeliveryError, match="envelope address"):
            await pool.send(dataclasses.replace(good, recipient=bad))
    with pytest.raises(PermanentDeliveryError, match="envelope address"):
        await pool.send(dataclasses.replace(good, envelope_from="hub@example.org>\r\nDATA"))
    await pool.send(good)  # and the connection is still usable
    mails = await sink.wait_for(1)
    await asyncio.sleep(0.2)
    assert [m.rcpt_tos for m in sink.messages] == [("a@example.org",)] and len(mails) == 1
    await pool.close()


# -- DATA: the message's own CRLFs, dots doubled --------------------------------------------------------

# Lines that start or end with dots, each ended mostly by CRLF, sometimes by a bare CR or LF.
_LINES = st.lists(st.tuples(st.sampled_from([b"", b".", b"..", b".x", b"a.", b"x", b"\xc3\xa9"]),
                            st.sampled_from([b"\r\n"] * 6 + [b"\r", b"\n", b""])), min_size=1, max_size=8)


@settings(max_examples=400, deadline=None)
@given(_LINES)
def test_dot_stuffed_is_what_aiosmtplib_would_send(lines: list[tuple[bytes, bytes]]) -> None:
    data = b"".join(text + end for text, end in lines)
    mine = dot_stuffed(data)
    bare = data.replace(b"\r\n", b"")
    if data.endswith(b"\r\n") and b"\r" not in bare and b"\n" not in bare:
        assert mine == PERIOD_REGEX.sub(b"..", normalize_message_line_endings(data))
    else:
        assert mine is None  # such a message goes through aiosmtplib's own data()


async def test_lines_of_dots_arrive_exactly_as_built(sink: SmtpSink) -> None:
    text = ".\n..\n.hidden line\nend.\n. \n"
    message = build_message(email_payload(to="d@example.org", subject="dots", text=text, html="<p>.</p>\n"),
                            txn_id="dots", from_header=FROM, date=datetime.now(UTC))
    assert dot_stuffed(message.data) is not None  # built messages take the fast path
    pool = SmtpPool(_settings(sink), SystemClock())
    await pool.send(message)
    # A message with bare LFs (none that build_message makes) is normalised on the way.
    bare = dataclasses.replace(message, data=message.data.replace(b"\r\n", b"\n"))
    await pool.send(bare)
    first, second = await sink.wait_for(2)
    assert first.raw == message.data  # the server undid exactly the dot-stuffing, nothing else
    assert second.raw == message.data
    assert first.text == text, repr(first.text)
    await pool.close()
