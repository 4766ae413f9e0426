"""The content library: loading and linting, rendering for Matrix and email, escaping, rotation, the CLI.

Fast unit tests: no homeserver, no SMTP, no database.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.cli import main
from hub.core.content import (
    SAMPLES,
    SLOTS,
    Audience,
    Cohort,
    Kind,
    Library,
    Pair,
    Person,
    Problem,
    Variables,
    Webinar,
    check_library,
    default_library_path,
    format_local_time,
    load_library,
    rotate,
)
from hub.core.content_format import Url, email_document, escape_markdown, html_to_text
from hub.core.markup import MATRIX_ATTRIBUTES, MATRIX_TAGS, markdown_to_matrix
from hub.errors import ContentError

ROOT = Path(__file__).resolve().parent.parent

HOSTILE = (
    "<img src=x onerror=alert(1)>",
    "[click](javascript:alert(1))",
    "**bold**",
    "<script>alert(1)</script>",
    "`code` _em_ # heading\n\n- list\n1. one\n    indented & <b>x</b> &amp; &#x3C;",
    "![img](https://evil.example/x.png) <https://evil.example> \\*",
)


@pytest.fixture(scope="module")
def library() -> Library:
    return load_library()


def _copy_shipped(tmp_path: Path) -> Path:
    target = tmp_path / "library"
    shutil.copytree(default_library_path(), target)
    return target


def _minimal(tmp_path: Path) -> Path:
    """A small complete library: one item per slot, so checks of fixtures stay fast."""
    folder = tmp_path / "minimal"
    for (kind, audience, use) in SLOTS:
        name = f"{kind}-{audience}-{use}"
        body = {
            Audience.PAIR: "Hi {{ pair.mentor.name }} and {{ pair.mentee.name }}: {{ pair.video_url }}",
            Audience.COHORT: "Hello, {{ cohort.name }}!",
            Audience.PERSON: "Hi {{ person.name }}.",
        }[audience]
        if kind is Kind.WEBINAR:
            body += " {{ webinar.title }} at {{ webinar.local_time }}."
        _write(folder, f"{kind}/{name}.md",
               f"---\nid: {name}\nkind: {kind}\naudience: {audience}\nuse: {use}\n---\n{body}\n")
    return folder


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.lstrip("\n"), encoding="utf-8")
    return path


def _variables(name: str = "Ada", partner: str = "Sam", plan: str = "Phones, then text.") -> Variables:
    mentor = Person(name, "mentor", "Europe/Berlin")
    mentee = Person(partner, "mentee", "America/Toronto")
    return Variables(
        cohort=Cohort("Winter 2027", "winter-2027", 12, None, "Europe/Berlin"),
        week=2,
        person=mentor,
        partner=mentee,
        pair=Pair(mentor, mentee, "https://meet.jit.si/hub-abc_def-123", plan),
        webinar=Webinar.in_zone("Kick-off", datetime(2027, 1, 11, 17, tzinfo=ZoneInfo("Europe/Berlin")),
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


def test_shipped_library_passes_the_check_with_the_required_counts() -> None:
    report = check_library(default_library_path())
    assert report.problems == (), "\n".join(map(str, report.problems))
    counts = report.counts()
    assert counts[(Kind.ICEBREAKER, Audience.PAIR, "prompt")] >= 16
    assert counts[(Kind.ICEBREAKER, Audience.COHORT, "prompt")] >= 6
    assert counts[(Kind.REFLECTION, Audience.PAIR, "prompt")] >= 4
    assert counts[(Kind.REFLECTION, Audience.PERSON, "guide")] >= 1
    assert counts[(Kind.PLAN, Audience.PAIR, "prompt")] >= 1
    assert counts[(Kind.PLAN, Audience.PAIR, "dropped")] >= 1
    assert counts[(Kind.VIDEO, Audience.PAIR, "nudge")] >= 3
    assert counts[(Kind.CHECKIN, Audience.PAIR, "prompt")] >= 1
    assert counts[(Kind.CHECKIN, Audience.PERSON, "prompt")] >= 1
    for audience in Audience:
        assert counts[(Kind.WELCOME, audience, "greeting")] >= 1
    assert counts[(Kind.WELCOME, Audience.PAIR, "launch")] >= 1
    for use in ("announcement", "reminder", "follow-up"):
        assert counts[(Kind.WEBINAR, Audience.COHORT, use)] >= 1
    assert counts[(Kind.TIP, Audience.COHORT, "digest")] >= 5
    assert set(counts) == set(SLOTS), "every slot is covered and nothing else"
    assert "OK" in report.summary()


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
    assert all(f"!hub met {mode}" in checkin for mode in ("video", "voice", "text", "notyet"))
    private = library.render(library.pick(Kind.CHECKIN, Audience.PERSON), v).body
    assert all(f"!hub checkin {n}" in private for n in range(1, 6))


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


def test_default_library_is_the_repository_content_folder() -> None:
    # In a checkout, hub/content is a symlink to content/ (what the wheel ships as package data).
    assert default_library_path() == (ROOT / "content").resolve()
    assert (ROOT / "hub" / "content").resolve() == (ROOT / "content").resolve()


def test_readme_is_not_an_item(library: Library) -> None:
    assert (default_library_path() / "README.md").is_file()
    assert all(item.path.name != "README.md" for item in library)


# --- the check reports each mistake at its file and line -----------------------------------


MISTAKES: dict[str, tuple[str, int, str]] = {
    # file name: (content, expected line, expected message fragment)
    "unknown-key.md": ("""
