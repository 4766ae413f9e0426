"""An email template's CSS inlined once, when the template is loaded, instead of into every email.

Gmail's apps and Outlook ignore most of a `<style>` block, so every element of
an email needs its own `style` attribute. css-inline does that to a rendered
page in about 0.4 ms for a 12 KB digest: at 2,000 recipients that was 40% of
rendering, spent working out the same styles for the same classes each time.

When a stylesheet uses only single-class selectors (and `body`), an element's
inlined style depends on nothing but its tag and its class. So `preinline`
asks css-inline once per (tag, class) found in the template's source, writes
that style beside each `class="..."`, and leaves in the `<style>` block only
the at-rules (the dark-mode `@media` query), which cannot be inlined. Any other
selector (a descendant, a type other than `body`, an id) is refused, because
then one style per (tag, class) would no longer be exact.
`tests/core/test_email_css.py` renders pages both ways and compares every
element's style.
"""

from __future__ import annotations

import re
from functools import lru_cache

import css_inline

from hub.errors import TemplateStyleError

__all__ = ["preinline", "stylesheet"]

# On lines of their own, so that a template comment mentioning <style> is not taken for it.
_STYLE_BLOCK = re.compile(r"^<style>(?P<css>.*?)^</style>", re.S | re.M)
# A start tag: `<name attrs>`. Template expressions inside attributes
# (`href="{{ url }}"`) hold no angle brackets, so this finds whole tags.
_START_TAG = re.compile(r"<(?P<tag>[a-zA-Z][a-zA-Z0-9]*)(?P<attrs>[^<>]*)>")
_CLASS = re.compile(r'\sclass="(?P<cls>[^"]*)"')
_ALLOWED_SELECTOR = re.compile(r"body|\.[A-Za-z][\w-]*")
_PROBE_STYLE = re.compile(r'<[^<>]*\bid="probe"[^<>]*\bstyle="(?P<style>[^"]*)"')


def _split_rules(css: str) -> tuple[list[str], list[str]]:
    """(plain rules, at-rules) at the top level of `css`, each as its source text."""
    plain: list[str] = []
    at_rules: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(css):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise TemplateStyleError(f"unbalanced '}}' in the <style> block at {css[start:i + 1]!r}")
            if depth == 0:
                rule = css[start:i + 1].strip()
                (at_rules if rule.startswith("@") else plain).append(rule)
                start = i + 1
    if depth != 0 or css[start:].strip():
        raise TemplateStyleError(f"unfinished rule in the <style> block: {css[start:].strip()!r}")
    return plain, at_rules


def _check_selectors(rule: str) -> None:
    for selector in rule.split("{", 1)[0].split(","):
        if not _ALLOWED_SELECTOR.fullmatch(selector.strip()):
            raise TemplateStyleError(
                f"selector {selector.strip()!r} cannot be inlined once per class: "
                "use `body` or a single class"
            )


@lru_cache(maxsize=256)
def _style_for(css: str, tag: str, cls: str | None) -> str:
    """The style css-inline gives a `tag` element of class `cls` under the rules `css`."""
    attrs = f' class="{cls}" id="probe"' if cls else ' id="probe"'
    if tag == "body":
        body = f"<body{attrs}></body>"
    elif tag in ("td", "th"):
        # Outside a table the HTML parser drops a cell; give it one.
        body = f"<body><table><tr><{tag}{attrs}></{tag}></tr></table></body>"
    else:
        body = f"<body><{tag}{attrs}></{tag}></body>"
    inliner = css_inline.CSSInliner(keep_style_tags=False, load_remote_stylesheets=False)
    page = inliner.inline(f"<html><head><style>{css}</style></head>{body}</html>")
    found = _PROBE_STYLE.search(page)
    return found.group("style") if found else ""


def stylesheet(source: str) -> str:
    """The text of the `<style>` block of an HTML template's `source`."""
    block = _STYLE_BLOCK.search(source)
    if block is None:
        raise TemplateStyleError("the template has no <style> block")
    return block.group("css")


def preinline(source: str, css: str | None = None) -> str:
    """`source` (an HTML email template) with each styled element's CSS in a `style` attribute.

    The rules come from the template's own `<style>` block, which keeps only
    its at-rules; or, for a part of a page (a template whose output is
    inserted into another), from `css`, another template's `stylesheet()`.
    Raises `TemplateStyleError` when the stylesheet or the markup is one this
    cannot inline exactly: a selector other than `body` or a single class, a
    class attribute written by the template (`class="{{ x }}"`), or an element
    that already has a `style` attribute.
    """
    block = _STYLE_BLOCK.search(source) if css is None else None
    plain, at_rules = _split_rules(stylesheet(source) if css is None else css)
    for rule in plain:
        _check_selectors(rule)
    rules = "\n".join(plain)

    def styled(tag_match: re.Match[str]) -> str:
        tag, attrs = tag_match.group("tag").lower(), tag_match.group("attrs")
        cls_match = _CLASS.search(attrs)
        cls = cls_match.group("cls") if cls_match else None
        if cls is None and tag != "body":
            return tag_match.group(0)
        if cls is not None and ("{" in cls or " " in cls.strip()):
            raise TemplateStyleError(f"<{tag} class={cls!r}>: one literal class per element, please")
        if re.search(r"\sstyle=", attrs):
            raise TemplateStyleError(f"<{tag}{attrs}> already has a style attribute")
        style = _style_for(rules, tag, cls)
        if not style:
            return tag_match.group(0)
        end = len(attrs.rstrip("/ "))  # the style goes before a self-closing slash
        return f'<{tag_match.group("tag")}{attrs[:end]} style="{style}"{attrs[end:]}>'

    if block is None:  # a part of a page: its at-rules live in the page's <style>
        return _START_TAG.sub(styled, source)
    head = source[: block.start()]
    tail = source[block.end():]
    kept = "<style>\n" + "\n".join(at_rules) + "\n</style>" if at_rules else ""
    return _START_TAG.sub(styled, head) + kept + _START_TAG.sub(styled, tail)
