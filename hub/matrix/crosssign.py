"""Cross-signing for the hub's own Matrix device.

Why this exists: since MSC4153 ("exclude insecure devices") Element neither
shares room keys with, nor shows messages from, a device its owner has not
cross-signed.  matrix-nio cannot cross-sign, so the hub does it itself here:

1. It owns a cross-signing identity: master, self-signing and user-signing
   Ed25519 key pairs.  The private seeds live in a JSON *key file* (0600, its
   directory 0700 when we create it); nothing here ever logs them.
2. It publishes the public halves with ``POST /keys/device_signing/upload``.
   Synapse accepts the first upload for an account without user-interactive
   auth (UIA); replacing an existing identity needs UIA, which we answer with
   ``m.login.password``.
3. It signs its own device keys, exactly as the server publishes them, with
   the self-signing key (``POST /keys/signatures/upload``).

Everything is idempotent: when the server already shows our master and
self-signing keys and the device already carries our signature, nothing is
uploaded.  When the account has an identity whose private keys we don't hold
(someone set up cross-signing in Element) we refuse to touch it unless the
operator asked for a reset (``reset_cross_signing = true`` under ``[matrix]``).

Key file format (version 1)::

    {"version": 1, "user_id": "@hub:example.org",
     "master": "<seed>", "self_signing": "<seed>", "user_signing": "<seed>"}

Each seed is the 32-byte Ed25519 private key in unpadded standard base64, the
same encoding Element uses for the secrets it keeps in secret storage, so the
keys can be moved to another tool by hand if ever needed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import json
import logging
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import aiohttp
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from hub.errors import CrossSigningError, ForeignCrossSigningIdentity, InvalidTokenError, MatrixError

__all__ = [
    "CrossSigningReport",
    "CrossSigningStatus",
    "canonical_json",
    "check_cross_signing",
    "ensure_cross_signing",
]

log = logging.getLogger(__name__)

KEY_FILE_VERSION: Final = 1
_USAGES: Final = ("master", "self_signing", "user_signing")
_DEVICE_SIGNING_UPLOAD: Final = "/_matrix/client/v3/keys/device_signing/upload"
_SIGNATURES_UPLOAD: Final = "/_matrix/client/v3/keys/signatures/upload"
_KEYS_QUERY: Final = "/_matrix/client/v3/keys/query"
# Long enough for a busy homeserver, short enough that `hub check` never hangs.
_HTTP_TIMEOUT: Final = aiohttp.ClientTimeout(total=30)


class CrossSigningStatus(enum.Enum):
    """Where the hub's device stands, as far as other users' clients can tell."""

    SIGNED = "signed"
    """The hub owns the account's identity and its device is signed by it."""
    NOT_SIGNED = "not_signed"
    """No identity yet, or the device isn't signed yet; `hub run` fixes both."""
    FOREIGN_IDENTITY = "foreign_identity"
    """The account has master/self-signing keys whose private parts we don't hold."""


@dataclass(frozen=True)
class CrossSigningReport:
    """The outcome of a check or an ensure; `message` is a sentence for `hub check`."""

    status: CrossSigningStatus
    master_key: str | None
    message: str
    # What ensure_cross_signing had to send: "device_signing" (public keys) and/or
    # "signatures" (our device's signature). Empty means nothing was uploaded,
    # which is what a restart with the same key file and device must look like.
    uploaded: tuple[str, ...] = field(default=())


# --------------------------------------------------------------------------
# Signing JSON, per the spec appendix "Signing JSON".


def canonical_json(value: Any) -> bytes:
    """Matrix canonical JSON: sorted keys, no insignificant whitespace, UTF-8."""
    return json.dumps(
        value,
        ensure_ascii=False,
        separators=(",", ":"),
        sort_keys=True,
        allow_nan=False,
    ).encode("utf-8")


def _b64encode(data: bytes) -> str:
    # Matrix uses standard base64 *without* padding everywhere.
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    # Accept padded and unpadded input, as the spec asks decoders to.
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _signable(obj: Mapping[str, Any]) -> dict[str, Any]:
    # Signatures cover the object without `signatures` and `unsigned`.
    return {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}


def _public_b64(key: Ed25519PrivateKey) -> str:
    return _b64encode(key.public_key().public_bytes_raw())


