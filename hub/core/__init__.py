"""The domain core: cohorts, pairs, calendar, content, digest, commands.

Nothing in here imports nio, aiosmtplib or SQLAlchemy; side effects leave
the core as outbox rows written by the adapters.
"""
