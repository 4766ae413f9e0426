"""The content library: Markdown files with YAML front matter, rendered for Matrix and email.

A library is a folder of ``*.md`` files (sub-folders allowed; files and
folders whose names start with ``.`` or ``_``, and ``README.md``, are
ignored). Each file is one item::

    ---
    id: icebreaker-pair-03-desk-tour
    kind: icebreaker          # icebreaker checkin reflection plan video welcome webinar tip digest
    audience: pair            # pair (a pair room) | cohort (the lounge, cohort email) | person (one person)
    use: prompt               # optional: which moment the hub uses it for (see SLOTS); default per kind
    week: 1                   # optional: only in program week 1 (preferred there)
    title: A desk tour        # optional: email subject / heading in lists; a one-line template
    summary: Show one object  # optional: one-line template; the digest's short form
    tags: [video, light]      # optional: free labels for people browsing the library
    ---
    Body: Markdown, and a Jinja template (sandboxed, StrictUndefined).

Variables (closed set; which ones an item may use depends on its audience and
kind, see `available_variables`):

========  ===========  =====================================================
name      type         fields
========  ===========  =====================================================
cohort    `Cohort`     name, slug, weeks, start (date or None), timezone,
                       lounge_url (link or None)
week      int          the program week (0 before the start)
pair      `Pair`       mentor, mentee (`Person`), video_url (link), plan
                       ("" when none agreed), room_url (link or None)
person    `Person`     name, role (mentor/mentee/moderator), timezone,
                       on_matrix (False for email-only people)
partner   `Person`     the person's pair partner, or None (not paired, or a
                       mentor with several mentees)
webinar   `Webinar`    title, at (aware datetime), url (link or None),
                       local_time (text, in the recipient's zone), starts_in
                       ("in 1 hour", "tomorrow", ... or "")
========  ===========  =====================================================

Every printed value is made safe for its output: text from people (names,
plans, titles) is escaped so it can never become Markdown or HTML; links the
hub vouches for (`Url`) become autolinks; printing None or a whole object is an
error, so a missing ``{% if %}`` guard is caught by `check_library`. A literal
``!hub`` in the source is replaced by the configured command prefix.

Public API::

    default_library_path() -> Path
    check_library(path: Path, *, command_prefix="!hub") -> CheckReport
    load_library(path: Path | None = None, *, command_prefix="!hub") -> Library   # raises ContentError
    rotate(candidates: Sequence[str], used: Iterable[str]) -> str
    available_variables(kind, audience) -> frozenset[str]
    format_local_time(at: datetime, zone: tzinfo | str) -> str

    class Library:
        items: tuple[ContentItem, ...]; root: Path | None; command_prefix: str
        get(item_id) -> ContentItem
        select(kind, audience=None, *, use=None, week=None) -> tuple[ContentItem, ...]
        pick(kind, audience, *, use=None, week=None, used=()) -> ContentItem
        next_icebreaker(audience, used, *, week=None) -> ContentItem
        render(item_or_id, variables: Variables) -> Rendered          # cached per (item, variables)
        counts() -> Counter[tuple[Kind, Audience, str]]

    Variables(cohort, week=0, person=None, partner=None, pair=None, webinar=None)   # frozen, hashable
    Webinar.in_zone(title, at, zone, *, url=None, starts_in="") -> Webinar          # local_time in `zone`

    Rendered: item_id, kind, audience, use, subject, summary,
              body, formatted_body (Matrix), email_html, email_text; matrix_content()
    ContentItem: id, kind, audience, use, week, title, summary, tags, body, path, *_line
    CheckReport: root, files, items, problems (Problem: path, line, message; str() is
                 "file:line: message"); ok, counts(), summary()
    SLOTS: every (kind, audience, use) the hub sends -> when; SAMPLES: the check's sample Variables

Errors are `hub.errors.ContentError`, whose `problems` are ``file:line: reason``
lines. Email wrapping and escaping helpers live in `hub.core.content_format`.

Rotation (`rotate`, `Library.pick`): candidates are ordered (items for the
requested week first, then items without a week, each by id); the first one
used the fewest times in `used` wins. So nothing repeats while an unused one
remains, then the cycle starts over in the same order; ids in `used` that are
not candidates are ignored, and items added later are picked first.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, get_args, get_type_hints
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml  # type: ignore[import-untyped]
from frontmatter.default_handlers import YAMLHandler
from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from hub.core.content_format import (
    Url,
    email_document,
    escape_markdown,
    html_to_text,
    one_line,
    strip_controls,
)
from hub.core.markup import markdown_to_matrix
from hub.errors import ContentError

__all__ = [
    "FRONT_MATTER_KEYS",
    "REQUIRED_KEYS",
    "ROLES",
    "SAMPLES",
    "SLOTS",
    "VARIABLE_TYPES",
    "Audience",
    "CheckReport",
    "Cohort",
    "ContentItem",
    "Kind",
    "Library",
    "Pair",
    "Person",
    "Problem",
    "Rendered",
    "Variables",
    "Webinar",
    "available_variables",
    "check_library",
    "default_library_path",
    "default_use",
    "format_local_time",
    "load_library",
    "rotate",
]


class Kind(StrEnum):
    ICEBREAKER = "icebreaker"
    CHECKIN = "checkin"
    REFLECTION = "reflection"
    PLAN = "plan"
    VIDEO = "video"
    WELCOME = "welcome"
    WEBINAR = "webinar"
    TIP = "tip"
    DIGEST = "digest"


class Audience(StrEnum):
    PAIR = "pair"  # a pair room (and, for plan/dropped, the email to both people)
    COHORT = "cohort"  # the lounge, and cohort-wide emails
    PERSON = "person"  # one person: their direct room, or an email to them


# Every (kind, audience, use) the hub sends, and when. An item must fit one of
# these, so nothing is written that the hub would never send; `hub content
# check` also insists each has at least one item. The first use listed for a
# kind (and audience) is the default when a file has no `use:`.
_K, _A = Kind, Audience
SLOTS: dict[tuple[Kind, Audience, str], str] = {
    (_K.ICEBREAKER, _A.PAIR, "prompt"): "the weekly pair-room icebreaker and `!hub icebreaker` (rotates)",
    (_K.ICEBREAKER, _A.COHORT, "prompt"): "the lounge icebreaker (rotates)",
    (_K.CHECKIN, _A.PAIR, "prompt"): "\"did you meet, and how?\" in check-in weeks",
    (_K.CHECKIN, _A.PERSON, "prompt"): "the private 1-5 check-in in reflection weeks",
    (_K.REFLECTION, _A.PAIR, "prompt"): "the pair-room reflection prompt in reflection weeks (rotates)",
    (_K.REFLECTION, _A.PERSON, "guide"): "the private reflection guide (low check-in score, `!hub reflect`)",
    (_K.PLAN, _A.PAIR, "prompt"): "the backup-plan prompt (launch day, and while no plan is set)",
    (_K.PLAN, _A.PAIR, "dropped"): "`!hub dropped`: the plan and troubleshooting tips, in chat and by email",
    (_K.VIDEO, _A.PAIR, "nudge"): "`!hub call` and the nudge after a text or voice check-in answer (rotates)",
    (_K.WELCOME, _A.COHORT, "greeting"): "the lounge welcome",
    (_K.WELCOME, _A.PAIR, "greeting"): "the pair-room welcome, with the video link and backup-plan prompt",
    (_K.WELCOME, _A.PAIR, "launch"): "\"the program starts\" in each pair room on launch day",
    (_K.WELCOME, _A.PERSON, "greeting"): "the direct-room welcome (or welcome email if email-only)",
    (_K.WEBINAR, _A.COHORT, "announcement"): "a webinar announcement (lounge and email)",
    (_K.WEBINAR, _A.COHORT, "reminder"): "the webinar reminders, 24 h and 1 h before (chat and email)",
    (_K.WEBINAR, _A.COHORT, "follow-up"): "after a webinar (lounge)",
    (_K.TIP, _A.COHORT, "digest"): "the tip in the weekly digest (rotates)",
    (_K.DIGEST, _A.COHORT, "intro"): "the opening lines of the weekly digest",
}

REQUIRED_KEYS = ("id", "kind", "audience")
FRONT_MATTER_KEYS = (*REQUIRED_KEYS, "use", "week", "title", "summary", "tags")
ROLES = ("mentor", "mentee", "moderator")
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}$")
_COMMAND = re.compile(r"(?<![\w!])!hub\b")
_MAX_EVENT_BYTES = 48_000  # Matrix caps an event at 65 536 bytes, JSON and encryption included


def default_use(kind: Kind, audience: Audience) -> str:
    """The `use` a file gets when it names none.

    The only use for its (kind, audience) if there is one, else the kind's first.
    """
    for_pair = [u for (k, a, u) in SLOTS if k is kind and a is audience]
    if len(for_pair) == 1:
        return for_pair[0]
    return next(u for (k, _a, u) in SLOTS if k is kind)


# --- variables ------------------------------------------------------------------------------


def _link(value: str | None, what: str) -> Url | None:
    if value is None:
        return None
    try:
        return Url(value)
    except ContentError as e:
        raise ContentError(f"{what}: {e}") from None


@dataclass(frozen=True)
class Person:
    name: str
    role: str  # mentor | mentee | moderator
    timezone: str = "UTC"
    on_matrix: bool = True  # False for email-only participants

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ContentError(f"person.role {self.role!r} is not one of {', '.join(ROLES)}")


@dataclass(frozen=True)
class Pair:
    mentor: Person
    mentee: Person
    video_url: str
    plan: str = ""  # the agreed backup plan; "" when none is set
    room_url: str | None = None  # a matrix.to link to the pair room, for emails

    def __post_init__(self) -> None:
        object.__setattr__(self, "video_url", _link(self.video_url, "pair.video_url"))
        object.__setattr__(self, "room_url", _link(self.room_url, "pair.room_url"))


@dataclass(frozen=True)
class Cohort:
    name: str
    slug: str = ""
    weeks: int = 12
    start: date | None = None
    timezone: str = "UTC"
    lounge_url: str | None = None  # a matrix.to link to the lounge, for emails

    def __post_init__(self) -> None:
        object.__setattr__(self, "lounge_url", _link(self.lounge_url, "cohort.lounge_url"))


def _zone(zone: tzinfo | str) -> tzinfo:
    if isinstance(zone, tzinfo):
        return zone
    try:
        return ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ContentError(f"{zone!r} is not a time zone (use a name like Europe/Berlin)") from None


def format_local_time(at: datetime, zone: tzinfo | str) -> str:
    """``Monday 11 January 2027, 18:00 CET``: how a webinar time reads in one person's zone."""
    if at.tzinfo is None:
        raise ContentError(f"{at.isoformat()} has no time zone")
    local = at.astimezone(_zone(zone))
    abbr = local.tzname() or ""
    if abbr[:1] in ("+", "-"):  # zones without an abbreviation report "+03"
        abbr = f"UTC{abbr}"
    return f"{local:%A} {local.day} {local:%B %Y, %H:%M} {abbr}".rstrip()


