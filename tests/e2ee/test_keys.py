"""Room keys that come late or never: a late key is waited for without holding up the room's
other events, and an event that stays undecryptable is told to its sender in the room."""

from __future__ import annotations

from typing import Any

import pytest
from nio.crypto.sessions import OutboundGroupSession

from tests.conftest import BridgeFactory
from tests.e2ee.conftest import NioFactory
from tests.e2ee.helpers import BOT, encrypted_management_room, was_encrypted
from tests.e2ee.nio_user import NioUser


async def _unshared_ciphertext(user: NioUser, room: str, body: str) -> tuple[Any, dict[str, Any]]:
    """Encrypt with a fresh group session whose key nobody got; the client's next message
    starts another session (shared as usual). Returned: a copy of the session from before
    the encryption, whose key (sharing it exports the current index) decrypts the message."""
    olm: Any = user.client.olm
    await user.client.joined_members(room)  # nio encrypts only for a room it knows in full
    user.client.invalidate_outbound_session(room)
    olm.create_outbound_group_session(room)
    session = olm.outbound_group_sessions[room]
    unused = OutboundGroupSession.from_pickle(session.pickle("copy"), "copy")
    session.shared = True  # lets the client encrypt with it
    _, payload = user.client.encrypt(room, "m.room.message", {"msgtype": "m.text", "body": body})
    olm.outbound_group_sessions.pop(room)
    return unused, payload


async def test_late_key_waits_aside(
    make_bridge: BridgeFactory, nio_user: NioFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bridge.matrix_to_remote.LATE_KEY_S", 60.0)
    await make_bridge(encryption={"allow": True})
    alice = await nio_user()
    room = await encrypted_management_room(alice)
    assert alice.raw is not None

    session, payload = await _unshared_ciphertext(alice, room, "help")
    await alice.raw.send_event(room, "m.room.encrypted", payload)
    # The room's next message is answered while the first one waits for its key.
    await alice.send_text(room, "ping")
    await alice.wait_for_body(room, "Pong.", sender=BOT)
    assert not [e for r, e in alice.events if "login <network>" in str(e.source)]

    # Its key arrives: the waiting message is handled.
    alice.client.olm.outbound_group_sessions[room] = session  # type: ignore[union-attr]
    await alice.client.share_group_session(room, ignore_unverified_devices=True)
    await alice.wait_for_body(room, "login <network>", sender=BOT)


async def test_undecryptable_event_is_told(
    make_bridge: BridgeFactory, nio_user: NioFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bridge.matrix_to_remote.LATE_KEY_S", 2.0)
    await make_bridge(encryption={"allow": True})
    alice = await nio_user()
    room = await encrypted_management_room(alice)
    assert alice.raw is not None

    _, payload = await _unshared_ciphertext(alice, room, "help")
    await alice.raw.send_event(room, "m.room.encrypted", payload)
    notice = await alice.wait_for_body(room, "could not decrypt your message", sender=BOT)
    body = notice.source["content"]["body"]
    assert alice.user_id in body and "not received the key" in body and "again" in body
    assert await was_encrypted(alice, room, notice.event_id)
    assert not [e for r, e in alice.events if "login <network>" in str(e.source)]
