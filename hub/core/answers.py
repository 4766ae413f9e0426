"""One-click answers by email: what a signed answer link says, and the options it may carry.

An email-only participant cannot type `!hub met video` or `!hub checkin 4`, so
each check-in question she gets by email carries one link per option. The link
is a token signed like the unsubscribe one (`hub.core.tokens`, its own purpose
`Purpose.ANSWER`, so neither kind of link can stand in for the other) whose
handle spells out the whole answer::

    QUESTION-VALUE-WEEK-SCOPE-PERSON
    met-video-3-k3j5x7q2ab-<the person's subscriber handle>
    checkin-4-6-m2n4b6v8cd-<...>

SCOPE binds the link to one pair (the "did you meet?" question) or one cohort
(the private check-in): a short hash of the pair's secret video name or of the
cohort's slug, never a database id. PERSON is the random per-person handle the
unsubscribe links use. A link for another person, pair, week or option is a
different token, and a changed token fails its signature.

Pure: no database, no web; `hub.web_answer` serves the links and
`hub.features.answers` records them.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

from hub.errors import LinkTokenError

__all__ = [
    "CHECKIN",
    "CHECKIN_OPTIONS",
    "MET",
    "MET_OPTIONS",
    "Answer",
    "answer_url",
    "cohort_scope",
    "option_label",
    "pair_scope",
]

MET = "met"
CHECKIN = "checkin"
# In the order the email lists them; the labels are what the person reads.
MET_OPTIONS: dict[str, str] = {
    "video": "We met on video",
    "voice": "We had a voice or phone call",
    "text": "We were in touch in writing only",
    "notyet": "Not yet this week",
}
CHECKIN_OPTIONS: dict[str, str] = {
    "5": "5: it's going really well",
    "4": "4: good",
    "3": "3: OK, could be better",
    "2": "2: it's not really working",
    "1": "1: I'm struggling with it",
}
_OPTIONS = {MET: MET_OPTIONS, CHECKIN: CHECKIN_OPTIONS}
_SCOPE = re.compile(r"[a-z2-7]{10}")
_WEEK = re.compile(r"[1-9][0-9]{0,2}")  # 1-999: the program week the question was for


def _tag(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return base64.b32encode(digest).decode("ascii")[:10].lower()


def pair_scope(video_name: str) -> str:
    """A pair's tag: its video name is already an unguessable per-pair secret (`cohorts.video_name`)."""
    return _tag(f"pair:{video_name}")


def cohort_scope(slug: str) -> str:
    return _tag(f"cohort:{slug}")


def option_label(question: str, value: str) -> str:
    return _OPTIONS[question][value]


@dataclass(frozen=True, slots=True)
class Answer:
    """What one answer link records: `value` to `question` of `week`, for `person` in `scope`."""

    question: str  # MET | CHECKIN
    value: str  # a key of MET_OPTIONS / CHECKIN_OPTIONS
    week: int
    scope: str  # pair_scope / cohort_scope
    person: str  # the subscriber handle (tokens.new_handle)

    def __post_init__(self) -> None:
        if self.value not in _OPTIONS.get(self.question, {}):
            raise ValueError(f"{self.value!r} is not an answer to {self.question!r}")
        if not _WEEK.fullmatch(str(self.week)) or not _SCOPE.fullmatch(self.scope):
            raise ValueError("week must be 1-999 and scope a tag from pair_scope/cohort_scope")

    @property
    def handle(self) -> str:
        """The token handle (at most 64 URL-safe characters with a 22-character person handle)."""
        return f"{self.question}-{self.value}-{self.week}-{self.scope}-{self.person}"

    @classmethod
    def parse(cls, handle: str) -> Answer:
        """The answer a verified token's handle spells; `LinkTokenError` if it is not one."""
        parts = handle.split("-", 4)
        if len(parts) != 5:
            raise LinkTokenError("not an answer")
        question, value, week, scope, person = parts
        if not _WEEK.fullmatch(week) or not person:
            raise LinkTokenError("not an answer")
        try:
            return cls(question, value, int(week), scope, person)
        except ValueError:
            raise LinkTokenError("not an answer") from None

    @property
    def label(self) -> str:
        return option_label(self.question, self.value)


def answer_url(public_url: str, token: str) -> str:
    """`web.public_url` as configured + `/answer/TOKEN`."""
    return f"{public_url.rstrip('/')}/answer/{token}"