def _sign(obj: Mapping[str, Any], user_id: str, key: Ed25519PrivateKey) -> dict[str, Any]:
    """Return a copy of `obj` with our signature added next to any existing ones."""
    signature = _b64encode(key.sign(canonical_json(_signable(obj))))
    signed = dict(obj)
    signed.pop("unsigned", None)
    signatures = {u: dict(s) for u, s in dict(obj.get("signatures") or {}).items()}
    signatures.setdefault(user_id, {})[f"ed25519:{_public_b64(key)}"] = signature
    signed["signatures"] = signatures
    return signed


def _has_valid_signature(obj: Mapping[str, Any], user_id: str, public_key: str) -> bool:
    """True if `obj` carries a valid signature by `public_key` (key id ed25519:<public_key>)."""
    return _verify(obj, user_id, f"ed25519:{public_key}", public_key)


def _verify(obj: Mapping[str, Any], user_id: str, key_id: str, public_key: str) -> bool:
    sigs = obj.get("signatures")
    if not isinstance(sigs, Mapping):
        return False
    by_user = sigs.get(user_id)
    signature = by_user.get(key_id) if isinstance(by_user, Mapping) else None
    if not isinstance(signature, str):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(_b64decode(public_key)).verify(
            _b64decode(signature), canonical_json(_signable(obj))
        )
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


# --------------------------------------------------------------------------
# The key triple and its file.


class _KeyTriple:
    """The hub's three cross-signing private keys. repr() shows public keys only."""

    __slots__ = ("master", "self_signing", "user_signing")

    def __init__(
        self,
        master: Ed25519PrivateKey,
        self_signing: Ed25519PrivateKey,
        user_signing: Ed25519PrivateKey,
    ) -> None:
        self.master = master
        self.self_signing = self_signing
        self.user_signing = user_signing

    @classmethod
    def generate(cls) -> _KeyTriple:
        return cls(
            Ed25519PrivateKey.generate(),
            Ed25519PrivateKey.generate(),
            Ed25519PrivateKey.generate(),
        )

    @property
    def master_public(self) -> str:
        return _public_b64(self.master)

    @property
    def self_signing_public(self) -> str:
        return _public_b64(self.self_signing)

    def key(self, usage: str) -> Ed25519PrivateKey:
        return {
            "master": self.master,
            "self_signing": self.self_signing,
            "user_signing": self.user_signing,
        }[usage]

    def __repr__(self) -> str:
        return f"<cross-signing keys master={self.master_public}>"

    def upload_body(self, user_id: str) -> dict[str, Any]:
        """The body of /keys/device_signing/upload: public keys, sub-keys signed by master."""
        body: dict[str, Any] = {}
        for usage in _USAGES:
            public = _public_b64(self.key(usage))
            obj: dict[str, Any] = {
                "user_id": user_id,
                "usage": [usage],
                "keys": {f"ed25519:{public}": public},
            }
            if usage != "master":
                obj = _sign(obj, user_id, self.master)
            body[f"{usage}_key"] = obj
        return body


