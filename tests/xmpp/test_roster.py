"""The puppets' presence subscriptions (connectors/xmpp/roster.py) against a real Prosody:
kept in the bridge database across restarts of the connector, asked for when a Matrix user
opens a DM, probes answered without leaking presence, hostile subscription stanzas. The
end-to-end test through Synapse is in test_e2e_synapse.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from slixmpp import JID
from slixmpp.stanza import Presence
from slixmpp.xmlstream import ET

from bridge.connector import (
    Attachment,
    MatrixProfile,
    MatrixSender,
    PortalKey,
    RemoteMessage,
    RemotePresence,
)
from bridge.db import open_database
from connectors.xmpp import XMPPConnector, pep, roster
from tests.harness.prosody import ProsodyServer

from .conftest import COMPONENT, FakeBridge, XClient, connector_config, unique
from .test_muc_integration import matrix_message
from .test_pep_avatars import PNG, sha1, subscribe_both_ways, wait_until

Starter = Callable[[FakeBridge], Awaitable[XMPPConnector]]
ERIN = "@erin:example.org"
PUPPET = f"erin\\40example.org@{COMPONENT}"
NS_ROSTER = "{jabber:iq:roster}"
MD = f"{{{pep.NS_METADATA}}}"


@pytest.fixture
async def start_connector(prosody: ProsodyServer) -> AsyncIterator[Starter]:
    """Start connectors on the test Prosody (one at a time: they share the component)."""
    running: list[XMPPConnector] = []

    async def start(bridge: FakeBridge) -> XMPPConnector:
        if not prosody.running:
            prosody.start()
        conn = XMPPConnector(bridge, connector_config(prosody))
        await conn.start()
        assert await conn.component.wait_ready(10)
        running.append(conn)
        return conn

    yield start
    for conn in running:
        if not conn.stopping:
            await conn.stop()


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Any]:
    db = await open_database(f"sqlite:{tmp_path / 'bridge.db'}", connectors=[XMPPConnector])
    yield db
    await db.stop()


async def server_roster(client: XClient) -> dict[str, tuple[str, str | None]]:
    """The client's roster as its server keeps it: jid -> (subscription, ask). (A plain
    roster get, without slixmpp's roster version that may make the answer empty.)"""
    iq = await client.xmpp.make_iq_get(queryxmlns="jabber:iq:roster").send(timeout=10)
    query = iq.xml.find(f"{NS_ROSTER}query")
    assert query is not None
    return {
        str(JID(item.get("jid"))): (item.get("subscription", "none"), item.get("ask"))
        for item in query.findall(f"{NS_ROSTER}item")
    }


def from_puppet(ptype: str, jid: str = PUPPET) -> Callable[[Any], bool]:
    return lambda p: JID(str(p["from"])).bare == jid and p["type"] == ptype


async def presence_after(
    client: XClient,
    start: int,
    pred: Callable[[Any], bool],
    timeout: float = 10,  # noqa: ASYNC109
) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        for p in client.presences[start:]:
            if pred(p):
                return p
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"{client.jid}: no matching presence; got {[str(p) for p in client.presences]}"
            )
        await asyncio.sleep(0.05)


def count(client: XClient, pred: Callable[[Any], bool]) -> int:
    return sum(1 for p in client.presences if pred(p))


async def roundtrip(conn: XMPPConnector, bridge: FakeBridge, client: XClient, user: Any) -> None:
    """Erin's puppet sends the client a chat message and it arrives: whatever the component
    sent that client before has arrived too (one stream, in order)."""
    portal = PortalKey("xmpp", client.jid, receiver=user.user_id)
    chat: Any = await conn.client_for(user, portal)
    text = unique("sync")
    await chat.handle_matrix_message(matrix_message(portal, user, text))
    await client.wait_message(lambda m: m["body"] == text)


async def row_count(db: Any) -> int:
    return int(await db.fetchval("SELECT COUNT(*) FROM xmpp_roster"))


