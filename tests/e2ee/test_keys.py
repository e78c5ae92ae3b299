"""Room keys that come late or never: a late key is waited for without holding up the room's
other events, and an event that stays undecryptable is told to its sender in the room."""

from __future__ import annotations

import pytest

from tests.conftest import BridgeFactory
from tests.e2ee.conftest import NioFactory
from tests.e2ee.helpers import BOT, encrypted_management_room, unshared_ciphertext, was_encrypted


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
