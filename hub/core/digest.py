"""The weekly digest: one lounge post per cohort and one email per recipient.

Pure rendering: the caller gathers plain data (`DigestIssue` for the cohort,
`Recipient` for each person) and gets text back. No database, no Matrix client,
no clock: `DigestIssue.generated_at` is "now", so rendering the same inputs twice
gives byte-identical output (handy for previews, dedupe and tests).

Privacy is built into the types. The only personal section, "your pair", is
fed by `PairCounts`, which holds an int and a bool and refuses anything else at
runtime; `DigestBuilder` also refuses subclasses of it (a subclass could smuggle
in a text field). Lounge posts must come from the cohort's lounge room id.
Nothing else from a pair room or a direct room has a way in.

Everything people typed (names, lounge excerpts, titles) is treated as hostile:
the HTML templates autoescape, the Matrix HTML is additionally sanitised to the
spec's subset, and every short string is flattened to one line without control
or bidi-override characters, so it cannot fake a section in the plain text.
"""

from __future__ import annotations

import functools
import re
import textwrap
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlparse
from zoneinfo import ZoneInfo

from jinja2 import Environment, PackageLoader, StrictUndefined, Template, select_autoescape
from markupsafe import Markup

from hub.core.calendar import Webinar
from hub.core.email_css import preinline, stylesheet
from hub.core.markup import sanitize_matrix_html
from hub.core.messages import notice_content
from hub.core.tokens import Purpose, TokenSigner, list_unsubscribe_headers, unsubscribe_url

__all__ = [
    "EXCERPT_LENGTH",
    "TOP_POSTS",
    "CohortInfo",
    "CohortPulse",
    "DigestBuilder",
    "DigestEmail",
    "DigestIssue",
    "LoungePost",
    "MatrixMessage",
    "PairCounts",
    "Prompt",
    "Recipient",
    "Tip",
    "excerpt",
    "format_when",
    "matrix_to",
    "plural",
    "render_blocks",
]

TOP_POSTS = 3
EXCERPT_LENGTH = 140
QUIET_DAYS = 14  # the moderators' report calls a pair "quiet" from 14 days on (PRODUCT.md)

# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class CohortInfo:
    slug: str
    name: str
    timezone: ZoneInfo  # the lounge post shows times here
    lounge_room_id: str  # posts in `CohortPulse.posts` must come from this room


@dataclass(frozen=True, slots=True)
class Prompt:
    """One of this week's prompts from the content library, as plain text."""

    kind: str  # label shown to people: "Icebreaker", "Check-in", "Reflection"
    title: str
    summary: str  # one or two sentences; blank lines separate paragraphs
    # What email-only readers see instead, when `summary` names a command they cannot type
    # ("answer with !hub met video"). Empty: `summary` less its paragraphs naming a command.
    by_email: str = ""


@dataclass(frozen=True, slots=True)
class LoungePost:
    """A lounge message the sync saw, with its reaction count."""

    room_id: str
    event_id: str
    sender_name: str
    text: str  # the message body; the builder shortens it
    reactions: int


@dataclass(frozen=True, slots=True)
class CohortPulse:
    new_members: int = 0  # joined since the last digest
    lounge_messages: int = 0  # in the last 7 days
    posts: tuple[LoungePost, ...] = ()  # candidates; the builder picks the most-reacted


@dataclass(frozen=True, slots=True)
class Tip:
    title: str
    body: str  # plain text; blank lines separate paragraphs


@dataclass(frozen=True, slots=True)
class DigestIssue:
    """Everything about one cohort's digest for one week; shared by all recipients."""

    cohort: CohortInfo
    week: int
    weeks: int
    generated_at: datetime  # timezone-aware "now": filters past webinars, dates tokens
    prompts: tuple[Prompt, ...] = ()
    webinars: tuple[Webinar, ...] = ()
    pulse: CohortPulse = field(default_factory=CohortPulse)
    tip: Tip | None = None
    # For email-only readers when `tip` names a command (None: they get no tip that week).
    email_tip: Tip | None = None