@dataclass(frozen=True)
class Webinar:
    title: str
    at: datetime  # timezone-aware
    url: str | None = None
    local_time: str = ""  # filled from `at` in its own zone when empty; see `in_zone`
    starts_in: str = ""  # for reminders: "in 1 hour", "tomorrow"; "" otherwise

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise ContentError(f"webinar.at {self.at.isoformat()} has no time zone")
        object.__setattr__(self, "url", _link(self.url, "webinar.url"))
        if not self.local_time:
            object.__setattr__(self, "local_time", format_local_time(self.at, self.at.tzinfo))

    @classmethod
    def in_zone(
        cls, title: str, at: datetime, zone: tzinfo | str, *, url: str | None = None, starts_in: str = ""
    ) -> Webinar:
        """The webinar as seen by someone in `zone` (local_time in their zone)."""
        return cls(title, at, url, format_local_time(at, zone), starts_in)


@dataclass(frozen=True)
class Variables:
    """What one rendering sees. Frozen and hashable: it is the cache key with the item id."""

    cohort: Cohort
    week: int = 0
    person: Person | None = None
    partner: Person | None = None
    pair: Pair | None = None
    webinar: Webinar | None = None


VARIABLE_TYPES: dict[str, type] = {
    "cohort": Cohort,
    "week": int,
    "pair": Pair,
    "person": Person,
    "partner": Person,
    "webinar": Webinar,
}


