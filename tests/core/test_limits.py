"""Per-person command limits and alert aggregation, on a FakeClock: windows pass without sleeping."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hub.clock import FakeClock
from hub.core.limits import (
    MAX_COMMAND_CHARS,
    AlertAggregator,
    CommandRateLimiter,
    OncePerWindow,
    Verdict,
    text_too_long,
)
from hub.service import build_registry


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2027, 3, 1, 9, 0, tzinfo=UTC))


def test_a_burst_then_one_slow_down_then_silence_until_a_token_is_back(clock: FakeClock) -> None:
    limiter = CommandRateLimiter(clock, per_minute=10, burst=5)
    assert [limiter.check("@a:x") for _ in range(5)] == [Verdict.ALLOW] * 5
    assert limiter.check("@a:x") is Verdict.WARN
    assert [limiter.check("@a:x") for _ in range(30)] == [Verdict.DROP] * 30
    assert limiter.wait_seconds("@a:x") == pytest.approx(6.0)
    # Someone else is not affected by @a's flood.
    assert limiter.check("@b:x") is Verdict.ALLOW
    clock.advance(5.9)
    assert limiter.check("@a:x") is Verdict.DROP
    clock.advance(0.2)  # one token back (10 a minute: one every 6 s)
    assert limiter.check("@a:x") is Verdict.ALLOW
    # Over the limit again: a new "slow down", since the last one was followed by an allowed command.
    assert limiter.check("@a:x") is Verdict.WARN
    assert limiter.check("@a:x") is Verdict.DROP


def test_the_average_rate_is_per_minute_and_the_bucket_never_exceeds_burst(clock: FakeClock) -> None:
    limiter = CommandRateLimiter(clock, per_minute=10, burst=5)
    allowed = 0
    for _ in range(600):  # ten minutes, a command every second
        allowed += limiter.check("@a:x") is Verdict.ALLOW
        clock.advance(1)
    assert allowed == 5 + 99  # the burst, then 10 a minute: 599 s of refill hold 99 whole tokens
    clock.advance(3600)  # idle for an hour: still only `burst` in a row
    assert [limiter.check("@a:x") for _ in range(6)][-1] is Verdict.WARN


def test_once_per_window_refuses_once_a_day_per_key(clock: FakeClock) -> None:
    once = OncePerWindow(clock, 86400)
    assert once.first(("@s:x", "!room1"))
    assert not once.first(("@s:x", "!room1"))
    assert once.first(("@s:x", "!room2"))  # another room: its people have not been told
    clock.advance(86399)
    assert not once.first(("@s:x", "!room1"))
    clock.advance(2)
    assert once.first(("@s:x", "!room1"))


def test_alerts_one_per_kind_and_room_an_hour_with_the_count(clock: FakeClock) -> None:
    alerts = AlertAggregator(clock, window=3600)
    assert alerts.admit(("reply", "!r1")) == (True, 0)
    assert [alerts.admit(("reply", "!r1"))[0] for _ in range(29)] == [False] * 29
    assert alerts.admit(("reply", "!r2")) == (True, 0)  # another room is its own alert
    assert alerts.admit(("digest", "!r1")) == (True, 0)  # another kind too
    assert alerts.due() == []  # the hour is not over
    clock.advance(3600)
    assert sorted(alerts.due()) == [(("reply", "!r1"), 29)]  # windows with nothing held say nothing
    assert alerts.due() == []  # each count is reported once
    assert alerts.admit(("reply", "!r1")) == (True, 0)


def test_a_count_not_yet_summarised_rides_on_the_next_alert(clock: FakeClock) -> None:
    alerts = AlertAggregator(clock, window=3600)
    alerts.admit(("reply", "!r1"))
    alerts.admit(("reply", "!r1"))
    alerts.admit(("reply", "!r1"))
    clock.advance(3601)
    assert alerts.admit(("reply", "!r1")) == (True, 2)


def test_free_texts_have_caps_and_the_refusal_names_them() -> None:
    registry = build_registry("!hub")
    caps = {name: registry.get(name).args[-1].maximum for name in ("support", "plan set", "announce")}  # type: ignore[union-attr]
    assert caps == {"support": 2000, "plan set": 2000, "announce": 10000}
    assert max(caps.values()) < MAX_COMMAND_CHARS  # every capped text can get its own refusal
    support = registry.get("support")
    assert support is not None
    assert text_too_long(support, {"text": "x" * 2000}) is None
    refusal = text_too_long(support, {"text": "x" * 2001})
    assert refusal is not None and "2,001" in refusal and "2,000" in refusal and "Nothing" in refusal
    assert "x" * 50 not in refusal  # never echoed back