def _load_key_file(path: Path, user_id: str) -> _KeyTriple | None:
    """Read our private keys; None when the file doesn't exist yet."""
    try:
        raw = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CrossSigningError(f"{path}: cannot read the cross-signing key file: {e.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        # Someone copied it around with a loose umask; private keys must stay private.
        log.warning("%s: was readable by others; restricting it to its owner", path)
        with contextlib.suppress(OSError):
            path.chmod(0o600)
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("version") != KEY_FILE_VERSION:
            raise ValueError(f"expected version {KEY_FILE_VERSION}")
        owner = data.get("user_id")
        seeds = [_b64decode(str(data[usage])) for usage in _USAGES]
        keys = _KeyTriple(*(Ed25519PrivateKey.from_private_bytes(s) for s in seeds))
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        # Deliberately no detail from the content: it holds private keys.
        raise CrossSigningError(
            f"{path}: not a valid cross-signing key file ({type(e).__name__}); "
            f"restore it from a backup, or move it away and reset cross-signing"
        ) from None
    if owner != user_id:
        raise CrossSigningError(
            f"{path}: holds the cross-signing keys of {owner}, not of {user_id}; "
            f"point the hub at the right data_dir or move the file away"
        )
    return keys


def _write_key_file(path: Path, user_id: str, keys: _KeyTriple) -> None:
    """Atomically write the key file, owner-only from the first byte."""
    parent = path.parent
    if not parent.exists():
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = {"version": KEY_FILE_VERSION, "user_id": user_id}
    for usage in _USAGES:
        data[usage] = _b64encode(keys.key(usage).private_bytes_raw())
    # mkstemp creates the file 0600, so the keys are never readable by others,
    # not even for the moment between creating and renaming.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # The rename must survive a crash too, or a restart would find no keys and
    # take the identity it just uploaded for a foreign one.
    with contextlib.suppress(OSError):
        dir_fd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# --------------------------------------------------------------------------
# The homeserver.


@dataclass(frozen=True)
class _ServerState:
    """What /keys/query says about our account and device."""

    master: Mapping[str, Any] | None
    self_signing: Mapping[str, Any] | None
    device: Mapping[str, Any] | None

    @property
    def master_public(self) -> str | None:
        return _single_key(self.master)

    @property
    def self_signing_public(self) -> str | None:
        return _single_key(self.self_signing)


def _single_key(obj: Mapping[str, Any] | None) -> str | None:
    # A cross-signing key object has exactly one "ed25519:<key>": "<key>" entry.
    if obj is None:
        return None
    keys = obj.get("keys")
    if not isinstance(keys, Mapping):
        return None
    for value in keys.values():
        if isinstance(value, str):
            return value
    return None


class _Api:
    """A thin aiohttp wrapper: JSON in, (status, JSON) out, errors made readable."""

    def __init__(self, homeserver: str, access_token: str) -> None:
        self._base = homeserver.rstrip("/")
        self._headers = {"Authorization": f"Bearer {access_token}"}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> _Api:
        self._session = aiohttp.ClientSession(timeout=_HTTP_TIMEOUT, headers=self._headers)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def post(self, path: str, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        assert self._session is not None
        try:
            async with self._session.post(self._base + path, json=body) as resp:
                try:
                    data = await resp.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    data = None
                return resp.status, data if isinstance(data, dict) else {}
        except (aiohttp.ClientError, TimeoutError) as e:
            raise CrossSigningError(
                f"cannot reach {self._base} for cross-signing: {type(e).__name__}: {e}"
            ) from None

    async def query(self, user_id: str, device_id: str) -> _ServerState:
        status, data = await self.post(_KEYS_QUERY, {"device_keys": {user_id: [device_id]}})
        if status != 200:
            raise _http_error("querying the account's keys", status, data)

        def pick(section: str) -> Mapping[str, Any] | None:
            value = (data.get(section) or {}).get(user_id)
            return value if isinstance(value, Mapping) else None

        device = ((data.get("device_keys") or {}).get(user_id) or {}).get(device_id)
        return _ServerState(
            master=pick("master_keys"),
            self_signing=pick("self_signing_keys"),
            device=device if isinstance(device, Mapping) else None,
        )


def _http_error(what: str, status: int, data: Mapping[str, Any]) -> MatrixError:
    errcode = data.get("errcode", "no errcode")
    error = data.get("error", "")
    message = f"{what} failed: HTTP {status} {errcode} {error}".rstrip()
    if errcode == "M_UNKNOWN_TOKEN":
        # The same class the rest of the hub raises for a revoked token, so the
        # caller's "log in again" handling applies here too.
        return InvalidTokenError(message)
    return CrossSigningError(message)


async def _upload_identity(api: _Api, user_id: str, keys: _KeyTriple, password: str | None) -> None:
    """Publish the public keys, answering the server's UIA with the password if asked."""
    body = keys.upload_body(user_id)
    status, data = await api.post(_DEVICE_SIGNING_UPLOAD, body)
    if status == 200:
        return
    if status != 401 or "flows" not in data:
        raise _http_error("uploading cross-signing keys", status, data)
    # 401 with flows: user-interactive auth. Synapse skips it for an account's
    # first identity and asks for it when replacing one.
    flows = [f.get("stages", []) for f in data.get("flows", []) if isinstance(f, Mapping)]
    if ["m.login.password"] not in flows:
        reset_url = (data.get("params") or {}).get("org.matrix.cross_signing_reset", {}).get("url")
        hint = f" Approve the reset at {reset_url} and start the hub again." if reset_url else ""
        raise CrossSigningError(
            f"the homeserver wants {flows} to replace {user_id}'s cross-signing keys, "
            f"but the hub can only authenticate with a password.{hint}"
        )
    if not password:
        raise CrossSigningError(
            f"the homeserver asks for {user_id}'s password to replace its cross-signing "
            f"keys; set `password` under [matrix]"
        )
    body["auth"] = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user_id},
        "password": password,
        "session": data.get("session"),
    }
    status, data = await api.post(_DEVICE_SIGNING_UPLOAD, body)
    if status == 200:
        return
    if status == 401:
        # Wrong password: the server answers 401 again, with M_FORBIDDEN.
        raise CrossSigningError(
            f"the homeserver rejected the password for {user_id} while replacing its "
            f"cross-signing keys ({data.get('errcode', 'no errcode')}); check [matrix] password"
        )
    raise _http_error("uploading cross-signing keys", status, data)


