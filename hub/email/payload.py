"""The email outbox row's payload: the one definition every feature enqueues against.

A feature that sends mail (digest, announcements, webinar invites, the backup
plan after `!hub dropped`) builds an :class:`EmailPayload` with
:func:`email_payload` and queues it with :func:`enqueue_email`, in the same
transaction as the change that causes it. One row is one recipient: each
recipient is retried, marked sent or failed on its own, so one bad address
never holds back or duplicates mail to the others.

Payload shape (JSON in ``outbox.payload``)::

    {
      "to": "ada@example.org",              # exactly one recipient (required)
      "to_name": "Ada Lovelace",            # display name in the To header (optional)
      "subject": "Week 3 at Winter 2027",   # required, one line
      "text": "plain text body",            # required: every reader can read it
      "html": "<p>HTML body</p>",           # optional: makes it multipart/alternative;
                                            #   non-ASCII characters become &#NNN; (ascii_html)
      "headers": {                          # optional extra headers, a fixed allow-list:
        "List-Id": "Winter 2027 <winter-2027.hub.example.org>",
        "List-Unsubscribe": "<https://hub.example.org/unsubscribe/TOKEN>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "Reply-To": "...", "In-Reply-To": "...", "References": "...", "X-...": "..."
      },
      "attachments": [                      # optional
        {"filename": "kickoff.ics",
         "content_type": "text/calendar; method=REQUEST",
         "text": "BEGIN:VCALENDAR..."}      # "text" (UTF-8) or "base64" (binary data)
      ]
    }

``From``, ``Date``, ``Message-ID`` (derived from the row's stable ``txn_id``),
``MIME-Version`` and ``Auto-Submitted: auto-generated`` are set by the sender
and may not be given here.

Header safety is checked twice. Here, when the row is queued, a value that
would break out of its header line (CR, LF, NUL, other controls) is refused
with `UnsafeHeaderError`: a feature must pass one-line text (`one_line`).
When the message is built, `hub.email.message.header_line`, the only writer
of header lines, folds such characters in text values and refuses them in
names and addresses, so a row that got past this check (queued by an older
hub, or by code that bypassed `email_payload`) still cannot add a header.
"""

from __future__ import annotations

import base64
import binascii
import re
from html import escape as html_escape
from typing import Any, NotRequired, TypedDict

from sqlalchemy.ext.asyncio import AsyncSession

from hub.core.ports import Queue
from hub.delivery.outbox import EMAIL
from hub.errors import UnsafeHeaderError

__all__ = [
    "ALLOWED_HEADERS",
    "Attachment",
    "EmailPayload",
    "ascii_html",
    "check_address",
    "check_header_name",
    "email_payload",
    "enqueue_email",
    "fold_header_text",
    "header_safe",
    "is_address",
    "normalize_address",
    "split_mailbox",
    "with_unsubscribe_footer",
]


class Attachment(TypedDict):
    filename: str
    content_type: str
    text: NotRequired[str]
    base64: NotRequired[str]


class EmailPayload(TypedDict):
    to: str
    subject: str
    text: str
    to_name: NotRequired[str]
    html: NotRequired[str]
    headers: NotRequired[dict[str, str]]
    attachments: NotRequired[list[Attachment]]


# Headers a feature may set. The rest are the sender's to set (From, Message-ID, ...)
# or would break the MIME structure (Content-*).
ALLOWED_HEADERS = frozenset(
    {"list-id", "list-unsubscribe", "list-unsubscribe-post", "list-help", "list-archive",
     "reply-to", "in-reply-to", "references", "precedence"}
)
# Dot-separated atoms either side of the @ (RFC 5322 dot-atom): no leading, trailing or
# doubled dot. "victim@example.org." passed a looser pattern, and a reader's parser makes
# nothing of it, so a Reply-To of it named no one the hub meant (the header property test).
_ATOM = r"[^@\s<>(),;:\"\[\]\\.]+"
_ADDRESS = re.compile(rf"^{_ATOM}(\.{_ATOM})*@{_ATOM}(\.{_ATOM})+$")
_CONTENT_TYPE = re.compile(r"^[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+(\s*;\s*[a-z0-9_.-]+=[^;\r\n]+)*$", re.I)