def _is_int(value: object) -> bool:
    # bool is an int subclass; `True` days must not pass as 1.
    return type(value) is int


@dataclass(frozen=True, slots=True)
class PairCounts:
    """One pair, as the digest may see it: numbers only, never words.

    This is the privacy boundary for pair rooms. It has no field that can hold
    text, and `__post_init__` rejects anything but the declared types, so a
    caller cannot pass a message, a plan or a topic here even by mistake.
    """

    days_since_active: int | None  # None: nothing said in the pair room yet
    backup_plan_set: bool

    def __post_init__(self) -> None:
        days = self.days_since_active
        if not (days is None or (_is_int(days) and days >= 0)):
            raise TypeError(f"days_since_active must be an int >= 0 or None, not {type(days).__name__}")
        if type(self.backup_plan_set) is not bool:
            raise TypeError(
                f"backup_plan_set must be a bool, not {type(self.backup_plan_set).__name__}"
            )


@dataclass(frozen=True, slots=True)
class Recipient:
    handle: str  # opaque subscriber reference (`tokens.new_handle`), signed into the links
    name: str
    timezone: ZoneInfo  # webinar times are shown here
    pairs: tuple[PairCounts, ...] = ()  # one per pair; a mentor may have several
    on_matrix: bool = False  # email-only readers get no Matrix links or `!hub` hints


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class MatrixMessage:
    body: str
    formatted_body: str

    def content(self) -> dict[str, Any]:
        """An `m.notice` event content (`hub.core.messages.notice_content`, like every notice).

        Its `m.mentions: {}` says "this pings nobody": a quoted display name or an
        "@room" inside an excerpt must not notify anyone (MSC3952 turns off the
        legacy body-matching push rules when the key is present).
        """
        return notice_content(self.body, self.formatted_body)


@dataclass(frozen=True, slots=True)
class DigestEmail:
    subject: str
    text: str
    html: str
    headers: dict[str, str]  # List-Unsubscribe, List-Unsubscribe-Post: for `EmailPayload.headers`
    unsubscribe_url: str


