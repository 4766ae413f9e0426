"""Markdown to the two forms a Matrix message carries: plain `body` and safe HTML.

The HTML is cleaned with nh3 down to the tag and attribute subset the Matrix
spec allows in `formatted_body` (client-server API, "m.room.message msgtypes").
"""

from __future__ import annotations

import functools
import html
import re

import markdown
import nh3

__all__ = ["MATRIX_ATTRIBUTES", "MATRIX_TAGS", "escape", "markdown_to_matrix", "sanitize_matrix_html"]

MATRIX_TAGS = frozenset(
    "font del h1 h2 h3 h4 h5 h6 blockquote p a ul ol sup sub li b i u strong em s code hr br "
    "div table thead tbody tr th td caption pre span img details summary".split()
)
MATRIX_ATTRIBUTES: dict[str, set[str]] = {
    "font": {"data-mx-bg-color", "data-mx-color", "color"},
    "span": {"data-mx-bg-color", "data-mx-color", "data-mx-spoiler", "data-mx-maths"},
    "div": {"data-mx-maths"},
    "a": {"href", "target"},
    "img": {"width", "height", "alt", "title", "src"},
    "ol": {"start"},
    "code": {"class"},
}
_SCHEMES = {"https", "http", "ftp", "mailto", "magnet", "mxc"}


def sanitize_matrix_html(fragment: str) -> str:
    return nh3.clean(
        fragment,
        tags=set(MATRIX_TAGS),
        attributes=MATRIX_ATTRIBUTES,
        url_schemes=_SCHEMES,
        link_rel=None,
    )


def escape(text: str) -> str:
    """Escape untrusted text (a display name, a user's words) before it joins Markdown/HTML."""
    return html.escape(text, quote=True)


_BLANKS = re.compile(r"\n{3,}")
# Python-Markdown's backslash escapes (what `escape_markdown` adds before untrusted text).
_ESCAPED = re.compile(r"\\([\\`*_{}\[\]()#+\-.!>])")


@functools.cache
def _renderer() -> markdown.Markdown:
    # Building a Markdown instance (its extensions and patterns) costs about as much as
    # converting a welcome; one instance, reset before each use, serves the whole process
    # (rendering is synchronous, so no two conversions interleave).
    return markdown.Markdown(extensions=["sane_lists", "nl2br"], output_format="html")


def markdown_to_matrix(text: str) -> tuple[str, str]:
    """Return (plain body, sanitised HTML) for a Markdown message.

    The body is the Markdown as written, which reads fine as plain text, less the escapes
    that only protect untrusted text from the renderer: a client without HTML should show
    a name as typed, not as `Ada\\_B &amp; co`.
    """
    rendered = _renderer().reset().convert(text)
    body = html.unescape(_ESCAPED.sub(r"\1", _BLANKS.sub("\n\n", text.strip())))
    return body, sanitize_matrix_html(rendered).strip()
