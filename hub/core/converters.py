"""Argument converters: how a command's word becomes a value, or a message saying why it cannot.

A command declares ``Arg("who", to=to_who)`` and its handler receives a
`Who`; a word that is not one never reaches the handler: the registry answers
with the converter's message followed by the command's usage line (taken from
the declaration, hub.core.commands). Converters run after the command is
authorized (`CommandRegistry.check`), so someone who may not use a command
is told that, not how to type it. Each message repeats the word through
`markup.echo` (inline code, cut short), so a reply never carries a link or an
image someone typed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from hub.core.cohorts import Who, is_email, parse_who, valid_slug
from hub.core.content_format import Url, one_line
from hub.core.markup import echo
from hub.errors import ContentError

__all__ = ["Converter", "to_datetime", "to_email", "to_slug", "to_title", "to_url", "to_who"]

# A converter takes the word as typed and returns the value, or raises ValueError with a message
# that the registry completes with ". Usage: `...`".
Converter = Callable[[str], Any]

# Exactly YYYY-MM-DDTHH:MM: a cohort's local time (the command attaches the cohort's zone).
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}$")


def to_slug(value: str) -> str:
    """A cohort slug, lower-cased (``Winter-2027`` names ``winter-2027``)."""
    slug = value.lower()
    if not valid_slug(slug):
        raise ValueError(f"{echo(slug)} is not a cohort slug: lowercase letters, digits and -, "
                         "like winter-2027")
    return slug


def to_who(value: str) -> Who:
    """A person: a Matrix id or an email address (hub.core.cohorts.Who)."""
    try:
        return parse_who(value)
    except ValueError:
        # parse_who's own message repeats the value with repr(); the reply quotes it as code.
        what = ("is not a Matrix id (like @name:example.org)" if value.strip().startswith("@")
                else "is neither a Matrix id (@name:server) nor an email address")
        raise ValueError(f"{echo(value)} {what}") from None


def to_email(value: str) -> str:
    """An email address, as typed (the email layer normalizes it where it is stored or sent)."""
    if not is_email(value):
        raise ValueError(f"{echo(value)} is not an email address; nothing changed")
    return value


def to_datetime(value: str) -> datetime:
    """A local date and time YYYY-MM-DDTHH:MM, naive: the command knows the cohort's zone."""
    if not _DATETIME.match(value):
        raise ValueError(f"{echo(value)} is not a time like 2027-01-11T17:00")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{echo(value)} is not a real date and time") from None


def to_title(value: str) -> str:
    """A title shown in a heading and an email subject: one line, 1-200 characters."""
    title = one_line(value)
    if not title or len(title) > 200:
        raise ValueError("the title must be 1-200 characters")
    return title


def to_url(value: str) -> str:
    """An http(s) link, as typed (hub.core.content_format.Url checks it)."""
    try:
        Url(value)
    except ContentError:
        raise ValueError(f"{echo(value)} is not an http(s) link") from None
    return value
