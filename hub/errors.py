"""Every exception the hub raises on purpose, in one place.

    HubError
    ├── ConfigError            config file unreadable or invalid (carries every problem)
    ├── StorageError
    │   └── SchemaTooNewError  the database was migrated by a newer hub
    ├── MatrixError
    │   ├── LoginError         password or token rejected, whoami failed
    │   └── InvalidTokenError  the homeserver says our access token is gone
    ├── DeliveryError
    │   ├── TemporaryDeliveryError  retry later (429, 5xx, timeouts, SMTP 4xx)
    │   └── PermanentDeliveryError  never retry (M_FORBIDDEN, SMTP 5xx)
    └── CommandError           a room command was malformed or refused
        ├── UsageError
        └── PermissionDenied

Callers catch the narrowest class they can act on; `HubError` is what the CLI
turns into a one-line message and exit status 1.
"""

from __future__ import annotations

__all__ = [
    "CommandError",
    "ConfigError",
    "DeliveryError",
    "HubError",
    "InvalidTokenError",
    "LoginError",
    "MatrixError",
    "PermanentDeliveryError",
    "PermissionDenied",
    "SchemaTooNewError",
    "StorageError",
    "TemporaryDeliveryError",
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


class DeliveryError(HubError):
    """Sending one outbox row failed."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(reason)


class TemporaryDeliveryError(DeliveryError):
    """Try again later; `retry_after` (seconds) is set when the peer said how long."""


class PermanentDeliveryError(DeliveryError):
    """Retrying cannot help: the row is marked failed and moderators are told."""


class CommandError(HubError):
    """A room command could not be carried out; the message is shown to the sender."""


class UsageError(CommandError):
    """Malformed arguments; the message includes the usage line."""


class PermissionDenied(CommandError):
    """The sender may not run this command here."""