def available_variables(kind: Kind, audience: Audience) -> frozenset[str]:
    """The variables an item may use.

    cohort and week everywhere; pair in pair items; person and partner in
    person items; webinar in webinar items.
    """
    names = {"cohort", "week"}
    if audience is Audience.PAIR:
        names.add("pair")
    if audience is Audience.PERSON:
        names |= {"person", "partner"}
    if kind is Kind.WEBINAR:
        names.add("webinar")
    return frozenset(names)


def _fields(cls: type) -> dict[str, type | None]:
    """Field name -> its dataclass type (for nested checks), None for plain values."""
    hints = get_type_hints(cls)
    out: dict[str, type | None] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        inner = [a for a in get_args(hint) if a is not type(None)] or [hint]
        first = inner[0]
        out[f.name] = first if isinstance(first, type) and dataclasses.is_dataclass(first) else None
    return out


# Sample values for `check_library`: once with every optional value present,
# once with every optional value missing, once at the program's last week.
# The mentor's hyphen shows whether a value landed inside `code`, where escaping would show.
_ADA = Person("Ada-Marie Example", "mentor", "Europe/Berlin")
_SAM = Person("Sam Sample", "mentee", "America/Toronto")
_WHEN = datetime(2027, 1, 11, 17, 0, tzinfo=ZoneInfo("Europe/Berlin"))
SAMPLES: tuple[tuple[str, Variables], ...] = (
    ("all values present", Variables(
        cohort=Cohort("Winter 2027", "winter-2027", 12, date(2027, 1, 11), "Europe/Berlin",
                      "https://matrix.to/#/%23winter-2027-lounge:example.org"),
        week=3, person=_ADA, partner=_SAM,
        pair=Pair(_ADA, _SAM, "https://meet.jit.si/hub-3f9c2a7d1b", "If the call drops: switch to phones.",
                  "https://matrix.to/#/!pair:example.org"),
        webinar=Webinar.in_zone("Kick-off", _WHEN, "America/Toronto",
                                url="https://meet.jit.si/winter-2027-kickoff", starts_in="in 1 hour"),
    )),
    ("optional values missing", Variables(
        cohort=Cohort("Winter 2027", "winter-2027", 12),
        week=0, person=Person("Sam Sample", "mentee", on_matrix=False), partner=None,
        pair=Pair(_ADA, _SAM, "https://meet.jit.si/hub-3f9c2a7d1b"),
        webinar=Webinar("Kick-off", _WHEN),
    )),
    ("last week, a moderator", Variables(
        cohort=Cohort("Winter 2027", "winter-2027", 12, date(2027, 1, 11)),
        week=12, person=Person("Mo Derator", "moderator"), partner=None,
        pair=Pair(_ADA, _SAM, "https://meet.jit.si/hub-3f9c2a7d1b", "Phones, then text."),
        webinar=Webinar.in_zone("Closing circle", _WHEN, "UTC", starts_in="tomorrow"),
    )),
)


