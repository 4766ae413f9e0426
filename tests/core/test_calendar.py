"""The program calendar (hub.core.calendar): items, local times across DST, weeks, catch-up windows."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.config import settings_from_dict
from hub.core.calendar import (
    AUDIENCES,
    ON_TIME_GRACE,
    CalendarItem,
    ItemKind,
    ProgramSpec,
    Target,
    TargetKind,
    Webinar,
    build_calendar,
    dedupe_key,
    due_items,
    program_week,
    week_start,
)
from hub.core.schedule import WEEKDAYS, WeeklySlot, parse_weekly_slot

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
SYDNEY = ZoneInfo("Australia/Sydney")


def spec(
    slug: str = "winter-2027",
    *,
    tz: ZoneInfo = BERLIN,
    start: date = date(2027, 1, 11),
    weeks: int = 12,
    digest: str = "mon 09:00",
    icebreaker: str = "tue 10:00",
    checkin: str = "fri 15:00",
    checkin_weeks: tuple[int, ...] = (1, 2, 4, 8),
    reflection: str = "wed 10:00",
    reflection_weeks: tuple[int, ...] = (3, 6, 9),
    webinars: tuple[Webinar, ...] = (),
) -> ProgramSpec:
    return ProgramSpec(
        slug=slug,
        timezone=tz,
        start=start,
        weeks=weeks,
        digest=parse_weekly_slot(digest),
        icebreaker=parse_weekly_slot(icebreaker),
        checkin=parse_weekly_slot(checkin),
        checkin_weeks=checkin_weeks,
        reflection=parse_weekly_slot(reflection),
        reflection_weeks=reflection_weeks,
        webinars=webinars,
    )


def example() -> ProgramSpec:
    """PRODUCT.md's example cohort, read through the real config loader."""
    data = {
        "matrix": {"homeserver": "https://m.example.org", "user_id": "@hub:example.org",
                   "password": "x"},
        "cohort": [{
            "slug": "winter-2027", "name": "Winter 2027", "timezone": "Europe/Berlin",
            "start": "2027-01-11", "weeks": 12, "digest": "mon 09:00", "icebreaker": "tue 10:00",
            "checkin": "fri 15:00", "checkin_weeks": [1, 2, 4, 8], "reflection": "wed 10:00",
            "reflection_weeks": [3, 6, 9],
            "webinar": {"at": "2027-01-11T17:00", "title": "Kick-off",
                        "url": "https://meet.jit.si/winter-2027-kickoff"},
        }],
    }
    cohort = settings_from_dict(data, base=Path("."), env={}).cohorts[0]
    return ProgramSpec.from_settings(cohort)


def local(item: CalendarItem, tz: ZoneInfo) -> datetime:
    return item.due.astimezone(tz).replace(tzinfo=None)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# -- the example cohort, whole ------------------------------------------------------


def test_example_cohort_every_item_at_its_local_wall_time_across_dst() -> None:
    cal = build_calendar(example())
    expected: dict[str, datetime] = {"launch:winter-2027": datetime(2027, 1, 11, 9, 0)}
    for w in range(1, 13):
        monday = date(2027, 1, 11) + timedelta(weeks=w - 1)
        expected[f"digest:winter-2027:w{w}"] = datetime.combine(monday, time(9, 0))
        expected[f"icebreaker:winter-2027:w{w}"] = datetime.combine(
            monday + timedelta(days=1), time(10, 0))
        if w in (1, 2, 4, 8):
            expected[f"checkin:winter-2027:w{w}"] = datetime.combine(
                monday + timedelta(days=4), time(15, 0))
        if w in (3, 6, 9):
            expected[f"reflection:winter-2027:w{w}"] = datetime.combine(
                monday + timedelta(days=2), time(10, 0))
    # Kick-off 17:00 local: announced at launch, 1-h reminder, follow-up. The
    # 24-h reminder would come before the announcement (the day before launch).
    expected["webinar-announce:winter-2027:20270111T1600Z"] = datetime(2027, 1, 11, 9, 0)
    expected["webinar-1h:winter-2027:20270111T1600Z"] = datetime(2027, 1, 11, 16, 0)
    expected["webinar-followup:winter-2027:20270111T1600Z"] = datetime(2027, 1, 11, 19, 0)

    assert {i.key: local(i, BERLIN) for i in cal.items} == expected
    assert len(cal.items) == 35
    for item in cal.items:
        assert item.due.tzinfo is UTC
        assert item.cohort == "winter-2027"
        # Berlin switches to CEST on Sunday 2027-03-28, inside week 11: only week 12 is +2.
        offset = item.due.astimezone(BERLIN).utcoffset()
        assert offset == timedelta(hours=2 if item.due > utc(2027, 3, 28, 1) else 1), item.key
    # The same wall time is a different UTC instant before and after the change.
    assert cal.get("icebreaker:winter-2027:w11") is not None
    assert cal.get("icebreaker:winter-2027:w11").due == utc(2027, 3, 23, 9)  # type: ignore[union-attr]
    assert cal.get("icebreaker:winter-2027:w12").due == utc(2027, 3, 30, 8)  # type: ignore[union-attr]
    assert cal.get("digest:winter-2027:w12").due == utc(2027, 3, 29, 7)  # type: ignore[union-attr]


