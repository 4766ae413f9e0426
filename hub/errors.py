"""Every exception the hub raises on purpose, in one place.

    HubError
    ├── ConfigError            config file unreadable or invalid (carries every problem)
    ├── StorageError
    │   └── SchemaTooNewError  the database was migrated by a newer hub
    ├── MatrixError
    │   ├── LoginError         password or token rejected, whoami failed
    │   ├── InvalidTokenError  the homeserver says our access token is gone
    │   └── CrossSigningError  the hub's device could not be cross-signed (HTTP, key file, auth)
    │       └── ForeignCrossSigningIdentity  the account's identity is another client's (Element's)
    ├── UnreachableError       the homeserver or SMTP server does not answer (`hub run` waits)
    ├── DeliveryError
    │   ├── TemporaryDeliveryError  retry later (429, 5xx, timeouts, SMTP 4xx)
    │   └── PermanentDeliveryError  never retry (M_FORBIDDEN, SMTP 5xx)
    │       ├── UnknownEffectError  an outbox payload names an op this hub does not know, or lacks a field
    │       ├── UnsafeHeaderError   an email header name or address carries CR/LF or controls
    │       ├── RecipientRejectedError  the SMTP server refused the address: suppress it
    │       └── MessageRejectedError    it refused the message or the hub's sender, not the address
    ├── CommandError           a room command was malformed or refused
    │   ├── UsageError
    │   │   └── ArgumentError  a handler found an argument wrong: the runner adds the usage line
    │   └── PermissionDenied
    ├── RosterError            a roster CSV has problems (carries each as "line N: reason")
    ├── ContentError           the content library is invalid or an item cannot render ("file:line: reason")
    ├── TemplateStyleError     an email template's CSS cannot be inlined once per class (a bug in the hub)
    └── LinkTokenError         a signed link token (unsubscribe, confirm, answer) is forged, damaged or stale

Callers catch the narrowest class they can act on; `HubError` is what the CLI
turns into a one-line message and exit status 1.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ArgumentError",
    "CommandError",
    "ConfigError",
    "ContentError",
    "CrossSigningError",
    "DeliveryError",
    "ForeignCrossSigningIdentity",
    "HubError",
    "InvalidTokenError",
    "LinkTokenError",
    "LoginError",
    "MatrixError",
    "MessageRejectedError",
    "PermanentDeliveryError",
    "PermissionDenied",
    "RecipientRejectedError",
    "RosterError",
    "SchemaTooNewError",
    "StorageError",
    "TemplateStyleError",
    "TemporaryDeliveryError",
    "UnknownEffectError",
    "UnreachableError",
    "UnsafeHeaderError",
    "UsageError",
]


class HubError(Exception):
    """Base class: a problem the hub explains to a person instead of crashing."""


class ConfigError(HubError):
    """The configuration is invalid; `problems` lists every issue found, one per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class StorageError(HubError):
    """The database could not be opened or migrated."""


class SchemaTooNewError(StorageError):
    """The database schema is newer than this version of the hub understands."""


class MatrixError(HubError):
    """Talking to the homeserver failed in a way the hub cannot recover from."""


class LoginError(MatrixError):
    """Logging in (or checking the session with whoami) failed."""


class InvalidTokenError(MatrixError):
    """The access token was revoked or is unknown (M_UNKNOWN_TOKEN)."""


# What ForeignCrossSigningIdentity tells the operator to do.
_CROSS_SIGNING_RESET_HINT = (
    "set `reset_cross_signing = true` under [matrix] (it needs `password`) to "
    "replace it with one the hub owns; other people will then see that the hub's "
    "identity changed. Remove the setting again once the hub has started"
)


class CrossSigningError(MatrixError):
    """Cross-signing could not be checked or set up (HTTP, key file, auth)."""


class ForeignCrossSigningIdentity(CrossSigningError):
    """The account's cross-signing identity belongs to someone else's client."""

    def __init__(self, user_id: str, master_key: str, key_file: Path) -> None:
        self.user_id = user_id
        self.master_key = master_key
        self.key_file = key_file
        super().__init__(
            f"{user_id} already has a cross-signing identity (master key {master_key}) "
            f"whose private keys the hub does not hold (they are not in {key_file}), "
            f"probably set up by logging in with Element. The hub's device cannot be "
            f"cross-signed, so Element users will not receive or read its encrypted "
            f"messages. To fix it, {_CROSS_SIGNING_RESET_HINT}."
        )