# --- (a) a mutual subscription survives a restart ---------------------------------------------


async def test_subscription_both_ways_survives_a_restart(
    prosody: ProsodyServer, xclients: Any, start_connector: Starter, database_url: str
) -> None:
    db = await open_database(database_url, connectors=[XMPPConnector])
    try:
        bridge = FakeBridge(db=db)
        bridge.user(ERIN, "Erin")
        conn = await start_connector(bridge)
        alice = await xclients("alice")
        portal = PortalKey("xmpp", alice.jid, receiver=ERIN)
        bridge.portal_list.append(portal)
        await subscribe_both_ways(alice, PUPPET)

        async def both() -> bool:
            item = conn.roster.item(PUPPET, alice.jid)
            return item is not None and item.subscription == "both" and not item.pending_out

        await wait_until(both, "the bridge to see the mutual subscription")
        assert await server_roster(alice) == {PUPPET: ("both", None)}
        # The bridge stops: alice sees Erin go offline.
        n = len(alice.presences)
        await conn.stop()
        await presence_after(alice, n, from_puppet("unavailable"))
        # A new connector (nothing of the old one in memory) reads the subscription back and
        # tells alice that Erin is available again, with caps and avatar hash.
        n = len(alice.presences)
        start = len(bridge.events)
        conn = await start_connector(bridge)
        item = conn.roster.item(PUPPET, alice.jid)
        assert item is not None and item.subscription == "both"
        back = await presence_after(alice, n, from_puppet("available"))
        assert back.xml.find("{http://jabber.org/protocol/caps}c") is not None
        assert back.xml.find("{vcard-temp:x:update}x") is not None
        # The puppet probed alice (it sees her presence): her presence reaches the DM.
        ev = await bridge.wait_for(
            lambda e: isinstance(e, RemotePresence) and e.sender.remote_id == alice.jid,
            start=start,
        )
        assert isinstance(ev, RemotePresence) and ev.portal == portal
        assert ev.presence == "online"
        # alice logs in again: her server probes Erin's puppet, which answers with its
        # presence, never "unsubscribed"; her roster keeps the puppet with "both".
        name = alice.jid.split("@")[0]
        await alice.close()
        alice = await XClient(prosody, name).connect()
        try:
            await presence_after(alice, 0, from_puppet("available"))
            assert await server_roster(alice) == {PUPPET: ("both", None)}
            assert count(alice, from_puppet("unsubscribed")) == 0
            # A Matrix avatar change after the restart reaches her as a PEP notification.
            seen = len(alice.messages)
            await conn.profiles.handle_profile(
                conn.identity_for(ERIN),
                MatrixProfile(
                    portal=portal,
                    sender=MatrixSender(ERIN, "Erin"),
                    event_id="$avatar",
                    avatar=Attachment("a.png", "image/png", data=PNG, size=len(PNG)),
                ),
            )
            note = await alice.wait_message(
                lambda m: alice.messages.index(m) >= seen and m.xml.find(f".//{MD}info") is not None
            )
            assert note["type"] == "headline" and JID(str(note["from"])) == JID(PUPPET)
            assert note.xml.find(f".//{MD}info").get("id") == sha1(PNG)
            # Her roster did not change along the way.
            assert await server_roster(alice) == {PUPPET: ("both", None)}
        finally:
            await alice.close()
    finally:
        await conn.stop()
        await db.stop()


# --- (b) opening a DM asks once ----------------------------------------------------------------


