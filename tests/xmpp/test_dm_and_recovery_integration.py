"""DMs, history, logins and recovery from a Prosody restart, against a real Prosody."""

from __future__ import annotations

import asyncio
from typing import Any

from slixmpp import JID

from bridge.connector import (
    MatrixMessage,
    MatrixSender,
    MessageContent,
    PortalKey,
    RemoteMessage,
    RemoteTyping,
)
from connectors.xmpp import XMPPConnector

from .conftest import COMPONENT, FakeBridge, unique
from .test_muc_integration import matrix_message, open_room


async def test_dm_both_ways(
    connector: XMPPConnector, bridge: FakeBridge, prosody: Any, xclients: Any
) -> None:
    erin = bridge.user("@erin:example.org", "Erin")
    alice = await xclients("alice")
    puppet = f"erin\\40example.org@{COMPONENT}"
    # XMPP -> Matrix: a message to the Matrix user's JID opens a DM portal.
    msg = alice.xmpp.make_message(mto=puppet, mbody="hi erin", mtype="chat")
    msg["request_receipt"] = True
    msg["id"] = "dm-1"
    msg.send()
    ev = await bridge.wait_for(lambda e: isinstance(e, RemoteMessage))
    assert ev.portal == PortalKey("xmpp", alice.jid, receiver=erin.user_id)
    assert ev.id == "dm-1" and ev.sender.remote_id == alice.jid
    # The XEP-0184 receipt is answered once the message reached the bridge.
    rec = await alice.wait_message(lambda m: m.xml.find("{urn:xmpp:receipts}received") is not None)
    assert rec.xml.find("{urn:xmpp:receipts}received").attrib["id"] == "dm-1"
    typing = alice.xmpp.make_message(mto=puppet, mtype="chat")
    typing["chat_state"] = "composing"
    typing.send()
    assert (await bridge.wait_for(lambda e: isinstance(e, RemoteTyping))).typing
    # Matrix -> XMPP: open_dm gives the same portal; the message comes from the puppet JID.
    portal = await connector.open_dm(erin, "xmpp", alice.jid)
    assert portal == ev.portal
    client: Any = await connector.client_for(erin, portal)
    sent = await client.handle_matrix_message(matrix_message(portal, erin, "hi alice"))
    got = await alice.wait_message(lambda m: m["body"] == "hi alice")
    assert JID(str(got["from"])).bare == puppet
    assert got["type"] == "chat" and sent.remote_id == got["origin_id"]["id"]
    # Media goes out as an XEP-0066 link.
    from bridge.connector import Attachment

    await client.handle_matrix_message(
        matrix_message(
            portal,
            erin,
            "cat.png",
            attachments=[Attachment(filename="cat.png", mimetype="image/png", mxc="mxc://hs/abc")],
        )
    )
    media = await alice.wait_message(lambda m: m["oob"]["url"] != "")
    assert media["oob"]["url"] == "https://media.example.org/hs/abc" == media["body"]
    # Incoming OOB becomes an attachment with the URL.
    oob = alice.xmpp.make_message(mto=puppet, mbody="https://files.example/a/b.jpg", mtype="chat")
    oob["oob"]["url"] = "https://files.example/a/b.jpg"
    oob.send()
    att = await bridge.wait_for(lambda e: isinstance(e, RemoteMessage) and e.content.attachments)
    assert att.content.attachments[0].url == "https://files.example/a/b.jpg"
    assert att.content.attachments[0].mimetype == "image/jpeg" and att.content.text == ""


async def test_dm_errors_for_unknown_and_malformed_addresses(
    connector: XMPPConnector, bridge: FakeBridge, prosody: Any, xclients: Any
) -> None:
    alice = await xclients("alice")
    cases = {
        f"nobody\\40example.org@{COMPONENT}": "item-not-found",  # no such Matrix user
        f"bad\\zzescape@{COMPONENT}": "jid-malformed",  # invalid escape
        f"noserver@{COMPONENT}": "jid-malformed",  # not localpart@server
        COMPONENT: "service-unavailable",  # the bridge itself
    }
    for to, condition in cases.items():
        alice.xmpp.send_message(mto=to, mbody="hello?", mtype="chat")
        err = await alice.wait_message(
            lambda m, to=to: m["type"] == "error" and str(m["from"]) == to
        )
        assert err["error"]["condition"] == condition, to
    # Too long for the bridge: an error, nothing emitted.
    bridge.user("@frank:example.org", "Frank")
    big = "x" * 40000
    alice.xmpp.send_message(mto=f"frank\\40example.org@{COMPONENT}", mbody=big, mtype="chat")
    err = await alice.wait_message(
        lambda m: m["type"] == "error" and m["error"]["condition"] == "not-acceptable"
    )
    assert "too long" in err["error"]["text"]
    assert not [e for e in bridge.events if isinstance(e, RemoteMessage)]
    assert connector.component.ready.is_set()