# --------------------------------------------------------------------------
# Assessment, shared by check and ensure.


def _identity_is_ours(state: _ServerState, keys: _KeyTriple | None) -> bool:
    return (
        keys is not None
        and state.master_public == keys.master_public
        and state.self_signing_public == keys.self_signing_public
    )


def _device_is_signed(state: _ServerState, user_id: str, keys: _KeyTriple) -> bool:
    return state.device is not None and _has_valid_signature(state.device, user_id, keys.self_signing_public)


def _check_device(
    state: _ServerState,
    user_id: str,
    device_id: str,
    device_ed25519: str,
    device_keys: Mapping[str, Any] | None,
) -> Mapping[str, Any]:
    """Return the server's copy of our device keys, after making sure they are ours.

    We are about to vouch for these keys to everyone the hub talks to, so we
    only sign an object that carries the local Olm account's Ed25519 key and is
    self-signed by it: a confused or hostile server cannot get us to sign keys
    it made up.
    """
    device = state.device
    if device is None:
        raise CrossSigningError(
            f"device {device_id} of {user_id} has not published its encryption keys yet; "
            f"upload them (nio: AsyncClient.keys_upload) before cross-signing it"
        )
    published = (device.get("keys") or {}).get(f"ed25519:{device_id}")
    if published != device_ed25519:
        raise CrossSigningError(
            f"the homeserver publishes Ed25519 key {published} for device {device_id}, "
            f"but the hub's crypto store has {device_ed25519}; the store does not belong "
            f"to this device (log in again with a fresh data_dir)"
        )
    if not _verify(device, user_id, f"ed25519:{device_id}", device_ed25519):
        raise CrossSigningError(
            f"the device keys the homeserver publishes for {device_id} are not signed by "
            f"the device itself; refusing to cross-sign them"
        )
    if device_keys is not None:
        ours = device_keys.get("keys") or {}
        theirs = device.get("keys") or {}
        if any(theirs.get(k) != v for k, v in ours.items()):
            raise CrossSigningError(
                f"the homeserver's copy of device {device_id}'s keys differs from the "
                f"hub's own; refusing to cross-sign them"
            )
    return device


def _assess(
    state: _ServerState, keys: _KeyTriple | None, user_id: str, device_id: str, key_file: Path
) -> CrossSigningReport:
    master = state.master_public
    if master is None:
        return CrossSigningReport(
            CrossSigningStatus.NOT_SIGNED,
            None,
            f"{user_id} has no cross-signing identity yet: device {device_id} is not "
            f"cross-signed, so Element users will not see its encrypted messages; "
            f"`hub run` sets it up",
        )
    if keys is None or not _identity_is_ours(state, keys):
        return CrossSigningReport(
            CrossSigningStatus.FOREIGN_IDENTITY,
            master,
            str(ForeignCrossSigningIdentity(user_id, master, key_file)),
        )
    if state.device is None:
        return CrossSigningReport(
            CrossSigningStatus.NOT_SIGNED,
            master,
            f"device {device_id} of {user_id} has not published its encryption keys "
            f"yet, so it is not cross-signed; `hub run` publishes and signs them",
        )
    if not _device_is_signed(state, user_id, keys):
        return CrossSigningReport(
            CrossSigningStatus.NOT_SIGNED,
            master,
            f"device {device_id} is not cross-signed yet (the hub holds {user_id}'s "
            f"identity, master key {master}); `hub run` signs it",
        )
    return CrossSigningReport(
        CrossSigningStatus.SIGNED,
        master,
        f"device {device_id} is cross-signed by {user_id}'s identity (master key {master})",
    )


