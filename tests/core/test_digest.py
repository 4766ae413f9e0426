"""The weekly digest renderer: sections, email-safe HTML, time zones, escaping, privacy."""

from __future__ import annotations

import dataclasses
import re
import typing
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.core.calendar import Webinar
from hub.core.digest import (
    EXCERPT_LENGTH,
    CohortInfo,
    CohortPulse,
    DigestBuilder,
    DigestIssue,
    LoungePost,
    PairCounts,
    Prompt,
    Recipient,
    Tip,
    excerpt,
    format_when,
    matrix_to,
)
from hub.core.markup import sanitize_matrix_html
from hub.core.tokens import Purpose, TokenSigner

SECRET = "digest-test-secret"
PUBLIC = "https://hub.example.org"
LOUNGE = "!lounge:example.org"
BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2027, 1, 25, 8, 0, tzinfo=UTC)  # Monday of week 3, 09:00 in Berlin
HOSTILE = "<img src=x onerror=alert(1)>"

signer = TokenSigner(SECRET)
builder = DigestBuilder(public_url=PUBLIC, signer=signer, hub_user_id="@hub:example.org")


def cohort(name: str = "Winter 2027") -> CohortInfo:
    return CohortInfo(slug="winter-2027", name=name, timezone=BERLIN, lounge_room_id=LOUNGE)


PROMPTS = (
    Prompt("Icebreaker", "Two truths and a lie",
           "Each of you says three things about yourself.\n\nGuess the lie."),
    Prompt("Reflection", "What surprised you so far?", "Think back over the first weeks."),
)


def full_issue(**changes: typing.Any) -> DigestIssue:
    issue = DigestIssue(
        cohort=cohort(),
        week=3,
        weeks=12,
        generated_at=NOW,
        prompts=PROMPTS,
        webinars=(
            Webinar(datetime(2027, 2, 1, 17, 0, tzinfo=UTC), "Mid-program check", "https://meet.jit.si/mid"),
            Webinar(datetime(2027, 1, 11, 17, 0, tzinfo=UTC), "Kick-off (past)", "https://meet.jit.si/k"),
        ),
        pulse=CohortPulse(
            new_members=3,
            lounge_messages=42,
            posts=(
                LoungePost(LOUNGE, "$a", "Ada", "Who else is trying the 20-minute video call?", 2),
                LoungePost(LOUNGE, "$b", "Bea", "Sharing my favourite book on mentoring", 9),
                LoungePost(LOUNGE, "$c", "Cy", "Nobody reacted to this", 0),
                LoungePost(LOUNGE, "$d", "Dee", "Hello from Lisbon!", 5),
                LoungePost(LOUNGE, "$e", "Eli", "Fourth most reacted", 1),
            ),
        ),
        tip=Tip("Video first", "Cameras on builds trust faster than text.\n\nEven five minutes counts."),
    )
    return dataclasses.replace(issue, **changes)


def person(**changes: typing.Any) -> Recipient:
    r = Recipient(
        handle="h-ada-123",
        name="Ada Lovelace",
        timezone=BERLIN,
        pairs=(PairCounts(days_since_active=3, backup_plan_set=False),),
        on_matrix=True,
    )
    return dataclasses.replace(r, **changes)


def flat(text: str) -> str:
    """Text with line folding undone, for asserting on sentences."""
    return " ".join(text.split())