async def test_opening_a_dm_asks_once_and_keeps_the_answer(
    prosody: ProsodyServer, xclients: Any, start_connector: Starter, sqlite_db: Any
) -> None:
    bridge = FakeBridge(db=sqlite_db)
    erin = bridge.user(ERIN, "Erin")
    conn = await start_connector(bridge)
    alice = await xclients("alice")
    bob = await xclients("bob")
    for client in (alice, bob):
        client.xmpp.auto_authorize = None  # they answer by hand
        await client.xmpp.get_roster(timeout=10)
    asks = from_puppet("subscribe")
    # Erin opens a DM with alice: the puppet asks alice once, however often it is opened.
    dm = await conn.open_dm(erin, "xmpp", alice.jid)
    bridge.portal_list.append(dm)
    await alice.wait_presence(asks)
    await conn.open_dm(erin, "xmpp", alice.jid)
    await roundtrip(conn, bridge, alice, erin)
    assert count(alice, asks) == 1
    item = conn.roster.item(PUPPET, alice.jid)
    assert item is not None and item.pending_out and item.asked
    assert await server_roster(alice) == {}  # a request is not a roster item yet
    # alice approves: Erin's puppet sees her presence ("to"); on her side the puppet has
    # "from". Her presence reaches the DM.
    start = len(bridge.events)
    alice.xmpp.send_presence(pto=PUPPET, ptype="subscribed")

    async def approved() -> bool:
        it = conn.roster.item(PUPPET, alice.jid)
        return it is not None and it.subscription == "to" and not it.pending_out

    await wait_until(approved, "the approval")
    assert await server_roster(alice) == {PUPPET: ("from", None)}
    await bridge.wait_for(
        lambda e: isinstance(e, RemotePresence) and e.sender.remote_id == alice.jid, start=start
    )
    # bob refuses.
    await conn.open_dm(erin, "xmpp", bob.jid)
    await bob.wait_presence(asks)
    bob.xmpp.send_presence(pto=PUPPET, ptype="unsubscribed")

    async def refused() -> bool:
        it = conn.roster.item(PUPPET, bob.jid)
        return it is not None and not it.pending_out and it.subscription == "none"

    await wait_until(refused, "the refusal")
    # A request that bounces (Prosody here talks to no other server) counts as answered.
    elsewhere = "someone@nowhere.invalid"
    await conn.open_dm(erin, "xmpp", elsewhere)

    async def bounced() -> bool:
        it = conn.roster.item(PUPPET, elsewhere)
        return it is not None and not it.pending_out and it.asked

    await wait_until(bounced, "the bounce")
    # After a restart the answers are known: opening the DMs again asks nobody, and the
    # puppet probes alice, whose presence it sees.
    await conn.stop()
    start = len(bridge.events)
    conn = await start_connector(bridge)
    a, b = conn.roster.item(PUPPET, alice.jid), conn.roster.item(PUPPET, bob.jid)
    assert a is not None and (a.subscription, a.pending_out, a.asked) == ("to", False, True)
    assert b is not None and (b.subscription, b.pending_out, b.asked) == ("none", False, True)
    await bridge.wait_for(
        lambda e: isinstance(e, RemotePresence) and e.sender.remote_id == alice.jid, start=start
    )
    for client in (alice, bob):
        await conn.open_dm(erin, "xmpp", client.jid)
        await roundtrip(conn, bridge, client, erin)
        assert count(client, asks) == 1, client.jid
    assert await server_roster(alice) == {PUPPET: ("from", None)}
    assert await row_count(sqlite_db) == 3


async def test_a_request_made_while_disconnected_goes_out_on_reconnect(
    prosody: ProsodyServer, xclients: Any, start_connector: Starter, sqlite_db: Any
) -> None:
    bridge = FakeBridge(db=sqlite_db)
    erin = bridge.user(ERIN, "Erin")
    conn = await start_connector(bridge)
    alice = await xclients("alice")
    alice.xmpp.auto_authorize = None
    await asyncio.to_thread(prosody.stop)
    await alice.close()
    await wait_until(lambda: _not_ready(conn), "the component to notice the outage")
    await conn.open_dm(erin, "xmpp", alice.jid)
    assert conn.roster.item(PUPPET, alice.jid) is None  # nothing was sent, nothing stored
    prosody.start()
    await conn.component.wait_ready(15)
    alice = XClient(prosody, alice.jid.split("@")[0])
    alice.xmpp.auto_authorize = None
    await alice.connect()
    try:
        # Prosody keeps the request for alice and hands it to her when she logs in.
        await alice.wait_presence(from_puppet("subscribe"), timeout=15)
        item = conn.roster.item(PUPPET, alice.jid)
        assert item is not None and item.pending_out and item.asked
    finally:
        await alice.close()


