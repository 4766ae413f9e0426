"""MIME building: what a mail client parses out of the bytes the hub sends."""

from __future__ import annotations

import binascii
import email
import email.policy
import html as html_module
from datetime import UTC, datetime
from email.message import EmailMessage, MIMEPart

import pytest

from hub.email.message import build_message, message_id
from hub.email.payload import EmailPayload, email_payload

FROM = "Mentoring Hub <hub@example.org>"
NOW = datetime(2027, 1, 11, 9, 0, tzinfo=UTC)


def _parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def _content(part: MIMEPart | None) -> str:
    assert part is not None
    text = part.get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")


def test_digest_is_multipart_alternative_with_list_headers() -> None:
    # Like the digest, it shows its unsubscribe link itself (so no footer is added to either part).
    unsubscribe = "https://hub.example.org/unsubscribe/t0k3n"
    text = ("Week 3 — héllo Ada\n\nThis week's prompt: what surprised you?\n" * 20
            + f"Unsubscribe: {unsubscribe}\n")
    html = ("<h1>Week 3 — héllo</h1>\n" + "<p style=\"color:#333\">" + "x" * 2000 + "</p>\n"
            + f'<p><a href="{unsubscribe}">Unsubscribe</a></p>\n')
    payload = email_payload(
        to="ada@example.org", to_name="Ada Lövelace", subject="Winter 2027 — week 3 digest",
        text=text, html=html,
        headers={
            "List-Id": "Winter 2027 <winter-2027.hub.example.org>",
            "List-Unsubscribe": "<https://hub.example.org/unsubscribe/t0k3n>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    )
    built = build_message(payload, txn_id="abc123", from_header=FROM, date=NOW)
    assert built.envelope_from == "hub@example.org"
    assert built.recipient == "ada@example.org"
    assert not built.smtputf8
    assert b"\r\n" in built.data and b"\n" not in built.data.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in built.data.split(b"\r\n"))
    msg = _parse(built.data)
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["Message-ID"] == "<abc123@example.org>"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["List-Id"] == "Winter 2027 <winter-2027.hub.example.org>"
    assert msg["List-Unsubscribe"] == "<https://hub.example.org/unsubscribe/t0k3n>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert str(msg["Subject"]) == "Winter 2027 — week 3 digest"
    assert msg["To"].addresses[0].display_name == "Ada Lövelace"
    assert msg["To"].addresses[0].addr_spec == "ada@example.org"
    assert msg["From"].addresses[0].addr_spec == "hub@example.org"
    assert msg["Date"].datetime == NOW
    assert _content(msg.get_body(("plain",))) == text
    # Non-ASCII characters arrive as character references, which a browser shows as the same text.
    assert html_module.unescape(_content(msg.get_body(("html",)))) == html
    assert not msg.defects and all(not p.defects for p in msg.walk())


def _html_part(html: str) -> EmailMessage:
    payload = email_payload(to="d@example.org", subject="s", text="plain", html=html)
    part = _parse(build_message(payload, txn_id="h", from_header=FROM, date=NOW).data).get_body(("html",))
    assert isinstance(part, EmailMessage)
    return part


def test_html_with_non_ascii_text_goes_as_7bit_character_references() -> None:
    html = '<p class="p" style="margin: 0;">Hi Zoë · 日本 “quoted”</p>\n' * 40
    part = _html_part(html)
    assert part["Content-Transfer-Encoding"] == "7bit"
    body = _content(part)
    assert body.isascii() and "Zo&#235; &#183; &#26085;&#26412; &#8220;quoted&#8221;" in body
    assert html_module.unescape(body) == html
    # Smaller than quoted-printable, which spends =3D on every attribute's "=".
    assert len(body.encode()) < len(binascii.b2a_qp(html.encode(), istext=True))


def test_a_row_queued_with_non_ascii_html_is_sent_as_7bit_too() -> None:
    # Rows queued before email_payload made HTML ASCII carry it as UTF-8.
    row: EmailPayload = {"to": "e@example.org", "subject": "s", "text": "t", "html": "<p>Zoë</p>\n"}
    part = _parse(build_message(row, txn_id="o", from_header=FROM, date=NOW).data).get_body(("html",))
    assert part is not None and part["Content-Transfer-Encoding"] == "7bit"
    assert _content(part) == "<p>Zo&#235;</p>\n"


def test_non_ascii_inside_style_is_not_turned_into_references() -> None:
    # <style> does not decode references, so `content: "&#8594;"` would show literally.
    html = '<style>.a::after { content: "→"; }</style><p class="a">Zoë</p>\n'
    part = _html_part(html)
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert _content(part) == html


def test_html_with_a_line_too_long_for_7bit_stays_quoted_printable() -> None:
    html = "<p>" + "Zoë " * 300 + "</p>\n"
    part = _html_part(html)
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert html_module.unescape(_content(part)) == html


def test_message_id_is_stable_per_row_and_unique_across_rows() -> None:
    payload = email_payload(to="b@example.org", subject="s", text="t")
    first = _parse(build_message(payload, txn_id="row1", from_header=FROM, date=NOW).data)
    retry = _parse(build_message(payload, txn_id="row1", from_header=FROM,
                                 date=datetime(2027, 1, 12, tzinfo=UTC)).data)
    other = _parse(build_message(payload, txn_id="row2", from_header=FROM, date=NOW).data)
    assert first["Message-ID"] == retry["Message-ID"] == message_id("row1", FROM)
    assert other["Message-ID"] != first["Message-ID"]


def test_text_only_ascii_is_a_single_7bit_part() -> None:
    payload = email_payload(to="c@example.org", subject="Plan", text="Switch to mobile.\n")
    msg = _parse(build_message(payload, txn_id="t", from_header=FROM, date=NOW).data)
    assert msg.get_content_type() == "text/plain"
    assert msg["Content-Transfer-Encoding"] == "7bit"
    assert _content(msg) == "Switch to mobile.\n"


def test_ics_attachment_in_multipart_mixed() -> None:
    ics = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n"
    payload = email_payload(
        to="d@example.org", subject="Kick-off webinar", text="See the invite.", html="<p>See</p>",
        attachments=[
            {"filename": "kick-off.ics", "content_type": "text/calendar; method=REQUEST", "text": ics},
            {"filename": "résumé.bin", "content_type": "application/octet-stream",
             "base64": "AAEC/w=="},
        ],
    )
    msg = _parse(build_message(payload, txn_id="t2", from_header=FROM, date=NOW).data)
    assert msg.get_content_type() == "multipart/mixed"
    assert msg.get_body(("plain",)) is not None and msg.get_body(("html",)) is not None
    attachments = list(msg.iter_attachments())
    assert [a.get_filename() for a in attachments] == ["kick-off.ics", "résumé.bin"]
    cal = attachments[0]
    assert cal.get_content_type() == "text/calendar"
    assert cal.get_param("method") == "REQUEST"
    assert cal.get_content() == ics
    assert attachments[1].get_content() == b"\x00\x01\x02\xff"


def test_non_ascii_address_needs_smtputf8() -> None:
    payload = email_payload(to="zoë@exämple.org", subject="s", text="t")
    built = build_message(payload, txn_id="t3", from_header=FROM, date=NOW)
    assert built.smtputf8


@pytest.mark.parametrize(
    "kwargs",
    [
        {"to": "not-an-address"},
        {"to": "a@example.org, b@example.org"},
        {"subject": "two\r\nBcc: victim@example.org"},
        {"headers": {"Bcc": "victim@example.org"}},
        {"headers": {"From": "ceo@example.org"}},
        {"headers": {"List-Id": "x\nBcc: v@example.org"}},
        {"attachments": [{"filename": "a.ics", "content_type": "not a type", "text": "x"}]},
        {"attachments": [{"filename": "a.bin", "content_type": "application/pdf", "base64": "%%%"}]},
        {"attachments": [{"filename": "a.bin", "content_type": "application/pdf"}]},
    ],
)
def test_payload_rejects_injection_and_malformed_input(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"to": "a@example.org", "subject": "s", "text": "t"}
    base.update(kwargs)
    with pytest.raises(ValueError):
        email_payload(**base)  # type: ignore[arg-type]


def test_long_unsubscribe_url_stays_literal_on_the_wire() -> None:
    """Mail clients read List-Unsubscribe raw: an RFC 2047 encoded word breaks one-click."""
    url = "<https://hub.example.org/unsubscribe/" + "Ab9_-" * 30 + ">"
    payload = email_payload(to="ada@example.org", subject="Digest", text="hi",
                            headers={"List-Unsubscribe": url})
    raw = build_message(payload, txn_id="long", from_header=FROM, date=NOW).data
    assert b"List-Unsubscribe: " + url.encode() + b"\r\n" in raw
    assert b"=?utf-8?" not in raw.split(b"\r\n\r\n", 1)[0].split(b"List-Unsubscribe:")[1]
    assert _parse(raw)["List-Unsubscribe"] == url