def normalize_address(address: str) -> str:
    """The form addresses are compared, suppressed and laned in: trimmed, lower case."""
    return address.strip().lower()


# What can end or break a header line for some reader: CR and LF; NUL and the other C0
# controls (parsers built on str.splitlines also split on VT, FF and FS..RS); DEL; the C1
# controls (NEL is a line break in Unicode); the Unicode line and paragraph separators.
# Tab is ordinary folding whitespace and stays.
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
# A run of them with the blanks around it becomes one space when a text value is folded.
_UNSAFE_RUN = re.compile(r"[ \t]*[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029][\x00-\x20\x7f-\x9f\u2028\u2029]*")
_UNSAFE_OR_BLANK = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u2028\u2029]")
# RFC 5322 allows any printable ASCII but ':'; every header the hub writes fits this.
_FIELD_NAME = re.compile(r"[A-Za-z0-9-]+\Z")


def header_safe(value: str) -> bool:
    """True if `value` has nothing that could end its header line (see `_UNSAFE`)."""
    return _UNSAFE.search(value) is None


def fold_header_text(value: str) -> str:
    """A text header value (subject, display name) on one line: each control run becomes a space."""
    return _UNSAFE_RUN.sub(" ", value)


def check_header_name(name: str) -> str:
    if not _FIELD_NAME.match(name):
        raise UnsafeHeaderError("header name", name)
    return name


def check_address(address: str) -> str:
    """An address as it goes into To and RCPT TO: one token, no controls or blanks."""
    if _UNSAFE_OR_BLANK.search(address):
        raise UnsafeHeaderError("address", address)
    return address


def is_address(text: str) -> bool:
    """One plain address (no name, no list), as `email_payload` accepts for `to`."""
    return bool(_ADDRESS.match(text)) and header_safe(text)


def split_mailbox(value: str) -> tuple[str, str]:
    """(name, address) of `Name <address>` or a bare `address`, as an operator writes `email.from`.

    The address is what the angle brackets at the very end hold, never what a parser
    makes of the name: the stdlib's `parseaddr` reads `""Bcc: victim@x" <hub@y>` as
    the address victim@x, so a quote in the configured name would change who the mail
    is from (found by the header property test). The caller checks the address
    (`is_address`); the name is text, quoted or encoded again when written.
    """
    value = fold_header_text(value).strip()
    if not (value.endswith(">") and "<" in value):
        return "", value
    name, _, rest = value[:-1].rpartition("<")
    name = name.strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return name, rest.strip()


def _one_line(name: str, value: str) -> str:
    if not header_safe(value):
        raise UnsafeHeaderError(name, value)
    return value


# Raw-text elements: character references inside them are not decoded.
_RAW_TEXT = re.compile(r"<(style|script)\b.*?</\1\s*>", re.S | re.I)


def ascii_html(html: str) -> str:
    """`html` with every non-ASCII character as a numeric character reference (`·` -> `&#183;`).

    An HTML document means the same either way, and an ASCII one with short
    lines goes as 7bit: smaller than quoted-printable (which turns each of
    the hundreds of `=` in attributes into `=3D`, breaks lines every 76
    characters and spends 6 to 9 bytes on every non-ASCII character), cheaper
    to encode, and readable in a raw view. Only `<style>` and `<script>` do not
    decode references; a document with non-ASCII text there is left as it is.
    """
    if html.isascii() or any(not m.group(0).isascii() for m in _RAW_TEXT.finditer(html)):
        return html
    return html.encode("ascii", "xmlcharrefreplace").decode("ascii")