async def _not_ready(conn: XMPPConnector) -> bool:
    return not conn.component.ready.is_set()


# --- (c) probes and hostile stanzas ----------------------------------------------------------


async def test_probe_without_subscription_gets_no_presence(
    prosody: ProsodyServer, xclients: Any, start_connector: Starter, sqlite_db: Any
) -> None:
    bridge = FakeBridge(db=sqlite_db)
    bridge.user(ERIN, "Erin")
    conn = await start_connector(bridge)
    sent: list[str] = []

    def watch(stanza: Any) -> Any:
        if stanza.name == "presence":
            sent.append(str(stanza.xml.attrib.get("type", "available")))
        return stanza

    conn.component_xmpp.add_filter("out", watch)
    carol = await xclients("carol")
    nobody = f"nobody\\40example.org@{COMPONENT}"
    # carol, who has no subscription, probes Erin's puppet, an unknown Matrix user's and the
    # bridge itself; then she sends Erin a message with a receipt request. The receipt comes
    # after the component's answers to the probes.
    for to in (PUPPET, nobody, COMPONENT):
        carol.xmpp.send_presence(pto=to, ptype="probe")
    msg = carol.xmpp.make_message(mto=PUPPET, mbody="are you there?", mtype="chat")
    msg["request_receipt"] = True
    msg.send()
    await bridge.wait_for(lambda e: isinstance(e, RemoteMessage))
    await carol.wait_message(lambda m: m.xml.find("{urn:xmpp:receipts}received") is not None)
    leaked = [p for p in carol.presences if JID(str(p["from"])).domain == COMPONENT]
    assert leaked == []
    assert sent == ["unsubscribed"] * 3 and "available" not in sent
    assert conn.roster.item(PUPPET, carol.jid) is None and await row_count(sqlite_db) == 0
    # Once she subscribes, a probe gets Erin's presence.
    await subscribe_both_ways(carol, PUPPET)
    n = len(carol.presences)
    carol.xmpp.send_presence(pto=PUPPET, ptype="probe")
    await presence_after(carol, n, from_puppet("available"))


def _presence(conn: XMPPConnector, xml: str) -> Presence:
    return Presence(conn.component_xmpp, ET.fromstring(xml))


