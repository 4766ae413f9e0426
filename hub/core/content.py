"""The content library: items, their variables, selection and rotation, rendered for Matrix and email.

Each item is one Markdown file with YAML front matter::

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
webinar   `WebinarView` title, at (aware datetime), url (link or None),
                       local_time (text, in the recipient's zone), starts_in
                       ("in 1 hour", "tomorrow", ... or "")
========  ===========  =====================================================

Every printed value is made safe for its output: text from people (names,
plans, titles) is escaped so it can never become Markdown or HTML; links the
hub vouches for (`Url`) become autolinks; printing None or a whole object is an
error, so a missing ``{% if %}`` guard is caught by `check_library` (in
`hub.core.content_library`). A literal ``!hub`` in the source is replaced by
the configured command prefix.

Public API::

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
    WebinarView.in_zone(title, at, zone, *, url=None, starts_in="") -> WebinarView  # local_time in `zone`

    Rendered: item_id, kind, audience, use, subject, summary,
              body, formatted_body (Matrix), email_html, email_text;
              matrix_content(people=None)  # a notice, or a prompt notifying `people` (core.messages)
    ContentItem: id, kind, audience, use, week, title, summary, tags, body, path, *_line
    SLOTS: every (kind, audience, use) the hub sends -> when; SAMPLES: the check's sample Variables

Elsewhere: `hub.core.content_library` finds, reads and checks a folder of item
files into a `Library` (`load_library`, `check_library`, `default_library_path`,
`CheckReport`, `Problem`); `hub.core.content_render` holds the Jinja sandbox
and the rendering helpers `Library.render` is built on; email wrapping and
escaping helpers live in `hub.core.content_format`. Errors are
`hub.errors.ContentError`.

Rotation (`rotate`, `Library.pick`): candidates are ordered (items for the
requested week first, then items without a week, each by id); the first one
used the fewest times in `used` wins. So nothing repeats while an unused one
remains, then the cycle starts over in the same order; ids in `used` that are
not candidates are ignored, and items added later are picked first.
"""

from __future__ import annotations

import re
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import Template, TemplateError, TemplateSyntaxError

from hub.core.content_format import Url, email_document, html_to_text, one_line
from hub.core.content_render import (
    _MARKDOWN_ENV,
    _PLAIN_ENV,
    _RENDER_ERRORS,
    _Compiled,
    _RenderFailure,
    _Sandbox,
    _shorten,
    _template_line,
    _tidy_tag_lines,
)
from hub.core.markup import markdown_to_matrix
from hub.core.messages import Mention, notice_content, prompt_content
from hub.errors import ContentError

__all__ = [
    "FRONT_MATTER_KEYS",
    "REQUIRED_KEYS",
    "ROLES",
    "SAMPLES",
    "SLOTS",
    "VARIABLE_TYPES",
    "Audience",
    "Cohort",
    "ContentItem",
    "Kind",
    "Library",
    "Pair",
    "Person",
    "Rendered",
    "Variables",
    "WebinarView",
    "available_variables",
    "default_use",
    "format_local_time",
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
    (_K.CHECKIN, _A.PERSON, "met"): "\"did you meet, and how?\" by email to an email-only participant "
                                    "(the hub adds the answer links)",
    (_K.REFLECTION, _A.PAIR, "prompt"): "the pair-room reflection prompt in reflection weeks (rotates)",
    (_K.REFLECTION, _A.PERSON, "guide"): "the private reflection guide (low check-in score, `!hub reflect`)",
    (_K.PLAN, _A.PAIR, "prompt"): "the backup-plan prompt (launch day, and while no plan is set)",
    (_K.PLAN, _A.PAIR, "dropped"): "`!hub dropped`: the plan and troubleshooting tips, in chat and by email",
    (_K.VIDEO, _A.PAIR, "nudge"): "`!hub call` and the nudge after a text or voice check-in answer (rotates)",
    (_K.WELCOME, _A.COHORT, "greeting"): "the lounge welcome",
    (_K.WELCOME, _A.PAIR, "greeting"): "the pair-room welcome, with the video link and backup-plan prompt",
    (_K.WELCOME, _A.PAIR, "launch"): "\"the program starts\" in each pair room on launch day",
    (_K.WELCOME, _A.PERSON, "greeting"): "the direct-room welcome (or welcome email if email-only)",
    (_K.WELCOME, _A.PAIR, "goodbye"): "`!hub rematch SLUG MENTEE`: the kind goodbye to both (pair room, "
                                      "and email to an email-only member)",
    (_K.WELCOME, _A.PERSON, "rematch"): "the answer to a participant's `!hub rematch`",
    (_K.WEBINAR, _A.COHORT, "announcement"): "a webinar announcement (lounge and email)",
    (_K.WEBINAR, _A.COHORT, "reminder"): "the webinar reminders, 24 h and 1 h before (chat and email)",
    (_K.WEBINAR, _A.COHORT, "follow-up"): "after a webinar (lounge)",
    (_K.TIP, _A.COHORT, "digest"): "the tip in the weekly digest (rotates)",
    (_K.DIGEST, _A.COHORT, "intro"): "the opening lines of the weekly digest",
}

