"""The content library: rendering for Matrix and email, escaping, variables, rotation.

Loading and checking a library folder, and `hub content check`, are tested in
test_content_library.py. Fast unit tests: no homeserver, no SMTP, no database.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hub.core.content as content_module
from hub.core.content import (
    SAMPLES,
    Audience,
    Cohort,
    Kind,
    Library,
    Pair,
    Person,
    Variables,
    WebinarView,
    format_local_time,
    rotate,
)
from hub.core.content_format import Url, email_document, escape_markdown, html_to_text
from hub.core.content_library import check_library, load_library
from hub.core.markup import MATRIX_ATTRIBUTES, MATRIX_TAGS, markdown_to_matrix
from hub.errors import ContentError

from tests.core.test_content_library import _minimal, _write

HOSTILE = (
    "<img src=x onerror=alert(1)>",
    "[click](javascript:alert(1))",
    "**bold**",
    "<script>alert(1)</script>",
    "`code` _em_ # heading\n\n- list\n1. one\n    indented & <b>x</b> &amp; &#x3C;",
    "![img](https://evil.example/x.png) <https://evil.example> \\*",
)


def _variables(name: str = "Ada", partner: str = "Sam", plan: str = "Phones, then text.") -> Variables:
    mentor = Person(name, "mentor", "Europe/Berlin")
    mentee = Person(partner, "mentee", "America/Toronto")
    return Variables(
        cohort=Cohort("Winter 2027", "winter-2027", 12, None, "Europe/Berlin"),
        week=2,
        person=mentor,
        partner=mentee,
        pair=Pair(mentor, mentee, "https://meet.jit.si/hub-abc_def-123", plan),
        webinar=WebinarView.in_zone("Kick-off", datetime(2027, 1, 11, 17, tzinfo=ZoneInfo("Europe/Berlin")),
                                "America/Toronto", url="https://meet.jit.si/kickoff", starts_in="in 1 hour"),
    )


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


def _tags(html: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    parser = _Tags()
    parser.feed(html)
    return parser.tags


# --- the shipped library -------------------------------------------------------------------


def test_shipped_library_covers_the_four_problems(library: Library) -> None:
    v = SAMPLES[0][1]
    chemistry = [i for i in library.select(Kind.REFLECTION, Audience.PAIR) if "chemistry" in i.tags]
    assert chemistry, "a reflection prompt for when the chemistry isn't there"
    guide = library.render(library.pick(Kind.REFLECTION, Audience.PERSON), v)
    assert "!hub support" in guide.body and "!hub reflect" in guide.body
    welcome = library.render(library.pick(Kind.WELCOME, Audience.PAIR), v)
    assert v.pair is not None and v.pair.video_url in welcome.body and "!hub plan set" in welcome.body
    dropped = library.render(library.pick(Kind.PLAN, Audience.PAIR, use="dropped"), v)
    assert v.pair.plan in dropped.body and "rejoin" in dropped.body.lower()
    for nudge in library.select(Kind.VIDEO, Audience.PAIR):
        assert v.pair.video_url in library.render(nudge, v).body
    checkin = library.render(library.pick(Kind.CHECKIN, Audience.PAIR), v).body
    # The prompts name the reactions the hub adds under them, and the typed form too.
    assert all(f"{emoji} " in checkin and f"!hub met {mode}" in checkin
               for emoji, mode in (("🎥", "video"), ("📞", "voice"), ("💬", "text"), ("⏳", "notyet")))
    private = library.render(library.pick(Kind.CHECKIN, Audience.PERSON), v).body
    assert all(f"{n}\ufe0f\u20e3" in private for n in range(1, 6)) and "!hub checkin" in private


def test_shipped_tips_do_not_repeat_their_title(library: Library) -> None:
    """The digest prints "Tip: <title>" above the tip's body, so a body opening with the title
    again reads twice (the shipped tips once did)."""
    v = SAMPLES[0][1]
    tips = library.select(Kind.TIP, Audience.COHORT)
    assert len(tips) >= 5
    for tip in tips:
        rendered = library.render(tip, v)
        opening = " ".join(rendered.body.split()[:6]).lower()
        assert "tip:" not in opening and rendered.subject.lower()[:20] not in opening, tip.id


# --- rendering -------------------------------------------------------------------------------


def test_matrix_html_uses_only_the_allowed_tags_and_attributes(library: Library) -> None:
    for _label, variables in SAMPLES:
        for item in library:
            rendered = library.render(item, variables)
            for tag, attrs in _tags(rendered.formatted_body):
                assert tag in MATRIX_TAGS, (item.id, tag)
                for name, value in attrs:
                    assert name in MATRIX_ATTRIBUTES.get(tag, set()), (item.id, tag, name)
                    if name == "href":
                        assert value is not None and value.startswith(("https://", "http://", "mailto:"))
            content = rendered.matrix_content()
            assert content["msgtype"] == "m.notice" and content["format"] == "org.matrix.custom.html"


def test_email_html_is_a_styled_single_column_document(library: Library) -> None:
    rendered = library.render(library.pick(Kind.WELCOME, Audience.PAIR), _variables())
    html = rendered.email_html
    assert html.startswith("<!DOCTYPE html>")
    assert '<meta name="color-scheme" content="light dark">' in html
    assert "@media (prefers-color-scheme: dark)" in html  # kept: at-rules cannot be inlined
    assert re.search(r'<p style="[^"]*margin', html), "paragraph styles are inlined"
    assert re.search(r'<a href="https://meet\.jit\.si/hub-abc_def-123" style="[^"]*color', html)
    assert "<img" not in html and "src=" not in html and "url(" not in html and "<link" not in html
    assert f"<title>{rendered.subject}</title>" in html
    assert 'max-width: 600px' in html
    assert html.index('<meta charset="utf-8">') < 100


def test_email_document_footer_is_sanitised() -> None:
    html = email_document("Digest & more", "<p>Hi</p>",
                          footer_html='<a href="https://hub.example.org/u/x">Unsubscribe</a><script>x</script>')
    assert "<title>Digest &amp; more</title>" in html
    assert re.search(r'<td class="footer" style="[^"]+"><a href="https://hub\.example\.org/u/x"', html)
    assert "<script" not in html


def test_plain_text_has_no_html_and_spells_links_out(library: Library) -> None:
    for item in library:
        rendered = library.render(item, _variables())
        for text in (rendered.body, rendered.email_text, rendered.subject, rendered.summary):
            assert not re.search(r"</?[a-zA-Z][^>]*>", text), (item.id, text)
            assert "&amp;" not in text and "&lt;" not in text and "\\" not in text, (item.id, text)
    dropped = library.render(library.pick(Kind.PLAN, Audience.PAIR, use="dropped"), _variables())
    assert "https://meet.jit.si/hub-abc_def-123" in dropped.body


def test_subject_and_summary_are_single_lines(library: Library) -> None:
    for item in library:
        rendered = library.render(item, _variables())
        assert rendered.subject and "\n" not in rendered.subject
        assert rendered.summary and "\n" not in rendered.summary


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_values_come_out_inert(library: Library, hostile: str) -> None:
    variables = _variables(name=hostile, partner=hostile, plan=hostile)
    variables = Variables(
        cohort=Cohort(hostile, "x"), week=2, person=variables.person, partner=variables.partner,
        pair=variables.pair, webinar=WebinarView(hostile, datetime(2027, 1, 11, 17, tzinfo=ZoneInfo("UTC"))),
    )
    for item in library:
        rendered = library.render(item, variables)
        for html in (rendered.formatted_body, rendered.email_html):
            tags = {tag for tag, _ in _tags(html)}
            assert not tags & {"img", "script", "b"}, (item.id, tags)
            assert "javascript:" not in "".join(v or "" for _, attrs in _tags(html) for _, v in attrs)
            assert "evil.example" not in "".join(v or "" for _, attrs in _tags(html) for _, v in attrs)
            assert "<strong>bold</strong>" not in html and "<em>em</em>" not in html
            assert "<h1" not in html
    # The plain text shows exactly what the person typed (it is text; nothing interprets it).
    welcome = library.render(library.pick(Kind.WELCOME, Audience.PAIR), variables)
    first_line = hostile.split("\n")[0]
    assert first_line in welcome.body
    assert first_line in welcome.subject or "\n" in hostile


def test_plan_keeps_its_line_breaks_but_cannot_break_out(library: Library) -> None:
    plan = "Rejoin once.\n\n\n# Then phone\n    1. then text"
    rendered = library.render(library.pick(Kind.PLAN, Audience.PAIR, use="dropped"), _variables(plan=plan))
    assert "<blockquote>\n<p>Rejoin once.<br>\n# Then phone<br>\n1. then text</p>\n</blockquote>" in \
        rendered.formatted_body
    assert "Rejoin once.\n> # Then phone\n> 1. then text" in rendered.body


def test_missing_variables_name_the_item_and_line(library: Library) -> None:
    item = library.pick(Kind.WELCOME, Audience.PAIR)
    with pytest.raises(ContentError) as info:
        library.render(item, Variables(Cohort("C")))
    assert str(info.value).startswith(f"{item.path}:{item.id_line}: cannot render 'welcome-pair-room': ")
    assert "Variables.pair is required" in str(info.value)


def test_rendering_is_cached_per_item_and_variables(library: Library) -> None:
    item = library.pick(Kind.ICEBREAKER, Audience.PAIR, week=2)
    first = library.render(item, _variables())
    assert library.render(item.id, _variables()) is first
    assert library.render(item, _variables(name="Bea")) is not first


def test_markdown_is_rendered_once_for_pairs_whose_message_comes_out_the_same(
    library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `!hub send icebreaker` renders for each of 5,000 pairs: different Variables (names, links),
    # but an icebreaker that names nobody is the same Markdown for all of them.
    calls: list[str] = []

    def counted(source: str) -> tuple[str, str]:
        calls.append(source)
        return markdown_to_matrix(source)

    monkeypatch.setattr(content_module, "markdown_to_matrix", counted)
    content_module._markup.cache_clear()
    plain = next(i for i in library.select(Kind.ICEBREAKER, Audience.PAIR) if "{{" not in i.body)
    named = next(i for i in library.select(Kind.ICEBREAKER, Audience.PAIR) if "pair." in i.body)
    names = [f"Person {n}" for n in range(20)]
    plain_out = {library.render(plain, _variables(name=n)).formatted_body for n in names}
    assert len(plain_out) == 1 and len(calls) == 1
    named_out = {library.render(named, _variables(name="Ada", partner=n)).formatted_body for n in names}
    assert len(named_out) == len(names) and len(calls) == 1 + len(names)  # each pair its own


def test_command_prefix_follows_the_config(tmp_path: Path) -> None:
    lib = load_library(command_prefix="!mh")
    rendered = lib.render(lib.pick(Kind.WELCOME, Audience.PERSON), SAMPLES[0][1])
    assert "!mh checkin 5" in rendered.body and "!hub" not in rendered.body
    assert "!mh support" in rendered.formatted_body


def test_sandbox_refuses_internals_and_huge_output(tmp_path: Path) -> None:
    folder = _minimal(tmp_path)
    a = _write(folder, "x/a.md", "---\nid: x-a\nkind: tip\naudience: cohort\n---\n{{ cohort.__class__ }}\n")
    b = _write(folder, "x/b.md", "---\nid: x-b\nkind: tip\naudience: cohort\n---\n{{ 'x' * 100000 }}\n")
    c = _write(folder, "x/c.md", "---\nid: x-c\nkind: tip\naudience: cohort\n---\n"
                                 "{{ cohort.name.__class__.__mro__ }}\n")
    problems = {p.path: str(p) for p in check_library(folder).problems}
    assert "has no field '__class__'" in problems[a]
    assert "repetition too large" in problems[b]
    assert "unsafe" in problems[c]


def test_links_must_be_http(library: Library) -> None:
    ada, sam = Person("Ada", "mentor"), Person("Sam", "mentee")
    with pytest.raises(ContentError, match=r"pair\.video_url: 'javascript:alert\(1\)' is not an http"):
        Pair(ada, sam, "javascript:alert(1)")
    with pytest.raises(ContentError, match=r"webinar\.url"):
        WebinarView("W", datetime(2027, 1, 1, tzinfo=ZoneInfo("UTC")), url="ftp://x")
    with pytest.raises(ContentError, match=r"person\.role"):
        Person("Ada", "boss")
    assert Url("https://x.org/a b<c>") == "https://x.org/a%20b%3Cc%3E"


def test_webinar_time_in_each_recipients_zone() -> None:
    at = datetime(2027, 3, 29, 17, 0, tzinfo=ZoneInfo("Europe/Berlin"))  # the day after the spring change
    assert format_local_time(at, "Europe/Berlin") == "Monday 29 March 2027, 17:00 CEST"
    assert format_local_time(at, ZoneInfo("America/Toronto")) == "Monday 29 March 2027, 11:00 EDT"
    assert format_local_time(at, "Asia/Dubai") == "Monday 29 March 2027, 19:00 UTC+04"
    assert WebinarView.in_zone("W", at, "UTC").local_time == "Monday 29 March 2027, 15:00 UTC"
    with pytest.raises(ContentError, match="not a time zone"):
        format_local_time(at, "Mars/Olympus")
    with pytest.raises(ContentError, match="no time zone"):
        WebinarView("W", datetime(2027, 1, 1))


def test_html_to_text_structure() -> None:
    _, html = markdown_to_matrix("**Hi** [there](https://x.org) <https://y.org>\n\n1. one\n2. two\n\n"
                                 "- a\n    - nested\n\n> quoted\n> twice\n\n---\n\nend")
    assert html_to_text(html) == ("Hi there (https://x.org) https://y.org\n\n1. one\n2. two\n\n"
                                  "- a\n  - nested\n\n> quoted\n> twice\n\n----\n\nend")


def test_tag_only_lines_vanish_and_inline_tags_keep_their_line(tmp_path: Path) -> None:
    folder = _minimal(tmp_path)
    (folder / "tip" / "tip-cohort-digest.md").unlink()
    _write(folder, "tip/t.md", """