_LIST_UNSUBSCRIBE = re.compile(r"<(https?://[^<>\s]+)>")
_BODY_END = re.compile(r"</body\s*>", re.I)
# Inline styles: the footer goes under the page's own card, where no stylesheet reaches it.
_FOOTER_HTML = (
    '<table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0"><tr>'
    '<td align="center" style="padding: 0 12px 24px 12px; font-family: -apple-system, \'Segoe UI\', '
    "Roboto, Helvetica, Arial, sans-serif; font-size: 13px; line-height: 20px; color: #4b5563;\">"
    'You can <a href="{url}" style="color: #1d4ed8; text-decoration: underline;">unsubscribe</a> '
    "from these emails at any time.</td></tr></table>\n"
)


def with_unsubscribe_footer(text: str, html: str | None, headers: dict[str, str]) -> tuple[str, str | None]:
    """`text` and `html` with the `List-Unsubscribe` link in their bodies, if it is not there yet.

    The one place that puts it there: every list email (digest, announcements, webinar invites
    and reminders, an email-only person's welcome and check-in questions) shows its
    unsubscribe link in both parts (PRODUCT.md "Email"), not only in the header, which many
    mail programs hide. A template that shows it itself (the digest's footer) is left as it is.
    """
    header = next((v for k, v in headers.items() if k.lower() == "list-unsubscribe"), "")
    found = _LIST_UNSUBSCRIBE.search(header)
    if found is None:
        return text, html
    url = found.group(1)
    if url not in text:
        text = f"{text.rstrip()}\n\n-- \nUnsubscribe: {url}\n"
    if html and url not in html and html_escape(url) not in html:
        footer = _FOOTER_HTML.format(url=html_escape(url))
        ends = list(_BODY_END.finditer(html))
        html = html[:ends[-1].start()] + footer + html[ends[-1].start():] if ends else html + footer
    return text, html


def email_payload(
    *,
    to: str,
    subject: str,
    text: str,
    html: str | None = None,
    to_name: str | None = None,
    headers: dict[str, str] | None = None,
    attachments: list[Attachment] | None = None,
) -> EmailPayload:
    """Validate and build a payload; raises ValueError on a programming mistake.

    Validation happens here, when the row is queued, so a malformed message
    fails in the feature's transaction instead of as a delivery failure later.
    """
    to = check_address(to.strip())
    if not _ADDRESS.match(to):
        raise ValueError(f"{to!r} is not an email address")
    if headers:
        for name, value in headers.items():
            check_header_name(name)
            if name.lower() not in ALLOWED_HEADERS and not name.lower().startswith("x-"):
                raise ValueError(f"email header {name!r} may not be set by a feature")
            _one_line(name, value)
        text, html = with_unsubscribe_footer(text, html, headers)
    payload: EmailPayload = {"to": to, "subject": _one_line("subject", subject), "text": text}
    if to_name:
        payload["to_name"] = _one_line("to_name", to_name)
    if html:
        payload["html"] = ascii_html(html)
    if headers:
        payload["headers"] = dict(headers)
    if attachments:
        for a in attachments:
            _one_line("attachment filename", a["filename"])
            if not _CONTENT_TYPE.match(a["content_type"]):
                raise ValueError(f"{a['content_type']!r} is not a MIME content type")
            if ("text" in a) == ("base64" in a):
                raise ValueError(f"attachment {a['filename']!r} needs exactly one of text, base64")
            if "base64" in a:
                try:
                    base64.b64decode(a["base64"], validate=True)
                except binascii.Error as e:
                    raise ValueError(f"attachment {a['filename']!r}: bad base64: {e}") from None
        payload["attachments"] = [dict(a) for a in attachments]  # type: ignore[misc]
    return payload


async def enqueue_email(
    outbox: Queue[AsyncSession],
    session: AsyncSession,
    payload: EmailPayload,
    *,
    kind: str,
    dedupe_key: str,
    not_before: float | None = None,
) -> bool:
    """Queue one email in the caller's transaction; False if `dedupe_key` was queued before.

    The lane is the recipient's address, so mails to one person keep their order
    and a retried one does not overtake the next.
    """
    data: dict[str, Any] = dict(payload)
    return await outbox.enqueue(
        session, channel=EMAIL, kind=kind, lane=normalize_address(payload["to"]),
        payload=data, dedupe_key=dedupe_key, not_before=not_before,
    )
