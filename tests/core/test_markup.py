"""The Matrix HTML subset and `echo`, the one way a reply quotes what someone typed."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.core.markup import ECHO_LIMIT, echo, markdown_to_matrix, sanitize_matrix_html


@pytest.mark.parametrize("html", [
    '<img src="https://evil.example/pixel.png">',
    '<img src="http://evil.example/pixel.png" alt="x">',
    '<img src="//evil.example/pixel.png">',
    '<img src="/pixel.png">',
    '<img src=" HTTPS://evil.example/pixel.png">',
])
def test_images_only_from_the_media_repository(html: str) -> None:
    cleaned = sanitize_matrix_html(html)
    assert "evil.example" not in cleaned and "src=" not in cleaned, cleaned
    kept = sanitize_matrix_html('<img src="mxc://example.org/abc" alt="a">')
    assert kept == '<img src="mxc://example.org/abc" alt="a">'


def test_links_only_with_the_specs_schemes() -> None:
    for html, kept in [
        ('<a href="https://ok.example/a">x</a>', True),
        ('<a href="http://ok.example/a">x</a>', True),
        ('<a href="mailto:a@ok.example">x</a>', True),
        ('<a href="magnet:?xt=urn:btih:abc">x</a>', True),
        ('<a href="javascript:alert(1)">x</a>', False),
        ('<a href="data:text/html,hi">x</a>', False),
        # Relative links have nothing to be relative to in a message; mxc is for images.
        ('<a href="//evil.example/login">x</a>', False),
        ('<a href="/login">x</a>', False),
        ('<a href="mxc://example.org/abc">x</a>', False),
    ]:
        assert ("href=" in sanitize_matrix_html(html)) is kept, html


def test_the_reported_image_and_link_render_as_text_once_echoed() -> None:
    for typed in ("[Reset your password](https://evil.example/login)", "<img src=https://evil.example/p.png>"):
        _, html = markdown_to_matrix(f"Unknown command {echo(typed)}.")
        assert "<a" not in html and "<img" not in html
        assert html.startswith("<p>Unknown command <code>")


_CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.S)


@given(st.lists(st.sampled_from([*"`\\[]()<>!*_&;#\n\r\t x:/.", "https://evil.example", "&amp;"]),
                max_size=60).map("".join))
def test_echo_is_one_code_span_that_nothing_typed_can_close(typed: str) -> None:
    quoted = echo(typed)
    assert "\n" not in quoted and "\r" not in quoted
    _, html = markdown_to_matrix(f"Bad {quoted} here.")
    assert "<a" not in html and "<img" not in html and "<em>" not in html and "<strong>" not in html
    # Exactly one code element holding the whole quote: nothing leaked before or after it.
    if quoted != "(nothing)":
        assert html.count("<code>") == 1, html
        assert re.fullmatch(r"<p>Bad <code>.*</code> here\.</p>", html, re.S), html
        # The plain body quotes it in one span too.
        assert len(_CODE_SPAN.findall(quoted)) == 1


@given(st.text(min_size=ECHO_LIMIT + 1, max_size=400).filter(lambda t: len(t.split()) > 0))
def test_echo_is_cut_to_the_limit_with_an_ellipsis(typed: str) -> None:
    quoted = echo(typed)
    inner = quoted.strip("`").strip(" ")
    assert len(inner) <= ECHO_LIMIT
    flat = " ".join(re.sub(r"[\x00-\x1f\x7f-\x9f]", " ", typed).split())
    if len(flat) > ECHO_LIMIT:
        assert inner.endswith("…")