# --- items ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContentItem:
    id: str
    kind: Kind
    audience: Audience
    use: str
    body: str  # the Jinja/Markdown source, exactly as in the file after the front matter
    path: Path
    week: int | None = None
    title: str | None = None
    summary: str | None = None
    tags: tuple[str, ...] = ()
    id_line: int = 1
    title_line: int = 1
    summary_line: int = 1
    body_line: int = 1  # file line of the body's first line

    @property
    def where(self) -> str:
        return f"{self.path}:{self.id_line}"

    @property
    def text_line(self) -> int:
        """File line of the body's first non-blank line."""
        skipped = self.body[: len(self.body) - len(self.body.lstrip())]
        return self.body_line + skipped.count("\n")

    def line_of(self, pattern: re.Pattern[str]) -> int:
        """File line of the first body line matching `pattern`, else of the first text."""
        for n, text in enumerate(self.body.split("\n")):
            if pattern.search(text):
                return self.body_line + n
        return self.text_line


@dataclass(frozen=True)
class Rendered:
    """One item rendered for one set of variables, for chat and for email."""

    item_id: str
    kind: Kind
    audience: Audience
    use: str
    subject: str  # one line: the rendered title, else the first line of the text
    summary: str  # one line: the rendered summary, else the first paragraph (shortened)
    body: str  # Matrix plain-text body
    formatted_body: str  # Matrix org.matrix.custom.html, the spec's allowed subset only
    email_html: str  # a complete document, CSS inlined, no images
    email_text: str  # the text/plain part

    def matrix_content(self, msgtype: str = "m.notice") -> dict[str, str]:
        return {
            "msgtype": msgtype,
            "body": self.body,
            "format": "org.matrix.custom.html",
            "formatted_body": self.formatted_body,
        }


# --- rendering ------------------------------------------------------------------------------


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


def _as_kind(kind: Kind | str) -> Kind:
    try:
        return Kind(kind)
    except ValueError:
        raise ContentError(f"{kind!r} is not a kind ({', '.join(Kind)})") from None


def _as_audience(audience: Audience | str) -> Audience:
    try:
        return Audience(audience)
    except ValueError:
        raise ContentError(f"{audience!r} is not an audience ({', '.join(Audience)})") from None


def rotate(candidates: Sequence[str], used: Iterable[str]) -> str:
    """The first candidate used the fewest times: no repeats while unused ones remain, then over again."""
    if not candidates:
        raise ContentError("nothing to choose from")
    wanted = set(candidates)
    counts = Counter(u for u in used if u in wanted)
    fewest = min(counts[c] for c in candidates)
    return next(c for c in candidates if counts[c] == fewest)