def test_example_cohort_order_weeks_and_audiences() -> None:
    cal = build_calendar(example())
    # Launch shares 09:00 on day one with the webinar announcement and the week-1 digest; it comes first.
    first = [i.kind for i in cal.items[:3]]
    assert first == [ItemKind.LAUNCH, ItemKind.WEBINAR_ANNOUNCE, ItemKind.DIGEST]
    assert cal.launch.due == utc(2027, 1, 11, 8)
    assert [i.due for i in cal.items] == sorted(i.due for i in cal.items)
    for item in cal.items:
        assert item.week == program_week(cal.spec, item.due)
        if item.kind not in (ItemKind.LAUNCH,) and item.webinar is None:
            assert item.key.endswith(f":w{item.week}")
    assert {i.week for i in cal.items if i.kind is ItemKind.REFLECTION} == {3, 6, 9}
    assert [i.key for i in cal.in_week(3)] == [
        "digest:winter-2027:w3", "icebreaker:winter-2027:w3", "reflection:winter-2027:w3"]
    reflection = cal.get("reflection:winter-2027:w3")
    assert reflection is not None
    # Pair-room prompt and the private 1-5 check-in in each direct room.
    assert reflection.audiences == (TargetKind.PAIR, TargetKind.DIRECT)
    assert set(AUDIENCES) == set(ItemKind)


def test_keys_are_stable_unique_and_independent_of_slot_times() -> None:
    a = build_calendar(example())
    b = build_calendar(example())
    assert [i.key for i in a.items] == [i.key for i in b.items]
    assert len({i.key for i in a.items}) == len(a.items)
    # Moving a slot after its item went out must not produce a second item for that week.
    moved = build_calendar(spec(icebreaker="thu 16:30", digest="sun 20:00",
                                webinars=example().webinars))
    assert {i.key for i in moved.items} == {i.key for i in a.items}
    # Another cohort never collides.
    other = build_calendar(spec("spring-2027"))
    assert not {i.key for i in other.items} & {i.key for i in a.items}
    # Dedupe keys: one per (item, target), target audiences kept apart.
    targets = [Target(TargetKind.PAIR, "p1"), Target(TargetKind.PAIR, "p2"),
               Target(TargetKind.DIRECT, "p1"), Target(TargetKind.MEMBER, "p1"),
               Target(TargetKind.LOUNGE, "!lounge")]
    keys = [dedupe_key(i, t) for i in a.items for t in targets]
    assert len(set(keys)) == len(keys)
    assert dedupe_key(a.launch, targets[0]) == "launch:winter-2027:pair:p1"
    assert max(len(k) for k in keys) < 400  # the outbox's dedupe_key column


