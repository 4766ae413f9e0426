"""Weekly slots such as ``"mon 09:00"``, resolved in a time zone, DST-correct."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

__all__ = ["WEEKDAYS", "WeeklySlot", "parse_weekly_slot"]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SLOT = re.compile(r"^\s*([a-z]{3})\s+([01]?\d|2[0-3]):([0-5]\d)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class WeeklySlot:
    weekday: int  # 0 = Monday, as in date.weekday()
    at: time

    def __str__(self) -> str:
        return f"{WEEKDAYS[self.weekday]} {self.at:%H:%M}"

    def in_week(self, week_start: date, zone: ZoneInfo) -> datetime:
        """The slot's moment in the week that begins on Monday `week_start`.

        The wall-clock time is kept across DST changes: "mon 09:00" stays at
        09:00 local time, so the UTC instant moves by an hour twice a year.
        A wall time that does not exist (skipped by a spring-forward) resolves
        with fold=0, i.e. one hour later in local time, which is what people expect.
        """
        day = week_start + timedelta(days=self.weekday)
        return datetime.combine(day, self.at, tzinfo=zone)


def parse_weekly_slot(text: str) -> WeeklySlot:
    """Parse ``"mon 09:00"``; raise ValueError naming what is wrong."""
    m = _SLOT.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a weekly slot like \"mon 09:00\"")
    day = m.group(1).lower()
    if day not in WEEKDAYS:
        raise ValueError(f"{m.group(1)!r} is not a weekday (use one of {', '.join(WEEKDAYS)})")
    return WeeklySlot(WEEKDAYS.index(day), time(int(m.group(2)), int(m.group(3))))
