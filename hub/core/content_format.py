"""Text plumbing for the content library: escaping values, HTML to text, the email document.

Used by `hub.core.content`; `email_document` and `html_to_text` are public so
other senders (the digest, announcements) can wrap their own HTML the same way.

- `escape_markdown(value)` makes untrusted text (a display name, a backup plan)
  inert inside Markdown: every character Python-Markdown treats as syntax is
  backslash-escaped and ``& < >`` become entities, so ``**x**`` stays literal,
  ``[a](javascript:…)`` is not a link and ``<img onerror>`` is not a tag.
- `Url` marks a link the hub itself vouches for (a pair's video link, a
  webinar URL, a matrix.to link); in Markdown it becomes an autolink.
- `html_to_text(html)` turns the sanitised HTML back into readable plain text
  (the Matrix `body` and the email's text/plain part), spelling links out.
- `email_document(subject, content_html, footer_html=...)` wraps an HTML
  fragment in a single-column, dark-mode-safe email with its CSS inlined by
  css-inline; it loads nothing remote and contains no images.
"""

from __future__ import annotations

import html
import re
import string
from html.parser import HTMLParser
from urllib.parse import quote, urlsplit

import css_inline
import nh3

from hub.core.markup import MATRIX_ATTRIBUTES, MATRIX_TAGS
from hub.errors import ContentError

__all__ = [
    "EMAIL_TAGS",
    "Url",
    "email_document",
    "escape_markdown",
    "html_to_text",
    "one_line",
    "sanitize_email_html",
    "strip_controls",
]

# C0/C1 controls (but tab and newline) and the bidi embedding/override/isolate
# controls: none belongs in a name or a plan, and the bidi ones can make a
# message read differently from what it says.
_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# Exactly Python-Markdown's ESCAPED_CHARS except ">" (an entity below): a
# backslash before any other character would show up literally.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!])")
_BLANK_LINES = re.compile(r"\n\s*\n+")


def strip_controls(text: str) -> str:
    """Remove control and bidi-override characters; keep tabs and newlines."""
    return _CONTROLS.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def escape_markdown(text: str) -> str:
    """Make untrusted text render literally when it is placed inside Markdown.

    Blank lines collapse to one line break and each line is left-stripped, so a
    value can neither end the author's paragraph or list nor start a code block.
    """
    text = _BLANK_LINES.sub("\n", strip_controls(text).strip())
    text = "\n".join(line.strip() for line in text.split("\n"))
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def one_line(text: str) -> str:
    """Collapse all whitespace to single spaces (subjects, headers)."""
    return " ".join(strip_controls(text).split())


class Url(str):
    """A link the hub vouches for: http(s) only, rendered as a Markdown autolink.

    Constructing one validates it; a bad link raises `ContentError` naming it.
    """

    __slots__ = ()

    def __new__(cls, value: str) -> Url:
        value = value.strip()
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ContentError(f"{value!r} is not an http(s) link")
        # Percent-encode whatever could end an autolink or a link destination
        # early; everything RFC 3986 allows is kept as it was written.
        return super().__new__(cls, quote(value, safe="/:?#@!$&'*+,;=%~-._"))

    def markdown(self) -> str:
        return f"<{self}>"


# Email gets the Matrix subset minus images: an email must not load anything remote.
EMAIL_TAGS = MATRIX_TAGS - {"img"}


def sanitize_email_html(fragment: str) -> str:
    """The Matrix-safe subset without images, for the email body."""
    return nh3.clean(
        fragment,
        tags=set(EMAIL_TAGS),
        attributes={k: v for k, v in MATRIX_ATTRIBUTES.items() if k != "img"},
        url_schemes={"https", "http", "mailto"},
        link_rel=None,
    )


# --- HTML to plain text ------------------------------------------------------

_BLOCKS = frozenset("p div h1 h2 h3 h4 h5 h6 pre table details summary caption".split())
_SKIP = frozenset("head style script title".split())


