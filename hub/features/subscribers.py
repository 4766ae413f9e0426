"""Email subscriptions: opaque handles, the one-click store, and the list headers every bulk mail carries.

A person's email preference lives in ``person_pref`` under their *person key*:
their Matrix id, or ``mailto:ADDRESS`` for someone without a Matrix account.
`!hub email off` and the one-click link write the same row (`email_mode = off`),
so the two can never disagree.

Each person gets one random handle (`tokens.new_handle`, table ``subscriber``)
the first time a mail with an unsubscribe link is built for them. Links carry
the signed handle, never a database id or an address.

`list_headers` is the one helper every digest, announcement and webinar email
gets its ``List-Id``, ``List-Unsubscribe`` and ``List-Unsubscribe-Post`` from.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.clock import Clock
from hub.config import Settings
from hub.core.names import one_line
from hub.core.tokens import Purpose, TokenSigner, list_unsubscribe_headers, new_handle
from hub.program_targets import person_key
from hub.storage.db import Database
from hub.storage.models import Cohort, KeyValue, PersonPref, Subscriber, subscriber_table

__all__ = [
    "SqlSubscriptionStore",
    "handles_for",
    "list_headers",
    "list_id",
    "person_key",
    "signing_secret",
]

_GENERATED_SECRET = "web.generated_secret"


async def signing_secret(s: AsyncSession, settings: Settings) -> str:
    """`web.secret`, or (when it is not set) a random one kept in the database.

    Unsubscribe links must work whatever the operator configured: a secret made
    once and stored keeps links valid across restarts.
    """
    if settings.web.secret:
        return settings.web.secret
    row = await s.get(KeyValue, _GENERATED_SECRET)
    if row is not None:
        return row.value
    value = secrets.token_urlsafe(32)
    s.add(KeyValue(key=_GENERATED_SECRET, value=value))
    await s.flush()
    return value


def list_id(settings: Settings, cohort: Cohort) -> str:
    host = urlsplit(settings.web.public_url).hostname or settings.matrix.server_name
    # one_line: a name an older hub stored may hold a line break, which no header can carry.
    return f"{one_line(cohort.name).replace('<', '').replace('>', '')} <{cohort.slug}.{host}>"


async def handles_for(s: AsyncSession, persons: Sequence[str], now: datetime) -> dict[str, str]:
    """person key -> handle, making handles for those who have none yet (in the caller's transaction)."""
    wanted = list(dict.fromkeys(persons))
    found: dict[str, str] = {}
    for i in range(0, len(wanted), 500):
        chunk = wanted[i:i + 500]
        found.update((p, h) for h, p in (await s.execute(
            select(subscriber_table.c.handle, subscriber_table.c.person)
            .where(subscriber_table.c.person.in_(chunk)))).all())
    for person in wanted:
        if person not in found:
            found[person] = new_handle()
            s.add(Subscriber(handle=found[person], person=person, created_at=now.timestamp()))
    if len(found) > 0:
        await s.flush()
    return found


async def list_headers(
    s: AsyncSession, settings: Settings, cohort: Cohort, persons: Sequence[str], now: datetime
) -> dict[str, dict[str, str]]:
    """person key -> List-Id + one-click List-Unsubscribe headers, for `EmailPayload.headers`."""
    signer = TokenSigner(await signing_secret(s, settings))
    handles = await handles_for(s, persons, now)
    lid = list_id(settings, cohort)
    return {
        person: {"List-Id": lid, **list_unsubscribe_headers(
            settings.web.public_url, signer.sign(handle, Purpose.UNSUBSCRIBE, issued_at=now))}
        for person, handle in handles.items()
    }


class SqlSubscriptionStore:
    """`web_unsubscribe.SubscriptionStore` on ``subscriber`` + ``person_pref``."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    async def _person(self, s: AsyncSession, handle: str) -> str | None:
        row = await s.get(Subscriber, handle)
        return row.person if row is not None else None

    async def is_subscribed(self, handle: str) -> bool:
        async with self.db.session() as s:
            person = await self._person(s, handle)
            if person is None:
                return False
            pref = await s.get(PersonPref, person)
            return pref is None or pref.email_mode != "off"

    async def unsubscribe(self, handle: str) -> bool:
        now = self.clock.now().timestamp()
        async with self.db.transaction() as s:
            person = await self._person(s, handle)
            if person is None:
                return False
            pref = await s.get(PersonPref, person)
            if pref is None:
                s.add(PersonPref(user_id=person, email_mode="off", updated_at=now))
            elif pref.email_mode != "off":
                pref.email_mode, pref.updated_at = "off", now
        return True
