"""The content of every `m.room.message` the hub sends: a notice, or a prompt that notifies.

Two builders, one rule (PRODUCT.md, "On Matrix"):

* `notice_content`: replies to commands, reports, lounge posts, the digest. An
  ``m.notice``, which the default push rule ``.m.rule.suppress_notices`` keeps
  silent, with ``m.mentions: {}`` so that nothing quoted in it (a display name,
  "@room") pings anyone through the legacy body-matching rules either.
* `prompt_content`: what asks people to act (icebreakers, check-ins, reflection
  prompts, the private check-in, the backup plan after `!hub dropped`). An
  ``m.text`` whose ``m.mentions.user_ids`` names the people it is for: the
  default override rule ``.m.rule.is_user_mention`` notifies exactly them, and
  the spec (v1.7, MSC3952) has clients evaluate it on the decrypted event, so it
  works in encrypted rooms.

Both are plain dictionaries with no nio in them: the core (the digest, the
content library) builds Matrix content too. `hub.matrix.events` re-exports them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple
from urllib.parse import quote

from hub.core.markup import escape, sanitize_matrix_html
from hub.core.names import one_line

__all__ = ["Mention", "by_email_content", "notice_content", "prompt_content", "user_link"]

HTML_FORMAT = "org.matrix.custom.html"


class Mention(NamedTuple):
    """Someone a prompt is for: their Matrix id and the name the hub knows them by."""

    user_id: str
    name: str


def user_link(user_id: str) -> str:
    """The matrix.to URI of a user, percent-encoded as the spec's appendix ("matrix.to navigation") shows."""
    return f"https://matrix.to/#/{quote(user_id, safe='')}"


def _relation(reply_to: str | None, thread_root: str | None) -> dict[str, Any] | None:
    if reply_to and thread_root:
        return {"rel_type": "m.thread", "event_id": thread_root, "is_falling_back": False,
                "m.in_reply_to": {"event_id": reply_to}}
    if reply_to:
        return {"m.in_reply_to": {"event_id": reply_to}}
    return None


def _message(msgtype: str, body: str, html: str | None, mentions: dict[str, Any],
             reply_to: str | None, thread_root: str | None) -> dict[str, Any]:
    content: dict[str, Any] = {"msgtype": msgtype, "body": body}
    if html:
        content["format"] = HTML_FORMAT
        content["formatted_body"] = html
    content["m.mentions"] = mentions
    relation = _relation(reply_to, thread_root)
    if relation is not None:
        content["m.relates_to"] = relation
    return content


def notice_content(
    body: str,
    html: str | None = None,
    *,
    reply_to: str | None = None,
    thread_root: str | None = None,
) -> dict[str, Any]:
    """An m.notice that pings nobody; a reply (inside the thread when the command came from one)."""
    return _message("m.notice", body, html, {}, reply_to, thread_root)


def _names(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def prompt_content(
    body: str,
    html: str | None,
    people: Sequence[Mention],
    *,
    reply_to: str | None = None,
    thread_root: str | None = None,
) -> dict[str, Any]:
    """An m.text that notifies `people` (and nobody else): ``m.mentions.user_ids`` names them.

    The message opens with their names, "Ada and Bo: ...", each a mention pill in
    the HTML (a matrix.to link with the name as its text, as the spec's "User and
    room mentions" recommends): Element shows the pill, and a client that predates
    intentional mentions still finds the name in the body. Names are the roster's,
    escaped, one line; the link passes the markup sanitiser like any https link.
    With nobody to name (a partner without a Matrix account) it is still an m.text,
    with ``m.mentions: {}``: it notifies nobody by mention, and no body text can.
    """
    unique: dict[str, str] = {}
    for p in people:
        if p.user_id and p.user_id not in unique:
            unique[p.user_id] = one_line(p.name) or p.user_id
    if not unique:
        return _message("m.text", body, html, {}, reply_to, thread_root)
    plain_names = _names(list(unique.values()))
    pills = sanitize_matrix_html(_names(
        [f'<a href="{escape(user_link(uid))}">{escape(name)}</a>' for uid, name in unique.items()]))
    html = html or escape(body).replace("\n", "<br>")
    # Inside the first paragraph when there is one, so the names lead its first line.
    html = f"<p>{pills}: {html[3:]}" if html.startswith("<p>") else f"<p>{pills}:</p>\n{html}"
    return _message("m.text", f"{plain_names}: {body}", html, {"user_ids": list(unique)},
                    reply_to, thread_root)


def by_email_content(name: str, words: str, left_out: int, mention: str | None) -> dict[str, Any]:
    """The m.text the hub posts for someone's email reply: "**Name** (by email): …".

    `m.text`, not a notice, and `m.mentions` naming `mention` (the partner in a pair room): it is
    a person speaking, and the partner's client should notify as for any message addressed to them.
    """
    note = "" if left_out == 0 else (
        f"({left_out} attachment{'s' if left_out != 1 else ''} left out: only the text is posted.)")
    words = words or "(no text)"
    body = f"**{name}** (by email): {words}"
    html = f"<strong>{escape(name)}</strong> (by email): {escape(words).replace(chr(10), '<br>')}"
    if note:
        body += f"\n\n{note}"
        html += f"<br><br><em>{escape(note)}</em>"
    return {
        "msgtype": "m.text",
        "body": body,
        "format": HTML_FORMAT,
        "formatted_body": html,
        "m.mentions": {"user_ids": [mention]} if mention else {},
    }
