"""Signed tokens for links in emails: one-click unsubscribe, confirm a new address, one-click answers.

A token is URL-safe base64 (no padding) of::

    version (1) | purpose (1) | issued_at (4, UNIX seconds, big-endian)
    | handle length (1) | handle (ASCII) | HMAC-SHA256 of everything before (32)

The *handle* is an opaque subscriber reference chosen by the caller: a random
per-person id stored next to the address (see `new_handle`), never a database
id, so a link reveals nothing about how many people there are or who is who.
The MAC key is derived from `web.secret` with a fixed label, so the raw secret
is never used directly and other uses of it cannot collide with tokens.

Verification authenticates before it interprets anything (the MAC is the last
32 bytes, compared in constant time), and decoding is strict: a token must be
the canonical encoding of its bytes, so flipping an unused low bit in the last
character is a rejection too, not a silently-equal token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from hub.errors import LinkTokenError

__all__ = [
    "MAX_TOKEN_LENGTH",
    "AddressTokenSigner",
    "Purpose",
    "ReplyClaims",
    "TokenClaims",
    "TokenSigner",
    "address_token",
    "bounce_address",
    "list_unsubscribe_headers",
    "new_handle",
    "reply_address",
    "unsubscribe_url",
]

_VERSION = 1
_MAC_LEN = 32
_HEADER = struct.Struct(">BBIB")  # version, purpose, issued_at, handle length
# Used with fullmatch: `^...$` would let a trailing "\n" through.
_HANDLE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_KEY_LABEL = b"cohort-hub/signed-token/v1"
# Largest possible token: header + 64-byte handle + MAC, base64-encoded. Anything
# longer is rejected before decoding, so garbage cannot make us do real work.
MAX_TOKEN_LENGTH = -(-(_HEADER.size + 64 + _MAC_LEN) * 4 // 3)


class Purpose(StrEnum):
    """What a token authorises. Part of the signed bytes: an unsubscribe token
    can never be replayed as an address confirmation, or the other way round."""

    UNSUBSCRIBE = "unsubscribe"
    CONFIRM_ADDRESS = "confirm-address"
    # A check-in answer by link (hub.core.answers): its handle spells the answer.
    ANSWER = "answer"


# Wire codes are fixed forever; never renumber, only append.
_PURPOSE_CODE: dict[Purpose, int] = {Purpose.UNSUBSCRIBE: 1, Purpose.CONFIRM_ADDRESS: 2, Purpose.ANSWER: 3}


@dataclass(frozen=True, slots=True)
class TokenClaims:
    handle: str
    purpose: Purpose
    issued_at: datetime  # UTC, whole seconds


def new_handle() -> str:
    """A fresh opaque subscriber reference (16 random bytes, URL-safe).

    Store it with the person's address (unique, indexed) and give it to
    `TokenSigner.sign`; `SubscriptionStore` looks people up by it.
    """
    return secrets.token_urlsafe(16)


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode_strict(text: str) -> bytes:
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise LinkTokenError("not URL-safe base64")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    # Non-canonical encodings (junk in the unused trailing bits) decode to the
    # same bytes; accepting them would make two different strings one token.
    if _b64encode(data) != text:
        raise LinkTokenError("non-canonical base64")
    return data


class TokenSigner:
    """Signs and verifies tokens with a key derived from `web.secret`."""

    def __init__(self, secret: str) -> None:
        if not secret:
            # An empty key would make every token forgeable by anyone who reads this code.
            raise ValueError("web.secret must be set to sign tokens")
        self._key = hmac.new(secret.encode("utf-8"), _KEY_LABEL, hashlib.sha256).digest()

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()

    def sign(self, handle: str, purpose: Purpose, *, issued_at: datetime) -> str:
        """A token for `handle`; `issued_at` (timezone-aware) makes `max_age` checks possible.

        Callers pass the time explicitly (from their `Clock`) so the same
        digest rendered twice yields byte-identical links.
        """
        if not _HANDLE.fullmatch(handle):
            raise ValueError("handle must be 1-64 URL-safe characters (A-Z a-z 0-9 _ -)")
        if issued_at.tzinfo is None:
            raise ValueError("issued_at must be timezone-aware")
        seconds = int(issued_at.timestamp())
        if not 0 <= seconds < 2**32:
            raise ValueError("issued_at is out of range")
        raw = handle.encode("ascii")
        body = _HEADER.pack(_VERSION, _PURPOSE_CODE[Purpose(purpose)], seconds, len(raw)) + raw
        return _b64encode(body + self._mac(body))

    def verify(
        self,
        token: str,
        purpose: Purpose,
        *,
        now: datetime | None = None,
        max_age: timedelta | None = None,
    ) -> TokenClaims:
        """The claims of a genuine, unexpired token for `purpose`; else raise `LinkTokenError`.

        Unsubscribe links are meant to work for as long as the mail sits in an
        inbox, so `max_age` is optional; address confirmations should pass one.
        """
        if not isinstance(token, str) or not token:
            raise LinkTokenError("empty")
        if len(token) > MAX_TOKEN_LENGTH:
            raise LinkTokenError("too long")
        data = _b64decode_strict(token)
        if len(data) < _HEADER.size + 1 + _MAC_LEN:
            raise LinkTokenError("too short")
        body, mac = data[:-_MAC_LEN], data[-_MAC_LEN:]
        if not hmac.compare_digest(mac, self._mac(body)):
            raise LinkTokenError("bad signature")
        # From here on the bytes are ours; the checks below guard against a
        # future format change, not against forgery.
        version, code, seconds, length = _HEADER.unpack_from(body)
        if version != _VERSION:
            raise LinkTokenError(f"unknown version {version}")
        if length != len(body) - _HEADER.size:
            raise LinkTokenError("bad length")
        if _PURPOSE_CODE.get(Purpose(purpose)) != code:
            raise LinkTokenError("wrong purpose")
        issued = datetime.fromtimestamp(seconds, UTC)
        if max_age is not None:
            if now is None:
                raise ValueError("max_age needs now")
            if now - issued > max_age:
                raise LinkTokenError("expired")
        handle = body[_HEADER.size :].decode("ascii")
        return TokenClaims(handle=handle, purpose=Purpose(purpose), issued_at=issued)


def unsubscribe_url(public_url: str, token: str) -> str:
    """`web.public_url` as configured (no trailing slash) + `/unsubscribe/TOKEN`."""
    return f"{public_url.rstrip('/')}/unsubscribe/{token}"


def list_unsubscribe_headers(public_url: str, token: str) -> dict[str, str]:
    """RFC 2369 + RFC 8058 one-click headers for `EmailPayload.headers`."""
    return {
        "List-Unsubscribe": f"<{unsubscribe_url(public_url, token)}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


# -- tokens in email addresses: reply+TOKEN@domain, bounce+TOKEN@domain ----------------------
#
# An address's local part holds at most 64 characters and some mail systems change its
# case, so these tokens are shorter and case-free: lower-case base32 (no padding) of
#
#     version (1) | purpose (1) | a (4) | b (4) | truncated HMAC-SHA256 (10)
#
# = 20 bytes = 32 characters. Reply: a = the member (person in a cohort), b = the hub room.
# Bounce: a:b = the outbox row (its sequence number, 8 bytes), whose lane is the address.
# 80 bits of MAC: a forger can only try tokens one SMTP transaction at a time, each answered
# 550, so 2**80 tries is out of reach. The key is derived with its own label, so no other
# token can ever be read as one of these.

_ADDRESS_VERSION = 1
_ADDRESS_MAC_LEN = 10
_ADDRESS_BODY = struct.Struct(">BBII")
_ADDRESS_KEY_LABEL = b"cohort-hub/address-token/v1"
_ADDRESS_TOKEN = re.compile(r"[a-z2-7]{32}")
_REPLY_CODE = 1
_BOUNCE_CODE = 2


@dataclass(frozen=True, slots=True)
class ReplyClaims:
    member_id: int
    room_pk: int  # hub_room.id: the room a reply is posted in, whatever its Matrix id becomes


class AddressTokenSigner:
    """Signs the tokens in reply and bounce addresses with a key derived from `web.secret`."""

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("web.secret must be set to sign tokens")
        self._key = hmac.new(secret.encode("utf-8"), _ADDRESS_KEY_LABEL, hashlib.sha256).digest()

    def _pack(self, code: int, a: int, b: int) -> str:
        if not (0 <= a < 2**32 and 0 <= b < 2**32):
            raise ValueError("token ids out of range")
        body = _ADDRESS_BODY.pack(_ADDRESS_VERSION, code, a, b)
        mac = hmac.new(self._key, body, hashlib.sha256).digest()[:_ADDRESS_MAC_LEN]
        return base64.b32encode(body + mac).decode("ascii").lower()

    def _unpack(self, token: str, code: int) -> tuple[int, int]:
        token = token.lower() if isinstance(token, str) else ""
        if not _ADDRESS_TOKEN.fullmatch(token):
            raise LinkTokenError("not an address token")
        data = base64.b32decode(token.upper())
        body, mac = data[:_ADDRESS_BODY.size], data[_ADDRESS_BODY.size:]
        expected = hmac.new(self._key, body, hashlib.sha256).digest()[:_ADDRESS_MAC_LEN]
        if not hmac.compare_digest(mac, expected):
            raise LinkTokenError("bad signature")
        version, got, a, b = _ADDRESS_BODY.unpack(body)
        if version != _ADDRESS_VERSION:
            raise LinkTokenError(f"unknown version {version}")
        if got != code:
            raise LinkTokenError("wrong purpose")
        return a, b

    def reply(self, member_id: int, room_pk: int) -> str:
        return self._pack(_REPLY_CODE, member_id, room_pk)

    def verify_reply(self, token: str) -> ReplyClaims:
        member_id, room_pk = self._unpack(token, _REPLY_CODE)
        return ReplyClaims(member_id, room_pk)

    def bounce(self, outbox_seq: int) -> str:
        return self._pack(_BOUNCE_CODE, outbox_seq >> 32, outbox_seq & 0xFFFFFFFF)

    def verify_bounce(self, token: str) -> int:
        """The outbox row (seq) the bounced mail was sent for."""
        high, low = self._unpack(token, _BOUNCE_CODE)
        return (high << 32) | low


def reply_address(token: str, domain: str) -> str:
    return f"reply+{token}@{domain}"


def bounce_address(token: str, domain: str) -> str:
    return f"bounce+{token}@{domain}"


def address_token(address: str, domain: str) -> tuple[str, str] | None:
    """("reply" | "bounce", token) of an address at `domain`; None if it is neither."""
    local, at, host = address.strip().strip("<>").rpartition("@")
    if not at or host.lower() != domain.lower():
        return None
    kind, plus, token = local.partition("+")
    kind = kind.lower()
    if not plus or kind not in ("reply", "bounce"):
        return None
    return kind, token