# --------------------------------------------------------------------------- helpers

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Bidi overrides and isolates can make an excerpt display as something it is not.
_BIDI = dict.fromkeys(map(ord, "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))
_SPACE = re.compile(r"\s+")
_BLANK_LINE = re.compile(r"\n\s*\n")


# Exactly Unicode's Cc category (C0, DEL, C1) less tab and newline: one regex pass instead
# of a category lookup per character, which was a fifth of a digest's rendering time.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _strip_controls(text: str) -> str:
    return _CONTROLS.sub("", text.translate(_BIDI))


def _line(text: str) -> str:
    """One clean line: no control characters, no line breaks, single spaces."""
    return _SPACE.sub(" ", _strip_controls(text)).strip()


def _paragraphs(text: str) -> list[str]:
    text = _strip_controls(text.replace("\r\n", "\n").replace("\r", "\n"))
    return [p for p in (_line(chunk) for chunk in _BLANK_LINE.split(text)) if p]


def _drop_reply_fallback(text: str) -> str:
    # A Matrix reply's body starts with "> <@user> quoted..." lines and a blank
    # line; the excerpt should show what this post says, not what it quotes.
    lines = text.split("\n")
    if lines and lines[0].startswith("> <"):
        i = 0
        while i < len(lines) and lines[i].startswith(">"):
            i += 1
        return "\n".join(lines[i:])
    return text


def excerpt(text: str, limit: int = EXCERPT_LENGTH) -> str:
    """A one-line excerpt of at most `limit` characters, cut at a word if possible."""
    flat = _line(_drop_reply_fallback(text))
    if len(flat) <= limit:
        return flat
    cut = flat[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,.;:-") + "…"


def matrix_to(room_id: str, event_id: str | None = None) -> str:
    """A matrix.to permalink; ids are percent-encoded where they need it.

    Old event ids are standard base64 and may contain "/" or "+", which would
    otherwise break the path; "!", "$", ":" and "@" stay readable.
    """
    link = "https://matrix.to/#/" + quote(room_id, safe="!$:@")
    if event_id is not None:
        link += "/" + quote(event_id, safe="!$:@")
    return link


def _zone_label(moment: datetime) -> str:
    name = moment.tzname() or ""
    if name.isalpha():
        return name
    # Zones without a letter abbreviation (tzdata writes "-03", "+0530") read
    # better as an explicit UTC offset.
    offset = moment.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    hours, mins = divmod(abs(minutes), 60)
    return f"UTC{sign}{hours:02d}" + (f":{mins:02d}" if mins else "")


def format_when(moment: datetime, zone: ZoneInfo) -> str:
    """`Mon 11 Jan, 18:00 CET`: English names regardless of the server's locale."""
    if moment.tzinfo is None:
        raise ValueError("webinar times must be timezone-aware")
    local = moment.astimezone(zone)
    return (
        f"{_DAYS[local.weekday()]} {local.day} {_MONTHS[local.month - 1]}, "
        f"{local:%H:%M} {_zone_label(local)}"
    )


def _count(value: int, what: str) -> int:
    if not _is_int(value) or value < 0:
        raise ValueError(f"{what} must be an int >= 0, not {value!r}")
    return value


def _http_url(url: str | None) -> str | None:
    if not url:
        return None
    url = url.strip()
    # A URL stands on its own line in the plain text; a line break inside one
    # could start a fake line, and a real URL never contains whitespace.
    if any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in url):
        return None
    parsed = urlparse(url)
    return url if parsed.scheme in ("http", "https") and parsed.netloc else None


# --------------------------------------------------------------------------- view models


@dataclass(frozen=True, slots=True)
class _PromptView:
    kind: str
    title: str
    paragraphs: list[str]


@dataclass(frozen=True, slots=True)
class _PostView:
    who: str
    excerpt: str
    reactions: int
    link: str


@dataclass(frozen=True, slots=True)
class _PairView:
    number: int
    active: str  # a sentence built from the count only
    quiet: bool
    never: bool
    plan_set: bool


def plural(n: int, one: str, many: str | None = None) -> str:
    """``1 pair``, ``2 pairs``, ``3 people``: a count with its noun."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _pair_view(number: int, pair: PairCounts) -> _PairView:
    days = pair.days_since_active
    if days is None:
        active = "No messages in your pair room yet."
    elif days == 0:
        active = "Your pair room was active today."
    elif days == 1:
        active = "Your pair room was last active yesterday."
    else:
        active = f"Your pair room was last active {days} days ago."
    return _PairView(
        number=number,
        active=active,
        quiet=days is not None and days >= QUIET_DAYS,
        never=days is None,
        plan_set=pair.backup_plan_set,
    )


# --------------------------------------------------------------------------- builder


@functools.lru_cache(maxsize=4096)  # the week's prompts and tip fold the same for every recipient
def _wrap(text: str, first: str = "", rest: str = "", width: int = 72) -> str:
    """Fold plain text for the text/plain part; URLs and long words stay whole."""
    return textwrap.fill(
        text, width=width, initial_indent=first, subsequent_indent=rest,
        break_long_words=False, break_on_hyphens=False,
    )


_TEMPLATES = PackageLoader("hub", "templates")


def render_blocks(template: Template, ctx: dict[str, Any]) -> dict[str, str]:
    """Each `{% block %}` of `template` rendered on its own with `ctx`, by block name."""
    context = template.new_context(ctx)
    return {name: "".join(render(context)) for name, render in template.blocks.items()}


def _environment() -> Environment:
    env = Environment(
        loader=_TEMPLATES,
        # .html templates escape every value; .txt ones are plain text on purpose.
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=True),
        undefined=StrictUndefined,  # a typo in a template fails loudly, never renders blank
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["wrap"] = _wrap
    return env


class DigestBuilder:
    """Renders digests. One instance per process; it holds compiled templates.

    `public_url` is `web.public_url` exactly as configured (links are built on
    it), `signer` signs the unsubscribe links (None for a builder that only renders
    emails whose tokens were signed already: `signed_email_renderer`), and `hub_user_id` (the hub's
    Matrix id) lets Matrix users open a chat with the hub to change preferences;
    `command_prefix` is `matrix.command_prefix`, used in the `!hub email` hints.
    """

    def __init__(
        self,
        *,
        public_url: str,
        signer: TokenSigner | None,
        hub_user_id: str | None = None,
        command_prefix: str = "!hub",
    ) -> None:
        self.public_url = public_url.rstrip("/")
        self.signer = signer
        self.hub_user_id = hub_user_id
        self.command_prefix = command_prefix
        env = _environment()
        # The email's CSS is inlined into the template once, here, not into each
        # email: the same classes get the same styles for every recipient (see
        # hub.core.email_css). Only the dark-mode @media query stays in <style>.
        source, _, _ = _TEMPLATES.get_source(env, "digest_email.html")
        self._email_html = env.from_string(preinline(source))
        self._email_text = env.get_template("digest_email.txt")
        # The cohort-wide sections (prompts, pulse, tip) are rendered once per
        # digest and inserted into each email, in both parts.
        sections, _, _ = _TEMPLATES.get_source(env, "digest_email_sections.html")
        self._sections_html = env.from_string(preinline(sections, stylesheet(source)))
        self._sections_text = env.get_template("digest_email_sections.txt")
        self._lounge_html = env.get_template("digest_lounge.html")
        self._lounge_text = env.get_template("digest_lounge.txt")

    # ----------------------------------------------------------------- shared parts

    @staticmethod
    def subject(issue: DigestIssue) -> str:
        return f"{_line(issue.cohort.name)} · week {issue.week} of {issue.weeks} digest"

    def _shared(self, issue: DigestIssue) -> dict[str, Any]:
        if not (_is_int(issue.weeks) and issue.weeks >= 1):
            raise ValueError(f"weeks must be an int >= 1, not {issue.weeks!r}")
        if not (_is_int(issue.week) and 1 <= issue.week <= issue.weeks):
            raise ValueError(f"week must be between 1 and {issue.weeks}, not {issue.week!r}")
        if issue.generated_at.tzinfo is None:
            raise ValueError("generated_at must be timezone-aware")
        pulse = issue.pulse
        lounge = issue.cohort.lounge_room_id
        for post in pulse.posts:
            # The one place lounge text enters the digest; a post from any other
            # room (a pair room, a direct room) is a caller bug, not a filter case.
            if post.room_id != lounge:
                raise ValueError(
                    f"pulse post {post.event_id} is from {post.room_id}, not the lounge {lounge}"
                )
            _count(post.reactions, "reactions")
        ranked = sorted(
            (p for p in pulse.posts if p.reactions > 0), key=lambda p: p.reactions, reverse=True
        )[:TOP_POSTS]
        posts = [
            _PostView(
                who=_line(p.sender_name) or "Someone",
                excerpt=excerpt(p.text) or "(no text)",
                reactions=p.reactions,
                link=matrix_to(p.room_id, p.event_id),
            )
            for p in ranked
        ]
        prompts = [
            _PromptView(kind=_line(p.kind), title=_line(p.title), paragraphs=_paragraphs(p.summary))
            for p in issue.prompts
        ]
        webinars = sorted(
            (w for w in issue.webinars if w.at >= issue.generated_at), key=lambda w: w.at
        )
        tip = None
        if issue.tip is not None:
            tip = {"title": _line(issue.tip.title), "paragraphs": _paragraphs(issue.tip.body)}
        # Email-only readers cannot type a command, so nothing they read may tell them to.
        prefix = self.command_prefix
        prompts_email = [
            _PromptView(kind=view.kind, title=view.title, paragraphs=(
                _paragraphs(p.by_email) if p.by_email else [x for x in view.paragraphs if prefix not in x]))
            for p, view in zip(issue.prompts, prompts, strict=True)
        ]
        tip_email = tip
        if issue.tip is not None and prefix in issue.tip.title + issue.tip.body:
            tip_email = None
            if issue.email_tip is not None and prefix not in issue.email_tip.title + issue.email_tip.body:
                tip_email = {"title": _line(issue.email_tip.title),
                             "paragraphs": _paragraphs(issue.email_tip.body)}
        return {
            "cohort_name": _line(issue.cohort.name),
            "week": issue.week,
            "weeks": issue.weeks,
            "prompts": prompts,
            "new_members": _count(pulse.new_members, "new_members"),
            "lounge_messages": _count(pulse.lounge_messages, "lounge_messages"),
            "posts": posts,
            # Before the cohort's rooms exist there is no lounge to link to (`hub digest preview`).
            "lounge_link": matrix_to(lounge) if lounge else None,
            "tip": tip,
            "_email_only": {"prompts": prompts_email, "tip": tip_email},
            "plural": plural,
            "command_prefix": self.command_prefix,
            # Titles and links are checked once per digest; the times, once per time zone.
            "_webinars": [(w.at, _line(w.title), _http_url(w.url)) for w in webinars],
            "_webinars_by_zone": {},
        }

    @staticmethod
    def _webinar_views(shared: dict[str, Any], zone: ZoneInfo) -> list[dict[str, str | None]]:
        by_zone: dict[str, list[dict[str, str | None]]] = shared["_webinars_by_zone"]
        views = by_zone.get(zone.key)
        if views is None:
            views = by_zone[zone.key] = [
                {"when": format_when(starts_at, zone), "title": title, "url": url}
                for starts_at, title, url in shared["_webinars"]
            ]
        return views

    # ----------------------------------------------------------------- outputs

    def lounge_post(self, issue: DigestIssue) -> MatrixMessage:
        """The cohort-wide digest for the lounge: no greeting, no pairs, no links to anyone's settings."""
        ctx = self._shared(issue)
        zone = issue.cohort.timezone
        ctx["webinars"] = self._webinar_views(ctx, zone)
        ctx["zone_name"] = zone.key
        ctx["subject"] = self.subject(issue)
        body = self._lounge_text.render(ctx).strip()
        html = sanitize_matrix_html(self._lounge_html.render(ctx)).strip()
        return MatrixMessage(body=body, formatted_body=html)

    def email(self, issue: DigestIssue, recipient: Recipient) -> DigestEmail:
        """One person's digest email: subject, plain text, HTML with inlined CSS, headers."""
        return self._email(issue, self._email_shared(issue), recipient)

    def emails(
        self, issue: DigestIssue, recipients: Iterable[Recipient]
    ) -> Iterator[tuple[Recipient, DigestEmail]]:
        """`email` for many people; the cohort-wide part is prepared once, not per person."""
        render = self.email_renderer(issue)
        for recipient in recipients:
            yield recipient, render(recipient)

    def email_renderer(self, issue: DigestIssue) -> Callable[[Recipient], DigestEmail]:
        """`email` as a function of the person, with the cohort-wide part prepared once.

        For callers that handle each person's failure on its own (a generator
        like `emails` ends at the first exception).
        """
        shared = self._email_shared(issue)
        return lambda recipient: self._email(issue, shared, recipient)

    def unsubscribe_token(self, issue: DigestIssue, recipient: Recipient) -> str:
        """The person's signed unsubscribe token, exactly as `email` puts it in their links."""
        if self.signer is None:
            raise ValueError("this DigestBuilder has no signer: pass the tokens signed already")
        return self.signer.sign(recipient.handle, Purpose.UNSUBSCRIBE, issued_at=issue.generated_at)

    def signed_email_renderer(self, issue: DigestIssue) -> Callable[[Recipient, str], DigestEmail]:
        """`email_renderer` for people whose `unsubscribe_token` was signed before (at fan-out).

        The same output as `email` for the same token; the renderer needs no secret, so a
        process that only sends (`hub worker`) never holds one. `Recipient.handle` is unused.
        """
        shared = self._email_shared(issue)
        return lambda recipient, token: self._email(issue, shared, recipient, token)

    def _email_shared(self, issue: DigestIssue) -> dict[str, Any]:
        shared = self._shared(issue)
        shared["sections_html"] = {
            name: Markup(html) for name, html in render_blocks(self._sections_html, shared).items()
        }
        shared["sections_text"] = render_blocks(self._sections_text, shared)
        # The same sections without command hints, for readers without Matrix (also once per digest).
        email_only = {**shared, **shared["_email_only"]}
        shared["sections_html_email_only"] = {
            name: Markup(html) for name, html in render_blocks(self._sections_html, email_only).items()
        }
        shared["sections_text_email_only"] = render_blocks(self._sections_text, email_only)
        return shared

    def _email(self, issue: DigestIssue, shared: dict[str, Any], recipient: Recipient,
               token: str | None = None) -> DigestEmail:
        ctx, token = self._email_context(issue, shared, recipient, token)
        variant = "" if recipient.on_matrix else "_email_only"
        return DigestEmail(
            subject=ctx["subject"],
            text=self._email_text.render(ctx, sections=ctx["sections_text" + variant]),
            html=self._email_html.render(ctx, sections=ctx["sections_html" + variant]),
            headers=list_unsubscribe_headers(self.public_url, token),
            unsubscribe_url=ctx["unsubscribe_url"],
        )

    def _email_context(
        self, issue: DigestIssue, shared: dict[str, Any], recipient: Recipient, token: str | None = None
    ) -> tuple[dict[str, Any], str]:
        """What the email templates see for one person, and their unsubscribe token."""
        for pair in recipient.pairs:
            # Exact type, not isinstance: a subclass could add a text field and
            # the template would never know the difference.
            if type(pair) is not PairCounts:
                raise TypeError(f"pairs must be PairCounts, not {type(pair).__name__}")
        ctx = dict(shared)
        ctx["webinars"] = self._webinar_views(shared, recipient.timezone)
        ctx["zone_name"] = recipient.timezone.key
        if token is None:
            token = self.unsubscribe_token(issue, recipient)
        unsubscribe = unsubscribe_url(self.public_url, token)
        subject = self.subject(issue)
        ctx.update(
            subject=subject,
            name=_line(recipient.name),
            pairs=[_pair_view(i, p) for i, p in enumerate(recipient.pairs, start=1)],
            on_matrix=recipient.on_matrix,
            hub_link=matrix_to(self.hub_user_id) if recipient.on_matrix and self.hub_user_id else None,
            unsubscribe_url=unsubscribe,
        )
        ctx["preheader"] = self._preheader(ctx)
        return ctx, token

    @staticmethod
    def _preheader(ctx: dict[str, Any]) -> str:
        # The grey line mail clients show after the subject in the inbox list.
        parts = [plural(len(ctx["prompts"]), "prompt")]
        if ctx["webinars"]:
            parts.append(plural(len(ctx["webinars"]), "upcoming webinar"))
        if ctx["lounge_messages"]:
            parts.append(plural(ctx["lounge_messages"], "lounge message"))
        return f"Week {ctx['week']} of {ctx['weeks']}: " + ", ".join(parts)