# --------------------------------------------------------------------------
# Public entry points.


async def check_cross_signing(
    homeserver: str, access_token: str, user_id: str, device_id: str, key_file: Path
) -> CrossSigningReport:
    """Report the device's cross-signing state without changing anything.

    Raises CrossSigningError only when the state cannot be determined (server
    unreachable or erroring, unreadable key file), InvalidTokenError when the
    access token is no longer valid; every state of the account itself is a
    report.
    """
    keys = _load_key_file(key_file, user_id)
    async with _Api(homeserver, access_token) as api:
        state = await api.query(user_id, device_id)
    return _assess(state, keys, user_id, device_id, key_file)


async def ensure_cross_signing(
    homeserver: str,
    access_token: str,
    user_id: str,
    device_id: str,
    device_ed25519: str,
    device_keys: Mapping[str, Any] | None,
    key_file: Path,
    *,
    password: str | None,
    reset: bool = False,
) -> CrossSigningReport:
    """Make sure the account has an identity the hub owns and the device is signed by it.

    `device_ed25519` is the device's own Ed25519 key from the local crypto
    store; `device_keys` is optionally the device-keys object the hub
    uploaded, used only as a cross-check of the server's copy (the object that
    gets signed is always the server's, because Synapse verifies a signature
    against the keys it stored).  The device keys must already be uploaded.

    `reset` replaces a foreign identity (needs `password` on Synapse); it does
    nothing when the identity is already ours, so leaving it on is harmless.

    Raises ForeignCrossSigningIdentity when someone else's identity is in the
    way and `reset` is False, InvalidTokenError when the access token is no
    longer valid, CrossSigningError on any other failure.
    """
    keys = _load_key_file(key_file, user_id)
    uploaded: list[str] = []
    async with _Api(homeserver, access_token) as api:
        state = await api.query(user_id, device_id)
        master = state.master_public
        if master is None or not _identity_is_ours(state, keys):
            if master is not None:
                if not reset:
                    raise ForeignCrossSigningIdentity(user_id, master, key_file)
                log.warning(
                    "replacing the cross-signing identity of %s (master key %s) because "
                    "reset_cross_signing is set",
                    user_id,
                    master,
                )
                keys = None  # never reuse keys the server has already seen replaced
            if keys is None:
                keys = _KeyTriple.generate()
                # Written before the upload: if we crashed after uploading but
                # before saving, the account would be locked behind an identity
                # nobody holds.  A failed upload just leaves unused keys behind.
                _write_key_file(key_file, user_id, keys)
            await _upload_identity(api, user_id, keys, password)
            uploaded.append("device_signing")
            log.info(
                "published cross-signing identity of %s (master key %s)",
                user_id,
                keys.master_public,
            )
            state = await api.query(user_id, device_id)
            if not _identity_is_ours(state, keys):
                raise CrossSigningError(
                    f"the homeserver accepted {user_id}'s cross-signing keys but does not "
                    f"publish them; try again"
                )
        assert keys is not None
        device = _check_device(state, user_id, device_id, device_ed25519, device_keys)
        if not _device_is_signed(state, user_id, keys):
            signed = _sign(device, user_id, keys.self_signing)
            status, data = await api.post(_SIGNATURES_UPLOAD, {user_id: {device_id: signed}})
            if status != 200:
                raise _http_error(f"uploading the signature of device {device_id}", status, data)
            failures = data.get("failures") or {}
            if failures:
                raise CrossSigningError(
                    f"the homeserver refused the signature of device {device_id}: "
                    f"{json.dumps(failures, sort_keys=True)}"
                )
            uploaded.append("signatures")
            log.info("cross-signed device %s of %s", device_id, user_id)
            state = await api.query(user_id, device_id)
    report = _assess(state, keys, user_id, device_id, key_file)
    if report.status is not CrossSigningStatus.SIGNED:
        raise CrossSigningError(f"cross-signing did not take effect: {report.message}")
    return CrossSigningReport(report.status, report.master_key, report.message, tuple(uploaded))
