"""An email-only participant's welcome, and the pairing notice that may follow it.

One welcome each, from the content library, sent complete: paired in the same transaction
(a roster import, `!hub add` then `!hub pair` is two), the queued welcome is rebuilt with the
pairing and video call; paired later, they get a short pairing notice instead, never a
second welcome. Only these functions queue them (hub.features.person_mail builds them).
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from hub.features import person_mail
from hub.features.room_queue import Env, queue_mail_payload
from hub.storage.models import Cohort, Member, Pair

__all__ = ["queue_pair_mail", "queue_welcome"]

log = logging.getLogger(__name__)

_WELCOMES = "hub.welcomes"  # Session.info: member id -> dedupe key of their welcome queued here


async def queue_welcome(s: AsyncSession, env: Env, member: Member, cohort: Cohort) -> None:
    if not env.settings.email.enabled or member.email is None:
        return
    if member.id is None:
        await s.flush()  # the id names the email's dedupe key
    try:
        payload = await person_mail.welcome_payload(s, env.settings, member, cohort, env.clock.now())
    except ValueError as e:  # an address or name no header can carry (data that bypassed the checks)
        log.warning("welcome email not queued: %s", e)
        return
    # A fresh key each time someone is (re)added: a person added again after leaving is welcomed again.
    key = f"welcome-email:{member.id}:{uuid.uuid4().hex}"
    await queue_mail_payload(s, env, payload, kind="welcome-email", dedupe_key=key)
    s.info.setdefault(_WELCOMES, {})[member.id] = key


async def queue_pair_mail(s: AsyncSession, env: Env, me: Member, partner: Member, cohort: Cohort,
                          pair: Pair) -> None:
    """`me` (email-only) was just paired: complete their welcome if it is still in this transaction."""
    if not env.settings.email.enabled or me.email is None:
        return
    now = env.clock.now()
    welcome = s.info.get(_WELCOMES, {}).pop(me.id, None)
    try:
        if welcome is not None:
            payload = await person_mail.welcome_payload(s, env.settings, me, cohort, now, partner=partner,
                                                        video_name=pair.video_name)
        else:
            payload = await person_mail.paired_payload(s, env.settings, me, partner, cohort,
                                                       pair.video_name, now)
    except ValueError as e:
        log.warning("pairing email not queued: %s", e)
        return
    if welcome is not None and await env.store.replace_queued(s, welcome, dict(payload)):
        return
    await queue_mail_payload(s, env, payload, kind="pair-email", dedupe_key=f"pair-email:{pair.id}:{me.id}")
