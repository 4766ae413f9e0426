"""One person's own email (the welcome, a check-in question), in the digest's design.

A content-library item gives the words (`Rendered`: its HTML fragment and its
plain text, which has no Markdown symbols left); this module puts them in the
digest's page: the same stylesheet (`digest_email.html`'s, read from that
template, so the two cannot drift apart), a header with the cohort's name,
optional one-click answer links and a video-call section, and the footer with
the unsubscribe link in both parts.

The fragment's elements get the digest's classes (`<p class="p">`,
`<a class="a">`, ...) and their CSS is inlined with `hub.core.email_css`, like
the digest's template: no `<style>` rule has to survive a mail client.

Pure: no database, no clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from markupsafe import Markup

from hub.core.digest import _TEMPLATES, _environment, _line
from hub.core.email_css import preinline, stylesheet

__all__ = ["AnswerLink", "PersonEmail", "PersonEmailBuilder", "VideoCall"]


@dataclass(frozen=True, slots=True)
class AnswerLink:
    label: str
    url: str


@dataclass(frozen=True, slots=True)
class VideoCall:
    partner: str  # the partner's name, as typed (escaped by the templates)
    url: str


@dataclass(frozen=True, slots=True)
class PersonEmail:
    text: str
    html: str


# The Markdown renderer's elements and the class each gets (see person_email.html's stylesheet).
_CLASSES = {"p": "p", "a": "a", "ul": "list", "ol": "list", "li": "li", "code": "code", "pre": "codeblock",
            "h1": "h", "h2": "h", "h3": "h", "h4": "h", "h5": "h", "h6": "h", "blockquote": "quote"}
_TAG = re.compile(r"<(" + "|".join(_CLASSES) + r")\b([^<>]*)>")
_CLASS_ATTR = re.compile(r'\sclass="[^"]*"')


class PersonEmailBuilder:
    """Compiled templates; one per process is plenty (`build` is cheap)."""

    def __init__(self) -> None:
        env = _environment()
        digest, _, _ = _TEMPLATES.get_source(env, "digest_email.html")
        source, _, _ = _TEMPLATES.get_source(env, "person_email.html")
        # One stylesheet: the digest's, plus the rules for the Markdown elements of the item.
        source = source.replace("/* the digest's stylesheet */", stylesheet(digest), 1)
        self._css = stylesheet(source)
        self._html = env.from_string(preinline(source))
        self._text = env.get_template("person_email.txt")

    def _styled(self, fragment: str) -> Markup:
        """The item's (sanitised) HTML with the digest's classes, their CSS inlined."""
        def classed(m: re.Match[str]) -> str:
            attrs = _CLASS_ATTR.sub("", m.group(2))
            return f'<{m.group(1)} class="{_CLASSES[m.group(1)]}"{attrs}>'

        # The fragment comes from the hub's Markdown renderer and sanitiser: names in it are
        # escaped already, so it goes into the page as it is (Markup), not escaped twice.
        return Markup(preinline(_TAG.sub(classed, fragment), self._css))

    def build(
        self, *, subject: str, eyebrow: str, fragment: str, text: str, cohort_name: str,
        unsubscribe_url: str | None, answers: tuple[AnswerLink, ...] = (), answers_intro: str = "",
        call: VideoCall | None = None,
    ) -> PersonEmail:
        """Both parts of one email. `fragment`/`text` are a `Rendered`'s formatted_body and body."""
        ctx = {
            "subject": _line(subject), "eyebrow": _line(eyebrow), "cohort_name": _line(cohort_name),
            "answers": answers, "answers_intro": _line(answers_intro), "call": call,
            "unsubscribe_url": unsubscribe_url, "preheader": _line(text.split("\n", 1)[0])[:140],
        }
        return PersonEmail(
            text=self._text.render(ctx, content=text.strip()).strip() + "\n",
            html=self._html.render(ctx, content=self._styled(fragment)),
        )
