"""Double puppeting in the core, end to end through Synapse with the test network: what a
user does from another client of their network account (a message, a read receipt, typing)
is the Matrix user's own in the portal, and nothing of it is bridged back to the network."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from bridge.connector import (
    MessageContent,
    PortalKey,
    RemoteMessage,
    RemoteReceipt,
    RemoteTyping,
    Sender,
)
from tests.conftest import DOUBLE_PUPPET_TOKEN, BridgeFactory
from tests.harness.synapse import MatrixClient, SynapseServer
from tests.helpers import command, management_room, new_user, sent, until

# A room of its own: portal aliases outlive the bridges of other tests in the session.
ALIAS = "#testnet_=23double-puppet:localhost"
_syncs = itertools.count()


async def _ephemeral(client: MatrixClient, room: str, etype: str) -> dict[str, Any]:
    """The room's current ``etype`` ephemeral content, from a fresh /sync."""
    fresh = json.dumps({"room": {"not_rooms": [f"!dp{next(_syncs)}:localhost"]}})
    _, sync = await client.request(
        "GET", "/_matrix/client/v3/sync", params={"timeout": "0", "filter": fresh}
    )
    events = sync.get("rooms", {}).get("join", {}).get(room, {}).get("ephemeral", {})
    for e in events.get("events", []):
        if e["type"] == etype:
            return dict(e["content"])
    return {}


def _theirs(user: MatrixClient) -> Sender:
    """The user's account as seen from their other client."""
    return Sender(
        "alice-remote",
        "Alice",
        is_from_me=True,
        matrix_user=user.user_id,
        from_other_client=True,
    )


async def test_receipts_and_typing_from_the_other_client_are_the_users(
    make_bridge: BridgeFactory, synapse: SynapseServer
) -> None:
    bridge = await make_bridge(double_puppet={"as_token": DOUBLE_PUPPET_TOKEN})
    alice = new_user(synapse)
    mgmt = await management_room(alice)
    await command(alice, mgmt, "login testnet alice-remote", "Logged in")
    await command(alice, mgmt, "join testnet #double-puppet", "Invited you")
    room = await alice.join(ALIAS)
    tn: Any = bridge.connectors["testnet"]
    key = PortalKey("testnet", "#double-puppet")
    # A message from her other client: hers in Matrix, not sent back.
    await bridge.emit(
        RemoteMessage(
            portal=key,
            sender=_theirs(alice),
            id="other-1",
            content=MessageContent(text="from my other client"),
        )
    )
    mine = await alice.wait_for_event(
        room, lambda e: e["content"].get("body") == "from my other client"
    )
    assert mine["sender"] == alice.user_id
    # Bob writes; her other client reads it: the read receipt is hers.
    bob_id = await tn.remote_message("#double-puppet", "bob", "did you read this?")
    bobs = await alice.wait_for_event(
        room, lambda e: e["content"].get("body") == "did you read this?"
    )
    await bridge.emit(RemoteReceipt(portal=key, sender=_theirs(alice), target_id=bob_id))

    async def read() -> bool:
        receipts = await _ephemeral(alice, room, "m.receipt")
        return alice.user_id in receipts.get(bobs["event_id"], {}).get("m.read", {})

    await until(read, what="her receipt on bob's message")
    # She types on the other client: Matrix shows her typing, then not.
    await bridge.emit(RemoteTyping(portal=key, sender=_theirs(alice), typing=True))

    async def typing() -> set[str]:
        return set((await _ephemeral(alice, room, "m.typing")).get("user_ids", []))

    await until(lambda: _has(typing, alice.user_id), what="her typing")
    await bridge.emit(RemoteTyping(portal=key, sender=_theirs(alice), typing=False))
    await until(lambda: _lacks(typing, alice.user_id), what="her typing stopped")
    # What she does from Matrix still reaches the network; what the bridge did as her did not.
    await alice.send_text(room, "from matrix")
    await until(sent(bridge, "message", text="from matrix"))
    await asyncio.sleep(1)
    assert sent(bridge, "message", text="from my other client")() is None
    assert sent(bridge, "receipt", as_="alice-remote")() is None
    assert sent(bridge, "typing", as_="alice-remote")() is None
    await alice.close()


async def _has(users: Any, user: str) -> bool:
    return user in await users()


async def _lacks(users: Any, user: str) -> bool:
    return user not in await users()