class _TextMaker(HTMLParser):
    """A small, forgiving HTML-to-text pass over already sanitised HTML."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.lists: list[list[int]] = []  # [ordered (0/1), next number]
        self.links: list[tuple[str, int]] = []  # (href, index in out where its text starts)
        self.pre = 0
        self.quote = 0
        self.skip = 0
        self.fresh_item = False
        self.first_cell = True

    # helpers
    def _tail(self) -> str:
        return "".join(self.out[-3:])

    def _break(self, lines: int) -> None:
        if not self.out:
            return
        tail = self._tail()
        have = len(tail) - len(tail.rstrip("\n"))
        if have < lines:
            self.out.append("\n" * (lines - have))

    def _write(self, text: str) -> None:
        if not text:
            return
        at_start = not self.out or self._tail().endswith("\n")
        if at_start and self.quote:
            self.out.append("> " * self.quote)
        self.out.append(text)

    # parser callbacks
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skip += 1
            return
        if tag in _BLOCKS or tag == "blockquote":
            if self.fresh_item:
                self.fresh_item = False  # a loose list's <p> continues its bullet
            else:
                self._break(2)
            if tag == "blockquote":
                self.quote += 1
            if tag == "pre":
                self.pre += 1
        elif tag in ("ul", "ol"):
            self._break(1 if self.lists else 2)
            start = dict(attrs).get("start") or "1"
            self.lists.append([int(tag == "ol"), int(start) if start.isdigit() else 1])
        elif tag == "li":
            self._break(1)
            depth = max(len(self.lists), 1)
            bullet = "- "
            if self.lists and self.lists[-1][0]:
                bullet = f"{self.lists[-1][1]}. "
                self.lists[-1][1] += 1
            self._write("  " * (depth - 1) + bullet)
            self.fresh_item = True
        elif tag == "br":
            self.out.append("\n")
        elif tag == "hr":
            self._break(2)
            self._write("----")
            self._break(2)
        elif tag == "tr":
            self._break(1)
            self.first_cell = True
        elif tag in ("td", "th"):
            if not self.first_cell:
                self._write(" | ")
            self.first_cell = False
        elif tag == "a":
            self.links.append((dict(attrs).get("href") or "", len(self.out)))
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self._write(alt)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip = max(self.skip - 1, 0)
            return
        if tag in _BLOCKS or tag == "blockquote":
            if tag == "blockquote":
                self.quote = max(self.quote - 1, 0)
            if tag == "pre":
                self.pre = max(self.pre - 1, 0)
            self._break(1 if self.lists else 2)
        elif tag in ("ul", "ol"):
            if self.lists:
                self.lists.pop()
            self._break(1 if self.lists else 2)
        elif tag == "li":
            self.fresh_item = False
        elif tag == "a" and self.links:
            href, start = self.links.pop()
            text = "".join(self.out[start:]).strip()
            shown = href.removeprefix("mailto:")
            if href and shown != text:
                self._write(f" ({shown})" if text else shown)

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if not self.pre:
            data = re.sub(r"\s+", " ", data)
            if not self.out or self._tail()[-1:].isspace():
                data = data.lstrip()  # never two spaces in a row, nor one at a line start
        if data:
            self.fresh_item = False
        self._write(data)


def html_to_text(fragment: str) -> str:
    """Readable plain text from (sanitised) HTML: paragraphs, bullets, links as ``text (url)``."""
    maker = _TextMaker()
    maker.feed(fragment)
    maker.close()
    lines = [line.rstrip() for line in "".join(maker.out).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# --- the email document ---------------------------------------------------------

# One column, max 600px, system fonts, no images. Colours are mid-contrast so
# clients that invert (Gmail, Outlook apps) still produce readable results;
# clients that honour prefers-color-scheme get the dark palette below, which
# css-inline keeps as a <style> block (at-rules cannot be inlined).
_EMAIL_CSS = """
body { margin: 0; padding: 0; background-color: #f3f4f6; color: #1f2328;
  font-family: -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
  font-size: 16px; line-height: 1.55; -webkit-text-size-adjust: 100%; }
