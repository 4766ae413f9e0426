"""CSS inlined once into an email template gives every element the style css-inline gives the page."""

from __future__ import annotations

from html.parser import HTMLParser
from zoneinfo import ZoneInfo

import css_inline
import pytest
from markupsafe import Markup

from hub.core.digest import CohortPulse, DigestIssue, PairCounts, Recipient, _environment, render_blocks
from hub.core.email_css import preinline, stylesheet
from hub.errors import TemplateStyleError

from tests.core.test_digest import builder, full_issue, hostile_issue, person


class Elements(HTMLParser):
    """Every element as (tag, class, style declarations), the page's text, and its <style> text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, str | None, list[tuple[str, str]]]] = []
        self.text: list[str] = []
        self.style = ""
        self._in_style = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_style = tag == "style"
        # css-inline's HTML parser adds <tbody> (browsers do too) and moves <style> to the top
        # of <head>; neither changes a style. The <style> text is compared on its own.
        if tag in ("tbody", "style"):
            return
        a = dict(attrs)
        declarations = [tuple(part.strip() for part in d.split(":", 1))
                        for d in (a.get("style") or "").split(";") if d.strip()]
        self.elements.append((tag, a.get("class"), declarations))  # type: ignore[arg-type]

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.style += " ".join(data.split())
        elif data.strip():
            self.text.append(" ".join(data.split()))


# The templates as written, CSS in <style>: the page and its cohort-wide sections.
RAW = _environment().get_template("digest_email.html")
RAW_SECTIONS = _environment().get_template("digest_email_sections.html")
PAGE_INLINER = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)

CASES: dict[str, tuple[DigestIssue, Recipient]] = {
    "full week": (full_issue(), person()),
    "quiet week, no pairs": (full_issue(prompts=(), webinars=(), pulse=CohortPulse(), tip=None),
                             person(pairs=())),
    "mentor of two, email only": (full_issue(), person(
        on_matrix=False, timezone=ZoneInfo("Asia/Tokyo"),
        pairs=(PairCounts(None, True), PairCounts(30, False)))),
    "hostile names": (hostile_issue(), person(name="<img src=x onerror=alert(1)>")),
}


@pytest.mark.parametrize("case", CASES)
def test_every_element_gets_the_style_css_inline_gives_the_whole_page(case: str) -> None:
    issue, recipient = CASES[case]
    ctx, _ = builder._email_context(issue, builder._shared(issue), recipient)
    sections = {name: Markup(html) for name, html in render_blocks(RAW_SECTIONS, ctx).items()}
    per_page = Elements(PAGE_INLINER.inline(RAW.render(ctx, sections=sections)))
    once = Elements(builder.email(issue, recipient).html)
    assert once.elements == per_page.elements
    assert once.text == per_page.text
    assert once.style == per_page.style and once.style.startswith("@media (prefers-color-scheme: dark)")
    # Not vacuous: the styles are there (every element with a class has one).
    styled = [e for e in once.elements if e[1]]
    assert len(styled) > 20 and all(e[2] for e in styled)


TEMPLATE = """<html><head>
<style>
body { margin: 0; }
.note { color: #123456; padding: 2px; }
.note { padding: 4px; }
@media (prefers-color-scheme: dark) { .note { color: #fff !important; } }
</style>
</head>
<body>
{#- a comment that mentions <style> -#}
<p class="note">{{ text }}</p><td class="note"></td><br/><p>{{ other }}</p>
</body></html>
"""


def test_later_rules_win_and_only_at_rules_stay_in_the_style_block() -> None:
    out = preinline(TEMPLATE)
    assert '<body style="margin: 0;">' in out
    assert '<p class="note" style="color: #123456;padding: 4px;">{{ text }}</p>' in out
    assert '<td class="note" style="color: #123456;padding: 4px;"></td>' in out
    assert "<br/>" in out and "<p>{{ other }}</p>" in out  # no class, no style
    block = out.split("<style>")[1].split("</style>")[0]
    assert block.strip() == "@media (prefers-color-scheme: dark) { .note { color: #fff !important; } }"


def test_a_part_of_a_page_is_inlined_with_the_page_stylesheet() -> None:
    part = '<tr><td class="note">{{ x }}</td></tr>\n<p>plain</p>'
    out = preinline(part, stylesheet(TEMPLATE))
    assert out == '<tr><td class="note" style="color: #123456;padding: 4px;">{{ x }}</td></tr>\n<p>plain</p>'
    with pytest.raises(TemplateStyleError, match="no <style> block"):
        preinline(part)


@pytest.mark.parametrize("change, problem", [
    ((".note {", "p .note {"), "selector 'p .note'"),
    ((".note {", "p {"), "selector 'p'"),
    ((".note {", "#x, .note {"), "selector '#x'"),
    (('class="note">{{ text }}', 'class="{{ cls }}">'), "one literal class"),
    (('class="note">{{ text }}', 'class="note other">'), "one literal class"),
    (('<td class="note">', '<td class="note" style="color: red">'), "already has a style"),
    (("body { margin: 0; }", "body { margin: 0; "), "unfinished rule"),
    (("body { margin: 0; }", "body { margin: 0; }}"), "unbalanced"),
    (("<style>", "<link>"), "no <style> block"),
])
def test_what_cannot_be_inlined_once_is_refused_by_name(change: tuple[str, str], problem: str) -> None:
    broken = TEMPLATE.replace(*change, 1)
    assert broken != TEMPLATE
    with pytest.raises(TemplateStyleError, match=problem.replace("(", r"\(")):
        preinline(broken)

