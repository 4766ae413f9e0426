"""The Jinja side of content items: the sandbox, safe printing, and turning failures into file lines.

It knows nothing of items or libraries, so imports flow one way:
`hub.core.content` (`Library.render`) and `hub.core.content_library` (the
check's static lint and sample renders) import from here, never the reverse.

- `_Sandbox` is Jinja's immutable sandbox plus caps on ``*`` and ``**``, so a
  template cannot build a gigantic value.
- Every printed value passes a finalizer: `_finalize_markdown` (bodies)
  escapes text from people and turns a `Url` into an autolink;
  `_finalize_plain` (titles, summaries) strips control characters. Both refuse
  None and whole objects, which is how a missing ``{% if %}`` guard is caught.
- `_tidy_tag_lines` makes a line holding only ``{% ... %}`` tags vanish from the
  output while keeping template line numbers equal to file lines.
- `_RenderFailure`, `_template_line` and `_RENDER_ERRORS` turn what a template
  raises into a file line and a reason.

Every name here is private to the content modules, hence the empty ``__all__``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from hub.core.content_format import Url, escape_markdown, one_line, strip_controls
from hub.errors import ContentError

# Nothing public: these are the internals of `hub.core.content` and
# `hub.core.content_library`, shared by the two, and may change with them.
__all__: list[str] = []


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox, plus caps on `*` and `**` so a template cannot build a gigantic value."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > 64:
            raise SecurityError("exponent too large")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int) and len(seq) * n > 10_000:
                    raise SecurityError("repetition too large")
        return super().call_binop(context, operator, left, right)


def _printable(value: object) -> str:
    if value is None:
        raise ContentError("a value is empty (None) here; guard it with {% if ... %}")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__.lower()
        raise ContentError(f"print one field of the {name} (e.g. .name or .title), not the whole {name}")
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _finalize_markdown(value: object) -> str:
    if isinstance(value, Url):
        return value.markdown()
    return escape_markdown(_printable(value))


def _finalize_plain(value: object) -> str:
    return strip_controls(_printable(value))


def _environment(finalize: Any) -> _Sandbox:
    # No trim_blocks: it also eats the newline after a tag that ends a line of
    # text ("… different.{% endif %}"), silently merging lines. Tag-only lines
    # are handled by `_tidy_tag_lines` instead.
    return _Sandbox(
        undefined=StrictUndefined, finalize=finalize, autoescape=False,
        lstrip_blocks=True, auto_reload=False,
    )


_TAG_ONLY_LINE = re.compile(r"^[ \t]*(?:\{%(?:(?!%\}).)*%\}[ \t]*)+$")
_RAW = re.compile(r"\{%-?\s*(?:end)?raw\s*-?%\}")
_COMMENT_OR_RAW = re.compile(r"\{#|#\}|\{%-?\s*(?:end)?raw\s*-?%\}")


def _tidy_tag_lines(source: str) -> str:
    """Make a line holding only ``{% ... %}`` tags vanish from the output, newline included.

    That is what authors expect of ``{% if %}`` / ``{% endif %}`` on their own
    lines, while a tag inside a line of text leaves that line alone. The
    newline is moved into a Jinja comment rather than deleted, so template
    line numbers still match the file for error messages. A tag that already
    uses whitespace control (``-%}``) is left to do exactly what it says.
    """
    lines = source.split("\n")
    out: list[str] = []
    inside: str | None = None  # "comment" or "raw" while a line starts inside one
    for n, line in enumerate(lines):
        last = n == len(lines) - 1
        tidy = (inside is None and not last and _TAG_ONLY_LINE.match(line) is not None
                and not line.rstrip().endswith("-%}") and not _RAW.search(line))
        out.append(line.strip() + "{#\n#}" if tidy else line if last else line + "\n")
        for token in _COMMENT_OR_RAW.findall(line):
            if inside is None and token == "{#":
                inside = "comment"
            elif inside == "comment" and token == "#}":
                inside = None
            elif inside is None and _RAW.fullmatch(token) and "endraw" not in token:
                inside = "raw"
            elif inside == "raw" and "endraw" in token:
                inside = None
    return "".join(out)


_MARKDOWN_ENV = _environment(_finalize_markdown)
_PLAIN_ENV = _environment(_finalize_plain)


class _RenderFailure(Exception):
    def __init__(self, line: int, reason: str) -> None:
        self.line = line
        self.reason = reason
        super().__init__(reason)


def _template_line(tb: TracebackType | None, filename: str) -> int | None:
    """The template line of the innermost frame Jinja attributed to `filename`."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


# What a template can raise at render time: Jinja's own errors (undefined, sandbox), ours
# (None or an object printed), and plain Python errors from expressions such as
# `{{ week / 0 }}` or a macro that recurses forever.
_RENDER_ERRORS = (TemplateError, ContentError, TypeError, ValueError, ArithmeticError, LookupError,
                  RecursionError)


@dataclass(frozen=True)
class _Compiled:
    body: Template
    body_name: str
    title: Template | None
    summary: Template | None


def _shorten(text: str, limit: int) -> str:
    text = one_line(text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