def test_from_settings_needs_a_start_and_takes_run_time_webinars() -> None:
    cohort = settings_from_dict(
        {"matrix": {"homeserver": "https://m.example.org", "user_id": "@hub:example.org",
                    "password": "x"},
         "cohort": [{"slug": "c1", "timezone": "Europe/Berlin"}]},
        base=Path("."), env={},
    ).cohorts[0]
    with pytest.raises(ValueError, match="no start date"):
        ProgramSpec.from_settings(cohort)
    w = Webinar(datetime(2027, 2, 3, 18, 0, tzinfo=BERLIN), "Q&A",
                announce_at=datetime(2027, 1, 20, 12, 0, tzinfo=UTC))
    s = ProgramSpec.from_settings(cohort, start=date(2027, 1, 11), webinars=[w])
    assert s.start == date(2027, 1, 11) and s.webinars == (w,)
    assert s.digest == WeeklySlot(0, time(9, 0))


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="checkin_weeks"):
        spec(weeks=4, checkin_weeks=(5,))
    with pytest.raises(ValueError, match="weeks"):
        spec(weeks=0, checkin_weeks=(), reflection_weeks=())
    at = datetime(2027, 2, 1, 17, 0, tzinfo=BERLIN)
    with pytest.raises(ValueError, match="same minute"):
        spec(webinars=(Webinar(at, "a"), Webinar(at.astimezone(UTC), "b")))
    with pytest.raises(ValueError, match="timezone-aware"):
        Webinar(datetime(2027, 2, 1, 17, 0), "naive")


# -- other zones, DST edges ----------------------------------------------------------


def test_new_york_cohort_keeps_wall_times_and_moves_a_nonexistent_time_forward() -> None:
    # US DST starts Sunday 2027-03-14 at 02:00 (-> 03:00); week 2 is 03-08..03-14.
    s = spec("ny", tz=NEW_YORK, start=date(2027, 3, 1), weeks=4, checkin="sun 02:30",
             checkin_weeks=(2,), reflection_weeks=())
    cal = build_calendar(s)
    assert cal.get("digest:ny:w2").due == utc(2027, 3, 8, 14)  # type: ignore[union-attr]  # EST
    assert cal.get("digest:ny:w3").due == utc(2027, 3, 15, 13)  # type: ignore[union-attr]  # EDT
    for item in cal.items:
        if item.kind is ItemKind.DIGEST:
            assert local(item, NEW_YORK).time() == time(9, 0)
    gap = cal.get("checkin:ny:w2")
    assert gap is not None
    # 02:30 does not exist that night: shifted forward by the gap, 03:30 EDT, still that day.
    assert gap.due == utc(2027, 3, 14, 7, 30)
    assert local(gap, NEW_YORK) == datetime(2027, 3, 14, 3, 30)


def test_sydney_cohort_ambiguous_time_is_its_first_occurrence() -> None:
    # Sydney leaves DST Sunday 2027-04-04 at 03:00 AEDT (-> 02:00 AEST): 02:30 happens twice.
    s = spec("syd", tz=SYDNEY, start=date(2027, 3, 22), weeks=30, checkin="sun 02:30",
             checkin_weeks=(2, 28), reflection_weeks=())
    cal = build_calendar(s)
    first = cal.get("checkin:syd:w2")
    assert first is not None
    assert first.due == utc(2027, 4, 3, 15, 30)  # 02:30 AEDT (+11), not 02:30 AEST
    assert first.due.astimezone(SYDNEY).fold == 0
    # Mondays 09:00 local on both sides of the change (southern-hemisphere autumn).
    assert cal.get("digest:syd:w2").due == utc(2027, 3, 28, 22)  # type: ignore[union-attr]
    assert cal.get("digest:syd:w3").due == utc(2027, 4, 4, 23)  # type: ignore[union-attr]
    # Spring forward on Sunday 2027-10-03 at 02:00 (-> 03:00), in week 28 (09-27..10-03).
    spring = cal.get("checkin:syd:w28")
    assert spring is not None and local(spring, SYDNEY) == datetime(2027, 10, 3, 3, 30)


def test_berlin_nonexistent_and_ambiguous_slot_times() -> None:
    # Week 11 holds Sunday 2027-03-28 (02:00 -> 03:00); weeks 42 holds Sunday 2027-10-31 (03:00 -> 02:00).
    s = spec("edge", weeks=50, checkin="sun 02:30", checkin_weeks=(11, 42), reflection_weeks=())
    cal = build_calendar(s)
    spring = cal.get("checkin:edge:w11")
    autumn = cal.get("checkin:edge:w42")
    assert spring is not None and autumn is not None
    assert spring.due == utc(2027, 3, 28, 1, 30)  # = 03:30 CEST
    assert local(spring, BERLIN) == datetime(2027, 3, 28, 3, 30)
    assert autumn.due == utc(2027, 10, 31, 0, 30)  # = 02:30 CEST, the first of the two
    assert local(autumn, BERLIN) == datetime(2027, 10, 31, 2, 30)