async def test_history_from_mam(
    connector: XMPPConnector, bridge: FakeBridge, prosody: Any, xclients: Any
) -> None:
    room = f"{unique('hist')}@{prosody.muc_domain}"
    alice = await xclients("alice")
    await alice.join(room, "alice")
    for i in range(5):
        alice.xmpp.send_message(mto=room, mbody=f"old {i}", mtype="groupchat")
    await alice.wait_message(lambda m: m["body"] == "old 4")
    portal = PortalKey("xmpp", room)
    history = await connector.fetch_history(portal, 3)
    assert [m.content.text for m in history] == ["old 2", "old 3", "old 4"]
    assert all(m.sender.display_name == "alice" for m in history)
    assert len({m.id for m in history}) == 3
    assert history[0].timestamp <= history[-1].timestamp


async def test_restart_reconnects_and_rejoins_puppets(
    connector: XMPPConnector, bridge: FakeBridge, prosody: Any, xclients: Any
) -> None:
    portal, alice, users = await open_room(connector, bridge, prosody, xclients, "Gina", "Hank")
    room = portal.remote_id
    connects = connector.component.connects
    await asyncio.to_thread(prosody.restart)
    await alice.close()
    # The component reconnects; both puppets are back in the (recreated) room.
    for _ in range(200):
        r = connector.rooms[room]
        if connector.component.connects > connects and all(
            o.state == "joined" for o in r.ours.values()
        ):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("puppets did not rejoin")
    alice2 = await xclients("alice")
    occupants = await alice2.join(room, "alice2")
    nicks = {JID(str(p["from"])).resource for p in occupants[2]}
    assert {"Gina", "Hank"} <= nicks
    client: Any = await connector.client_for(users[0], portal)
    sent = await client.handle_matrix_message(matrix_message(portal, users[0], "back"))
    got = await alice2.wait_message(lambda m: m["body"] == "back")
    assert sent.remote_id == got["origin_id"]["id"]


async def test_outage_messages_are_queued_and_delivered(
    connector: XMPPConnector, bridge: FakeBridge, prosody: Any, xclients: Any
) -> None:
    portal, alice, (ivy,) = await open_room(connector, bridge, prosody, xclients, "Ivy")
    room = portal.remote_id
    client: Any = await connector.client_for(ivy, portal)
    await asyncio.to_thread(prosody.stop)
    await alice.close()
    for _ in range(100):
        if not connector.component.ready.is_set():
            break
        await asyncio.sleep(0.02)
    sent = await client.handle_matrix_message(matrix_message(portal, ivy, "during outage"))
    assert sent.remote_id
    await bridge.wait_notice(lambda t: "not reachable" in t)
    prosody.start()
    alice2 = await xclients("alice")
    await alice2.join(room, "alice2")
    got = await alice2.wait_message(lambda m: m["body"] == "during outage", timeout=15)
    assert str(got["from"]) == f"{room}/Ivy"


async def test_login_with_own_account(
    connector: XMPPConnector, bridge: FakeBridge, prosody: Any, xclients: Any
) -> None:
    from bridge.connector import ConnectorError

    jack = bridge.user("@jack:example.org", "Jack")
    name = unique("jack")
    prosody.register_user(name, "secret")
    try:
        await connector.login(jack, [f"{name}@{prosody.domain}", "wrong"])
    except ConnectorError as e:
        assert "Could not log in" in str(e)
    else:
        raise AssertionError("a wrong password was accepted")
    result = await connector.login(jack, [f"{name}@{prosody.domain}", "secret"])
    assert result.login_id == f"{name}@{prosody.domain}"
    alice = await xclients("alice")
    portal = await connector.open_dm(jack, "xmpp", alice.jid)
    client: Any = await connector.client_for(jack, portal)
    await client.handle_matrix_message(
        MatrixMessage(
            portal=portal,
            sender=MatrixSender(jack.user_id, "Jack"),
            event_id="$1",
            content=MessageContent(text="from my own account"),
        )
    )
    got = await alice.wait_message(lambda m: m["body"] == "from my own account")
    assert JID(str(got["from"])).bare == result.login_id
    # Replies to the real account reach the same DM portal.
    alice.xmpp.send_message(mto=result.login_id, mbody="hi jack", mtype="chat")
    ev = await bridge.wait_for(
        lambda e: isinstance(e, RemoteMessage) and e.content.text == "hi jack"
    )
    assert ev.portal == portal