async def test_hostile_subscription_stanzas_change_nothing(
    sqlite_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stanzas fed straight into the connector: nothing raises, only puppets of Matrix users
    who may use the bridge get rows, and those at most MAX_CONTACTS each."""
    from .test_units import CONFIG

    bridge = FakeBridge(db=sqlite_db)
    bridge.user("@u:example.org", "U")
    bridge.user("@r:example.org", "R", permission="relay")
    conn = XMPPConnector(bridge, CONFIG)
    conn.roster = roster.Roster(conn, sqlite_db)
    await conn.roster.setup()
    sent: list[Any] = []
    conn.component.ready.set()
    conn.component.send = sent.append  # type: ignore[method-assign]
    ns = "xmlns='jabber:component:accept'"
    u = "u\\40example.org@matrix.example.org"
    r = "r\\40example.org@matrix.example.org"
    nobody = "nobody\\40example.org@matrix.example.org"
    stanzas = [
        # Bad or missing addresses.
        f"<presence {ns} type='subscribe' from='@@bad' to='{u}'/>",
        f"<presence {ns} type='subscribe' to='{u}'/>",
        f"<presence {ns} type='subscribe' from='a@b'/>",
        f"<presence {ns} type='subscribe' from='a@b' to='bad\\zz@matrix.example.org'/>",
        f"<presence {ns} type='subscribe' from='a@b' to='noserver@matrix.example.org'/>",
        f"<presence {ns} type='subscribe' from='a@b' to='matrix.example.org'/>",
        # Users the bridge does not know, or who may not use it.
        f"<presence {ns} type='subscribe' from='a@b' to='{nobody}'/>",
        f"<presence {ns} type='subscribe' from='a@b' to='{r}'/>",
        # From the bridge's own addresses (no loops).
        f"<presence {ns} type='subscribe' from='x\\40y@matrix.example.org' to='{u}'/>",
        # Answers to nothing, cancellations of nothing.
        f"<presence {ns} type='subscribed' from='a@b' to='{u}'/>",
        f"<presence {ns} type='unsubscribed' from='a@b' to='{u}'/>",
        f"<presence {ns} type='unsubscribe' from='a@b' to='{u}'/>",
        f"<presence {ns} type='probe' from='a@b' to='{u}'/>",
        f"<presence {ns} type='probe' from='a@b/res' to='nobody\\40x@matrix.example.org/x'/>",
    ]
    for xml in stanzas:
        await conn.presence_in.on_presence(conn.component, _presence(conn, xml))
    await conn.roster.flush()
    assert await row_count(sqlite_db) == 0 and conn.roster._items == {}
    # No presence went out, only refusals.
    assert {str(s["type"]) for s in sent} <= {"unsubscribed"}
    # A flood of subscriptions from new addresses to a real puppet: at most MAX_CONTACTS.
    monkeypatch.setattr(roster, "MAX_CONTACTS", 5)
    sent.clear()
    for i in range(40):
        xml = f"<presence {ns} type='subscribe' from='spam{i}@flood.example/r' to='{u}'/>"
        await conn.presence_in.on_presence(conn.component, _presence(conn, xml))
    await conn.roster.flush()
    assert await row_count(sqlite_db) == 5 and len(conn.roster.seeing(u)) == 5
    assert sum(1 for s in sent if s["type"] == "unsubscribed") == 35
    # The same contact again and again: one row, no new writes.
    before = await row_count(sqlite_db)
    for _ in range(20):
        xml = f"<presence {ns} type='subscribe' from='spam0@flood.example' to='{u}'/>"
        await conn.presence_in.on_presence(conn.component, _presence(conn, xml))
    await conn.roster.flush()
    assert await row_count(sqlite_db) == before
    # Unsubscribing removes rows: nothing to remember for a contact the puppet never asked.
    xml = f"<presence {ns} type='unsubscribe' from='spam1@flood.example' to='{u}'/>"
    await conn.presence_in.on_presence(conn.component, _presence(conn, xml))
    await conn.roster.flush()
    assert await row_count(sqlite_db) == before  # spam1 was asked back: the ask is kept
    item = conn.roster.item(u, "spam1@flood.example")
    assert item is not None and item.subscription == "none" and item.asked


async def test_without_a_database_an_unknown_probe_is_not_refused() -> None:
    """Without a database a subscription from before a restart is unknown: a probe from a
    contact the puppet does not know gets neither presence nor ``unsubscribed``."""
    from .test_units import CONFIG

    bridge = FakeBridge()
    bridge.user("@u:example.org", "U")
    conn = XMPPConnector(bridge, CONFIG)
    sent: list[Any] = []
    conn.component.ready.set()
    conn.component.send = sent.append  # type: ignore[method-assign]
    ns = "xmlns='jabber:component:accept'"
    u = "u\\40example.org@matrix.example.org"
    for xml in (
        f"<presence {ns} type='probe' from='a@b' to='{u}'/>",
        f"<presence {ns} type='probe' from='a@b' to='bad\\zz@matrix.example.org'/>",
    ):
        await conn.presence_in.on_presence(conn.component, _presence(conn, xml))
    # No such user: "unsubscribed"; a known user: nothing.
    assert [(str(s["to"]), s["type"]) for s in sent] == [("a@b", "unsubscribed")]
    assert str(sent[0]["from"]) == "bad\\zz@matrix.example.org"
