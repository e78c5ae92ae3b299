"""Group sessions of the bot's device rotate on the room's settings (``rotation_period_msgs``
of ``m.room.encryption``), also when they change after the room was made."""

from __future__ import annotations

from typing import Any

from tests.conftest import BridgeFactory
from tests.e2ee.conftest import NioFactory
from tests.e2ee.helpers import encrypted_portal
from tests.helpers import until

BOB = "@testnet_bob:localhost"


async def test_ghost_messages_rotate_on_the_rooms_settings(
    make_bridge: BridgeFactory, nio_user: NioFactory
) -> None:
    bridge = await make_bridge(encryption={"allow": True, "default": True})
    alice = await nio_user()
    room = await encrypted_portal(alice, "#e2ee-rotation")
    assert alice.raw is not None
    tn: Any = bridge.connectors["testnet"]

    async def session_of(text: str) -> str:
        await tn.remote_message("#e2ee-rotation", "bob", text)
        evt = await alice.wait_for_body(room, text, sender=BOB)
        assert alice.raw is not None
        raw = await alice.raw.get_event(room, evt.event_id)
        assert raw["type"] == "m.room.encrypted"
        return str(raw["content"]["session_id"])

    before = await session_of("before the change")
    settings = {"algorithm": "m.megolm.v1.aes-sha2", "rotation_period_msgs": 2}
    await bridge.hs.send_state(room, "m.room.encryption", settings)
    crypto: Any = bridge.crypto
    await until(lambda: (crypto.rooms.content(room) or {}) == settings, 30)

    sessions = [await session_of(f"message {i}") for i in range(5)]
    # A session under the new settings, then a new one after every 2 messages.
    assert sessions[0] != before
    assert sessions[0] == sessions[1] != sessions[2] == sessions[3] != sessions[4], sessions
    assert len(set(sessions)) == 3
