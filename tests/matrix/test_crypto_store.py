"""hub.matrix.crypto_store: the hub's own room keys are neither stored nor loaded; others' are.

Real nio Olm machines and real SQLite stores, no homeserver: what nio would keep and load is
read back from the store file itself.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from nio.crypto import Olm, OutboundGroupSession
from nio.store import DefaultStore

from hub.matrix.crypto_store import HubCryptoStore

USER, DEVICE, ROOM = "@hub:example.org", "HUBDEVICE", "!pair:example.org"
PARTICIPANT_CURVE, PARTICIPANT_ED = "Vc" * 21 + "x", "Ed" * 21 + "x"  # 43 characters, as real keys


def _stored(path: Path) -> list[tuple[str, str]]:
    """(sender_key, room_id) of every inbound room key in the store's SQLite file."""
    with sqlite3.connect(path / f"{USER}_{DEVICE}.db") as db:
        return sorted(db.execute("SELECT sender_key, room_id FROM megolminboundsessions").fetchall())


def _participant_session(olm: Olm) -> OutboundGroupSession:
    """A participant's room key, received as nio receives one (m.room_key → create_group_session)."""
    theirs = OutboundGroupSession()
    theirs.shared = True  # sent to the hub's device, as the participant's client does first
    olm.create_group_session(PARTICIPANT_CURVE, PARTICIPANT_ED, ROOM, theirs.id, theirs.session_key)
    return theirs


def test_a_store_plain_nio_wrote_loses_the_hubs_own_keys_at_load_and_keeps_the_participants(
    tmp_path: Path,
) -> None:
    plain = Olm(USER, DEVICE, DefaultStore(USER, DEVICE, str(tmp_path)))
    own_key = plain.account.identity_keys["curve25519"]
    plain.create_outbound_group_session(ROOM)
    plain.create_outbound_group_session("!another:example.org")
    theirs = _participant_session(plain)
    # What nio does, and what grew to 46,024 rows at 5,000 rooms: two own copies, one theirs.
    assert [k for k, _ in _stored(tmp_path)].count(own_key) == 2

    hub = Olm(USER, DEVICE, HubCryptoStore(USER, DEVICE, str(tmp_path)))

    assert hub.account.identity_keys["curve25519"] == own_key  # the same device
    assert _stored(tmp_path) == [(PARTICIPANT_CURVE, ROOM)]
    loaded = list(hub.inbound_group_store)
    assert [(s.sender_key, s.id) for s in loaded] == [(PARTICIPANT_CURVE, theirs.id)]
    # And the kept key still reads what the participant writes.
    kept = hub.inbound_group_store.get(ROOM, PARTICIPANT_CURVE, theirs.id)
    assert kept.decrypt(theirs.encrypt("!hub ping"))[0] == "!hub ping"


def test_the_hubs_new_room_keys_are_neither_stored_nor_kept_in_memory(tmp_path: Path) -> None:
    hub = Olm(USER, DEVICE, HubCryptoStore(USER, DEVICE, str(tmp_path)))  # a new device
    own_key = hub.account.identity_keys["curve25519"]

    hub.create_outbound_group_session(ROOM)
    theirs = _participant_session(hub)

    assert _stored(tmp_path) == [(PARTICIPANT_CURVE, ROOM)]
    assert [s.sender_key for s in hub.inbound_group_store] == [PARTICIPANT_CURVE]
    # The outbound session, which is what reaches the participants, is untouched.
    assert ROOM in hub.outbound_group_sessions
    assert own_key != PARTICIPANT_CURVE

    again = Olm(USER, DEVICE, HubCryptoStore(USER, DEVICE, str(tmp_path)))  # a restart
    assert again.account.identity_keys["curve25519"] == own_key
    assert [(s.sender_key, s.id) for s in again.inbound_group_store] == [(PARTICIPANT_CURVE, theirs.id)]
