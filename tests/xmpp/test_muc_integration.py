"""The connector against a real Prosody: MUC portals with real slixmpp users."""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.connector import (
    MatrixMessage,
    MatrixSender,
    MessageContent,
    PortalKey,
    RemoteMembership,
    RemoteMessage,
)
from connectors.xmpp import XMPPConnector

from .conftest import FakeBridge, unique


def stanza_id(msg: Any) -> str:
    return msg.xml.find("{urn:xmpp:sid:0}stanza-id").attrib["id"]


async def open_room(
    connector: XMPPConnector, bridge: FakeBridge, prosody: Any, xclients: Any, *names: str
) -> tuple[PortalKey, Any, list[Any]]:
    """An XMPP user ``alice`` in a fresh room, and Matrix users ``names`` joined to its
    portal through their puppets."""
    room = f"{unique('room')}@{prosody.muc_domain}"
    alice = await xclients("alice")
    await alice.join(room, "alice")
    portal = PortalKey("xmpp", room)
    info = await connector.resolve_portal(portal, None)
    assert info is not None and not info.is_direct
    users = [bridge.user(f"@{n.lower()}:example.org", n) for n in names]
    bridge.portal_list.append(portal)
    bridge.members[portal] = users
    await connector.portal_opened(portal)
    for name in names:
        await alice.wait_presence(lambda p, n=name: str(p["from"]) == f"{room}/{n}")
    return portal, alice, users


def matrix_message(portal: PortalKey, user: Any, text: str, **kw: Any) -> MatrixMessage:
    return MatrixMessage(
        portal=portal,
        sender=MatrixSender(user.user_id, user.display_name),
        event_id=f"$ev{unique('e')}",
        content=MessageContent(text=text, **kw),
    )


async def test_puppet_joins_and_messages_flow_both_ways(
    connector: XMPPConnector, bridge: FakeBridge, prosody: Any, xclients: Any
) -> None:
    portal, alice, (bob,) = await open_room(connector, bridge, prosody, xclients, "Bob")
    room = portal.remote_id
    # The XMPP user shows up as a ghost joining.
    join = await bridge.wait_for(
        lambda e: isinstance(e, RemoteMembership) and e.sender.display_name == "alice"
    )
    assert join.portal == portal
    # XMPP -> Matrix: id is the MUC's stanza-id.
    alice.xmpp.send_message(mto=room, mbody="hello *matrix*", mtype="groupchat")
    ev = await bridge.wait_for(lambda e: isinstance(e, RemoteMessage))
    assert isinstance(ev, RemoteMessage)
    assert ev.content.text == "hello *matrix*"
    assert ev.content.html == "hello <strong>matrix</strong>"
    seen = await alice.wait_message(
        lambda m: m["type"] == "groupchat" and m["body"] == "hello *matrix*"
    )
    assert ev.id == stanza_id(seen)
    # Matrix -> XMPP: the returned remote id is the stanza-id the XMPP side sees.
    client = await connector.client_for(bob, portal)
    assert client is not None
    sent = await client.handle_matrix_message(
        matrix_message(portal, bob, "hi", html="<b>hi</b> there")
    )
    got = await alice.wait_message(lambda m: m["body"] == "*hi* there")
    assert str(got["from"]) == f"{room}/Bob"
    assert sent.remote_id == stanza_id(got)
    # The reflection of the puppet's own message is not emitted back.
    await asyncio.sleep(0.3)
    assert not [e for e in bridge.events if isinstance(e, RemoteMessage) and "hi" == e.content.text]
