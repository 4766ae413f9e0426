"""Markdown to the two forms a Matrix message carries: plain `body` and safe HTML.

The HTML is cleaned with nh3 down to the tag and attribute subset the Matrix
spec allows in `formatted_body` (client-server API, "m.room.message msgtypes"):
links only to https, http, ftp, mailto and magnet URIs, images only from the
homeserver's media repository (``mxc://``), so no message the hub sends makes
a client fetch a URL from elsewhere (a tracking pixel) or follow a relative one.

`echo` is how a reply quotes what someone typed: inline code, so nothing in
it becomes a link, an image or formatting.
"""

from __future__ import annotations

import functools
import html
import re

import markdown
import nh3

__all__ = ["MATRIX_ATTRIBUTES", "MATRIX_TAGS", "echo", "escape", "markdown_to_matrix", "sanitize_matrix_html"]

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
# The spec's schemes for `a href`; `img src` must be an mxc:// URI.
_LINK_SCHEMES = ("https:", "http:", "ftp:", "mailto:", "magnet:")


def _url_filter(tag: str, attribute: str, value: str) -> str | None:
    """Keep a URL attribute only in the form the spec allows for its tag (None drops it)."""
    scheme = value.strip().lower()
    if tag == "img" and attribute == "src":
        return value if scheme.startswith("mxc://") else None
    if tag == "a" and attribute == "href":
        return value if scheme.startswith(_LINK_SCHEMES) else None
    return value


def sanitize_matrix_html(fragment: str) -> str:
    return nh3.clean(
        fragment,
        tags=set(MATRIX_TAGS),
        attributes=MATRIX_ATTRIBUTES,
        attribute_filter=_url_filter,
        url_schemes={"https", "http", "ftp", "mailto", "magnet", "mxc"},
        # Relative and protocol-relative URLs ("//evil.example/pixel.png") have no
        # scheme to check; a message has no base URL for them to be relative to.
        url_relative="deny",
        link_rel=None,
    )


ECHO_LIMIT = 60
_ECHO_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\s]+")
_BACKTICKS = re.compile(r"`+")


def echo(text: str, limit: int = ECHO_LIMIT) -> str:
    """Untrusted text quoted in a reply: one line, cut to `limit` characters, as Markdown inline code.

    Inside a code span Markdown makes no links, images or emphasis and escapes HTML, so
    ``[Reset](https://evil.example)`` or ``<img src=...>`` shows as typed. The span's
    fence is one backtick longer than any run of backticks in the text (CommonMark and
    Python-Markdown both need the closing run to match exactly), padded with a space
    where the text starts or ends with a backtick, so the text cannot close it; line
    breaks become spaces, so it cannot end the paragraph.
    """
    flat = _ECHO_BREAKS.sub(" ", text).strip()
    if len(flat) > limit:
        flat = flat[: limit - 1].rstrip() + "…"
    if not flat:
        return "(nothing)"
    fence = "`" * (max((len(m) for m in _BACKTICKS.findall(flat)), default=0) + 1)
    pad = " " if flat[0] == "`" or flat[-1] == "`" else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


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
