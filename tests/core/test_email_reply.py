"""Replies by email, the pure parts: address tokens, what is kept out, what is posted."""

from __future__ import annotations

import base64
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest

from hub.core.email_reply import MAX_REPLY_CHARS, kept_out, reply_content, reply_text
from hub.core.tokens import AddressTokenSigner, address_token, bounce_address, reply_address
from hub.errors import LinkTokenError

EVE = "eve@example.org"


def mail(text: str | None = "Hello", *, sender: str = f"Eve <{EVE}>", html: str | None = None,
         headers: dict[str, str] | None = None, attachments: int = 0) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "reply+x@hub.example.org"
    msg["Subject"] = "Re: your pair room"
    for k, v in (headers or {}).items():
        msg[k] = v
    if text is not None:
        msg.set_content(text)
        if html is not None:
            msg.add_alternative(html, subtype="html")
    elif html is not None:
        msg.set_content(html, subtype="html")
    for i in range(attachments):
        msg.add_attachment(b"\x89PNG...", maintype="image", subtype="png", filename=f"p{i}.png")
    # Round-trip through bytes, as the listener stores it.
    parsed = BytesParser(policy=policy.default).parsebytes(msg.as_bytes())
    assert isinstance(parsed, EmailMessage)
    return parsed


# -- tokens -------------------------------------------------------------------------------------


def test_reply_token_round_trip_and_fits_an_address() -> None:
    signer = AddressTokenSigner("s3cret")
    token = signer.reply(17, 4242)
    claims = signer.verify_reply(token)
    assert (claims.member_id, claims.room_pk) == (17, 4242)
    address = reply_address(token, "hub.example.org")
    assert len(address.split("@")[0]) <= 64  # RFC 5321 local-part limit
    assert token == token.lower()
    # A mail system that upper-cases the local part changes nothing.
    assert signer.verify_reply(token.upper()) == claims
    assert address_token(address.upper(), "hub.example.org") == ("reply", token.upper())


def test_bounce_token_names_the_outbox_row() -> None:
    signer = AddressTokenSigner("s3cret")
    for seq in (1, 2**32 + 5, 2**40):
        assert signer.verify_bounce(signer.bounce(seq)) == seq
    address = bounce_address(signer.bounce(7), "hub.example.org")
    assert address_token(address, "hub.example.org") == ("bounce", signer.bounce(7))


@pytest.mark.parametrize("mutate", [
    lambda t: t[:-1] + ("a" if t[-1] != "a" else "b"),  # tampered
    lambda t: t[1:],  # truncated
    lambda t: t + "a",  # too long
    lambda t: "",
    lambda t: t.replace(t[0], "!"),  # not base32
])
def test_tampered_tokens_are_refused(mutate: object) -> None:
    signer = AddressTokenSigner("s3cret")
    token = signer.reply(1, 2)
    with pytest.raises(LinkTokenError):
        signer.verify_reply(mutate(token))  # type: ignore[operator]


def test_tokens_do_not_cross_purposes_or_secrets() -> None:
    signer = AddressTokenSigner("s3cret")
    with pytest.raises(LinkTokenError, match="wrong purpose"):
        signer.verify_bounce(signer.reply(1, 2))
    with pytest.raises(LinkTokenError, match="wrong purpose"):
        signer.verify_reply(signer.bounce(5))
    with pytest.raises(LinkTokenError, match="signature"):
        AddressTokenSigner("other").verify_reply(signer.reply(1, 2))
    # A forged body with a valid-looking MAC length is still a bad signature.
    raw = bytearray(base64.b32decode(signer.reply(1, 2).upper()))
    raw[5] ^= 1
    with pytest.raises(LinkTokenError):
        signer.verify_reply(base64.b32encode(bytes(raw)).decode().lower())


def test_address_token_reads_only_our_domain_and_kinds() -> None:
    assert address_token("reply+abc@other.example", "hub.example.org") is None
    assert address_token("hub@hub.example.org", "hub.example.org") is None
    assert address_token("admin+abc@hub.example.org", "hub.example.org") is None
    assert address_token("<Reply+abc@HUB.example.org>", "hub.example.org") == ("reply", "abc")


# -- kept out -------------------------------------------------------------------------------


def test_a_persons_own_reply_is_kept_in() -> None:
    assert kept_out(mail(), envelope_from=EVE, person_addresses=[EVE]) is None
    # Either of her addresses (the roster's, a confirmed replacement) may be the From.
    assert kept_out(mail(sender="Eve <EVE@Example.org>"), envelope_from="x@y.org",
                    person_addresses=["new@example.org", EVE]) is None