---
id: mistake-unknown-key
kind: tip
audience: cohort
titel: Oops
---
Body.
""", 5, "unknown front-matter key 'titel' (did you mean 'title'?)"),
    "missing-key.md": ("""
---
id: mistake-missing-key
kind: tip
---
Body.
""", 1, "missing required front-matter key 'audience'"),
    "bad-kind.md": ("""
---
id: mistake-bad-kind
kind: icebraker
audience: pair
---
Body.
""", 3, "kind 'icebraker' is not one of icebreaker, checkin"),
    "bad-audience.md": ("""
---
id: mistake-bad-audience
kind: icebreaker
audience: pairs
---
Body.
""", 4, "audience 'pairs' is not one of pair, cohort, person (did you mean 'pair'?)"),
    "bad-use.md": ("""
---
id: mistake-bad-use
kind: webinar
audience: cohort
use: remind
---
Body.
""", 5, "use 'remind' is not one of announcement, reminder, follow-up"),
    "never-sent.md": ("""
---
id: mistake-never-sent
kind: tip
audience: pair
---
Body.
""", 4, "the hub never sends tip items to audience pair"),
    "unknown-variable.md": ("""
---
id: mistake-unknown-variable
kind: icebreaker
audience: pair
---
Hello!

Say hi to {{ pairr.mentor.name }}.
""", 8, "unknown variable 'pairr' (did you mean 'pair'?"),
    "wrong-audience-variable.md": ("""
---
id: mistake-wrong-audience-variable
kind: icebreaker
audience: cohort
---
Hi {{ person.name }}
""", 6, "variable 'person' is not available in a icebreaker/cohort item"),
    "unknown-field.md": ("""
---
id: mistake-unknown-field
kind: video
audience: pair
---
First line.
Second line.
Link: {{ pair.video_link }}
""", 8, "'pair' has no field 'video_link' (did you mean 'video_url'?)"),
    "nested-field.md": ("""
---
id: mistake-nested-field
kind: video
audience: pair
---
{{ pair.mentor.nmae }}
""", 6, "'pair.mentor' has no field 'nmae' (did you mean 'name'?)"),
    "render-fails.md": ("""
---
id: mistake-render-fails
kind: checkin
audience: person
---
Hi {{ person.name }},

how are things with {{ partner.name }}?
""", 8, "does not render with the sample variables (optional values missing)"),
    "render-error.md": ("""
---
id: mistake-render-error
kind: tip
audience: cohort
---
One.
Two: {{ week / 0 }}
""", 7, "does not render with the sample variables"),
    "syntax.md": ("""
---
id: mistake-syntax
kind: tip
audience: cohort
---
Fine.
{% if week %}
Never closed.
""", 8, "template syntax:"),
    "bad-yaml.md": ("""
