"""bridge.encryption.require: rooms that are not encrypted are not bridged. Linking one is
refused; a portal left from before is encrypted by the bot at start-up where it may, and
where it may not, nothing crosses either way and the room is told why, once; new portals are
encrypted."""

from __future__ import annotations

from typing import Any

from bridge.crypto.olm import OlmCrypto
from tests.conftest import BridgeFactory
from tests.e2ee.conftest import NioFactory
from tests.e2ee.helpers import BOT, encrypted_portal, was_encrypted
from tests.harness.ports import free_port
from tests.harness.synapse import SynapseServer
from tests.helpers import command, management_room, new_user, sent, until

ENC = {"allow": True, "require": True}


def _body(e: dict[str, Any]) -> str:
    return str(e["content"].get("body", ""))


async def test_unencrypted_rooms_are_refused(
    make_bridge: BridgeFactory, synapse: SynapseServer
) -> None:
    bridge = await make_bridge(encryption={"allow": True})
    ivy = new_user(synapse)
    mgmt = await management_room(ivy)
    await command(ivy, mgmt, "login testnet ivy-remote", "Logged in")
    # A room of hers, linked before encryption was required, where the bot may not turn
    # encryption on (that takes power level 100).
    old = await ivy.create_room(invite=[BOT], power_level_content_override={"users": {BOT: 50}})
    await until(lambda: bridge.hs.is_joined(old, BOT))
    await ivy.send_text(old, "!mimi link testnet #old")
    await ivy.wait_for_event(old, lambda e: _body(e).startswith("Linked"))
    await ivy.send_text(old, "before")
    await until(sent(bridge, "message", text="before"))
    await bridge.stop()

    bridge = await make_bridge(encryption=ENC, metrics_port=free_port())  # counts failures
    startup = await ivy.wait_for_event(old, lambda e: "nothing is bridged" in _body(e), 45)
    assert startup["sender"] == BOT and "either way" in _body(startup)
    assert not await ivy.get_state(old, "m.room.encryption", "")
    # Remote messages do not reach the room either; the room is not told again.
    tn: Any = bridge.connectors["testnet"]
    await tn.remote_message("#old", "bob", "from remote 1")
    await tn.remote_message("#old", "bob", "from remote 2")
    labels = {"network": "testnet", "direction": "remote_to_matrix", "reason": "not_allowed"}
    await until(
        lambda: bridge.metrics.registry.get_sample_value("mimi_messages_failed_total", labels) == 2,
        45,
    )
    # The management room works unencrypted: it bridges nothing.
    await command(ivy, mgmt, "ping", "Pong.")
    await ivy.send_text(old, "after")
    told = await ivy.wait_for_event(old, lambda e: "only encrypted rooms" in _body(e), 45)
    assert told["sender"] == BOT and ivy.user_id in _body(told)
    assert not sent(bridge, "message", text="after")()
    bodies = [_body(e) for e in await ivy.messages(old)]
    assert not [b for b in bodies if "from remote" in b], bodies
    assert len([b for b in bodies if "nothing is bridged" in b]) == 1, bodies
    await bridge.stop()
    bridge = await make_bridge(encryption=ENC)
    await command(ivy, mgmt, "ping", "Pong.")
    bodies = [_body(e) for e in await ivy.messages(old)]
    assert len([b for b in bodies if "nothing is bridged" in b]) == 1, bodies
    # Encryption turned on by her (an admin there): remote messages reach the room again,
    # encrypted.
    await ivy.send_state(old, "m.room.encryption", "", {"algorithm": "m.megolm.v1.aes-sha2"})
    crypto = bridge.crypto
    assert isinstance(crypto, OlmCrypto)
    await until(lambda: crypto.rooms.known(old) is True, 45)  # its state event came in
    tn = bridge.connectors["testnet"]
    await tn.remote_message("#old", "bob", "from remote 3")  # type: ignore[attr-defined]
    came = await ivy.wait_for_event(
        old,
        lambda e: e["type"] == "m.room.encrypted" and e["sender"] == "@testnet_bob:localhost",
        45,
    )
    assert came["content"]["algorithm"] == "m.megolm.v1.aes-sha2"

    room = await ivy.create_room(invite=[BOT], power_level_content_override={"users": {BOT: 100}})
    await until(lambda: bridge.hs.is_joined(room, BOT))
    await ivy.send_text(room, "!mimi link testnet #plumbed")
    await ivy.wait_for_event(room, lambda e: "only encrypted rooms" in _body(e))
    assert await bridge.portal_store.by_room(room) is None
    await ivy.close()


