"""Time-zone names from people (commands, config, roster, stored rows) to zones.

One place decides what "not a known time zone" means, because `ZoneInfo` fails
in more ways than its documented `ZoneInfoNotFoundError`: a name that is a
folder of zones ("America") raises `IsADirectoryError`, a very long one
`OSError` (file name too long), a malformed one `ValueError`. Each copy of
the try/except that listed fewer of them was a traceback waiting for a typo.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["find_zone"]


def find_zone(name: str) -> ZoneInfo | None:
    """The IANA zone called `name`, or None when there is no zone by that name."""
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None
