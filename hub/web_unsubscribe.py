"""`/unsubscribe/<token>`: the one-click unsubscribe endpoint (RFC 8058).

`GET` only shows a confirm page with a POST button and changes nothing: mail
scanners and link previewers fetch every URL in a message, and must not
unsubscribe anyone by doing so. `POST` (what mail clients send for one-click,
with the body `List-Unsubscribe=One-Click`, and what the page's button sends)
unsubscribes at once. The token alone authorises the POST, so there is no
CSRF token: forging the request means knowing the signed link already.

A bad, tampered or wrong-purpose token gets a 400 page and the store is not
touched at all, not even read. Persistence is a `SubscriptionStore`, so this
module has no idea which table holds subscriptions.

Wire it in with ``web_server.add_routes(routes(store, settings.web.secret))``.
"""

from __future__ import annotations

import logging
from typing import Protocol

from aiohttp import web

from hub.core.tokens import Purpose, TokenSigner
from hub.errors import LinkTokenError
from hub.web_pages import html_page, page_template

__all__ = ["SubscriptionStore", "UnsubscribeHandler", "routes"]

log = logging.getLogger(__name__)

_TITLES = {
    "confirm": "Unsubscribe from these emails?",
    "already": "You are already unsubscribed",
    "done": "You are unsubscribed",
    "invalid": "This link does not work",
    "error": "Please try again",
}


class SubscriptionStore(Protocol):
    """Where email subscriptions live, looked up by the opaque handle in the token.

    `handle` is what `tokens.new_handle` made and the digest signed; never a
    database id.
    """

    async def is_subscribed(self, handle: str) -> bool:
        """True if this handle currently gets digest and announcement email."""
        ...

    async def unsubscribe(self, handle: str) -> bool:
        """Stop digest and announcement email for `handle`; idempotent.

        Returns True if the handle is known (whether or not it was subscribed),
        False if nobody has it (e.g. the person was removed). Either way the
        person is shown the "unsubscribed" page: the end state they asked for holds.
        """
        ...


class UnsubscribeHandler:
    def __init__(
        self, store: SubscriptionStore, signer: TokenSigner, *, command_prefix: str = "!hub"
    ) -> None:
        self.store = store
        self.signer = signer
        self.command_prefix = command_prefix
        self._page = page_template("unsubscribe_page.html")

    def _render(self, state: str, status: int = 200) -> web.Response:
        text = self._page.render(title=_TITLES[state], state=state, command_prefix=self.command_prefix)
        return html_page(text, status)

    def _handle(self, request: web.Request) -> str | None:
        try:
            return self.signer.verify(request.match_info["token"], Purpose.UNSUBSCRIBE).handle
        except LinkTokenError as e:
            log.info("unsubscribe link rejected: %s", e.reason)
            return None

    async def confirm_page(self, request: web.Request) -> web.Response:
        """GET: show what the button will do. Reads the store, never writes it."""
        handle = self._handle(request)
        if handle is None:
            return self._render("invalid", 400)
        try:
            subscribed = await self.store.is_subscribed(handle)
        except Exception:
            log.exception("subscription store failed while showing the unsubscribe page")
            return self._render("error", 503)
        return self._render("confirm" if subscribed else "already")

    async def unsubscribe(self, request: web.Request) -> web.Response:
        """POST: one-click (RFC 8058) or the confirm page's button; unsubscribes at once.

        The body is not required to be exactly `List-Unsubscribe=One-Click`:
        RFC 8058 says what senders must send, and refusing a plain form post
        would only leave someone subscribed who asked not to be.
        """
        handle = self._handle(request)
        if handle is None:
            return self._render("invalid", 400)
        try:
            known = await self.store.unsubscribe(handle)
        except Exception:
            # 503 rather than a false "done": a one-click sender may retry,
            # and a person must never be told they are out when they are not.
            log.exception("subscription store failed while unsubscribing")
            return self._render("error", 503)
        log.info("unsubscribed by link (%s)", "known subscriber" if known else "unknown handle")
        return self._render("done")


def routes(store: SubscriptionStore, secret: str, *, command_prefix: str = "!hub") -> list[web.RouteDef]:
    """Route definitions for `WebServer.add_routes`; `secret` is `web.secret`."""
    handler = UnsubscribeHandler(store, TokenSigner(secret), command_prefix=command_prefix)
    return [
        web.get("/unsubscribe/{token}", handler.confirm_page),
        web.post("/unsubscribe/{token}", handler.unsubscribe),
    ]
