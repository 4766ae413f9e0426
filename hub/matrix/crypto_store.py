"""nio's crypto store for the hub: the hub's own room keys are neither kept nor loaded.

nio keeps an inbound copy of every megolm session its device makes, so that the client can
read its own encrypted messages, writes each copy to its SQLite store (synchronously, on the
event loop) and loads every stored copy into memory at start. Neither use applies here:

- the hub never reads its own messages: its sync filter leaves them out (`hub.matrix.sync`);
- nio re-shares a room key only with the account's *own* other devices (a participant's
  room-key request is never answered), and the hub's account has one device.

But nio keeps no outbound session across a restart, so the first message to each room after a
start makes a new session, and so does every week (sessions rotate). At 5,000 pair rooms each
fan-out after a restart stored 5,000 more copies, all loaded at every start: after nine, 46,024
copies (69 MB), start to first answer 3.3 → 9.3 s, idle RSS +86 MB (issue 17). The hub's sessions
still reach everyone exactly as before: sharing uses the outbound session, which nio keeps in
memory for as long as it is used.

Keys from participants' devices are kept as nio keeps them: the hub needs them to read what
people write, also after a restart.
"""

from __future__ import annotations

import logging
from typing import Any

from nio.crypto import InboundGroupSession, OlmAccount
from nio.crypto.memorystores import GroupSessionStore
from nio.store import DefaultStore
from nio.store.models import MegolmInboundSessions

__all__ = ["HubCryptoStore", "OthersRoomKeys"]

log = logging.getLogger(__name__)


class OthersRoomKeys(GroupSessionStore):  # type: ignore[misc]  # nio is untyped
    """nio's in-memory room keys, minus the ones this device made (never read, see above)."""

    def __init__(self, own_key: str | None) -> None:
        super().__init__()
        self.own_key = own_key

    def add(self, session: InboundGroupSession) -> bool:
        if session.sender_key == self.own_key:
            return False
        return bool(super().add(session))


class HubCryptoStore(DefaultStore):  # type: ignore[misc]  # nio is untyped
    """`DefaultStore` that drops the device's own inbound room keys (module docstring)."""

    own_key: str | None = None  # this device's Curve25519 identity key, once the account is known
    _account_row: Any = None

    def _get_account(self) -> Any:
        # nio looks its account's row up again before every write (each room key, Olm session
        # and device list it saves): 5 % of the hub's event loop in a 5,000-room fan-out. Only
        # the row's id is used then; `load_account`, which reads its columns, reads it afresh.
        if self._account_row is None:
            self._account_row = super()._get_account()
        return self._account_row

    def load_account(self) -> OlmAccount | None:
        self._account_row = None
        account = super().load_account()
        if account is not None:
            self.own_key = account.identity_keys["curve25519"]
        return account

    def save_account(self, account: OlmAccount) -> None:
        self.own_key = account.identity_keys["curve25519"]
        super().save_account(account)

    def save_inbound_group_session(self, session: InboundGroupSession) -> None:
        if session.sender_key == self.own_key:
            return
        super().save_inbound_group_session(session)

    def load_inbound_group_sessions(self) -> GroupSessionStore:
        # A store written before this class (or by plain nio) holds the copies: gone here, once.
        dropped = self._drop_own_sessions()
        if dropped:
            log.info("dropped %d stored copies of the hub's own room keys (never read)", dropped)
        keys = OthersRoomKeys(self.own_key)
        for session in super().load_inbound_group_sessions():
            keys.add(session)
        return keys

    def _drop_own_sessions(self) -> int:
        if self.own_key is None:
            return 0
        account: Any = self._get_account()
        if account is None:
            return 0
        table = MegolmInboundSessions
        mine = (table.account == account) & (table.sender_key == self.own_key)
        with self.database.bind_ctx(self.models):  # what nio's own methods do (`use_database`)
            return int(table.delete().where(mine).execute())