.outer { width: 100%; background-color: #f3f4f6; }
.outer-cell { padding: 24px 12px; }
.card { width: 100%; max-width: 600px; background-color: #ffffff; border: 1px solid #d0d7de;
  border-radius: 8px; }
.content { padding: 24px 28px 8px 28px; color: #1f2328; }
.footer { padding: 12px 28px 20px 28px; font-size: 13px; line-height: 1.5; color: #57606a;
  border-top: 1px solid #d0d7de; }
p { margin: 0 0 16px 0; }
h1 { font-size: 22px; line-height: 1.3; margin: 0 0 16px 0; }
h2 { font-size: 19px; line-height: 1.3; margin: 24px 0 12px 0; }
h3 { font-size: 17px; line-height: 1.3; margin: 20px 0 8px 0; }
a { color: #0a58ca; text-decoration: underline; }
ul, ol { margin: 0 0 16px 0; padding: 0 0 0 24px; }
li { margin: 0 0 6px 0; }
blockquote { margin: 0 0 16px 0; padding: 2px 0 2px 14px; border-left: 3px solid #8c959f; color: #424a53; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 14px;
  background-color: #eef1f4; border-radius: 4px; padding: 1px 4px; }
pre { background-color: #eef1f4; border-radius: 6px; padding: 12px; overflow-x: auto; margin: 0 0 16px 0;
  white-space: pre-wrap; }
hr { border: 0; border-top: 1px solid #d0d7de; margin: 20px 0; }
@media (prefers-color-scheme: dark) {
  body, .outer { background-color: #0d1117 !important; color: #e6edf3 !important; }
  .card { background-color: #161b22 !important; border-color: #30363d !important; }
  .content, p, li, h1, h2, h3 { color: #e6edf3 !important; }
  a { color: #6cb6ff !important; }
  blockquote { color: #c9d1d9 !important; border-left-color: #6e7681 !important; }
  code, pre { background-color: #22272e !important; color: #e6edf3 !important; }
  .footer { color: #9da7b3 !important; border-top-color: #30363d !important; }
}
@media only screen and (max-width: 480px) {
  .content { padding: 20px 18px 4px 18px !important; }
  .footer { padding: 12px 18px 16px 18px !important; }
}
"""

_EMAIL_TEMPLATE = string.Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<meta name="supported-color-schemes" content="light dark">
<title>$subject</title>
<style>$css</style>
</head>
<body>
<table role="presentation" class="outer" width="100%" cellpadding="0" cellspacing="0" border="0">
<tr><td class="outer-cell" align="center">
<table role="presentation" class="card" width="100%" cellpadding="0" cellspacing="0" border="0">
<tr><td class="content">
$content
</td></tr>$footer
</table>
</td></tr>
</table>
</body>
</html>
""")

_CHARSET = '<meta charset="utf-8">'
_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False, keep_at_rules=True)


def email_document(subject: str, content_html: str, *, footer_html: str = "") -> str:
    """A complete HTML email around `content_html` (sanitised here again), CSS inlined.

    `footer_html` (for example the unsubscribe and preference links) is
    sanitised the same way and shown in a muted row under the content.
    """
    footer = ""
    if footer_html.strip():
        footer = f'\n<tr><td class="footer">{sanitize_email_html(footer_html)}</td></tr>'
    document = _EMAIL_TEMPLATE.substitute(
        subject=html.escape(one_line(subject)),
        css=_EMAIL_CSS,
        content=sanitize_email_html(content_html),
        footer=footer,
    )
    inlined: str = _INLINER.inline(document)
    # css-inline puts the kept at-rules first in <head>; the charset must stay
    # within the first 1024 bytes, so it goes back to the top.
    if inlined.count(_CHARSET) == 1:
        inlined = inlined.replace(_CHARSET, "", 1).replace("<head>", "<head>" + _CHARSET, 1)
    # It also drops the doctype, which some clients need to stay in standards mode.
    if not inlined.lstrip().lower().startswith("<!doctype"):
        inlined = "<!DOCTYPE html>\n" + inlined
    return inlined
