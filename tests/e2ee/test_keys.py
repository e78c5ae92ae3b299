"""Room keys that come late or never: a late key is waited for without holding up the room's
other events, and an event that stays undecryptable is told to its sender in the room."""

from __future__ import annotations

import pytest
from mautrix.types import RoomID, SessionID

from bridge.crypto.olm import OlmCrypto
from tests.conftest import BridgeFactory
from tests.e2ee.conftest import NioFactory
from tests.e2ee.helpers import (
    BOT,
    encrypted_management_room,
    forward_key,
    key_requests,
    unshared_ciphertext,
    was_encrypted,
)
from tests.helpers import until


async def test_late_key_waits_aside(
    make_bridge: BridgeFactory, nio_user: NioFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bridge.matrix_to_remote.LATE_KEY_S", 60.0)
    await make_bridge(encryption={"allow": True})
    alice = await nio_user()
    room = await encrypted_management_room(alice)
    assert alice.raw is not None

    session, payload = await unshared_ciphertext(alice, room, "help")
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

    _, payload = await unshared_ciphertext(alice, room, "help")
    await alice.raw.send_event(room, "m.room.encrypted", payload)
    notice = await alice.wait_for_body(room, "could not decrypt your message", sender=BOT)
    body = notice.source["content"]["body"]
    assert alice.user_id in body and "not received the key" in body and "again" in body
    assert await was_encrypted(alice, room, notice.event_id)
    assert not [e for r, e in alice.events if "login <network>" in str(e.source)]


async def test_missing_key_is_requested_from_the_sender(
    make_bridge: BridgeFactory, nio_user: NioFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key never sent to the bridge is asked of the sender's devices; her client
    forwards it (as a client that answers other users' key requests does) and the message is
    bridged late. A key forwarded unasked is not taken."""
    monkeypatch.setattr("bridge.matrix_to_remote.LATE_KEY_S", 60.0)
    await make_bridge(encryption={"allow": True})
    alice = await nio_user()
    room = await encrypted_management_room(alice)
    assert alice.raw is not None
    requests = key_requests(alice)
    session, payload = await unshared_ciphertext(alice, room, "help")
    await alice.raw.send_event(room, "m.room.encrypted", payload)
    asked = await until(lambda: next((r for r in requests if r.session_id == session.id), None), 45)
    assert asked.sender == BOT and asked.room_id == room
    assert not [e for r, e in alice.events if "login <network>" in str(e.source)]

    await forward_key(alice, room, session.id, BOT, asked.requesting_device_id)
    await alice.wait_for_body(room, "login <network>", sender=BOT)


async def test_unasked_forwarded_key_is_not_taken(
    make_bridge: BridgeFactory, nio_user: NioFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bridge.matrix_to_remote.LATE_KEY_S", 60.0)
    monkeypatch.setattr("bridge.crypto.olm.REQUEST_AFTER_S", 60.0)
    bridge = await make_bridge(encryption={"allow": True})
    assert bridge.crypto is not None
    alice = await nio_user()
    room = await encrypted_management_room(alice)
    assert alice.raw is not None
    session, payload = await unshared_ciphertext(alice, room, "help")
    await alice.raw.send_event(room, "m.room.encrypted", payload)
    await forward_key(alice, room, session.id, BOT, bridge.crypto.device_id)
    # The next message's new room key comes after the forwarded one in the bot's to-device
    # inbox: once it is answered, the forwarded key has been handled.
    alice.client.invalidate_outbound_session(room)
    await alice.send_text(room, "ping")
    await alice.wait_for_body(room, "Pong.", sender=BOT)
    assert isinstance(bridge.crypto, OlmCrypto)
    store = bridge.crypto.machine.crypto_store
    assert not await store.has_group_session(RoomID(room), SessionID(session.id))
    assert not [e for r, e in alice.events if "login <network>" in str(e.source)]