@pytest.mark.parametrize(("headers", "sender", "envelope", "why"), [
    ({}, "mallory@example.net", "mallory@example.net", "not the person"),
    ({"Auto-Submitted": "auto-replied"}, EVE, EVE, "Auto-Submitted"),
    ({"Auto-Submitted": "auto-generated; owner-email=x"}, EVE, EVE, "Auto-Submitted"),
    ({"Precedence": "bulk"}, EVE, EVE, "Precedence"),
    ({"Precedence": "list"}, EVE, EVE, "Precedence"),
    ({"Precedence": "junk"}, EVE, EVE, "Precedence"),
    ({"X-Autoreply": "yes"}, EVE, EVE, "out-of-office"),
    ({"X-Auto-Response-Suppress": "All"}, EVE, EVE, "out-of-office"),
    ({"Subject": "Out of Office: back Monday"}, EVE, EVE, "out-of-office"),
    ({"Subject": "Automatic reply: Re: your plan"}, EVE, EVE, "out-of-office"),
    ({}, "MAILER-DAEMON@example.org", "", "mail system"),
    ({}, EVE, "postmaster@example.org", "mail system"),
])
def test_automatic_and_foreign_mail_is_kept_out(headers: dict[str, str], sender: str, envelope: str,
                                                why: str) -> None:
    subject = headers.pop("Subject", None)
    msg = mail(sender=sender, headers=headers)
    if subject:
        msg.replace_header("Subject", subject)
    reason = kept_out(msg, envelope_from=envelope, person_addresses=[EVE])
    assert reason is not None and why in reason, reason


def test_auto_submitted_no_is_a_person() -> None:
    msg = mail(headers={"Auto-Submitted": "no", "Precedence": "first-class"})
    assert kept_out(msg, envelope_from=EVE, person_addresses=[EVE]) is None


# -- what is posted ----------------------------------------------------------------------


def test_quoted_history_and_signature_are_cut() -> None:
    text = ("Thursday works.\nSee you then!\n\n-- \nEve Example\nMentee, Spring 2027\n\n"
            "On Mon, 7 Dec 2026 at 10:00, Hub <hub@example.org> wrote:\n> Ada wrote: are you free?\n")
    got = reply_text(mail(text))
    assert got.text == "Thursday works.\nSee you then!"
    assert (got.left_out, got.cut) == (0, False)


def test_outlook_style_history_is_cut() -> None:
    text = ("Yes please.\n\n________________________________\nFrom: Hub <hub@example.org>\n"
            "Sent: Monday, December 7, 2026 10:00 AM\nTo: Eve\nSubject: Your pair room\n\nAda wrote...\n")
    assert reply_text(mail(text)).text == "Yes please."


def test_html_only_mail_becomes_text() -> None:
    html = ("<html><head><style>p{color:red}</style></head><body><p>See you <b>Thursday</b>.</p>"
            "<blockquote>old words</blockquote></body></html>")
    got = reply_text(mail(None, html=html))
    assert "See you Thursday." in got.text and "color" not in got.text and "<" not in got.text


def test_attachments_are_counted_not_posted() -> None:
    got = reply_text(mail("Here is my CV.", attachments=2))
    assert got.text == "Here is my CV." and got.left_out == 2
    content = reply_content("Eve", got, "@ada:example.org")
    assert "2 attachments left out" in content["body"]
    assert content["m.mentions"] == {"user_ids": ["@ada:example.org"]}


def test_long_replies_are_cut() -> None:
    got = reply_text(mail("word " * (MAX_REPLY_CHARS // 2)))
    assert got.cut and len(got.text) <= MAX_REPLY_CHARS + 1


def test_reply_content_is_m_text_and_escapes_what_was_typed() -> None:
    got = reply_text(mail('<img src=x onerror=alert(1)> [x](javascript:alert(1))'))
    content = reply_content("Eve <b>", got, None)
    assert content["msgtype"] == "m.text"
    assert content["body"].startswith("**Eve <b>** (by email): <img")
    assert "<img" not in content["formatted_body"] and "&lt;img" in content["formatted_body"]
    assert content["formatted_body"].startswith("<strong>Eve &lt;b&gt;</strong> (by email): ")
    assert content["m.mentions"] == {}  # a lounge reply mentions nobody