class UnreachableError(HubError):
    """A server did not answer: connection refused, no DNS, timed out, a 5xx from its proxy.

    `hub run` waits for it at start (`hub.waiting.until_reachable`); `hub check` reports it
    once. `what` ("the homeserver"), `url` and `reason` ("connection refused") make its line.
    """

    def __init__(self, what: str, url: str, reason: str) -> None:
        self.what = what
        self.url = url
        self.reason = reason
        super().__init__(f"cannot reach {what} at {url}: {reason}")


class DeliveryError(HubError):
    """Sending one outbox row failed.

    `reported` is True when the moderators were already told about the cause
    (e.g. an address was suppressed and an alert queued with it), so the
    dispatcher does not raise a second alert for each row it affects.
    """

    def __init__(
        self, reason: str, *, retry_after: float | None = None, reported: bool = False
    ) -> None:
        self.reason = reason
        self.retry_after = retry_after
        self.reported = reported
        super().__init__(reason)


class TemporaryDeliveryError(DeliveryError):
    """Try again later; `retry_after` (seconds) is set when the peer said how long."""


class PermanentDeliveryError(DeliveryError):
    """Retrying cannot help: the row is marked failed and moderators are told."""


class RecipientRejectedError(PermanentDeliveryError):
    """The SMTP server refused the recipient for good (bad mailbox): the address is to be suppressed."""

    def __init__(self, reason: str, *, code: int) -> None:
        super().__init__(reason)
        self.code = code


class MessageRejectedError(PermanentDeliveryError):
    """The SMTP server refused this message, or the hub's sender, for good (spam, policy, size).

    Says nothing about the address, so it is not suppressed: the row fails, and the
    same message to other recipients is likely to be refused the same way.
    `enhanced` is the RFC 3463 status code ("5.7.1"), or "" when the server gave none.
    """

    def __init__(self, reason: str, *, code: int, enhanced: str) -> None:
        super().__init__(reason)
        self.code = code
        self.enhanced = enhanced


class UnknownEffectError(PermanentDeliveryError):
    """An outbox payload this hub cannot read as an effect (`hub.core.effects.effect_from_payload`).

    Permanent: a row with an unknown ``op`` (queued by a newer hub, or damaged) or without
    a field its op needs will not become sendable by retrying.
    """


class UnsafeHeaderError(PermanentDeliveryError, ValueError):
    """An email header name, address or field cannot be written as exactly one header line.

    `email_payload` raises it for any field with a line break or control
    character, when a feature queues the row. The header builder
    (`hub.email.message.header_line`) folds those in text values (a subject, a
    display name) and raises it only where folding would change the meaning
    (an address, a header name). Permanent: such a row can never be sent
    safely, so the dispatcher marks it failed and tells the moderators instead
    of retrying. Also a ValueError, which is what `email_payload` has always
    raised for a malformed payload.
    """

    def __init__(self, what: str, value: str) -> None:
        # repr() and a cut: the reason reaches the moderators' alert, never raw line breaks.
        super().__init__(f"email {what} must be one line without control characters: {value[:60]!r}")


class CommandError(HubError):
    """A room command could not be carried out; the message is shown to the sender."""


class UsageError(CommandError):
    """Malformed arguments; the message includes the usage line."""


class ArgumentError(UsageError):
    """An argument the parser accepted but the handler cannot use (a bad name, an unknown option).

    The message says only what is wrong; the runner (hub.inbound) adds the
    command's usage line from its declaration, so no handler spells one out.
    """


class PermissionDenied(CommandError):
    """The sender may not run this command here."""


class RosterError(HubError):
    """A roster import was refused; `problems` lists each as ``line N: reason``, nothing applied."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class ContentError(HubError):
    """The content library has problems, or an item cannot be rendered.

    `problems` lists each as ``file:line: reason`` (or one plain reason when no
    file is involved, e.g. a bad link passed in by a caller).
    """

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class TemplateStyleError(HubError):
    """An email template's stylesheet or markup cannot be inlined once, when the template loads.

    Raised when the hub starts, never while rendering: the templates ship with
    the hub, so this is a bug in a template, not something an operator did.
    """


class LinkTokenError(HubError):
    """A signed token from a link (unsubscribe, confirm address, answer) did not verify.

    Not the homeserver rejecting the hub's Matrix access token: that is
    `InvalidTokenError`. `reason` is for logs; people only ever see a
    generic "this link is not valid" page, so a forger learns nothing.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"invalid token: {reason}")