# -- weeks and launch ------------------------------------------------------------------


def test_week_one_starts_on_the_start_date_even_mid_week() -> None:
    s = spec("wed", start=date(2027, 1, 13), weeks=2, checkin_weeks=(1,), reflection_weeks=(1,))
    cal = build_calendar(s)
    assert cal.launch.due == utc(2027, 1, 13, 8)  # Wednesday 09:00
    # Week 1 is Wed 13th .. Tue 19th: its Monday digest is the 18th, not the 11th (before launch).
    assert local(cal.get("digest:wed:w1"), BERLIN) == datetime(2027, 1, 18, 9)  # type: ignore[arg-type]
    assert local(cal.get("icebreaker:wed:w1"), BERLIN) == datetime(2027, 1, 19, 10)  # type: ignore[arg-type]
    assert local(cal.get("checkin:wed:w1"), BERLIN) == datetime(2027, 1, 15, 15)  # type: ignore[arg-type]
    # The reflection slot is "wed 10:00", on launch day itself, after launch.
    assert local(cal.get("reflection:wed:w1"), BERLIN) == datetime(2027, 1, 13, 10)  # type: ignore[arg-type]
    assert local(cal.get("digest:wed:w2"), BERLIN) == datetime(2027, 1, 25, 9)  # type: ignore[arg-type]
    assert min(i.due for i in cal.items) == cal.launch.due
    assert week_start(s, 2) == date(2027, 1, 20)


def test_program_week_boundaries_by_local_date() -> None:
    s = example()
    assert program_week(s, datetime(2027, 1, 10, 23, 59, tzinfo=BERLIN)) is None
    assert program_week(s, datetime(2027, 1, 11, 0, 0, tzinfo=BERLIN)) == 1
    # 23:30 UTC on Sunday the 17th is already Monday the 18th in Berlin.
    assert program_week(s, utc(2027, 1, 17, 22, 59)) == 1
    assert program_week(s, utc(2027, 1, 17, 23, 30)) == 2
    assert program_week(s, datetime(2027, 4, 4, 23, 59, tzinfo=BERLIN)) == 12
    assert program_week(s, datetime(2027, 4, 5, 0, 0, tzinfo=BERLIN)) is None
    with pytest.raises(ValueError, match="timezone-aware"):
        program_week(s, datetime(2027, 1, 12))


def test_launch_moves_earlier_for_an_earlier_slot_on_the_start_date() -> None:
    cal = build_calendar(spec("early", digest="mon 07:30"))
    assert local(cal.launch, BERLIN) == datetime(2027, 1, 11, 7, 30)
    assert [i.kind for i in cal.items[:2]] == [ItemKind.LAUNCH, ItemKind.DIGEST]
    # A slot before 09:00 on another weekday does not move launch.
    cal = build_calendar(spec("late", icebreaker="tue 07:00"))
    assert local(cal.launch, BERLIN) == datetime(2027, 1, 11, 9, 0)
    # A check-in slot on the start weekday only counts if week 1 is a check-in week.
    cal = build_calendar(spec("nock", checkin="mon 08:00", checkin_weeks=(2,)))
    assert local(cal.launch, BERLIN) == datetime(2027, 1, 11, 9, 0)


# -- webinars ------------------------------------------------------------------------