REQUIRED_KEYS = ("id", "kind", "audience")
FRONT_MATTER_KEYS = (*REQUIRED_KEYS, "use", "week", "title", "summary", "tags")
ROLES = ("mentor", "mentee", "moderator")
_COMMAND = re.compile(r"(?<![\w!])!hub\b")


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


# Not `hub.core.calendar.Webinar` (the one webinar value: when, what, where, when announced):
# this is how a template sees one webinar for one reader, with the start already written in
# the reader's zone (`local_time`) and, for reminders, how soon it is (`starts_in`); its url is
# checked as a link a template may print. The program builds it from the calendar's webinar.
@dataclass(frozen=True)
class WebinarView:
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
    ) -> WebinarView:
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
    webinar: WebinarView | None = None


VARIABLE_TYPES: dict[str, type] = {
    "cohort": Cohort,
    "week": int,
    "pair": Pair,
    "person": Person,
    "partner": Person,
    "webinar": WebinarView,
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


# Sample values for `check_library` (hub.core.content_library): once with every optional
# value present, once with every optional value missing, once at the program's last week.
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
        webinar=WebinarView.in_zone("Kick-off", _WHEN, "America/Toronto",
                                url="https://meet.jit.si/winter-2027-kickoff", starts_in="in 1 hour"),
    )),
    ("optional values missing", Variables(
        cohort=Cohort("Winter 2027", "winter-2027", 12),
        week=0, person=Person("Sam Sample", "mentee", on_matrix=False), partner=None,
        pair=Pair(_ADA, _SAM, "https://meet.jit.si/hub-3f9c2a7d1b"),
        webinar=WebinarView("Kick-off", _WHEN),
    )),
    ("last week, a moderator", Variables(
        cohort=Cohort("Winter 2027", "winter-2027", 12, date(2027, 1, 11)),
        week=12, person=Person("Mo Derator", "moderator"), partner=None,
        pair=Pair(_ADA, _SAM, "https://meet.jit.si/hub-3f9c2a7d1b", "Phones, then text."),
        webinar=WebinarView.in_zone("Closing circle", _WHEN, "UTC", starts_in="tomorrow"),
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

    def matrix_content(self, people: Sequence[Mention] | None = None) -> dict[str, Any]:
        """The chat message: a prompt that notifies `people` when given, else a notice that pings nobody.

        Both are built by `hub.core.messages`, like every message the hub sends.
        """
        if people is None:
            return notice_content(self.body, self.formatted_body)
        return prompt_content(self.body, self.formatted_body, people)


# --- selecting, rotating and rendering ------------------------------------------------------


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
    """A loaded, checked library. Build it with `hub.core.content_library.load_library`."""

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
        self._pools: dict[tuple[Kind, Audience, str, int | None], tuple[str, ...]] = {}  # `pick`

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
        # The candidates are the same for every pair of a fan-out: scanning the library for each
        # of 5,000 was a quarter of `!hub send icebreaker`'s time (py-spy). Items never change.
        pool = self._pools.get((k, a, use, week))
        if pool is None:
            pool = self._pools[(k, a, use, week)] = tuple(
                i.id for i in self.select(k, a, use=use, week=week) if week is not None or i.week is None)
        if not pool:
            when = f" in week {week}" if week is not None else ""
            raise ContentError(f"the content library has no {k} item for audience {a} (use {use}){when}")
        return self._by_id[rotate(pool, used)]

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
        fragment, text = _markup(source)
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
            email_html=_email_document(subject, fragment),
            email_text=text,
        )


# The Markdown a template produced, to HTML and text: the costly part of rendering (Markdown,
# sanitizing, the text version), and a pure function of the template's output. An icebreaker
# that names nobody renders the same for 5,000 pairs, whose `Variables` differ all the same
# (`Library.render`'s cache misses): 5 of the 6 s `!hub send icebreaker` spent building its rows.
@lru_cache(maxsize=256)
def _markup(source: str) -> tuple[str, str]:
    _, fragment = markdown_to_matrix(source)
    return fragment, html_to_text(fragment)


@lru_cache(maxsize=256)
def _email_document(subject: str, fragment: str) -> str:
    return email_document(subject, fragment)
