"""Double puppeting into an encrypted portal: what the user writes from another client of
their network account is sent as the user, encrypted by the bridge's device, readable by
the user's own E2EE client, and not bridged back when the homeserver hands it back."""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.connector import MessageContent, PortalKey, RemoteEdit, RemoteMessage, Sender
from tests.conftest import DOUBLE_PUPPET_TOKEN, BridgeFactory
from tests.e2ee.conftest import NioFactory
from tests.e2ee.helpers import command, encrypted_management_room, was_encrypted
from tests.helpers import sent, until


async def test_the_other_clients_message_is_encrypted_and_the_users(
    make_bridge: BridgeFactory, nio_user: NioFactory
) -> None:
    bridge = await make_bridge(
        encryption={"allow": True, "default": True},
        double_puppet={"as_token": DOUBLE_PUPPET_TOKEN},
    )
    alice = await nio_user()
    # A room of its own: portal aliases outlive the bridges of other tests in the session.
    mgmt = await encrypted_management_room(alice)
    await command(alice, mgmt, "login testnet alice-remote", "Logged in")
    await command(alice, mgmt, "join testnet #double-puppet-e2ee", "Invited you")
    room = await alice.join("#testnet_=23double-puppet-e2ee:localhost")
    theirs = Sender(
        "alice-remote", "Alice", is_from_me=True, matrix_user=alice.user_id, from_other_client=True
    )
    key = PortalKey("testnet", "#double-puppet-e2ee")
    await bridge.emit(
        RemoteMessage(
            portal=key, sender=theirs, id="other-1", content=MessageContent(text="from my phone")
        )
    )
    evt = await alice.wait_for_body(room, "from my phone", sender=alice.user_id)
    assert evt.source["content"]["body"] == "from my phone"
    assert await was_encrypted(alice, room, evt.event_id)
    await bridge.emit(
        RemoteEdit(
            portal=key,
            sender=theirs,
            id="other-2",
            target_id="other-1",
            content=MessageContent(text="from my phone, fixed"),
        )
    )
    edit = await alice.wait_for_body(room, "from my phone, fixed", sender=alice.user_id)
    content: dict[str, Any] = edit.source["content"]
    assert content["m.relates_to"] == {"rel_type": "m.replace", "event_id": evt.event_id}
    assert await was_encrypted(alice, room, edit.event_id)
    # Her own Matrix message still goes out; the bridge's, sent as her, did not.
    await alice.send_text(room, "from matrix")
    await until(sent(bridge, "message", text="from matrix"), 45)
    await asyncio.sleep(1)
    assert sent(bridge, "message", text="from my phone")() is None
    assert sent(bridge, "edit", text="from my phone, fixed")() is None
