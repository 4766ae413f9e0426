"""`/answer/<token>`: one-click answers to check-in questions for email-only participants.

Modelled on `hub.web_unsubscribe`. `GET` only shows what the link would record,
with a button, and changes nothing: mail scanners and link previewers fetch
every URL in a message. `POST` (the button) records exactly what the matching
command records (`!hub met video` for the pair, `!hub checkin 4` privately),
through the same functions. The token alone authorises the POST: forging the
request means knowing the signed link already.

A bad, tampered, expired or wrong-purpose token (an unsubscribe link, say) gets
a 400 page and the store is not touched at all, not even read. A genuine link
whose pair has closed, or whose person has left, changes nothing either.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from aiohttp import web

from hub.clock import Clock
from hub.core.answers import CHECKIN, MET, Answer
from hub.core.tokens import Purpose, TokenSigner
from hub.errors import LinkTokenError
from hub.web_pages import html_page, page_template

__all__ = ["ANSWER_MAX_AGE", "AnswerHandler", "AnswerStore", "Recorded", "routes"]

log = logging.getLogger(__name__)

# A question is about one program week; a link still works for a good while after it,
# but not forever (a forwarded mail found a year later should not change anything).
ANSWER_MAX_AGE = timedelta(days=60)


@dataclass(frozen=True, slots=True)
class Recorded:
    """What a POST did: `state` is "done", "already" (a private check-in answered before) or "gone"."""

    state: str
    message: str = ""


class AnswerStore(Protocol):
    async def record(self, answer: Answer, now: datetime) -> Recorded:
        """Record `answer` as its command would; "gone" and nothing changed if it no longer applies."""
        ...


_TITLES = {
    "confirm": "Record your answer?",
    "done": "Thank you, noted",
    "already": "Already answered",
    "gone": "This question is closed",
    "invalid": "This link does not work",
    "error": "Please try again",
}
_QUESTIONS = {MET: "Did you meet in week {week}, and how?",
              CHECKIN: "How does your mentoring relationship feel (week {week})?"}


class AnswerHandler:
    def __init__(self, store: AnswerStore, signer: TokenSigner, clock: Clock) -> None:
        self.store = store
        self.signer = signer
        self.clock = clock
        self._page = page_template("answer_page.html")

    def _render(self, state: str, status: int = 200, *, answer: Answer | None = None,
                message: str = "") -> web.Response:
        question = _QUESTIONS[answer.question].format(week=answer.week) if answer is not None else ""
        text = self._page.render(title=_TITLES[state], state=state, question=question,
                                 label=answer.label if answer is not None else "", message=message,
                                 private=answer is not None and answer.question == CHECKIN)
        return html_page(text, status)

    def _answer(self, request: web.Request) -> Answer | None:
        try:
            claims = self.signer.verify(request.match_info["token"], Purpose.ANSWER,
                                        now=self.clock.now(), max_age=ANSWER_MAX_AGE)
            return Answer.parse(claims.handle)
        except LinkTokenError as e:
            log.info("answer link rejected: %s", e.reason)
            return None

    async def confirm_page(self, request: web.Request) -> web.Response:
        """GET: show what the button will record. Touches nothing."""
        answer = self._answer(request)
        if answer is None:
            return self._render("invalid", 400)
        return self._render("confirm", answer=answer)

    async def record(self, request: web.Request) -> web.Response:
        """POST: the confirm page's button; records the answer at once."""
        answer = self._answer(request)
        if answer is None:
            return self._render("invalid", 400)
        try:
            outcome = await self.store.record(answer, self.clock.now())
        except Exception:
            # 503 rather than a false "noted": the person may simply press the button again.
            log.exception("recording an answer from a link failed")
            return self._render("error", 503)
        log.info("%s answer recorded by link: %s", answer.question, outcome.state)
        return self._render(outcome.state, answer=answer, message=outcome.message)


def routes(store: AnswerStore, secret: str, clock: Clock) -> list[web.RouteDef]:
    """Route definitions for `WebServer.add_routes`; `secret` is `web.secret` (or the generated one)."""
    handler = AnswerHandler(store, TokenSigner(secret), clock)
    return [
        web.get("/answer/{token}", handler.confirm_page),
        web.post("/answer/{token}", handler.record),
    ]