async def test_new_portals_are_encrypted(make_bridge: BridgeFactory, nio_user: NioFactory) -> None:
    bridge = await make_bridge(encryption=ENC)
    alice = await nio_user()
    room = await encrypted_portal(alice, "#e2ee-required")
    assert alice.raw is not None
    assert await alice.raw.get_state(room, "m.room.encryption", "")
    await alice.send_text(room, "secret")
    await until(sent(bridge, "message", text="secret"), 45)


async def test_old_portals_are_encrypted_at_start(
    make_bridge: BridgeFactory, nio_user: NioFactory
) -> None:
    bridge = await make_bridge(encryption={"allow": True})
    alice = await nio_user()
    room = await encrypted_portal(alice, "#e2ee-was-plain")
    # encrypted_portal's management room is encrypted; the portal made then is not.
    assert alice.raw is not None
    assert not await alice.raw.get_state(room, "m.room.encryption", "")
    await bridge.stop()

    bridge = await make_bridge(encryption=ENC)
    assert await alice.raw.get_state(room, "m.room.encryption", "")
    tn: Any = bridge.connectors["testnet"]
    await tn.remote_message("#e2ee-was-plain", "bob", "now encrypted")
    evt = await alice.wait_for_body(room, "now encrypted", sender="@testnet_bob:localhost")
    assert await was_encrypted(alice, room, evt.event_id)
    await alice.send_text(room, "mine too")
    await until(sent(bridge, "message", text="mine too"), 45)


async def test_unencrypted_message_in_an_encrypted_portal_is_refused(
    make_bridge: BridgeFactory, nio_user: NioFactory
) -> None:
    bridge = await make_bridge(encryption=ENC)
    alice = await nio_user()
    room = await encrypted_portal(alice, "#e2ee-plain-in-encrypted")
    assert alice.raw is not None
    await alice.raw.send_text(room, "in clear")
    told = await alice.wait_for_body(room, "sent unencrypted", sender=BOT)
    assert alice.user_id in told.source["content"]["body"]
    assert await was_encrypted(alice, room, told.event_id)
    await alice.send_text(room, "encrypted after")
    await until(sent(bridge, "message", text="encrypted after"), 45)
    assert not sent(bridge, "message", text="in clear")()


async def test_refused_portal_is_encrypted_once_the_bot_may(
    make_bridge: BridgeFactory, synapse: SynapseServer
) -> None:
    bridge = await make_bridge(encryption={"allow": True})
    ivy = new_user(synapse)
    mgmt = await management_room(ivy)
    await command(ivy, mgmt, "login testnet ivy-remote", "Logged in")
    room = await ivy.create_room(invite=[BOT], power_level_content_override={"users": {BOT: 50}})
    await until(lambda: bridge.hs.is_joined(room, BOT))
    await ivy.send_text(room, "!mimi link testnet #raised")
    await ivy.wait_for_event(room, lambda e: _body(e).startswith("Linked"))
    await bridge.stop()

    await make_bridge(encryption=ENC)
    await ivy.wait_for_event(room, lambda e: "nothing is bridged" in _body(e), 45)
    levels = await ivy.get_state(room, "m.room.power_levels", "")
    assert levels is not None
    levels["users"][BOT] = 100
    await ivy.send_state(room, "m.room.power_levels", "", levels)
    turned = await ivy.wait_for_event(room, lambda e: e["type"] == "m.room.encryption", 45)
    assert turned["sender"] == BOT
    await ivy.close()
