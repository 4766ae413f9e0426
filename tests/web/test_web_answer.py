"""`/answer/<token>` on a real aiohttp server: GET asks, POST records, bad links change nothing.

The store here is an in-memory `AnswerStore` that records every call, so each test can say
exactly what reached it; recording on the real tables is `test_email_only_live`'s (through
received emails) and the last test's here (the real `SqlAnswerStore` on SQLite).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import aiohttp
import pytest

from hub.clock import FakeClock
from hub.core.answers import (
    CHECKIN,
    MET,
    Answer,
    answer_url,
    cohort_scope,
    pair_scope,
)
from hub.core.tokens import Purpose, TokenSigner
from hub.delivery.outbox import Outbox
from hub.errors import LinkTokenError
from hub.web import HealthSource, WebServer
from hub.web_answer import ANSWER_MAX_AGE, Recorded, routes
from hub.web_pages import SECURITY_HEADERS

SECRET = "web-answer-test-secret"
NOW = datetime(2027, 2, 5, 15, 0, tzinfo=UTC)
signer = TokenSigner(SECRET)
SCOPE = pair_scope("CohortHub-abcdefghijklmnopqrstuvwxyz")
PERSON = "Qm9iLWhhbmRsZS0xMjM0NTY"  # a subscriber handle (tokens.new_handle makes 22 characters)


class MemoryStore:
    def __init__(self) -> None:
        self.calls: list[Answer] = []
        self.fail = False

    async def record(self, answer: Answer, now: datetime) -> Recorded:
        if self.fail:
            raise RuntimeError("database is down")
        self.calls.append(answer)
        return Recorded("done", f"Thanks, noted: {answer.value}.")


@dataclass
class Site:
    base: str
    store: MemoryStore
    clock: FakeClock
    http: aiohttp.ClientSession
    seen: list[str] = field(default_factory=list)

    def url(self, token: str) -> str:
        return answer_url(self.base, token)


async def _true() -> bool:
    return True


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    store, clock = MemoryStore(), FakeClock(NOW)
    health = HealthSource(sync_ok=lambda: True, database_ok=_true, smtp_ok=lambda: True,
                          outbox=cast(Outbox, None))
    server = WebServer("127.0.0.1", 0, health)
    server.add_routes(routes(store, SECRET, clock))
    await server.start()
    async with aiohttp.ClientSession() as http:
        yield Site(f"http://127.0.0.1:{server.bound_port}", store, clock, http)
    await server.stop()


def answer(value: str = "video", question: str = MET, week: int = 3, scope: str = SCOPE) -> Answer:
    return Answer(question, value, week, scope, PERSON)


def token(a: Answer, purpose: Purpose = Purpose.ANSWER, at: datetime = NOW) -> str:
    return signer.sign(a.handle, purpose, issued_at=at)


def tampered(good: str) -> str:
    i = len(good) // 2
    return good[:i] + ("A" if good[i] != "A" else "B") + good[i + 1:]


async def test_get_shows_what_the_button_records_and_records_nothing(site: Site) -> None:
    for _ in range(3):  # a mail scanner may prefetch a link several times
        async with site.http.get(site.url(token(answer()))) as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            for name, value in SECURITY_HEADERS.items():
                assert resp.headers[name] == value
            page = await resp.text()
    assert site.store.calls == []
    assert "Did you meet in week 3, and how?" in page and "We met on video" in page
    assert re.search(r'<form method="post">', page) and "Record my answer" in page
    assert "<script" not in page and "http" not in page  # self-contained, links nowhere
    async with site.http.head(site.url(token(answer()))) as resp:
        assert resp.status == 200
    assert site.store.calls == []


async def test_post_records_exactly_the_answer_in_the_link(site: Site) -> None:
    async with site.http.post(site.url(token(answer("notyet")))) as resp:
        assert resp.status == 200
        assert "Thanks, noted: notyet." in await resp.text()
    private = answer("4", question=CHECKIN, week=6, scope=cohort_scope("spring"))
    async with site.http.post(site.url(token(private))) as resp:
        assert resp.status == 200
    assert site.store.calls == [answer("notyet"), private]


@pytest.mark.parametrize("bad", [
    "tampered", "unsubscribe", "confirm-address", "expired", "not-an-answer", "empty-ish", "garbage",
])
async def test_a_forged_or_wrong_link_changes_nothing(site: Site, bad: str) -> None:
    good = token(answer())
    link = {
        "tampered": tampered(good),
        # A genuine unsubscribe token for the same handle is no answer: the purpose is signed.
        "unsubscribe": signer.sign(answer().handle, Purpose.UNSUBSCRIBE, issued_at=NOW),
        "confirm-address": signer.sign(answer().handle, Purpose.CONFIRM_ADDRESS, issued_at=NOW),
        "expired": token(answer(), at=NOW - ANSWER_MAX_AGE - timedelta(seconds=1)),
        # Signed by us but not an answer's grammar (an unsubscribe handle signed as ANSWER).
        "not-an-answer": signer.sign(PERSON, Purpose.ANSWER, issued_at=NOW),
        "empty-ish": "A",
        "garbage": "%3Cscript%3E" + "x" * 300,
    }[bad]
    for method in ("GET", "POST"):
        async with site.http.request(method, site.url(link)) as resp:
            assert resp.status == 400
            page = await resp.text()
            assert "This link does not work" in page and "Nothing was changed" in page
            assert "Traceback" not in page
    assert site.store.calls == []


async def test_a_link_for_another_option_week_or_pair_is_another_token(site: Site) -> None:
    base = token(answer())
    someone_else = Answer(MET, "video", 3, SCOPE, "another-person")
    others = {token(answer("voice")), token(answer(week=4)),
              token(answer(scope=pair_scope("CohortHub-other"))), token(someone_else)}
    assert base not in others and len(others) == 4
    # Editing the readable-looking handle inside a token breaks its signature.
    for t in others:
        async with site.http.post(site.url(t[:-8] + base[-8:])) as resp:
            assert resp.status == 400
    assert site.store.calls == []


async def test_a_store_failure_is_a_retry_page_never_a_false_thanks(site: Site) -> None:
    site.store.fail = True
    async with site.http.post(site.url(token(answer()))) as resp:
        assert resp.status == 503
        page = await resp.text()
        assert "nothing was recorded" in page and "Traceback" not in page and "Thanks" not in page


def test_answer_handles_round_trip_and_refuse_anything_else() -> None:
    for a in (answer(), answer("1", CHECKIN, 12, cohort_scope("winter-2027")), answer(week=999)):
        assert Answer.parse(a.handle) == a
        assert len(a.handle) <= 64  # fits a token's handle
    for bad in ("met-video-3-" + SCOPE, "met-maybe-3-" + SCOPE + "-p", "checkin-6-3-" + SCOPE + "-p",
                "met-video-0-" + SCOPE + "-p", "met-video-03-" + SCOPE + "-p", "met-video-3-SHORT-p",
                "met-video-3-" + SCOPE + "-", "vote-video-3-" + SCOPE + "-p"):
        with pytest.raises(LinkTokenError):
            Answer.parse(bad)
    with pytest.raises(ValueError):
        Answer(MET, "5", 3, SCOPE, PERSON)  # a check-in score is no answer to "did you meet?"


async def test_sql_store_records_like_the_commands_and_refuses_other_pairs(tmp_path: Path) -> None:
    """The real store on SQLite: the link's person must be in the pair it names, still open."""
    from sqlalchemy import func, select

    from hub.features.answers import SqlAnswerStore
    from hub.storage.db import open_database
    from hub.storage.models import (
        CheckinAnswer,
        Cohort,
        Member,
        Pair,
        PrivateCheckin,
        Subscriber,
    )

    db = await open_database(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        async with db.transaction() as s:
            s.add(Cohort(id=1, slug="spring", name="Spring", timezone="UTC", start_date="2027-01-04",
                         weeks=12, source="command", created_at=0))
            for i, (mx, mail) in enumerate([("@ada:x", None), (None, "eve@x.org"), (None, "zed@x.org")], 1):
                s.add(Member(id=i, cohort_id=1, role="mentor" if i == 1 else "mentee", name=f"P{i}",
                             email=mail, matrix_id=mx, status="active", created_at=0))
            await s.flush()
            s.add(Pair(id=1, cohort_id=1, mentor_id=1, mentee_id=2, status="active",
                       video_name="CohortHub-eve", created_at=0))
            s.add(Pair(id=2, cohort_id=1, mentor_id=1, mentee_id=3, status="active",
                       video_name="CohortHub-zed", created_at=0))
            s.add(Subscriber(handle="eve-handle", person="mailto:eve@x.org", created_at=0))
        store = SqlAnswerStore(db, SECRET)

        async def modes() -> dict[int, str]:
            async with db.session() as s:
                return {a.pair_id: a.mode for a in (await s.execute(select(CheckinAnswer))).scalars()}

        async def scores() -> list[int]:
            async with db.session() as s:
                return [c.score for c in (await s.execute(select(PrivateCheckin))).scalars()]

        eve = Answer(MET, "video", 2, pair_scope("CohortHub-eve"), "eve-handle")
        assert (await store.record(eve, NOW)).state == "done"
        assert await modes() == {1: "video"}
        # Eve's handle with Zed's pair: she is not in it, nothing changes.
        other = Answer(MET, "text", 2, pair_scope("CohortHub-zed"), "eve-handle")
        assert (await store.record(other, NOW)).state == "gone"
        # A handle nobody has: nothing changes.
        nobody = Answer(MET, "text", 2, pair_scope("CohortHub-eve"), "no-such-handle")
        assert (await store.record(nobody, NOW)).state == "gone"
        assert await modes() == {1: "video"}
        # The latest answer wins, as with `!hub met`.
        assert (await store.record(Answer(MET, "voice", 2, eve.scope, "eve-handle"), NOW)).state == "done"
        assert await modes() == {1: "voice"}
        # The private check-in: once per person and week, stored without the person.
        private = Answer(CHECKIN, "4", 3, cohort_scope("spring"), "eve-handle")
        assert (await store.record(private, NOW)).state == "done"
        again = Answer(CHECKIN, "1", 3, private.scope, "eve-handle")
        assert (await store.record(again, NOW)).state == "already"
        assert (await store.record(Answer(CHECKIN, "2", 3, cohort_scope("autumn"), "eve-handle"),
                                   NOW)).state == "gone"
        assert await scores() == [4]
        async with db.session() as s:
            columns = set(PrivateCheckin.__table__.columns.keys())  # type: ignore[attr-defined]
            assert (await s.execute(select(func.count()).select_from(PrivateCheckin))).scalar() == 1
        assert columns == {"id", "cohort_id", "week", "score", "at"}
        # A closed pair takes no more answers.
        async with db.transaction() as s:
            pair = await s.get(Pair, 1)
            assert pair is not None
            pair.status = "closed"
        assert (await store.record(Answer(MET, "text", 2, eve.scope, "eve-handle"), NOW)).state == "gone"
        assert await modes() == {1: "voice"}
    finally:
        await db.close()