class Library:
    """A loaded, checked library. Build it with `load_library`."""

    def __init__(
        self, items: Iterable[ContentItem], *, root: Path | None = None,
        command_prefix: str = "!hub", cache_size: int = 512,
    ) -> None:
        self.items: tuple[ContentItem, ...] = tuple(sorted(items, key=lambda i: i.id))
        self.root = root
        self.command_prefix = command_prefix
        self._by_id: dict[str, ContentItem] = {}
        for item in self.items:
            if item.id in self._by_id:
                first = self._by_id[item.id].where
                raise ContentError(f"{item.where}: duplicate id {item.id!r} (also {first})")
            self._by_id[item.id] = item
        self._compiled: dict[str, _Compiled] = {}
        self._cache: OrderedDict[tuple[str, Variables], Rendered] = OrderedDict()
        self._cache_size = cache_size

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[ContentItem]:
        return iter(self.items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._by_id

    def get(self, item_id: str) -> ContentItem:
        try:
            return self._by_id[item_id]
        except KeyError:
            raise ContentError(f"no content item with id {item_id!r}") from None

    def counts(self) -> Counter[tuple[Kind, Audience, str]]:
        return Counter((i.kind, i.audience, i.use) for i in self.items)

    def select(
        self, kind: Kind | str, audience: Audience | str | None = None, *,
        use: str | None = None, week: int | None = None,
    ) -> tuple[ContentItem, ...]:
        """Items of a kind (and audience, use), in rotation order.

        With `week`, only items for that week (first) and items without a week.
        """
        k = _as_kind(kind)
        a = None if audience is None else _as_audience(audience)
        pool = [i for i in self.items if i.kind is k and (a is None or i.audience is a)
                and (use is None or i.use == use)]
        if week is None:
            return tuple(pool)
        return tuple([i for i in pool if i.week == week] + [i for i in pool if i.week is None])

    def pick(
        self, kind: Kind | str, audience: Audience | str, *, use: str | None = None,
        week: int | None = None, used: Iterable[str] = (),
    ) -> ContentItem:
        """The next item for a target, given the ids it has already had (`used`, any order).

        `week` is the program week (items for it are preferred; items for other
        weeks are never picked); without it only items without a week qualify.
        """
        k, a = _as_kind(kind), _as_audience(audience)
        use = use or default_use(k, a)
        pool = [i for i in self.select(k, a, use=use, week=week) if week is not None or i.week is None]
        if not pool:
            when = f" in week {week}" if week is not None else ""
            raise ContentError(f"the content library has no {k} item for audience {a} (use {use}){when}")
        return self._by_id[rotate([i.id for i in pool], used)]

    def next_icebreaker(
        self, audience: Audience | str, used: Iterable[str], *, week: int | None = None
    ) -> ContentItem:
        """The next icebreaker for a pair room (audience pair) or a lounge (audience cohort)."""
        return self.pick(Kind.ICEBREAKER, audience, week=week, used=used)

    def render(self, item: ContentItem | str, variables: Variables) -> Rendered:
        """Render for chat and email; cached, so the same (item, variables) is rendered once.

        Raises `ContentError` ("file:line: cannot render ID: reason") when a
        variable the item needs is missing or the template fails.
        """
        it = self.get(item) if isinstance(item, str) else item
        key = (it.id, variables)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        try:
            rendered = self._render(it, variables)
        except _RenderFailure as e:
            raise ContentError(f"{it.path}:{e.line}: cannot render {it.id!r}: {e.reason}") from None
        self._cache[key] = rendered
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return rendered

    # internals

    def _source(self, text: str) -> str:
        if self.command_prefix == "!hub":
            return text
        return _COMMAND.sub(lambda _m: self.command_prefix, text)

    def _compile(self, item: ContentItem) -> _Compiled:
        compiled = self._compiled.get(item.id)
        if compiled is not None:
            return compiled

        def build(env: _Sandbox, source: str, name: str, line: int) -> Template:
            try:
                code = env.compile(_tidy_tag_lines(self._source(source)), name=name, filename=name)
            except TemplateSyntaxError as e:
                raise _RenderFailure(line + (e.lineno or 1) - 1, f"template syntax: {e.message}") from None
            return env.template_class.from_code(env, code, env.make_globals(None))

        body_name = f"{item.path}#body"
        compiled = _Compiled(
            body=build(_MARKDOWN_ENV, item.body, body_name, item.body_line),
            body_name=body_name,
            title=None if item.title is None else build(_PLAIN_ENV, item.title, "title", item.title_line),
            summary=None if item.summary is None else build(
                _PLAIN_ENV, item.summary, "summary", item.summary_line),
        )
        self._compiled[item.id] = compiled
        return compiled

    def _context(self, item: ContentItem, v: Variables) -> dict[str, Any]:
        names = available_variables(item.kind, item.audience)
        context: dict[str, Any] = {"cohort": v.cohort, "week": v.week}
        for needed, value in (("pair", v.pair), ("person", v.person), ("webinar", v.webinar)):
            if needed in names:
                if value is None:
                    raise _RenderFailure(item.id_line, f"it is a {item.kind}/{item.audience} item: "
                                                       f"Variables.{needed} is required")
                context[needed] = value
        if "partner" in names:
            context["partner"] = v.partner
        return context

    def _render(self, item: ContentItem, variables: Variables) -> Rendered:
        compiled = self._compile(item)
        context = self._context(item, variables)

        def run(template: Template, name: str, line: int, *, body: bool) -> str:
            try:
                return template.render(context)
            except _RENDER_ERRORS as e:
                at = _template_line(e.__traceback__, name) if body else None
                reason = e.message if isinstance(e, TemplateError) and e.message else str(e)
                raise _RenderFailure(line + (at or 1) - 1, reason) from None

        source = run(compiled.body, compiled.body_name, item.body_line, body=True)
        _, fragment = markdown_to_matrix(source)
        text = html_to_text(fragment)
        title = "" if compiled.title is None else one_line(
            run(compiled.title, "title", item.title_line, body=False))
        summary = "" if compiled.summary is None else one_line(
            run(compiled.summary, "summary", item.summary_line, body=False))
        first_paragraph = text.split("\n\n", 1)[0]
        subject = title or _shorten(text.split("\n", 1)[0], 78)
        return Rendered(
            item_id=item.id, kind=item.kind, audience=item.audience, use=item.use,
            subject=subject,
            summary=summary or _shorten(first_paragraph, 280),
            body=text,
            formatted_body=fragment,
            email_html=email_document(subject, fragment),
            email_text=text,
        )


# --- loading and checking -------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}" if self.line else f"{self.path}: {self.message}"


@dataclass(frozen=True)
class CheckReport:
    root: Path
    files: int
    items: tuple[ContentItem, ...]
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> Counter[tuple[Kind, Audience, str]]:
        return Counter((i.kind, i.audience, i.use) for i in self.items)

    def summary(self) -> str:
        """``78 items in 78 files: icebreaker 16 pair + 8 cohort, ...`` (or the problem count)."""
        if self.problems:
            return f"{self.root}: {len(self.problems)} problem(s) in {self.files} file(s)"
        per_kind: list[str] = []
        for kind in Kind:
            by_audience = Counter(i.audience for i in self.items if i.kind is kind)
            if by_audience:
                parts = " + ".join(f"{by_audience[a]} {a}" for a in Audience if by_audience[a])
                per_kind.append(f"{kind} {parts}")
        return f"{self.root}: {len(self.items)} items in {self.files} files, OK ({'; '.join(per_kind)})"


def default_library_path() -> Path:
    """The library shipped with the package.

    ``hub/content`` in an installed wheel; in a checkout that is a symlink to
    the repository's ``content/``, which is also tried directly in case the
    symlink did not survive (e.g. a Windows checkout without symlinks).
    """
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "content", package.parent / "content"):
        if candidate.is_dir():
            return candidate.resolve()
    raise ContentError(f"the shipped content library is missing (looked in {package / 'content'})")