def test_webinar_reminders_exactly_24h_and_1h_before_across_dst_in_each_recipients_zone() -> None:
    # Sunday 2027-03-28 17:00 CEST; the night before, Berlin was still on CET.
    at = datetime(2027, 3, 28, 17, 0, tzinfo=BERLIN)
    cal = build_calendar(spec(webinars=(Webinar(at, "Mid-program"),)))
    wid = "20270328T1500Z"
    r24 = cal.get(f"webinar-24h:winter-2027:{wid}")
    r1 = cal.get(f"webinar-1h:winter-2027:{wid}")
    ann = cal.get(f"webinar-announce:winter-2027:{wid}")
    follow = cal.get(f"webinar-followup:winter-2027:{wid}")
    assert r24 is not None and r1 is not None and ann is not None and follow is not None
    assert at - r24.due == timedelta(hours=24) and at - r1.due == timedelta(hours=1)
    assert ann.due == cal.launch.due  # a config webinar is announced at launch
    assert follow.due - at == timedelta(hours=2)
    # 24 h of elapsed time is 16:00 the day before by Berlin's clock (the clocks moved).
    assert local(r24, BERLIN) == datetime(2027, 3, 27, 16, 0)
    # Each recipient sees it in their own zone. New York (EDT since 03-14) and Sydney
    # (AEDT until 04-04) did not change clocks that night, so there it reads as the same
    # wall time the day before; in Berlin, 16:00 for a 17:00 webinar.
    shown = {
        tz.key: (local(r24, tz), local(r1, tz), at.astimezone(tz).replace(tzinfo=None))
        for tz in (BERLIN, NEW_YORK, SYDNEY)
    }
    assert shown == {
        "Europe/Berlin": (datetime(2027, 3, 27, 16), datetime(2027, 3, 28, 16),
                          datetime(2027, 3, 28, 17)),
        "America/New_York": (datetime(2027, 3, 27, 11), datetime(2027, 3, 28, 10),
                             datetime(2027, 3, 28, 11)),
        "Australia/Sydney": (datetime(2027, 3, 28, 2), datetime(2027, 3, 29, 1),
                             datetime(2027, 3, 29, 2)),
    }
    assert r24.week == 11 and r1.week == 11
    assert AUDIENCES[ItemKind.WEBINAR_REMINDER_24H] == (TargetKind.LOUNGE, TargetKind.PAIR, TargetKind.DIRECT,
                                                        TargetKind.MEMBER)


def test_webinar_scheduled_late_is_announced_then_and_drops_reminders_before_that() -> None:
    at = datetime(2027, 2, 3, 18, 0, tzinfo=BERLIN)
    announce = at - timedelta(hours=3)
    cal = build_calendar(spec(webinars=(Webinar(at, "Q&A", announce_at=announce),)))
    kinds = [(i.kind, i.due) for i in cal.items if i.webinar is not None]
    assert kinds == [
        (ItemKind.WEBINAR_ANNOUNCE, announce.astimezone(UTC)),
        (ItemKind.WEBINAR_REMINDER_1H, (at - timedelta(hours=1)).astimezone(UTC)),
        (ItemKind.WEBINAR_FOLLOWUP, (at + timedelta(hours=2)).astimezone(UTC)),
    ]
    # Scheduled for a time already past: nothing at all.
    cal = build_calendar(spec(webinars=(Webinar(at, "oops", announce_at=at + timedelta(minutes=1)),)))
    assert not [i for i in cal.items if i.webinar is not None]


def test_webinar_before_launch_is_announced_a_week_ahead() -> None:
    at = datetime(2027, 1, 8, 17, 0, tzinfo=BERLIN)  # the Friday before the Monday start
    cal = build_calendar(spec(webinars=(Webinar(at, "Orientation"),)))
    items = [i for i in cal.items if i.webinar is not None]
    assert [i.kind for i in items] == [ItemKind.WEBINAR_ANNOUNCE, ItemKind.WEBINAR_REMINDER_24H,
                                       ItemKind.WEBINAR_REMINDER_1H, ItemKind.WEBINAR_FOLLOWUP]
    assert items[0].due == (at - timedelta(days=7)).astimezone(UTC)
    assert all(i.week is None for i in items)  # before week 1


# -- what is due ---------------------------------------------------------------------