class Parsed(HTMLParser):
    """Every start tag with its attributes, and the text of <style> and <script> blocks."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.styles: list[str] = []
        self.text: list[str] = []
        self._in: str | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in ("style", "script"):
            self._in = tag

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "style":
            self.styles.append(data)
        else:
            self.text.append(data)

    def all_text(self) -> str:
        return "".join(self.text)


# --------------------------------------------------------------------------- content


def test_email_has_every_section_and_the_subject_says_the_week() -> None:
    mail = builder.email(full_issue(), person())
    assert mail.subject == "Winter 2027 · week 3 of 12 digest"
    page = Parsed(mail.html).all_text()
    for text in (mail.text, page):
        assert "Hi Ada Lovelace," in text
        assert "Two truths and a lie" in text and "What surprised you so far?" in text
        assert "Mid-program check" in text
        assert "Kick-off (past)" not in text  # only upcoming webinars
        assert "3 new members" in text and "42 messages in the lounge in the last 7 days" in text
        assert "Sharing my favourite book on mentoring" in text
        assert "last active 3 days ago" in text and "Backup plan: not set yet" in text
        assert "Video first" in text and "Even five minutes counts." in text
        assert "!hub email off" in text
    assert "Week 3 of 12" in page
    assert mail.unsubscribe_url in mail.text
    assert any(a.get("href") == mail.unsubscribe_url for t, a in Parsed(mail.html).tags if t == "a")


def test_top_three_posts_by_reactions_with_matrix_to_links() -> None:
    mail = builder.email(full_issue(), person())
    order = [mail.text.index(s) for s in ("favourite book", "Hello from Lisbon", "20-minute video call")]
    assert order == sorted(order)
    assert "Fourth most reacted" not in mail.text and "Nobody reacted" not in mail.text
    hrefs = {a.get("href") for t, a in Parsed(mail.html).tags if t == "a"}
    assert {f"https://matrix.to/#/{LOUNGE}/$b", f"https://matrix.to/#/{LOUNGE}/$d"} <= hrefs
    assert f"https://matrix.to/#/{LOUNGE}/$b" in mail.text


def test_matrix_to_encodes_ids_that_would_break_the_path() -> None:
    assert matrix_to("!abc:example.org", "$ev:example.org") == "https://matrix.to/#/!abc:example.org/$ev:example.org"
    # v12 room id (no server name) and an old base64 event id with "/" and "+".
    assert matrix_to("!Ab-_9", "$a/b+c") == "https://matrix.to/#/!Ab-_9/$a%2Fb%2Bc"
    assert matrix_to("@hub:example.org") == "https://matrix.to/#/@hub:example.org"


def test_excerpts_are_short_one_line_and_skip_reply_quotes() -> None:
    long = "word " * 100
    short = excerpt(long)
    assert len(short) <= EXCERPT_LENGTH and short.endswith("…") and "\n" not in short
    assert excerpt("> <@bob:x> earlier words\n> more\n\nmy actual reply") == "my actual reply"
    assert excerpt("line one\nline two\r\n\tthree") == "line one line two three"
    assert excerpt("evil\u202etxt.exe\x00\x07") == "eviltxt.exe"  # no bidi override, no controls


def test_a_week_with_nothing_new_still_carries_the_prompts() -> None:
    issue = full_issue(webinars=(), pulse=CohortPulse(), tip=None)
    mail = builder.email(issue, person(pairs=()))
    post = builder.lounge_post(issue)
    for text in (mail.text, Parsed(mail.html).all_text(), post.body, Parsed(post.formatted_body).all_text()):
        assert "Two truths and a lie" in text and "What surprised you so far?" in text
    assert "A quiet week in the lounge" in mail.text
    assert "UPCOMING WEBINARS" not in mail.text and "Upcoming webinars" not in mail.html
    assert "YOUR PAIR" not in mail.text and "Your pair" not in mail.html
    assert "TIP" not in mail.text
    assert mail.subject == "Winter 2027 · week 3 of 12 digest"


def test_no_prompts_at_all_says_so_instead_of_an_empty_section() -> None:
    mail = builder.email(full_issue(prompts=()), person())
    assert "No new prompts this week" in mail.text and "No new prompts this week" in mail.html


def test_pair_section_is_counts_only_and_handles_mentors_with_several_pairs() -> None:
    pairs = (PairCounts(None, False), PairCounts(0, True), PairCounts(1, True), PairCounts(20, False))
    mail = builder.email(full_issue(), person(pairs=pairs))
    assert "YOUR PAIRS" in mail.text and "Pair 4:" in mail.text
    text = flat(mail.text)
    assert "No messages in your pair room yet. Say hello" in text
    assert "active today" in text and "last active yesterday" in text
    assert "last active 20 days ago. How about a short video call this week?" in text
    assert text.count("Backup plan: set.") == 2
    assert text.count("Backup plan: not set yet.") == 2
    assert "\n    !hub plan set ...\n" in mail.text and "\n    !hub dropped\n" in mail.text
    html = flat(Parsed(mail.html).all_text())
    assert "Pair 4" in html and "last active 20 days ago. How about a short video call this week?" in html


def test_no_lounge_link_before_the_lounge_exists() -> None:
    """Issue 16: `hub digest preview` before the cohort's rooms existed printed
    `The lounge: https://matrix.to/#/`, a link to nothing."""
    no_rooms = full_issue(cohort=dataclasses.replace(cohort(), lounge_room_id=""), pulse=CohortPulse())
    mail = builder.email(no_rooms, person())
    assert "The lounge" not in mail.text and "matrix.to/#/\n" not in mail.text
    assert "Go to the lounge" not in mail.html and 'href="https://matrix.to/#/"' not in mail.html
    with_lounge = builder.email(full_issue(), person())
    assert f"The lounge: {matrix_to(LOUNGE)}" in with_lounge.text
    assert f'href="{matrix_to(LOUNGE)}"' in with_lounge.html


def test_email_only_readers_get_no_matrix_hints() -> None:
    mail = builder.email(full_issue(), person(on_matrix=False, pairs=()))
    assert "!hub email" not in mail.text and "!hub email" not in mail.html
    assert "matrix.to/#/@hub" not in mail.html
    assert "ask your program lead" in mail.text
    assert mail.unsubscribe_url in mail.text  # unsubscribing always works


def test_configured_command_prefix_is_used_in_hints() -> None:
    b = DigestBuilder(public_url=PUBLIC, signer=signer, command_prefix="!mentor")
    mail = b.email(full_issue(), person())
    assert "!mentor email off" in mail.text and "!hub" not in mail.text
    assert "!mentor email weekly" in b.lounge_post(full_issue()).body


def test_batch_rendering_matches_one_by_one() -> None:
    people = [person(), person(handle="h-bea", name="Bea", timezone=ZoneInfo("Asia/Tokyo"), pairs=())]
    batch = list(builder.emails(full_issue(), people))
    assert [r for r, _ in batch] == people
    assert [m for _, m in batch] == [builder.email(full_issue(), p) for p in people]
    assert batch[0][1].text != batch[1][1].text


def test_rendering_is_deterministic() -> None:
    a, b = builder.email(full_issue(), person()), builder.email(full_issue(), person())
    assert a == b
    assert builder.lounge_post(full_issue()) == builder.lounge_post(full_issue())


def test_week_must_be_inside_the_program() -> None:
    for week, weeks in ((0, 12), (13, 12), (1, 0), (True, 12)):
        with pytest.raises(ValueError):
            builder.email(full_issue(week=week, weeks=weeks), person())


# --------------------------------------------------------------------------- email HTML


BLOCKS = {"body", "table", "td", "p", "h1", "h2", "div"}


def test_html_is_inlined_single_column_without_external_resources() -> None:
    mail = builder.email(full_issue(), person())
    doc = Parsed(mail.html)
    tags = [t for t, _ in doc.tags]
    assert "script" not in tags and "img" not in tags and "link" not in tags
    assert "iframe" not in tags and "form" not in tags
    # The only <style> left is the dark-mode media query; layout never depends on it.
    assert len(doc.styles) == 1
    assert doc.styles[0].strip().startswith("@media (prefers-color-scheme: dark)")
    assert doc.styles[0].count("@media") == 1
    # Every block carries its own foreground and background colour inline.
    for tag, attrs in doc.tags:
        if tag in BLOCKS:
            style = attrs.get("style") or ""
            assert re.search(r"(^|;)\s*color:", style), (tag, attrs)
            assert "background-color:" in style, (tag, attrs)
    # One column: a single 600px card, no side-by-side cells.
    assert [a.get("width") for t, a in doc.tags if t == "table" and a.get("class") == "card"] == ["600"]
    rows_with_two_cells = re.findall(r"<tr>\s*<td[^>]*>.*?</td>\s*<td", mail.html, re.S)
    assert rows_with_two_cells == []
    # Nothing loads from anywhere: no src attributes, no CSS url(), every link https.
    assert not any("src" in a for _, a in doc.tags)
    assert "url(" not in mail.html
    assert all((a.get("href") or "").startswith("https://") for t, a in doc.tags if t == "a")
    metas = {a.get("name"): a.get("content") for t, a in doc.tags if t == "meta"}
    assert metas["color-scheme"] == "light dark"
    assert '<html lang="en">' in mail.html
    assert "<title>Winter 2027 · week 3 of 12 digest</title>" in mail.html


def test_plain_text_is_readable() -> None:
    text = builder.email(full_issue(), person()).text
    assert "<" not in text and "&lt;" not in text and "&amp;" not in text
    lines = text.splitlines()
    assert lines[0] == "Winter 2027 · week 3 of 12"
    assert lines[1] == "=" * len(lines[0])
    for line in lines:  # folded at 72, except lines that carry a URL (never broken)
        assert len(line) <= 72 or "https://" in line, line
    assert "-- " in lines  # the signature separator mail clients recognise
    assert "\n\n\n\n" not in text
    headings = ("THIS WEEK'S PROMPTS", "UPCOMING WEBINARS", "COHORT PULSE", "YOUR PAIR", "TIP: Video first")
    for heading in headings:
        assert heading in text


# --------------------------------------------------------------------------- hostile input


def hostile_issue() -> DigestIssue:
    return full_issue(
        cohort=cohort('Winter "><script>alert(1)</script>'),
        prompts=(Prompt("<b>kind</b>", "<i>title</i>", "<a href=javascript:alert(1)>x</a>"),),
        webinars=(Webinar(NOW + timedelta(days=3), HOSTILE, "javascript:alert(1)"),
                  Webinar(NOW + timedelta(days=4), "quote\" onmouseover=\"x", 'https://x.org/"onclick="y')),
        pulse=CohortPulse(
            1, 1, (LoungePost(LOUNGE, "$x", HOSTILE, "<script>alert('excerpt')</script> @room", 3),)
        ),
        tip=Tip("<style>body{display:none}</style>", "</td></tr></table><form action=https://evil>"),
    )


def test_hostile_names_and_excerpts_are_inert_in_email_html() -> None:
    mail = builder.email(hostile_issue(), person(name=HOSTILE))
    doc = Parsed(mail.html)
    tags = [t for t, _ in doc.tags]
    assert "img" not in tags and "script" not in tags and "form" not in tags and "i" not in tags
    assert not any(k.startswith("on") for _, a in doc.tags for k in a)
    assert len(doc.styles) == 1
    assert all(not (a.get("href") or "").startswith("javascript") for _, a in doc.tags)
    text = doc.all_text()
    assert f"Hi {HOSTILE}," in text  # shown as text, exactly as typed
    assert "<script>alert('excerpt')</script> @room" in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in mail.html
    # The javascript: webinar URL is not linked at all; the quote-breaking one stays inside its attribute.
    assert [a["href"] for t, a in doc.tags if t == "a" and "x.org" in (a.get("href") or "")] == [
        'https://x.org/"onclick="y']


def test_hostile_input_cannot_fake_plain_text_sections() -> None:
    fake = "Eve\n\nUnsubscribe: https://evil.example/\r\n--"
    mail = builder.email(full_issue(cohort=cohort("Winter\r\nBcc: x@evil")), person(name=fake))
    assert "Unsubscribe: https://evil.example/" not in mail.text.splitlines()
    assert "\r" not in mail.text and "\n" not in mail.subject and "\r" not in mail.subject
    assert mail.subject == "Winter Bcc: x@evil · week 3 of 12 digest"
    sneaky = Webinar(NOW + timedelta(days=1), "Live", "https://x.org/\nUnsubscribe: https://evil.example/")
    mail = builder.email(full_issue(webinars=(sneaky,)), person())
    assert "evil.example" not in mail.text and "evil.example" not in mail.html
    assert [line for line in mail.text.splitlines() if line.startswith("Unsubscribe:")] == [
        f"Unsubscribe: {mail.unsubscribe_url}"
    ]
    # A name long enough to be folded cannot put its tail at the start of a line either.
    for n in range(40, 80):
        long_name = "x" * n + " Unsubscribe: https://evil.example/"
        mail = builder.email(full_issue(), person(name=long_name))
        assert not any(line.startswith("Unsubscribe: https://evil") for line in mail.text.splitlines())


def test_hostile_input_is_inert_in_the_lounge_post() -> None:
    post = builder.lounge_post(hostile_issue())
    doc = Parsed(post.formatted_body)
    assert {t for t, _ in doc.tags} <= {"h3", "p", "strong", "em", "ul", "li", "a", "code"}
    assert not any(k.startswith("on") for _, a in doc.tags for k in a)
    assert "&lt;img src=x onerror=alert(1)&gt;" in post.formatted_body
    assert sanitize_matrix_html(post.formatted_body) == post.formatted_body  # already in the allowed subset
    content = post.content()
    assert content["msgtype"] == "m.notice" and content["format"] == "org.matrix.custom.html"
    assert content["m.mentions"] == {}  # "@room" in an excerpt pings nobody


# --------------------------------------------------------------------------- lounge post


def test_lounge_post_has_no_personal_parts() -> None:
    post = builder.lounge_post(full_issue())
    for text in (post.body, post.formatted_body):
        assert "Winter 2027 · week 3 of 12" in text
        assert "Two truths and a lie" in text and "favourite book" in text and "Video first" in text
        assert "Ada Lovelace" not in text and "Hi " not in text
        assert "pair" not in text.lower() and "Backup plan" not in text
        assert "/unsubscribe/" not in text and PUBLIC not in text
    assert "Mon 1 Feb, 18:00 CET" in post.body  # the cohort's own zone
    assert "(Europe/Berlin time)" in post.body


# --------------------------------------------------------------------------- time zones


def test_webinar_times_are_in_the_recipients_zone() -> None:
    at = datetime(2027, 1, 11, 17, 0, tzinfo=UTC)
    assert format_when(at, BERLIN) == "Mon 11 Jan, 18:00 CET"
    issue = full_issue(generated_at=at - timedelta(days=1), week=1,
                       webinars=(Webinar(at, "Kick-off", None),))
    tokyo = builder.email(issue, person(timezone=ZoneInfo("Asia/Tokyo"))).text
    la = builder.email(issue, person(timezone=ZoneInfo("America/Los_Angeles"))).text
    assert "* Tue 12 Jan, 02:00 JST: Kick-off" in tokyo and "(times in Asia/Tokyo)" in tokyo
    assert "* Mon 11 Jan, 09:00 PST: Kick-off" in la and "(times in America/Los_Angeles)" in la


def test_webinar_times_across_daylight_saving_changes() -> None:
    # 2027: the US springs forward on 14 March, Europe on 28 March. The same
    # 18:00 Berlin webinar is 13:00 in New York in between and 12:00 after.
    ny = ZoneInfo("America/New_York")
    before = datetime(2027, 3, 22, 18, 0, tzinfo=BERLIN)
    after = datetime(2027, 3, 29, 18, 0, tzinfo=BERLIN)
    assert format_when(before, BERLIN) == "Mon 22 Mar, 18:00 CET"
    assert format_when(before, ny) == "Mon 22 Mar, 13:00 EDT"
    assert format_when(after, BERLIN) == "Mon 29 Mar, 18:00 CEST"
    assert format_when(after, ny) == "Mon 29 Mar, 12:00 EDT"
    issue = full_issue(generated_at=datetime(2027, 3, 15, 8, 0, tzinfo=UTC), week=10,
                       webinars=(Webinar(after, "Late", None), Webinar(before, "Early", None)))
    text = builder.email(issue, person(timezone=ny)).text
    assert text.index("* Mon 22 Mar, 13:00 EDT: Early") < text.index("* Mon 29 Mar, 12:00 EDT: Late")


def test_zones_without_a_letter_abbreviation_show_an_offset() -> None:
    at = datetime(2027, 1, 11, 17, 0, tzinfo=UTC)
    assert format_when(at, ZoneInfo("America/Sao_Paulo")) == "Mon 11 Jan, 14:00 UTC-03"
    assert format_when(at, ZoneInfo("Asia/Kathmandu")) == "Mon 11 Jan, 22:45 UTC+05:45"
    assert format_when(at, ZoneInfo("UTC")) == "Mon 11 Jan, 17:00 UTC"
    with pytest.raises(ValueError):
        format_when(datetime(2027, 1, 11, 17, 0), BERLIN)


# --------------------------------------------------------------------------- tokens in the email


def test_unsubscribe_link_and_headers_carry_a_verifiable_token() -> None:
    b = DigestBuilder(public_url="https://example.org/mentoring", signer=signer)
    mail = b.email(full_issue(), person())
    prefix = "https://example.org/mentoring/unsubscribe/"
    assert mail.unsubscribe_url.startswith(prefix)
    assert mail.headers == {
        "List-Unsubscribe": f"<{mail.unsubscribe_url}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    claims = signer.verify(mail.unsubscribe_url.removeprefix(prefix), Purpose.UNSUBSCRIBE)
    assert claims.handle == "h-ada-123" and claims.issued_at == NOW


# --------------------------------------------------------------------------- privacy


def test_pair_input_type_admits_numbers_only() -> None:
    hints = typing.get_type_hints(PairCounts)
    assert hints == {"days_since_active": int | None, "backup_plan_set": bool}
    assert [f.name for f in dataclasses.fields(PairCounts)] == ["days_since_active", "backup_plan_set"]
    for hint in hints.values():
        assert str not in typing.get_args(hint) and hint is not str
    # Nothing can be attached afterwards either.
    pair = PairCounts(1, True)
    with pytest.raises((AttributeError, TypeError)):
        pair.note = "text"  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        pair.days_since_active = 2  # type: ignore[misc]
    assert typing.get_type_hints(Recipient)["pairs"] == tuple[PairCounts, ...]


@pytest.mark.parametrize(
    ("days", "plan"),
    [("3", True), ("we argued about x", False), (3, "yes"), (3, "switch to mobile"), (True, True),
     (-1, True), (3.0, True), (None, 1), (b"3", True)],
)
def test_pair_counts_reject_anything_but_ints_and_bools(days: typing.Any, plan: typing.Any) -> None:
    with pytest.raises(TypeError):
        PairCounts(days, plan)


@given(text=st.text(), other=st.one_of(st.none(), st.integers(min_value=0), st.booleans()))
def test_any_string_in_the_pair_section_is_rejected(text: str, other: typing.Any) -> None:
    with pytest.raises(TypeError):
        PairCounts(text, True)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        PairCounts(other if other is None or type(other) is int else 1, text)  # type: ignore[arg-type]


def test_builder_refuses_smuggled_pair_text() -> None:
    @dataclasses.dataclass(frozen=True)
    class Sneaky(PairCounts):
        plan_text: str = "PAIR-SECRET switch to mobile"

    with pytest.raises(TypeError):
        builder.email(full_issue(), person(pairs=(Sneaky(2, True),)))
    with pytest.raises(TypeError):
        builder.email(full_issue(), person(pairs=("PAIR-SECRET",)))


def test_posts_from_any_room_but_the_lounge_are_refused() -> None:
    pair_room_post = LoungePost("!pairroom:example.org", "$p", "Mentor", "PAIR-SECRET", 10)
    issue = full_issue(pulse=CohortPulse(0, 0, (pair_room_post,)))
    with pytest.raises(ValueError, match="not the lounge"):
        builder.email(issue, person())
    with pytest.raises(ValueError, match="not the lounge"):
        builder.lounge_post(issue)


def test_counts_must_be_counts() -> None:
    bad_post = LoungePost(LOUNGE, "$x", "a", "b", -2)
    for pulse in (CohortPulse(-1, 0), CohortPulse(0, True), CohortPulse(0, 0, (bad_post,))):
        with pytest.raises(ValueError):
            builder.lounge_post(full_issue(pulse=pulse))
