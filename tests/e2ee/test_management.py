"""The management room, encrypted: a Matrix user with a real E2EE client opens an encrypted
DM with the bot; the bot's device decrypts her commands and encrypts its answers."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from mautrix.api import Method, Path

from bridge.crypto.olm import OlmCrypto
from tests.conftest import BridgeFactory
from tests.e2ee.conftest import NioFactory
from tests.e2ee.helpers import encrypted_management_room, was_encrypted
from tests.helpers import until

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


async def test_events_before_the_device_is_ready_wait_for_it(
    make_bridge: BridgeFactory, nio_user: NioFactory, as_port: int, monkeypatch: Any
) -> None:
    """Transactions come in as soon as the bridge listens, before its device is set up: their
    encrypted events wait for it (and nothing is answered in clear meanwhile). The homeserver's
    retry of a transaction it could not deliver while the bridge was down carries events only,
    nothing for the device: it is handled at once."""
    bridge = await make_bridge(encryption={"allow": True})
    alice = await nio_user()
    room = await encrypted_management_room(alice)
    await alice.send_text(room, "ping")  # her room key reaches the bridge now
    await alice.wait_for_body(room, "Pong.", sender=BOT)
    await bridge.stop()
    sent = await alice.send_text(room, "help")  # while the bridge is down

    gate = asyncio.Event()
    original = OlmCrypto.start

    async def held_start(self: OlmCrypto) -> None:
        await gate.wait()
        await original(self)

    monkeypatch.setattr(OlmCrypto, "start", held_start)
    starting = asyncio.create_task(make_bridge(encryption={"allow": True}))

    async def listening() -> bool:
        try:
            async with (
                aiohttp.ClientSession() as s,
                s.get(f"http://127.0.0.1:{as_port}/_matrix/mau/live") as r,
            ):
                return r.status == 200
        except aiohttp.ClientError:
            return False

    await until(listening)
    await asyncio.sleep(4)  # the homeserver retries (after 2 s) and the event waits
    assert not starting.done()
    gate.set()
    await starting
    answer = await alice.wait_for_body(room, "login <network>", sender=BOT)
    assert await was_encrypted(alice, room, answer.event_id)
    await asyncio.sleep(2)
    answers = [e for r, e in alice.events if r == room and "login <network>" in str(e.source)]
    assert len(answers) == 1, f"{sent} answered {len(answers)} times"


async def test_device_deleted_on_the_homeserver_is_published_again(
    make_bridge: BridgeFactory, nio_user: NioFactory
) -> None:
    bridge = await make_bridge(encryption={"allow": True})
    assert bridge.crypto is not None
    device = bridge.crypto.device_id
    # Deleted with its keys (the appservice may, without authentication steps).
    await bridge.hs.request(Method.DELETE, Path.v3.devices[device], {})
    await bridge.stop()

    again = await make_bridge(encryption={"allow": True})
    assert again.crypto is not None and again.crypto.device_id == device
    bob = await nio_user()
    room = await encrypted_management_room(bob)
    await bob.send_text(room, "help")
    await bob.wait_for_body(room, "login <network>", sender=BOT)