---
id: tip-tags
kind: tip
audience: cohort
---
Line one{% if week %} in week {{ week }}{% endif %}.
Line two.

  {% if not cohort.start %}
Never.
  {% else %}
- item a
{% endif %}
- item b
{# commented out:
{% if week %}
#}
End.
""")
    lib = load_library(folder)
    rendered = lib.render("tip-tags", SAMPLES[0][1])
    assert rendered.body == "Line one in week 3.\nLine two.\n\n- item a\n- item b\n\nEnd."


# --- escaping, as a property -------------------------------------------------------------------

_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Cf", "Zl", "Zp")), max_size=60)


@settings(max_examples=300, deadline=None)
@given(_TEXT)
def test_escaped_text_renders_as_exactly_that_text(text: str) -> None:
    body, html = markdown_to_matrix(f"Name: {escape_markdown(text)}")
    assert {tag for tag, _ in _tags(html)} <= {"p"}
    assert html_to_text(html) == " ".join(f"Name: {text}".split())
    # The plain body (clients without HTML, notifications) shows it as typed too, no escapes.
    assert " ".join(body.split()) == " ".join(f"Name: {text}".split())


# --- rotation ------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text("abcdefgh", min_size=1, max_size=3), min_size=1, max_size=12, unique=True),
    st.lists(st.text("abcdefghxyz", min_size=1, max_size=3), max_size=30),
    st.integers(min_value=1, max_value=40),
)
def test_rotation_never_repeats_while_unused_ones_remain(
    candidates: list[str], history: list[str], steps: int
) -> None:
    used = list(history)
    for _ in range(steps):
        counts = Counter(u for u in used if u in candidates)
        chosen = rotate(candidates, used)
        assert counts[chosen] == min(counts[c] for c in candidates)
        used.append(chosen)
    # From a clean start, each full round is a permutation of the candidates, always in the same order.
    fresh: list[str] = []
    for _ in range(len(candidates) * 2):
        fresh.append(rotate(candidates, fresh))
    assert fresh[: len(candidates)] == candidates and fresh[len(candidates):] == candidates


def test_two_pairs_never_see_a_repeat_within_sixteen_weeks(library: Library) -> None:
    histories: dict[str, list[str]] = {"pair-a": [], "pair-b": ["icebreaker-pair-05-teach-me"]}
    for week in range(1, 17):
        for history in histories.values():
            history.append(library.next_icebreaker(Audience.PAIR, history, week=week).id)
    for history in histories.values():
        assert len(history) == len(set(history))
    assert histories["pair-a"][0] == "icebreaker-pair-01-first-call"  # the week-1 item comes first


def test_pick_honours_week_and_then_starts_over(tmp_path: Path) -> None:
    folder = _minimal(tmp_path)
    (folder / "icebreaker" / "icebreaker-pair-prompt.md").unlink()
    for name, week in (("a", None), ("b", 2), ("c", None)):
        _write(folder, f"icebreakers/pair/{name}.md",
               f"---\nid: ib-{name}\nkind: icebreaker\naudience: pair\n" + (f"week: {week}\n" if week else "")
               + "---\nText.\n")
    lib = load_library(folder)
    assert lib.pick("icebreaker", "pair", week=2).id == "ib-b"
    assert lib.pick("icebreaker", "pair", week=2, used=["ib-b"]).id == "ib-a"
    assert lib.pick("icebreaker", "pair", week=3, used=[]).id == "ib-a"
    assert lib.pick("icebreaker", "pair", week=3, used=["ib-a", "ib-c"]).id == "ib-a"  # over again
    assert lib.pick("icebreaker", "pair", used=["ib-a"]).id == "ib-c"  # no week: week items never
    assert [i.id for i in lib.select("icebreaker", "pair", week=2)] == ["ib-b", "ib-a", "ib-c"]
    with pytest.raises(ContentError, match="no digest item for audience pair"):
        lib.pick(Kind.DIGEST, Audience.PAIR)
    with pytest.raises(ContentError, match="'icebraker' is not a kind"):
        lib.pick("icebraker", "pair")
