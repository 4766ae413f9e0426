"""Turn one email row into the bytes sent over SMTP: built once per attempt, cheaply.

Structure (RFC 2046)::

    multipart/mixed                      only when there are attachments
    ├── multipart/alternative            only when there is HTML
    │   ├── text/plain; charset=utf-8
    │   └── text/html; charset=utf-8
    └── attachment(s) (e.g. text/calendar .ics)

Every header line, the MIME parts' included, is written by `header_line`:
it folds CR, LF and other control characters in a value to a space, refuses
them in a header name or an address (`UnsafeHeaderError`), and checks that
what it wrote is exactly one header, so nothing a cohort or person name
carries can add a `Bcc:`. Encoded words and folding come from the standard
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
import re
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import HeaderRegistry
from email.utils import encode_rfc2231, format_datetime, getaddresses
from functools import lru_cache

from hub.email.payload import (
    ALLOWED_HEADERS,
    EmailPayload,
    ascii_html,
    check_address,
    check_header_name,
    fold_header_text,
    is_address,
    split_mailbox,
)
from hub.errors import UnsafeHeaderError

__all__ = ["BuiltMessage", "build_message", "header_line", "message_id", "sender_address"]

_POLICY = policy.SMTP  # CRLF line endings, RFC 2047 encoded words where needed
# Every header as unstructured text: the folder never parses (and rewrites) a value's syntax.
_UNSTRUCTURED = HeaderRegistry(use_default_map=False)
_ADDRESS_HEADERS = frozenset({"from", "to", "reply-to"})
_CRLF = b"\r\n"
_BLANK_CONTINUATION = re.compile(rb"\r\n[ \t]+(?=\r\n)")


@dataclass(frozen=True)
class BuiltMessage:
    envelope_from: str
    recipient: str
    data: bytes
    smtputf8: bool  # a non-ASCII address needs the SMTPUTF8 extension


@lru_cache(maxsize=64)
def sender_address(from_header: str) -> str:
    """The bare address in `email.from` ("Hub <hub@example.org>" -> "hub@example.org").

    Read by `split_mailbox`, never `parseaddr`: see there why.
    """
    return split_mailbox(from_header)[1]


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
        header_line("Content-Type", f'text/{subtype}; charset="utf-8"')
        + header_line("Content-Transfer-Encoding", cte.decode("ascii")) + _CRLF + body
    )


def _attachment_part(filename: str, content_type: str, data: bytes) -> bytes:
    if filename.isascii() and not any(c in filename for c in '"\\'):
        disposition = f'attachment; filename="{filename}"'
    else:
        # RFC 2231 for names a quoted string cannot carry.
        disposition = f"attachment; filename*={encode_rfc2231(filename, 'utf-8')}"
    body = base64.encodebytes(data).replace(b"\n", _CRLF)
    return (
        header_line("Content-Type", content_type)
        + header_line("Content-Disposition", disposition)
        + header_line("Content-Transfer-Encoding", "base64") + _CRLF
        + body
    )


def _multipart(subtype: str, boundary: bytes, parts: list[bytes]) -> bytes:
    out = [header_line("Content-Type", f'multipart/{subtype}; boundary="{boundary.decode("ascii")}"')
           + _CRLF]
    for part in parts:
        out.append(b"--" + boundary + _CRLF + part + _CRLF)
    out.append(b"--" + boundary + b"--" + _CRLF)
    return b"".join(out)


@lru_cache(maxsize=4096)
def header_line(name: str, value: str) -> bytes:
    """One header line, the only way one is written.

    CR, LF and the other controls in `value` become a space (`fold_header_text`):
    they can only come from untrusted text (a cohort named ``X\\r\\nBcc: ...``),
    and dropping the mail over one would let that name stop every welcome. A bad
    `name` is refused: names are the hub's own. Cached: a digest's subject and the
    From line repeat for thousands of rows.

    An ASCII value is written as it is, folded only at its own blanks (unfolding gives
    back the same value). Address headers reach here ASCII (see `_mailbox`), so the
    stdlib never re-parses them: its address folder decodes an encoded display name and
    can write it back unquoted, turning a name ``Bcc: victim@...`` into an address.
    A non-ASCII value is folded by the stdlib as unstructured text (encoded words).
    """
    check_header_name(name)
    value = fold_header_text(value)
    if value.isascii() or name.lower() in _ADDRESS_HEADERS:
        # The only non-ASCII an address header can hold is an address (names are encoded
        # by `_mailbox`): RFC 6532 writes it as raw UTF-8, sent with SMTPUTF8.
        return _one_header(name, _fold_literal(name, value))
    try:
        folded: str = _UNSTRUCTURED(name, value).fold(policy=_POLICY)
    except Exception as e:  # never seen; a stdlib parser bug must not become a retry loop
        raise UnsafeHeaderError(f"{name} header", value) from e
    # The folder can end a value that has trailing non-ASCII blanks with a continuation
    # line of blanks alone; some readers take a blank-looking line for the end of the
    # header block. It only ever unfolds to whitespace, so it is dropped.
    return _one_header(name, _BLANK_CONTINUATION.sub(b"", folded.encode("ascii")))


def _fold_literal(name: str, value: str) -> bytes:
    """`Name: value` with CRLF inserted before some of the value's own spaces (RFC 5322 2.2.3).

    Lines aim at 78 characters; a longer word (a List-Unsubscribe URL) stays whole, as
    mail clients read such headers raw and would not decode an encoded word in them.
    """
    if len(name) + len(value) < 77:
        return f"{name}: {value}\r\n".encode()
    words = value.split(" ")
    lines: list[str] = []
    line = f"{name}: {words[0]}"
    for word in words[1:]:
        if word and len(line) + 1 + len(word) > 78 and line.strip(" \t"):
            lines.append(line)
            line = " " + word
        else:
            line += " " + word
    lines.append(line)
    if max(map(len, lines)) > 998:  # RFC 5322's hard limit
        raise UnsafeHeaderError(f"{name} header", value)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _one_header(name: str, line: bytes) -> bytes:
    """`line` if it is exactly one header field: a last resort should a folder ever misbehave.

    Every CRLF inside must start a continuation (space or tab, then more than blanks),
    and no bare CR, LF or NUL may appear, or a reader could see a second header
    or the end of the header block.
    """
    body = line[:-2]
    if (line.endswith(_CRLF) and line.startswith(name.encode("ascii") + b":")
            and b"\r" not in body and b"\n" not in body and b"\0" not in body):
        return line  # one physical line: the common case, checked without splitting
    first, *rest = body.split(_CRLF)
    if not (line.endswith(_CRLF) and first.startswith(name.encode("ascii") + b":")
            and b"\0" not in body
            and not any(b"\r" in p or b"\n" in p for p in (first, *rest))
            and all(p[:1] in (b" ", b"\t") and p.strip() for p in rest)):
        raise UnsafeHeaderError(f"{name} header", line.decode("utf-8", "replace"))
    return line


# RFC 5322 specials in a display name make it a quoted string; inside it, \\ and " are escaped.
_SPECIALS = re.compile(r'[][\\()<>@,:;".]')
_QUOTED = re.compile(r'[\\"]')


def _display_name(name: str) -> str:
    """A display name as a phrase that can only be read back as that name.

    ASCII: formataddr's quoting (a quoted string where specials need it). Otherwise
    base64 encoded words of at most 75 characters (RFC 2047), which a reader decodes
    into the name, never into syntax.
    """
    chunks: list[str] = []
    if len(name.encode("utf-8")) <= 45:
        chunks.append(name)
    for ch in name if not chunks else "":
        if chunks and len((chunks[-1] + ch).encode("utf-8")) <= 45:
            chunks[-1] += ch
        else:
            chunks.append(ch)
    return " ".join(f"=?utf-8?b?{base64.b64encode(c.encode('utf-8')).decode('ascii')}?=" for c in chunks)


def _mailbox(name: str, address: str) -> str:
    """`Name <address>` in ASCII, the name folded to one line and encoded so it stays a name."""
    address = check_address(address.strip())
    if not is_address(address):  # parseaddr gives '' for a header it cannot read
        raise UnsafeHeaderError("address", address)
    name = fold_header_text(name).strip()
    if not name:
        return address
    if name.isascii():
        # formataddr's quoting, written here: formataddr itself refuses a non-ASCII address
        # (UnicodeEncodeError), which an SMTPUTF8 recipient may have (found by the property test).
        if _SPECIALS.search(name):
            name = '"' + _QUOTED.sub(r"\\\g<0>", name) + '"'
        return f"{name} <{address}>"
    return f"{_display_name(name)} <{address}>"


def _address_list(name: str, value: str) -> str:
    """An address header rebuilt from its parsed addresses, each checked; refused if any is not one.

    Written as given, a malformed list could read as other addresses than meant (and
    the stdlib's own reader fails on some); rebuilt, each display name can only be a name.
    """
    pairs = getaddresses([fold_header_text(value)])
    if not pairs or not all(is_address(addr) for _, addr in pairs):
        raise UnsafeHeaderError(f"{name} header", value)
    return ", ".join(_mailbox(n, a) for n, a in pairs)


@lru_cache(maxsize=16)
def _from_line(from_header: str) -> bytes:
    """The From line, rebuilt like To so a configured name can only be a name; once per setting."""
    return header_line("From", _mailbox(*split_mailbox(from_header)))


def _headers(payload: EmailPayload, *, txn_id: str, from_header: str, date: datetime) -> bytes:
    lines = [
        _from_line(from_header),
        header_line("To", _mailbox(payload.get("to_name") or "", payload["to"])),
        header_line("Subject", payload["subject"]),
        header_line("Date", format_datetime(date)),
        header_line("Message-ID", message_id(txn_id, from_header)),
        header_line("MIME-Version", "1.0"),
        # RFC 3834: tells auto-responders (vacation replies) not to answer.
        header_line("Auto-Submitted", "auto-generated"),
    ]
    for key, value in (payload.get("headers") or {}).items():
        if key.lower() == "reply-to":
            value = _address_list(key, value)
        if key.lower() in ALLOWED_HEADERS or key.lower().startswith("x-"):
            lines.append(header_line(key, value))
    return b"".join(lines)


def build_message(
    payload: EmailPayload, *, txn_id: str, from_header: str, date: datetime,
    envelope_from: str | None = None,
) -> BuiltMessage:
    """The bytes and envelope of one row. `envelope_from` replaces the From address as the
    SMTP envelope sender: a VERP `bounce+TOKEN@domain` that names the row (hub.core.tokens),
    so a bounce that comes back says which address failed however it is worded."""
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
    # The envelope goes into SMTP commands verbatim: a line break there would be a new command.
    envelope_from = check_address(envelope_from or sender_address(from_header))
    recipient = check_address(payload["to"].strip())
    return BuiltMessage(
        envelope_from=envelope_from,
        recipient=recipient,
        data=head + body,
        smtputf8=not (envelope_from.isascii() and recipient.isascii()),
    )
