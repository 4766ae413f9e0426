"""What an emailed reply says, and whether it may be posted at all: pure functions, no I/O.

The rules follow Discourse's email receiver, the model for replies by email
(PRODUCT.md "Replies by email (two-way)"):

* `kept_out` says why a message must not be posted: it is not from the token's
  person, it is automatic (``Auto-Submitted`` other than ``no``, ``Precedence:
  bulk|list|junk``, an out-of-office reply), or it comes from a mail system
  (MAILER-DAEMON, postmaster). Nothing kept out is ever answered by email: an
  answer to an automatic message is how mail loops start.
* `reply_text` takes the text a person wrote: the plain part (or the HTML part
  made text when there is no plain one), cut above the quoted history and
  without the signature by mail-parser-reply, and counts the attachments that
  are not posted.
* `reply_content` is the Matrix message: "**Name** (by email): …", the words
  escaped so that nothing typed becomes markup.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.utils import getaddresses
from functools import cache
from typing import Any

from mailparser_reply import EmailReplyParser

from hub.core.content_format import html_to_text
from hub.core.messages import by_email_content

__all__ = [
    "MAX_REPLY_CHARS",
    "ReplyText",
    "kept_out",
    "message_id_of",
    "reply_content",
    "reply_text",
    "sender_of",
]

# A chat message, not a letter: longer text is cut (and says so) rather than flooding the room.
MAX_REPLY_CHARS = 8000
_SYSTEM_SENDERS = frozenset({"mailer-daemon", "postmaster"})
_BULK = frozenset({"bulk", "list", "junk"})
# Subjects that vacation responders write (Outlook, Gmail, Exchange, common German/French ones).
_AUTO_SUBJECT = re.compile(
    r"^\s*(out of (the )?office|automatic reply|auto(matic)?[ -]?(reply|response)|autoreply|"
    r"abwesenheitsnotiz|automatische antwort|r[ée]ponse automatique|absence)\b", re.I)
_LANGUAGES = ["en", "de", "fr", "es", "it", "nl", "pl", "sv", "ja", "cs", "da", "ko", "zh"]


@dataclass(frozen=True)
class ReplyText:
    text: str  # what the person wrote, "" when nothing is left
    left_out: int  # attachments not posted
    cut: bool  # longer than MAX_REPLY_CHARS, shortened


def sender_of(msg: Message) -> str:
    """The From address, lower case; "" when there is none or more than one."""
    pairs = [a for _, a in getaddresses([str(v) for v in msg.get_all("From", [])]) if a]
    return pairs[0].strip().lower() if len(pairs) == 1 else ""


def message_id_of(msg: Message) -> str | None:
    value = str(msg.get("Message-ID", "") or "").strip()
    return value[:400] or None


def kept_out(msg: Message, *, envelope_from: str, person_addresses: Collection[str]) -> str | None:
    """Why `msg` must not be posted for the person whose addresses (roster, preference) are
    `person_addresses`; None if it may."""
    sender = sender_of(msg)
    for who in (sender, envelope_from.strip().lower()):
        local = who.partition("@")[0]
        if local in _SYSTEM_SENDERS:
            return f"sent by a mail system ({who})"
    auto = str(msg.get("Auto-Submitted", "") or "").strip().lower()
    if auto and auto.split(";")[0].strip() != "no":
        return f"an automatic message (Auto-Submitted: {auto[:40]})"
    precedence = str(msg.get("Precedence", "") or "").strip().lower()
    if precedence in _BULK:
        return f"an automatic message (Precedence: {precedence})"
    if msg.get("X-Autoreply") or msg.get("X-Autorespond") or msg.get("X-Autoresponder"):
        return "an out-of-office reply (X-Autoreply)"
    suppress = str(msg.get("X-Auto-Response-Suppress", "") or "").lower()
    if "oof" in suppress or "autoreply" in suppress or suppress.strip() == "all":
        # Exchange marks its own automatic replies so; a person's mail does not carry it.
        return "an out-of-office reply (X-Auto-Response-Suppress)"
    if _AUTO_SUBJECT.match(str(msg.get("Subject", "") or "")):
        return "an out-of-office reply (its subject)"
    if not sender:
        return "no single From address"
    if sender not in {a.strip().lower() for a in person_addresses if a}:
        return f"From {sender} is not the person this reply address was made for"
    return None


def _is_attachment(part: Message) -> bool:
    if part.is_multipart():
        return False
    disposition = str(part.get_content_disposition() or "")
    if disposition == "attachment":
        return True
    # An inline image or file is left out just the same: only text is posted.
    return part.get_content_maintype() != "text" or part.get_filename() is not None


def _decoded(part: Message) -> str:
    if isinstance(part, EmailMessage):
        try:
            content = part.get_content()
        except (LookupError, ValueError, AssertionError):  # an unknown charset, a broken encoding
            content = None
        if isinstance(content, str):
            return content
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


@cache
def _parser() -> EmailReplyParser:
    return EmailReplyParser(languages=_LANGUAGES)


def _cut_history(text: str) -> str:
    """The newest reply without quoted history or signature (mail-parser-reply)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    replies = _parser().read(text=text).replies
    if not replies:
        return text.strip()
    first = replies[0].body.strip()
    # Lines quoted with ">" that the parser kept (a reply written below a quote) are history too.
    lines = [line for line in first.split("\n") if not line.lstrip().startswith(">")]
    return "\n".join(lines).strip()


def reply_text(msg: Message) -> ReplyText:
    plain: str | None = None
    html: str | None = None
    left_out = 0
    for part in msg.walk():
        if part.is_multipart():
            continue
        if _is_attachment(part):
            left_out += 1
            continue
        subtype = part.get_content_subtype()
        if subtype == "plain" and plain is None:
            plain = _decoded(part)
        elif subtype == "html" and html is None:
            html = _decoded(part)
        elif subtype not in ("plain", "html"):
            left_out += 1
    if plain is None and html is not None:
        # HTML-only mail: made text the way the hub makes its own HTML text; quoted history
        # in <blockquote> shows as "> " lines there and is cut with the rest.
        html = re.sub(r"(?is)<(head|style|script)\b.*?</\1\s*>", "", html)
        plain = html_to_text(html)
    text = _cut_history(plain or "")
    cut = len(text) > MAX_REPLY_CHARS
    if cut:
        text = text[:MAX_REPLY_CHARS].rstrip() + "…"
    return ReplyText(text, left_out, cut)


def reply_content(name: str, reply: ReplyText, mention: str | None) -> dict[str, Any]:
    """The m.text posted for a reply: "**Name** (by email): …", notifying `mention` (the partner)."""
    return by_email_content(name, reply.text, reply.left_out, mention)
