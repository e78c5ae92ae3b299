"""bridge.encryption.require: rooms that are not encrypted are not bridged. Linking one is
refused, a portal left from before is told why nothing crosses, new portals are encrypted."""

from __future__ import annotations

from typing import Any

from tests.conftest import BridgeFactory
from tests.e2ee.conftest import NioFactory
from tests.e2ee.helpers import BOT, encrypted_portal
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
    await command(ivy, mgmt, "join testnet #old", "Invited you")
    old = await ivy.join("#testnet_=23old:localhost")
    await ivy.send_text(old, "before")
    await until(sent(bridge, "message", text="before"))
    await bridge.stop()

    bridge = await make_bridge(encryption=ENC)
    # The management room works unencrypted: it bridges nothing.
    await command(ivy, mgmt, "ping", "Pong.")
    await ivy.send_text(old, "after")
    told = await ivy.wait_for_event(old, lambda e: "only encrypted rooms" in _body(e))
    assert told["sender"] == BOT and ivy.user_id in _body(told)
    assert not sent(bridge, "message", text="after")()

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
