"""The pages the web endpoint shows people (unsubscribe, answer links): one look, one set of headers.

Each page is a template extending `page.html` (self-contained: no scripts, no
external fonts or images), autoescaped, answered with `SECURITY_HEADERS`.
"""

from __future__ import annotations

import functools

from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined, Template, select_autoescape

__all__ = ["SECURITY_HEADERS", "html_page", "page_template"]

# The token is in the URL, so no Referer may carry it anywhere and no cache or
# index may keep it; nothing on the page needs more than inline styles and a form.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex",
}


@functools.cache
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("hub", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def page_template(name: str) -> Template:
    """A page template from hub/templates (loaded once per process)."""
    return _environment().get_template(name)


def html_page(text: str, status: int = 200) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/html", charset="utf-8",
                        headers=SECURITY_HEADERS)