---
id: mistake-bad-yaml
kind: tip
audience: cohort
tags: [one, two
---
Body.
""", 6, "front matter is not valid YAML"),
    "yaml-colon.md": ("""
---
id: mistake-yaml-colon
kind: tip
audience: cohort
title: Note: this breaks YAML
---
Body.
""", 5, "front matter is not valid YAML"),
    "no-front-matter.md": ("""
Just text, no front matter.
""", 1, "no front matter"),
    "bad-id.md": ("""
---
id: Not An Id
kind: tip
audience: cohort
---
Body.
""", 2, "id 'Not An Id' must be lowercase letters"),
    "bad-week.md": ("""
---
id: mistake-bad-week
kind: tip
audience: cohort
week: first
---
Body.
""", 5, "week 'first' must be a program week number"),
    "empty-body.md": ("""
---
id: mistake-empty-body
kind: tip
audience: cohort
---

""", 5, "the body is empty"),
    "image.md": ("""
---
id: mistake-image
kind: tip
audience: cohort
---
Look:

![a cat](https://example.org/cat.png)
""", 8, "images are not supported"),
    "code-variable.md": ("""
---
id: mistake-code-variable
kind: welcome
audience: pair
---
Type `!hub plan set {{ pair.mentor.name }} calls` now.
""", 6, "a variable is printed inside `code`"),
    "print-object.md": ("""
---
id: mistake-print-object
kind: video
audience: pair
---
{{ pair.mentor }}
""", 6, "print one field of the person"),
    "unguarded-none.md": ("""
---
id: mistake-unguarded-none
kind: plan
audience: pair
use: dropped
---
Room: {{ pair.room_url }}
""", 7, "a value is empty (None) here"),
    "include.md": ("""
---
id: mistake-include
kind: tip
audience: cohort
---
{% include "other.md" %}
""", 6, "include, extends and import are not available"),
    "bad-title.md": ("""
---
id: mistake-bad-title
kind: tip
audience: cohort
title: "Hi {{ persn.name }}"
---
Body.
""", 5, "unknown variable 'persn'"),
    "duplicate-key.md": ("""
---
id: mistake-duplicate-key
kind: tip
audience: cohort
kind: tip
---
Body.
""", 5, "front-matter key 'kind' appears twice (also on line 3)"),
}


@pytest.fixture(scope="module")
def mistakes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Problem]]:
    """The shipped library plus one file per mistake, checked once for all the tests below."""
    folder = _minimal(tmp_path_factory.mktemp("mistakes"))
    for name, (text, _line, _message) in MISTAKES.items():
        _write(folder, f"mistakes/{name}", text)
    return folder, list(check_library(folder).problems)


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_each_mistake_is_reported_with_file_and_line(mistakes: tuple[Path, list[Problem]], name: str) -> None:
    folder, problems = mistakes
    path = folder / "mistakes" / name
    _text, line, message = MISTAKES[name]
    lines = [str(p) for p in problems if p.path == path]
    assert any(s.startswith(f"{path}:{line}: ") and message in s for s in lines), lines


def test_one_mistake_does_not_cascade(mistakes: tuple[Path, list[Problem]]) -> None:
    folder, problems = mistakes
    assert {p.path.name for p in problems} == set(MISTAKES)
    assert all(p.path.parent == folder / "mistakes" for p in problems)
    assert len(problems) == len(MISTAKES), "\n".join(map(str, problems))


def test_duplicate_id_names_both_files(tmp_path: Path) -> None:
    folder = _minimal(tmp_path)
    path = _write(folder, "zz/duplicate.md", """
---
kind: tip
audience: cohort
id: tip-cohort-digest
---
Again.
""")
    lines = [str(p) for p in check_library(folder).problems]
    first = folder / "tip" / "tip-cohort-digest.md"
    assert lines == [f"{path}:4: duplicate id 'tip-cohort-digest' (also in {first}:2)"]


def test_missing_slots_and_empty_folders_are_reported(tmp_path: Path) -> None:
    folder = _minimal(tmp_path)
    (folder / "plan" / "plan-pair-dropped.md").unlink()
    lines = [str(p) for p in check_library(folder).problems]
    assert lines == [f"{folder}: no plan item for audience pair with use dropped: the hub needs one for "
                     f"{SLOTS[(Kind.PLAN, Audience.PAIR, 'dropped')]}"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert [str(p) for p in check_library(empty).problems] == [
        f"{empty}: no content files (*.md) in this folder"]
    nope = tmp_path / "nope"
    assert [str(p) for p in check_library(nope).problems] == [f"{nope}: not a folder"]


def test_load_library_raises_with_every_problem(tmp_path: Path) -> None:
    folder = _minimal(tmp_path)
    _write(folder, "a.md", MISTAKES["bad-kind.md"][0])
    _write(folder, "b.md", MISTAKES["unknown-key.md"][0])
    with pytest.raises(ContentError) as info:
        load_library(folder)
    assert len(info.value.problems) == 2


def test_a_moderator_can_add_and_replace_files(tmp_path: Path) -> None:
    folder = _copy_shipped(tmp_path)
    shutil.rmtree(folder / "tips")
    _write(folder, "tips/our-tip.md", """
---
id: tip-our-own
kind: tip
audience: cohort
title: Our own tip
---
**Tip:** {{ cohort.name }} does things its own way.
""")
    lib = load_library(folder)
    assert [i.id for i in lib.select(Kind.TIP)] == ["tip-our-own"]
    assert lib.render("tip-our-own", SAMPLES[0][1]).body == "Tip: Winter 2027 does things its own way."


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
        pair=variables.pair, webinar=Webinar(hostile, datetime(2027, 1, 11, 17, tzinfo=ZoneInfo("UTC"))),
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
        Webinar("W", datetime(2027, 1, 1, tzinfo=ZoneInfo("UTC")), url="ftp://x")
    with pytest.raises(ContentError, match=r"person\.role"):
        Person("Ada", "boss")
    assert Url("https://x.org/a b<c>") == "https://x.org/a%20b%3Cc%3E"


def test_webinar_time_in_each_recipients_zone() -> None:
    at = datetime(2027, 3, 29, 17, 0, tzinfo=ZoneInfo("Europe/Berlin"))  # the day after the spring change
    assert format_local_time(at, "Europe/Berlin") == "Monday 29 March 2027, 17:00 CEST"
    assert format_local_time(at, ZoneInfo("America/Toronto")) == "Monday 29 March 2027, 11:00 EDT"
    assert format_local_time(at, "Asia/Dubai") == "Monday 29 March 2027, 19:00 UTC+04"
    assert Webinar.in_zone("W", at, "UTC").local_time == "Monday 29 March 2027, 15:00 UTC"
    with pytest.raises(ContentError, match="not a time zone"):
        format_local_time(at, "Mars/Olympus")
    with pytest.raises(ContentError, match="no time zone"):
        Webinar("W", datetime(2027, 1, 1))


def test_html_to_text_structure() -> None:
    _, html = markdown_to_matrix("**Hi** [there](https://x.org) <https://y.org>\n\n1. one\n2. two\n\n"
                                 "- a\n    - nested\n\n> quoted\n> twice\n\n---\n\nend")
    assert html_to_text(html) == ("Hi there (https://x.org) https://y.org\n\n1. one\n2. two\n\n"
                                  "- a\n  - nested\n\n> quoted\n> twice\n\n----\n\nend")


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


# --- the CLI -------------------------------------------------------------------------------


def test_cli_content_check_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["content", "check", str(default_library_path())]) == 0
    out = capsys.readouterr()
    assert "OK" in out.out and out.err == ""

    folder = _minimal(tmp_path)
    path = _write(folder, "broken.md", MISTAKES["unknown-variable.md"][0])
    assert main(["content", "check", str(folder)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:8: unknown variable 'pairr'" in err
    assert "1 problem(s)" in err


def test_cli_content_check_uses_the_configured_library(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _minimal(tmp_path)
    _write(folder, "broken.md", MISTAKES["bad-kind.md"][0])
    config = tmp_path / "config.toml"
    config.write_text('[matrix]\nhomeserver = "https://m.example.org"\nuser_id = "@hub:example.org"\n'
                      'password = "x"\n\n[content]\npath = "minimal"\n', encoding="utf-8")
    assert main(["content", "check", "-c", str(config)]) == 1
    assert "kind 'icebraker'" in capsys.readouterr().err


def test_cli_subprocess_and_hub_check(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "hub", "content", "check"], cwd=tmp_path,
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "items in" in ok.stdout

    folder = _minimal(tmp_path)
    _write(folder, "broken.md", MISTAKES["missing-key.md"][0])
    config = tmp_path / "config.toml"
    config.write_text('[matrix]\nhomeserver = "https://m.example.org"\nuser_id = "@hub:example.org"\n'
                      'password = "x"\n\n[content]\npath = "minimal"\n', encoding="utf-8")
    bad = subprocess.run([sys.executable, "-m", "hub", "check", "--offline", "-c", str(config)],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    assert f"{folder / 'broken.md'}:1: missing required front-matter key 'audience'" in bad.stderr


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
