"""Replies by email on a real database (SQLite) and a FakeClock: pair-room batches, the poster, pruning."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hub.clock import FakeClock
from hub.config import Settings, settings_from_dict
from hub.core.tokens import AddressTokenSigner
from hub.delivery.outbox import Outbox
from hub.features.pair_mail import PairMailer, RoomText
from hub.storage.db import Database, open_database
from hub.storage.models import Cohort, HubRoom, Member, Pair
from hub.storage.models import outbox_table as O
from hub.storage.models import pair_mail_table as PM

HUB = "@hub:example.org"
ADA = "@ada:example.org"
T0 = datetime(2027, 1, 12, 14, 0, tzinfo=UTC)


def _settings(tmp_path: Path) -> Settings:
    return settings_from_dict({
        "matrix": {"homeserver": "http://localhost", "user_id": HUB, "password": "x"},
        "email": {"enabled": True, "from": "Hub <hub@example.org>",
                  "inbound": {"domain": "hub.example.org"}},
    }, base=tmp_path, env={})


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(f"sqlite:///{tmp_path / 'hub.db'}")
    now = T0.timestamp()
    async with database.transaction() as s:
        s.add(Cohort(id=1, slug="spring", name="Spring", timezone="Europe/Berlin", start_date="2027-01-11",
                     weeks=12, source="config", created_at=now))
        await s.flush()
        s.add_all([
            Member(id=1, cohort_id=1, role="mentor", name="Ada", email="ada@example.org", matrix_id=ADA,
                   created_at=now),
            Member(id=2, cohort_id=1, role="mentee", name="Eve", email="eve@example.org",
                   timezone="Europe/Lisbon", created_at=now),
            Member(id=3, cohort_id=1, role="mentor", name="Bo", email="bo@example.org",
                   matrix_id="@bo:example.org", created_at=now),
            Member(id=4, cohort_id=1, role="mentee", name="Cy", matrix_id="@cy:example.org", created_at=now),
        ])
        await s.flush()
        s.add_all([Pair(id=1, cohort_id=1, mentor_id=1, mentee_id=2, video_name="v1", created_at=now),
                   Pair(id=2, cohort_id=1, mentor_id=3, mentee_id=4, video_name="v2", created_at=now)])
        await s.flush()
        s.add_all([
            HubRoom(id=10, key="pair:1", kind="pair", room_id="!pair1", status="ready", cohort_id=1,
                    pair_id=1, created_at=now),
            HubRoom(id=11, key="pair:2", kind="pair", room_id="!pair2", status="ready", cohort_id=1,
                    pair_id=2, created_at=now),
            HubRoom(id=12, key="lounge:spring", kind="lounge", room_id="!lounge", status="ready",
                    cohort_id=1, created_at=now),
        ])
    yield database
    await database.close()


def _msg(room: str, sender: str, body: str, at: datetime, *, n: int = 0, msgtype: str = "m.text") -> RoomText:
    return RoomText(room, f"$e{n}-{room}", sender, body, msgtype, int(at.timestamp() * 1000))


def _mailer(db: Database, clock: FakeClock, tmp_path: Path) -> PairMailer:
    settings = _settings(tmp_path)
    signer = AddressTokenSigner("s3cret")
    return PairMailer(db, Outbox(db, clock), clock, settings=lambda: settings, signer=lambda: signer,
                      own_user_id=HUB)


async def _emails(db: Database) -> list[dict[str, Any]]:
    async with db.session() as s:
        rows = (await s.execute(select(O.c.payload).where(O.c.kind == "pair-mail").order_by(O.c.seq))).all()
    out = []
    for (payload,) in rows:
        out.append(json.loads(payload) if isinstance(payload, str) else payload)
    return out


async def test_only_the_partners_messages_in_the_pair_room_are_kept(db: Database, tmp_path: Path) -> None:
    clock = FakeClock(T0)
    mailer = _mailer(db, clock, tmp_path)
    added = await mailer.record([
        _msg("!pair1", ADA, "Are you free Thursday?", T0, n=1),  # kept
        _msg("!pair1", HUB, "This week's icebreaker", T0, n=2),  # the hub's own
        _msg("!pair1", ADA, "!hub plan", T0, n=3),  # a command
        _msg("!pair1", ADA, "a notice", T0, n=4, msgtype="m.notice"),
        _msg("!lounge", ADA, "Hello cohort", T0, n=5),  # another room
        _msg("!pair2", "@bo:example.org", "Hi Cy", T0, n=6),  # both have Matrix: nobody to mail
        _msg("!elsewhere", ADA, "a room the hub does not own", T0, n=7),
    ])
    assert added == 1
    # A sync replayed after a crash: offered again, kept once (the rows below).
    assert await mailer.record([_msg("!pair1", ADA, "Are you free Thursday?", T0, n=1)]) == 1
    async with db.session() as s:
        rows = (await s.execute(select(PM.c.member_id, PM.c.body))).all()
    assert [tuple(r) for r in rows] == [(2, "Are you free Thursday?")]


async def test_one_email_per_15_minutes_of_activity_each_message_with_its_time(
    db: Database, tmp_path: Path,
) -> None:
    clock = FakeClock(T0)
    mailer = _mailer(db, clock, tmp_path)
    for n, words in enumerate(["First", "Second", "Third"]):
        await mailer.record([_msg("!pair1", ADA, words, clock.now(), n=n)])
        clock.advance(20)
    clock.set(datetime(2027, 1, 12, 14, 14, 59, tzinfo=UTC))
    assert await mailer.flush() == 0  # the batch is still open
    clock.set(datetime(2027, 1, 12, 14, 15, tzinfo=UTC))
    assert await mailer.flush() == 1
    assert await mailer.flush() == 0  # nothing twice
    [mail] = await _emails(db)
    assert mail["to"] == "eve@example.org" and mail["subject"] == "Ada wrote 3 messages in your pair room"
    text = mail["text"]
    assert text.index("First") < text.index("Second") < text.index("Third")
    # Her zone is Lisbon (UTC+0 in January): 14:00, 14:00 and 14:00 (20 s apart).
    assert text.count("Ada, Tue 12 Jan, 14:00:") == 3
    reply_to = mail["headers"]["Reply-To"]
    assert reply_to.startswith("reply+") and reply_to.endswith("@hub.example.org")
    assert "!hub" not in text  # never tells an email-only member to type a command
    # A message a minute later opens the next batch: mailed 15 minutes after it, not before.
    await mailer.record([_msg("!pair1", ADA, "Fourth", clock.now(), n=9)])
    clock.advance(14 * 60)
    assert await mailer.flush() == 0
    clock.advance(60)
    assert await mailer.flush() == 1
    second = (await _emails(db))[1]
    assert second["subject"] == "Ada wrote in your pair room" and "Fourth" in second["text"]
    assert "First" not in second["text"]


def _raw(to: str, sender: str = "Eve <eve@example.org>", mid: str = "<r1@example.org>") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: Re: hello\r\nMessage-ID: {mid}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n"
            "Hello all!\r\n\r\nOn Mon, Hub wrote:\r\n> Welcome\r\n").encode()


async def test_poster_posts_once_keeps_out_and_prunes(db: Database, tmp_path: Path) -> None:
    from hub.features.email_replies import KEEP_RAW_DAYS, ReplyPoster
    from hub.storage.models import inbound_mail_table as M

    clock = FakeClock(T0)
    signer = AddressTokenSigner("s3cret")
    poster = ReplyPoster(db, Outbox(db, clock), clock, signer)
    lounge, pair = signer.reply(2, 12), signer.reply(2, 10)
    rows = [("reply", lounge, _raw("x")), ("reply", lounge, _raw("x")),  # the same Message-ID twice
            ("reply", pair, _raw("x", sender="mallory@example.net", mid="<m@x>")),
            ("reply", signer.reply(2, 11), _raw("x", mid="<other-pair@x>")),  # not her pair
            ("reply", pair, _raw("x", mid="<r2@example.org>"))]
    async with db.transaction() as s:
        for kind, token, raw in rows:
            mid = raw.split(b"Message-ID: ")[1].split(b"\r\n")[0].decode()
            await s.execute(M.insert().values(kind=kind, token=token, mail_from="eve@example.org",
                                              message_id=mid, raw=raw, received_at=T0.timestamp(),
                                              status="new"))
    assert await poster.handle_new() == 5
    assert await poster.handle_new() == 0  # each row once
    async with db.session() as s:
        handled = (await s.execute(select(M.c.status, M.c.outcome).order_by(M.c.id))).all()
        posts = (await s.execute(select(O.c.lane, O.c.payload).where(O.c.kind == "email-reply")
                                 .order_by(O.c.seq))).all()
    assert [h.status for h in handled] == ["posted", "dropped", "dropped", "dropped", "posted"], handled
    assert "second copy" in handled[1].outcome and "not the person" in handled[2].outcome
    assert "not in this pair" in handled[3].outcome
    assert [p.lane for p in posts] == ["!lounge", "!pair1"]
    lounge_post = json.loads(posts[0].payload)["content"]
    pair_post = json.loads(posts[1].payload)["content"]
    assert lounge_post["body"] == "**Eve** (by email): Hello all!" and lounge_post["m.mentions"] == {}
    assert pair_post["m.mentions"] == {"user_ids": [ADA]}  # her partner, in the pair room
    # The raw mail is emptied 14 days after it was handled; the rows (and Message-IDs) stay.
    clock.advance(KEEP_RAW_DAYS * 86400 - 60)
    await poster.prune()
    async with db.session() as s:
        assert b"" not in (await s.execute(select(M.c.raw))).scalars().all()  # not yet
    clock.advance(3600)
    await poster.prune()
    async with db.session() as s:
        raws = (await s.execute(select(M.c.raw, M.c.message_id))).all()
    assert all(r.raw == b"" for r in raws) and len(raws) == 5