def _library_files(root: Path) -> list[Path]:
    found = []
    for path in root.rglob("*.md"):
        rel = path.relative_to(root)
        if any(part.startswith((".", "_")) for part in rel.parts) or path.name.lower() == "readme.md":
            continue
        if path.is_file():
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _FileParser:
    """Front matter of one file -> a `ContentItem` (or None) and its problems, each with a line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[Problem] = []

    def problem(self, line: int | None, message: str) -> None:
        self.problems.append(Problem(self.path, line, message))

    def parse(self) -> ContentItem | None:
        try:
            text = self.path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as e:
            self.problem(e.object[: e.start].count(b"\n") + 1, "not UTF-8 text")
            return None
        except OSError as e:
            self.problem(None, f"cannot read: {e.strerror or e}")
            return None
        handler = YAMLHandler()
        boundaries = list(handler.FM_BOUNDARY.finditer(text))
        if not boundaries or text[: boundaries[0].start()].strip():
            self.problem(1, "no front matter: the file must start with a '---' line, then id, kind and "
                            "audience, then another '---' line")
            return None
        if len(boundaries) < 2:
            self.problem(text.count("\n", 0, boundaries[0].start()) + 1,
                         "the front matter is never closed: add a '---' line after it")
            return None
        start, end = boundaries[0], boundaries[1]
        yaml_text = text[start.end(): end.start()]
        yaml_line = text.count("\n", 0, start.end()) + 1  # file line of yaml_text's first line
        body_line = text.count("\n", 0, end.end()) + 1
        try:
            node = yaml.compose(yaml_text, Loader=yaml.SafeLoader)
            data = handler.load(yaml_text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            context_mark = getattr(e, "context_mark", None)
            reason = getattr(e, "problem", None) or str(e)
            if getattr(e, "context", None):
                reason = f"{reason} ({e.context}"
                if context_mark is not None:
                    reason += f" on line {yaml_line + context_mark.line}"
                reason += ")"
            self.problem(yaml_line + mark.line if mark is not None else yaml_line,
                         f"front matter is not valid YAML: {reason}")
            return None
        if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
            self.problem(yaml_line, "front matter must be 'key: value' lines")
            return None
        lines: dict[str, int] = {}
        for key_node, _value in node.value:
            key = str(key_node.value)
            line = yaml_line + key_node.start_mark.line
            if key in lines:
                self.problem(line, f"front-matter key {key!r} appears twice (also on line {lines[key]})")
            lines.setdefault(key, line)
            if key not in FRONT_MATTER_KEYS:
                self.problem(line, f"unknown front-matter key {key!r}{_suggest(key, FRONT_MATTER_KEYS)}; "
                                   f"allowed: {', '.join(FRONT_MATTER_KEYS)}")
        opening_line = text.count("\n", 0, start.start()) + 1
        for key in REQUIRED_KEYS:
            if key not in data:
                self.problem(opening_line, f"missing required front-matter key {key!r}")
        closing_line = text.count("\n", 0, end.start()) + 1
        return self._item(data, lines, text[end.end():], body_line, yaml_line, closing_line)

    def _item(self, data: dict[Any, Any], lines: dict[str, int], body: str, body_line: int,
              yaml_line: int, closing_line: int) -> ContentItem | None:
        def at(key: str) -> int:
            return lines.get(key, yaml_line)

        ok = True
        item_id = data.get("id")
        if "id" in data and not (isinstance(item_id, str) and _ID.match(item_id)):
            self.problem(at("id"), f"id {item_id!r} must be lowercase letters, digits, '-', '_' or '.', "
                                   "starting with a letter or digit (e.g. icebreaker-pair-desk-tour)")
            ok = False
        kind = audience = None
        if "kind" in data:
            try:
                kind = Kind(str(data["kind"]))
            except ValueError:
                self.problem(at("kind"), f"kind {data['kind']!r} is not one of {', '.join(Kind)}"
                                         f"{_suggest(str(data['kind']), Kind)}")
        if "audience" in data:
            try:
                audience = Audience(str(data["audience"]))
            except ValueError:
                given = str(data["audience"])
                self.problem(at("audience"), f"audience {given!r} is not one of "
                                             f"{', '.join(Audience)}{_suggest(given, Audience)}")
        use = None
        if kind is not None and audience is not None:
            uses = [u for (k, a, u) in SLOTS if k is kind and a is audience]
            if not uses:
                fits = sorted({a.value for (k, a, _u) in SLOTS if k is kind})
                self.problem(at("audience"), f"the hub never sends {kind} items to audience {audience} "
                                             f"({kind} items are for audience {' or '.join(fits)})")
            elif "use" in data:
                if data["use"] in uses:
                    use = str(data["use"])
                else:
                    self.problem(at("use"), f"use {data['use']!r} is not one of {', '.join(uses)} for "
                                            f"{kind}/{audience}{_suggest(str(data['use']), uses)}")
            else:
                use = default_use(kind, audience)
        week = data.get("week")
        if week is not None and (isinstance(week, bool) or not isinstance(week, int) or not 1 <= week <= 520):
            self.problem(at("week"), f"week {week!r} must be a program week number: 1, 2, 3, ...")
            week = None
        texts: dict[str, str | None] = {}
        for key in ("title", "summary"):
            value = data.get(key)
            if value is not None and not (isinstance(value, str) and value.strip()):
                self.problem(at(key), f"{key} must be a line of text")
                value = None
            texts[key] = value
        tags = data.get("tags", [])
        if isinstance(tags, str) or not isinstance(tags, list) or not all(
                isinstance(t, str) and t.strip() for t in tags):
            self.problem(at("tags"), "tags must be a list of words, e.g. [video, light]")
            tags = []
        if not body.strip():
            self.problem(closing_line, "the body is empty: write the message under the front matter")
            ok = False
        if not ok or not isinstance(item_id, str) or kind is None or audience is None or use is None:
            return None
        return ContentItem(
            id=item_id, kind=kind, audience=audience, use=use, body=body, path=self.path,
            week=week, title=texts["title"], summary=texts["summary"], tags=tuple(tags),
            id_line=at("id"), title_line=at("title"), summary_line=at("summary"), body_line=body_line,
        )


def _lint_template(item: ContentItem, source: str, first_line: int, problems: list[Problem]) -> bool:
    """Static checks of one template: syntax, variables, fields. False when it does not even parse."""
    try:
        ast = _MARKDOWN_ENV.parse(_tidy_tag_lines(source))
    except TemplateSyntaxError as e:
        problems.append(Problem(item.path, first_line + (e.lineno or 1) - 1, f"template syntax: {e.message}"))
        return False
    found: dict[tuple[int, str], None] = {}  # ordered set: the same mistake once per line

    def report(node: nodes.Node, message: str) -> None:
        found[(first_line + (node.lineno or 1) - 1, message)] = None

    for stmt in ast.find_all((nodes.Include, nodes.Extends, nodes.Import, nodes.FromImport)):
        report(stmt, "include, extends and import are not available: each file stands alone")
    available = available_variables(item.kind, item.audience)
    undeclared = meta.find_undeclared_variables(ast)
    for name_node in ast.find_all(nodes.Name):
        name = name_node.name
        if name_node.ctx != "load" or name not in undeclared or name in available:
            continue
        if name in VARIABLE_TYPES:
            report(name_node, f"variable {name!r} is not available in a {item.kind}/{item.audience} item "
                              f"(available: {', '.join(sorted(available))})")
        else:
            report(name_node, f"unknown variable {name!r}{_suggest(name, available)} "
                              f"(available here: {', '.join(sorted(available))})")
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        chain: list[str] = []
        cur: nodes.Expr = node
        while isinstance(cur, nodes.Getattr | nodes.Getitem):
            if isinstance(cur, nodes.Getattr):
                chain.append(cur.attr)
            elif isinstance(cur.arg, nodes.Const) and isinstance(cur.arg.value, str):
                chain.append(cur.arg.value)
            else:
                chain = []
                break
            cur = cur.node
        if not chain or not isinstance(cur, nodes.Name) or cur.name not in undeclared:
            continue
        if cur.name not in available:
            continue  # already reported as a variable
        chain.reverse()
        owner: type | None = VARIABLE_TYPES[cur.name]
        path = cur.name
        for attr in chain:
            if owner is None or not dataclasses.is_dataclass(owner):
                break  # a plain value (text, number, date): its methods are the sandbox's business
            fields = _fields(owner)
            if attr not in fields:
                report(node, f"{path!r} has no field {attr!r}{_suggest(attr, fields)} "
                             f"(fields: {', '.join(fields)})")
                break
            owner = fields[attr]
            path = f"{path}.{attr}"
    problems.extend(Problem(item.path, line, message) for (line, message) in found)
    return True


_IMAGE = re.compile(r"!\[|<img", re.IGNORECASE)
_CODE_VARIABLE = re.compile(r"`[^`]*\{\{|^( {4}|\t)")


def _sample_check(library: Library, item: ContentItem, problems: list[Problem]) -> None:
    for label, variables in SAMPLES:
        try:
            rendered = library._render(item, variables)
        except _RenderFailure as e:
            problems.append(Problem(item.path, e.line,
                                    f"does not render with the sample variables ({label}): {e.reason}"))
            return
        if not rendered.body.strip():
            problems.append(Problem(item.path, item.text_line, f"renders to nothing ({label})"))
            return
        if "<img" in rendered.formatted_body:
            problems.append(Problem(item.path, item.line_of(_IMAGE),
                                    "images are not supported: emails load nothing remote "
                                    "and Matrix needs uploaded (mxc://) images"))
            return
        if "Ada\\-Marie" in rendered.body:
            problems.append(Problem(item.path, item.line_of(_CODE_VARIABLE),
                                    "a variable is printed inside `code` or a code block, where its escaping "
                                    "shows (Ada\\-Marie); move it out of the backticks"))
            return
        size = len(rendered.body.encode()) + len(rendered.formatted_body.encode())
        if size > _MAX_EVENT_BYTES:
            problems.append(Problem(item.path, item.text_line,
                                    f"too long for one Matrix message ({size} bytes; keep it under "
                                    f"{_MAX_EVENT_BYTES})"))
            return


def check_library(path: Path, *, command_prefix: str = "!hub") -> CheckReport:
    """Lint a library folder: front matter, ids, template variables and fields, sample renders, coverage."""
    root = Path(path)
    if not root.is_dir():
        return CheckReport(root, 0, (), (Problem(root, None, "not a folder"),))
    files = _library_files(root)
    problems: list[Problem] = []
    items: list[ContentItem] = []
    seen: dict[str, ContentItem] = {}
    for file in files:
        parser = _FileParser(file)
        item = parser.parse()
        problems.extend(parser.problems)
        if item is None:
            continue
        if item.id in seen:
            problems.append(Problem(file, item.id_line,
                                    f"duplicate id {item.id!r} (also in {seen[item.id].where})"))
            continue
        seen[item.id] = item
        items.append(item)
    library = Library(items, root=root, command_prefix=command_prefix)
    for item in library.items:
        parsed = [_lint_template(item, item.body, item.body_line, problems)]
        for text, line in ((item.title, item.title_line), (item.summary, item.summary_line)):
            if text is not None:
                parsed.append(_lint_template(item, text, line, problems))
        clean = not any(p.path == item.path for p in problems)
        if all(parsed) and clean:
            _sample_check(library, item, problems)
    if not files:
        problems.append(Problem(root, None, "no content files (*.md) in this folder"))
    else:
        have = {(i.kind, i.audience, i.use) for i in items}
        for slot, what in SLOTS.items():
            if slot not in have:
                kind, audience, use = slot
                problems.append(Problem(root, None, f"no {kind} item for audience {audience} with use {use}: "
                                                    f"the hub needs one for {what}"))
    return CheckReport(root, len(files), library.items, tuple(problems))


def load_library(path: Path | None = None, *, command_prefix: str = "!hub") -> Library:
    """Check and load a library (the shipped one when `path` is None).

    Raises `ContentError` listing every problem, as `hub content check` would.
    """
    root = Path(path) if path is not None else default_library_path()
    report = check_library(root, command_prefix=command_prefix)
    if report.problems:
        raise ContentError([str(p) for p in report.problems])
    return Library(report.items, root=root, command_prefix=command_prefix)
