"""Turn one email row into the bytes sent over SMTP: built once per attempt, cheaply.

Structure (RFC 2046)::

    multipart/mixed                      only when there are attachments
    ├── multipart/alternative            only when there is HTML
    │   ├── text/plain; charset=utf-8
    │   └── text/html; charset=utf-8
    └── attachment(s) (e.g. text/calendar .ics)

Headers, including encoded words and folding, come from the standard
library's ``email`` package. Bodies are encoded with ``binascii`` (C) and the
parts framed here: the stdlib generator re-scans every body line and searches
it for the boundary, which costs more than the SMTP exchange itself on a
digest-sized message. The boundary is derived from the row's ``txn_id`` and
starts with ``=_``, which neither quoted-printable nor base64 output can
contain at the start of a line, so no scan is needed. Tests parse the result
back with the stdlib to prove it is the same message.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.utils import encode_rfc2231, format_datetime, formataddr, parseaddr
from functools import lru_cache

from hub.email.payload import ALLOWED_HEADERS, EmailPayload, ascii_html

__all__ = ["BuiltMessage", "build_message", "message_id", "sender_address"]

_POLICY = policy.SMTP  # CRLF line endings, RFC 2047 encoded words where needed
_CRLF = b"\r\n"


@dataclass(frozen=True)
class BuiltMessage:
    envelope_from: str
    recipient: str
    data: bytes
    smtputf8: bool  # a non-ASCII address needs the SMTPUTF8 extension


@lru_cache(maxsize=64)
def sender_address(from_header: str) -> str:
    """The bare address in `email.from` ("Hub <hub@example.org>" -> "hub@example.org")."""
    return parseaddr(from_header)[1]


def message_id(txn_id: str, from_header: str) -> str:
    """Stable across retries: the row's txn_id at the sender's domain."""
    domain = sender_address(from_header).rpartition("@")[2] or "localhost"
    return f"<{txn_id}@{domain}>"


def _lines(text: str) -> bytes:
    """UTF-8 with bare LF line ends (CR and CRLF folded), ready for encoding."""
    return text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")


def _text_part(subtype: str, text: str) -> bytes:
    raw = _lines(text)
    if raw.isascii() and max(map(len, raw.split(b"\n"))) <= 900:
        cte = b"7bit"
        body = raw
    else:
        # Quoted-printable keeps mostly-ASCII text readable in a raw view and in
        # spam filters' eyes; b2a_qp is the C implementation.
        cte = b"quoted-printable"
        body = binascii.b2a_qp(raw, istext=True)
    # No CRLF is added at the end: the one before the next boundary belongs
    # to the boundary (RFC 2046), so the text keeps its own last line end.
    body = body.replace(b"\n", _CRLF)
    return (
        b"Content-Type: text/" + subtype.encode("ascii") + b'; charset="utf-8"\r\n'
        b"Content-Transfer-Encoding: " + cte + b"\r\n\r\n" + body
    )


def _attachment_part(filename: str, content_type: str, data: bytes) -> bytes:
    if filename.isascii() and not any(c in filename for c in '"\\'):
        disposition = f'attachment; filename="{filename}"'
    else:
        # RFC 2231 for names a quoted string cannot carry.
        disposition = f"attachment; filename*={encode_rfc2231(filename, 'utf-8')}"
    body = base64.encodebytes(data).replace(b"\n", _CRLF)
    return (
        _header("Content-Type", content_type)
        + _header("Content-Disposition", disposition)
        + b"Content-Transfer-Encoding: base64\r\n\r\n"
        + body
    )


def _multipart(subtype: str, boundary: bytes, parts: list[bytes]) -> bytes:
    out = [b"Content-Type: multipart/" + subtype.encode("ascii") + b'; boundary="' + boundary
           + b'"\r\n\r\n']
    for part in parts:
        out.append(b"--" + boundary + _CRLF + part + _CRLF)
    out.append(b"--" + boundary + b"--" + _CRLF)
    return b"".join(out)


@lru_cache(maxsize=4096)
def _header(name: str, value: str) -> bytes:
    """One header line; the stdlib's parser and folder only where they are needed.

    The header registry parses every value it is given (hundreds of
    microseconds each); a short ASCII value needs neither encoding nor folding.
    Cached: a digest's subject and the From line repeat for thousands of rows.
    """
    if value.isascii() and len(name) + len(value) < 76:
        return f"{name}: {value}\r\n".encode("ascii")
    # An ASCII value with a word too long to fold (a List-Unsubscribe URL) must
    # stay literal: the folder would turn it into an RFC 2047 encoded word, which
    # mail clients do not decode in URL headers, breaking one-click unsubscribe.
    # RFC 5322 allows lines up to 998 characters.
    if value.isascii() and len(name) + len(value) < 990 and max(map(len, value.split())) > 70:
        return f"{name}: {value}\r\n".encode("ascii")
    folded: str = _POLICY.header_factory(name, value).fold(policy=_POLICY)
    return folded.encode("ascii")


def _headers(payload: EmailPayload, *, txn_id: str, from_header: str, date: datetime) -> bytes:
    to = payload["to"]
    name = payload.get("to_name")
    # formataddr quotes a name that needs it and RFC 2047-encodes a non-ASCII one.
    to_header = formataddr((name, to)) if name else to
    lines = [
        _header("From", from_header),
        _header("To", to_header),
        _header("Subject", payload["subject"]),
        _header("Date", format_datetime(date)),
        _header("Message-ID", message_id(txn_id, from_header)),
        b"MIME-Version: 1.0\r\n",
        # RFC 3834: tells auto-responders (vacation replies) not to answer.
        b"Auto-Submitted: auto-generated\r\n",
    ]
    for key, value in (payload.get("headers") or {}).items():
        if key.lower() in ALLOWED_HEADERS or key.lower().startswith("x-"):
            lines.append(_header(key, value))
    return b"".join(lines)


def build_message(
    payload: EmailPayload, *, txn_id: str, from_header: str, date: datetime
) -> BuiltMessage:
    boundary = f"=_hub_{txn_id}".encode("ascii")
    text_part = _text_part("plain", payload["text"])
    html = payload.get("html")  # rows queued before email_payload made it ASCII are made so here
    body = (
        _multipart("alternative", boundary + b"_alt", [text_part, _text_part("html", ascii_html(html))])
        if html
        else text_part
    )
    attachments = payload.get("attachments") or []
    if attachments:
        parts = [body]
        for a in attachments:
            data = a["text"].encode("utf-8") if "text" in a else base64.b64decode(a["base64"])
            ctype = a["content_type"]
            if "text" in a and "charset=" not in ctype.lower():
                ctype += '; charset="utf-8"'
            parts.append(_attachment_part(a["filename"], ctype, data))
        body = _multipart("mixed", boundary + b"_mix", parts)
    head = _headers(payload, txn_id=txn_id, from_header=from_header, date=date)
    envelope_from = sender_address(from_header)
    recipient = payload["to"].strip()
    return BuiltMessage(
        envelope_from=envelope_from,
        recipient=recipient,
        data=head + body,
        smtputf8=not (envelope_from.isascii() and recipient.isascii()),
    )
