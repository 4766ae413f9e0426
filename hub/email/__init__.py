"""The email channel: payload shape, MIME building, the SMTP pool and the outbox sender.

Features queue mail with :func:`hub.email.payload.enqueue_email`; see
:mod:`hub.email.payload` for the payload's documented shape.
"""

from hub.email.payload import Attachment, EmailPayload, email_payload, enqueue_email, normalize_address

__all__ = ["Attachment", "EmailPayload", "email_payload", "enqueue_email", "normalize_address"]