def test_due_items_window_and_catch_up() -> None:
    cal = build_calendar(example())
    ice = cal.get("icebreaker:winter-2027:w1")
    assert ice is not None
    twelve = timedelta(hours=12)
    before = ice.due - timedelta(seconds=30)
    # On time: the tick at the due instant.
    got = due_items(cal, ice.due, before, twelve)
    assert got.due == (ice,) and got.late == ()
    # Already handled by the previous tick (since is inclusive of what it handled).
    assert due_items(cal, ice.due + timedelta(seconds=30), ice.due, twelve).due == ()
    # Down 10 h: sent on start.
    got = due_items(cal, ice.due + timedelta(hours=10), before, twelve)
    assert got.due == (ice,) and got.late == ()
    # Down 13 h with catch_up_hours = 12: skipped, listed.
    got = due_items(cal, ice.due + timedelta(hours=13), before, twelve)
    assert got.due == () and got.late == (ice,)
    # Exactly 12 h is not "less than 12 h late".
    assert due_items(cal, ice.due + twelve, before, twelve).late == (ice,)
    # catch_up_hours = 0 still sends what a tick picks up a few seconds after its instant.
    zero = timedelta(0)
    assert due_items(cal, ice.due + timedelta(seconds=31), before, zero).due == (ice,)
    assert due_items(cal, ice.due + ON_TIME_GRACE, before, zero).late == (ice,)


def test_due_items_first_tick_sees_the_whole_past() -> None:
    cal = build_calendar(example())
    now = datetime(2027, 1, 19, 20, 0, tzinfo=BERLIN)  # week 2, Tuesday evening
    got = due_items(cal, now, None, timedelta(hours=12))
    assert [i.key for i in got.due] == ["icebreaker:winter-2027:w2"]
    assert len(got.late) == len(cal.between(None, now)) - 1
    assert got.late[0].kind is ItemKind.LAUNCH
    # And a clock that went backwards sees nothing.
    assert due_items(cal, now - timedelta(hours=1), now, timedelta(hours=12)) == type(got)((), ())


def test_next_due_after() -> None:
    cal = build_calendar(example())
    assert cal.next_due_after(utc(2000, 1, 1)) == cal.launch.due
    # After launch (and the announcement and digest at the same instant): the 1-h reminder.
    assert cal.next_due_after(cal.launch.due) == utc(2027, 1, 11, 15)
    assert cal.next_due_after(cal.items[-1].due) is None


# -- property: any cohort, any zone ----------------------------------------------------

ZONES = ["Europe/Berlin", "America/New_York", "Australia/Sydney", "Asia/Kolkata",
         "America/Santiago", "Europe/London", "Pacific/Auckland", "UTC", "America/St_Johns"]
slots = st.builds(lambda d, h, m: f"{WEEKDAYS[d]} {h:02d}:{m:02d}",
                  st.integers(0, 6), st.integers(0, 23), st.sampled_from([0, 15, 30, 45]))


@settings(max_examples=150, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    start=st.dates(date(2024, 1, 1), date(2035, 12, 31)),
    weeks=st.integers(1, 60),
    digest=slots, icebreaker=slots, checkin=slots, reflection=slots,
    picks=st.sets(st.integers(1, 60), max_size=8),
)
def test_property_any_cohort(
    zone: str, start: date, weeks: int, digest: str, icebreaker: str, checkin: str,
    reflection: str, picks: set[int],
) -> None:
    tz = ZoneInfo(zone)
    chosen = tuple(sorted(w for w in picks if w <= weeks))
    s = spec("p", tz=tz, start=start, weeks=weeks, digest=digest, icebreaker=icebreaker,
             checkin=checkin, checkin_weeks=chosen, reflection=reflection, reflection_weeks=chosen)
    cal = build_calendar(s)
    assert len(cal.items) == 1 + 2 * weeks + 2 * len(chosen)
    assert len({i.key for i in cal.items}) == len(cal.items)
    assert list(cal.items) == sorted(cal.items, key=lambda i: i.due)
    assert cal.items[0] == cal.launch
    slot_of = {ItemKind.DIGEST: s.digest, ItemKind.ICEBREAKER: s.icebreaker,
               ItemKind.CHECKIN: s.checkin, ItemKind.REFLECTION: s.reflection}
    for item in cal.items:
        assert item.week == program_week(s, item.due)
        if item.kind is ItemKind.LAUNCH:
            continue
        slot = slot_of[item.kind]
        got = item.due.astimezone(tz)
        wall = datetime.combine(got.date(), slot.at)
        assert got.weekday() == slot.weekday or got.date() != wall.date()
        if got.replace(tzinfo=None) != wall:
            # Only a wall time that does not exist moves, and only forward by the gap.
            intended = wall.replace(tzinfo=tz)
            assert intended.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != wall
            assert timedelta(0) < got.replace(tzinfo=None) - wall <= timedelta(hours=1)
