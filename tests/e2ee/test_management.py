"""The management room, encrypted: a Matrix user with a real E2EE client opens an encrypted
DM with the bot; the bot's device decrypts her commands and encrypts its answers."""

from __future__ import annotations

from tests.conftest import BridgeFactory
from tests.e2ee.conftest import NioFactory

BOT = "@mimibot:localhost"


async def test_encrypted_dm_with_the_bot(
    make_bridge: BridgeFactory, nio_user: NioFactory, database_url: str
) -> None:
    """On both databases: the crypto store lives in the bridge's own."""
    bridge = await make_bridge(database=database_url, encryption={"allow": True})
    assert bridge.crypto is not None and bridge.crypto.device_id
    alice = await nio_user()
    room = await alice.create_encrypted_room(invite=[BOT], is_direct=True)

    welcome = await alice.wait_for_body(room, "management room", sender=BOT)
    assert alice.raw is not None
    assert (await alice.raw.get_event(room, welcome.event_id))["type"] == "m.room.encrypted"

    await alice.wait_member(room, BOT)
    sent = await alice.send_text(room, "help")
    assert (await alice.raw.get_event(room, sent))["type"] == "m.room.encrypted"
    answer = await alice.wait_for_body(room, "login <network>", sender=BOT)
    assert (await alice.raw.get_event(room, answer.event_id))["type"] == "m.room.encrypted"

    # After a restart the same device, with its keys from the database, reads her messages.
    device = bridge.crypto.device_id
    await bridge.stop()
    again = await make_bridge(database=database_url, encryption={"allow": True})
    assert again.crypto is not None and again.crypto.device_id == device
    await alice.send_text(room, "ping")
    await alice.wait_for_body(room, "Pong.", sender=BOT)
