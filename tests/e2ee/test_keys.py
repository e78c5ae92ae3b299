"""Room keys that come late or never: a late key is waited for without holding up the room's
other events, and an event that stays undecryptable is told to its sender in the room."""

from __future__ import annotations

import pytest
from mautrix.types import RoomID, SessionID
from nio import EncryptionError, MegolmEvent, ToDeviceError, UnknownToDeviceEvent

from bridge.crypto.olm import OlmCrypto
from tests.conftest import BridgeFactory
from tests.e2ee.conftest import NioFactory
from tests.e2ee.helpers import (
    BOT,
    accept_forwarded_keys,
    encrypted_management_room,
    forward_key,
    key_requests,
    unshared_ciphertext,
    unshared_ciphertexts,
    was_encrypted,
)
from tests.e2ee.nio_user import NioUser
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
    # Two messages in the one session whose key the bridge never got, one in between that
    # decrypts at once.
    session, payloads = await unshared_ciphertexts(alice, room, ["help", "list"])
    await alice.raw.send_event(room, "m.room.encrypted", payloads[0])
    await alice.send_text(room, "ping")
    await alice.raw.send_event(room, "m.room.encrypted", payloads[1])
    await alice.wait_for_body(room, "Pong.", sender=BOT)
    asked = await until(lambda: next((r for r in requests if r.session_id == session.id), None), 45)
    assert asked.sender == BOT and asked.room_id == room
    assert len([r for r in requests if r.session_id == session.id]) == 1, requests
    assert not [e for r, e in alice.events if "login <network>" in str(e.source)]

    await forward_key(alice, room, session.id, BOT, asked.requesting_device_id)
    # Both are bridged late, in the order they were sent.
    await alice.wait_for_body(room, "Logins: none", sender=BOT)
    answers = [
        str(e.source["content"].get("body", ""))
        for r, e in alice.events
        if r == room and e.sender == BOT and e.source.get("type") == "m.room.message"
    ]
    late = [a for a in answers if "login <network>" in a or a.startswith("Logins:")]
    assert len(late) == 2 and "login <network>" in late[0], answers


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


def _readable(user: NioUser, event: MegolmEvent) -> bool:
    try:
        user.client.decrypt_event(event)
    except EncryptionError:
        return False
    return True


async def test_own_new_device_gets_the_bridges_keys(
    make_bridge: BridgeFactory, nio_user: NioFactory
) -> None:
    """A user's new device asks the bot for the key of what the bridge said before it
    existed, and gets it; someone not in the room asks too and is refused."""
    bridge = await make_bridge(encryption={"allow": True})
    assert bridge.crypto is not None
    alice = await nio_user()
    room = await encrypted_management_room(alice)
    await alice.send_text(room, "ping")
    pong = await alice.wait_for_body(room, "Pong.", sender=BOT)
    assert alice.raw is not None
    raw = await alice.raw.get_event(room, pong.event_id)
    old = MegolmEvent.from_dict(raw)
    assert isinstance(old, MegolmEvent), raw

    phone = await nio_user(device_of=alice)
    assert phone.client.device_id != alice.client.device_id
    assert not _readable(phone, old)
    accept_forwarded_keys(phone, BOT)
    ask = old.as_key_request(BOT, phone.client.device_id, device_id=bridge.crypto.device_id)
    assert not isinstance(await phone.client.to_device(ask), ToDeviceError)
    await until(lambda: _readable(phone, old), 45, "the bot's key forwarded to her new device")

    bob = await nio_user()
    withheld: list[UnknownToDeviceEvent] = []

    async def on_to_device(event: UnknownToDeviceEvent) -> None:
        if event.type == "m.room_key.withheld":
            withheld.append(event)

    bob.client.add_to_device_callback(on_to_device, UnknownToDeviceEvent)  # type: ignore[arg-type]
    accept_forwarded_keys(bob, BOT)
    ask = old.as_key_request(BOT, bob.client.device_id, device_id=bridge.crypto.device_id)
    assert not isinstance(await bob.client.to_device(ask), ToDeviceError)
    refusal = await until(lambda: withheld[0] if withheld else None, 45, "a withheld answer")
    assert refusal.source["content"]["code"] == "m.unauthorised"
    assert refusal.source["content"]["session_id"] == old.session_id
    assert not _readable(bob, old)
