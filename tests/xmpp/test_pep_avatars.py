"""XEP-0084 avatars over PEP: the stanza parsing and building (connectors/xmpp/pep.py), and
the connector against a real Prosody, whose ``mod_pep`` serves the XMPP users' avatar nodes
and sends their notifications. End-to-end tests through Synapse are in test_e2e_synapse.py."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from slixmpp import JID
from slixmpp.xmlstream import ET

from bridge.connector import RemoteProfile
from connectors.xmpp import XMPPConnector, pep
from connectors.xmpp.avatars import MAX_AVATAR_BYTES

from .conftest import COMPONENT, FakeBridge, XClient

# A 1x1 PNG.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)
MD = f"{{{pep.NS_METADATA}}}"


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def info_of(data: bytes, mimetype: str = "image/png") -> pep.Info:
    return pep.Info(sha1(data), mimetype, len(data), None)


def data_el(text: str) -> ET.Element:
    el = ET.Element(f"{{{pep.NS_DATA}}}data")
    el.text = text
    return el


def metadata_el(*infos: dict[str, str]) -> ET.Element:
    md = ET.Element(f"{MD}metadata")
    for attrs in infos:
        ET.SubElement(md, f"{MD}info", attrs)
    return md


# --- helpers for real XMPP users (also used by the end-to-end tests) -------------------------


def open_access(client: XClient) -> Any:
    """Publish options that make a PEP node readable by anyone (XEP-0060 access model)."""
    form = client.xmpp.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(
        var="FORM_TYPE",
        ftype="hidden",
        value="http://jabber.org/protocol/pubsub#publish-options",
    )
    form.add_field(var="pubsub#access_model", value="open")
    return form


async def publish_avatar(client: XClient, picture: bytes, public: bool = False) -> str:
    """Publish a picture with slixmpp's XEP-0084 plugin: the data, then the metadata."""
    avatar = client.xmpp.plugin["xep_0084"]
    options = open_access(client) if public else None
    await avatar.publish_avatar(picture, options=options, timeout=10)
    await avatar.publish_avatar_metadata(
        {"id": sha1(picture), "type": "image/png", "bytes": len(picture)},
        options=open_access(client) if public else None,
        timeout=10,
    )
    return sha1(picture)


async def subscribe_both_ways(client: XClient, jid: str) -> None:
    """``client`` asks to see ``jid``'s presence; the bridge accepts and asks back, the
    client (slixmpp's default) accepts: a subscription "both" on the client's roster."""
    await client.xmpp.get_roster(timeout=10)  # roster pushes tell the client the outcome
    client.xmpp.send_presence_subscription(pto=jid)

    async def both() -> bool:
        return bool(client.xmpp.client_roster[jid]["subscription"] == "both")

    await wait_until(both, "a mutual subscription")


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10) -> None:  # noqa: ASYNC109
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# --- parsing ----------------------------------------------------------------------------------


def test_metadata_is_parsed_and_the_png_chosen() -> None:
    png, jpeg = PNG, b"\xff\xd8jpeg"
    md = metadata_el(
        {"id": sha1(jpeg).upper(), "type": "image/jpeg", "bytes": str(len(jpeg))},
        {"id": "not-a-sha1", "type": "image/png", "bytes": "1"},
        {"id": sha1(b"http"), "type": "image/png", "bytes": "9", "url": "https://x.example/a"},
        {"id": sha1(png), "type": "image/png", "bytes": str(len(png))},
    )
    infos = pep.parse_metadata(md)
    assert [i.id for i in infos] == [sha1(jpeg), sha1(b"http"), sha1(png)]
    assert infos[1].url == "https://x.example/a"
    assert pep.choose(infos) == pep.Info(sha1(png), "image/png", len(png), None)
    # Without the PNG, the JPEG; stored elsewhere only, or too big: nothing to fetch.
    assert pep.choose([infos[0], infos[1]]) == infos[0]
    assert pep.choose([infos[1]]) is None
    assert pep.choose(infos, max_bytes=len(png) - 1) == infos[0]
    big = pep.Info(sha1(b"x"), "image/png", MAX_AVATAR_BYTES + 1, None)
    assert pep.choose([big]) is None
    # Not an image type; a missing or bad size counts as unknown (checked after fetching).
    assert pep.choose([pep.Info(sha1(b"t"), "text/plain", 1, None)]) is None
    odd = pep.parse_metadata(metadata_el({"id": sha1(png), "bytes": "lots"}))
    assert odd == [pep.Info(sha1(png), "", 0, None)] and pep.choose(odd) == odd[0]
    # Empty metadata: the avatar is disabled.
    assert pep.parse_metadata(metadata_el()) == []


def test_data_is_checked_against_its_metadata() -> None:
    good = base64.b64encode(PNG).decode()
    avatar = pep.decode_data(data_el(good[:10] + "\n  " + good[10:]), info_of(PNG))
    assert (avatar.data, avatar.mimetype, avatar.sha1) == (PNG, "image/png", sha1(PNG))
    # No type in the metadata: sniffed from the bytes.
    assert pep.decode_data(data_el(good), pep.Info(sha1(PNG), "", 0, None)).mimetype == "image/png"
    cases = {
        "SHA-1": (data_el(base64.b64encode(PNG + b"x").decode()), info_of(PNG)),
        "not base64": (data_el("!!!" + good), info_of(PNG)),
        "empty": (data_el(""), info_of(PNG)),
        "no avatar data": (None, info_of(PNG)),
        "not an image": (
            data_el(base64.b64encode(b"plain text").decode()),
            pep.Info(sha1(b"plain text"), "", 0, None),
        ),
    }
    for why, (el, info) in cases.items():
        with pytest.raises(pep.PepError, match=why):
            pep.decode_data(el, info)
    with pytest.raises(pep.PepError, match="no avatar data"):
        pep.decode_data(metadata_el(), info_of(PNG))  # the wrong element
    # Oversized: refused before decoding, and after decoding (the limit is on the bytes).
    big = PNG + bytes(2000)
    with pytest.raises(pep.PepError, match="larger than 1000"):
        pep.decode_data(data_el(base64.b64encode(big).decode()), info_of(big), max_bytes=1000)
    at_limit = PNG + bytes(1000 - len(PNG))
    assert (
        pep.decode_data(
            data_el(base64.b64encode(at_limit).decode()), info_of(at_limit), max_bytes=1000
        ).data
        == at_limit
    )
    over = at_limit + b"\0"
    with pytest.raises(pep.PepError, match="larger than 1000"):
        pep.decode_data(data_el(base64.b64encode(over).decode()), info_of(over), max_bytes=1000)


@given(st.text(max_size=300), st.binary(max_size=64))
def test_any_data_text_is_refused_or_is_the_picture(text: str, picture: bytes) -> None:
    info = info_of(picture)
    try:
        avatar = pep.decode_data(data_el(text), info, max_bytes=200)
    except pep.PepError:
        return
    assert avatar.sha1 == info.id and len(avatar.data) <= 200


def test_events_results_and_requests() -> None:
    ev = ET.Element(f"{{{pep.NS_PUBSUB_EVENT}}}event")
    items = ET.SubElement(ev, f"{{{pep.NS_PUBSUB_EVENT}}}items", {"node": pep.NS_METADATA})
    ET.SubElement(items, f"{{{pep.NS_PUBSUB_EVENT}}}item", {"id": "1"}).append(metadata_el())
    md = metadata_el({"id": sha1(PNG), "type": "image/png", "bytes": "3"})
    ET.SubElement(items, f"{{{pep.NS_PUBSUB_EVENT}}}item", {"id": "2"}).append(md)
    parsed = pep.parse_event(ev)
    assert parsed is not None and parsed.payload is md and not parsed.removed
    # An item without payload: the node is to be read.
    bare = pep.event_element(pep.NS_METADATA, "x", metadata_el())
    bare[0][0].remove(bare[0][0][0])
    assert pep.parse_event(bare) == pep.Event(has_item=True, payload=None)
    # A retraction, a purge or a deletion of the node: no avatar any more.
    for kind, child in (("items", "retract"), ("purge", None), ("delete", None)):
        ev = ET.Element(f"{{{pep.NS_PUBSUB_EVENT}}}event")
        el = ET.SubElement(ev, f"{{{pep.NS_PUBSUB_EVENT}}}{kind}", {"node": pep.NS_METADATA})
        if child:
            ET.SubElement(el, f"{{{pep.NS_PUBSUB_EVENT}}}{child}", {"id": "1"})
        assert pep.parse_event(ev) == pep.Event(removed=True), kind
    # Other nodes, and nothing: not about avatars.
    other = pep.event_element("http://jabber.org/protocol/tune", "1", ET.Element("tune"))
    assert pep.parse_event(other) is None
    assert pep.parse_event(ET.Element(f"{{{pep.NS_PUBSUB_EVENT}}}event")) is None
    # Requests the bridge sends, and results it reads.
    req = pep.items_request(pep.NS_DATA, sha1(PNG))
    assert pep.parse_items_request(req) == (pep.NS_DATA, [sha1(PNG)])
    newest = pep.items_request(pep.NS_METADATA)
    assert pep.parse_items_request(newest) == (pep.NS_METADATA, [])
    assert newest[0].get("max_items") == "1"
    res = pep.items_result(pep.NS_DATA, "abc", data_el("AAAA"))
    assert [
        (i, p.text if p is not None else None) for i, p in pep.result_items(res, pep.NS_DATA)
    ] == [("abc", "AAAA")]
    assert pep.result_items(res, pep.NS_METADATA) == []
    assert pep.result_items(None, pep.NS_DATA) == []
    # Anything but one <items node=…> is no items request.
    pubsub = ET.Element(f"{{{pep.NS_PUBSUB}}}pubsub")
    assert pep.parse_items_request(pubsub) is None
    ET.SubElement(pubsub, f"{{{pep.NS_PUBSUB}}}subscriptions")
    assert pep.parse_items_request(pubsub) is None
    assert pep.parse_items_request(None) is None


def test_what_the_component_serves() -> None:
    from connectors.xmpp.avatars import Avatar

    avatar = Avatar.of(PNG, "image/png")
    md = pep.metadata_payload(avatar)
    assert pep.parse_metadata(md) == [info_of(PNG)]
    assert (
        pep.metadata_payload(None).tag == f"{MD}metadata" and len(pep.metadata_payload(None)) == 0
    )
    assert pep.decode_data(pep.data_payload(avatar), info_of(PNG)) == avatar
    assert pep.metadata_item_id(avatar) == sha1(PNG)
    assert pep.metadata_item_id(None) == pep.NO_AVATAR_ID
    ev = pep.event_element(pep.NS_METADATA, avatar.sha1, md)
    assert pep.parse_event(ev) == pep.Event(has_item=True, payload=md)


# --- against Prosody ----------------------------------------------------------------------------


def avatar_events(bridge: FakeBridge, start: int = 0) -> list[RemoteProfile]:
    return [
        e
        for e in bridge.events[start:]
        if isinstance(e, RemoteProfile) and (e.avatar is not None or e.avatar_removed)
    ]


async def test_xmpp_user_avatar_by_query_and_notifications_with_hostile_items(
    connector: XMPPConnector, bridge: FakeBridge, prosody: Any, xclients: Any
) -> None:
    erin = bridge.user("@erin:example.org", "Erin")
    puppet = f"erin\\40example.org@{COMPONENT}"
    alice = await xclients("alice", ("xep_0084",))
    fetches: list[str] = []
    fetch = connector.pep._fetch

    async def counted(whose: JID, via: JID, info: pep.Info) -> Any:
        fetches.append(info.id)
        return await fetch(whose, via, info)

    connector.pep._fetch = counted  # type: ignore[method-assign]
    # alice's avatar is readable by anyone: opening a DM with her reads it.
    first = PNG + b"first"
    await publish_avatar(alice, first, public=True)
    await connector.open_dm(erin, "xmpp", alice.jid)
    ev = await bridge.wait_for(lambda e: isinstance(e, RemoteProfile) and e.avatar is not None)
    assert isinstance(ev, RemoteProfile) and ev.avatar is not None
    assert ev.sender.remote_id == alice.jid and ev.avatar.data == first
    assert ev.avatar.mimetype == "image/png"
    # She and Erin's puppet see each other's presence now: Prosody sends the puppet her
    # avatar notifications (the puppet's caps have urn:xmpp:avatar:metadata+notify).
    await subscribe_both_ways(alice, puppet)
    second = PNG + b"second"
    start = len(bridge.events)
    await publish_avatar(alice, second)
    ev = await bridge.wait_for(lambda e: isinstance(e, RemoteProfile), start=start)
    assert isinstance(ev, RemoteProfile) and ev.avatar is not None and ev.avatar.data == second
    assert fetches == [sha1(first), sha1(second)]
    # The same metadata again (another client of hers republishes it): not fetched again.
    await publish_avatar(alice, second)
    # Hostile items: data that is not the picture the metadata names, not base64, larger
    # than the limit; metadata announcing a picture above the limit (never fetched).
    connector.pep.max_bytes = 400
    pubsub = alice.xmpp.plugin["xep_0060"]
    wrong, bad, big = PNG + b"wrong", PNG + b"bad b64", PNG + bytes(500)
    items = {
        sha1(wrong): data_el(base64.b64encode(PNG + b"something else").decode()),
        sha1(bad): data_el("**" + base64.b64encode(bad).decode()),
        sha1(big): data_el(base64.b64encode(big).decode()),
    }
    start = len(bridge.events)
    for item_id, payload in items.items():
        await pubsub.publish(None, pep.NS_DATA, id=item_id, payload=payload, timeout=10)
        md = metadata_el({"id": item_id, "type": "image/png", "bytes": "100"})
        await pubsub.publish(None, pep.NS_METADATA, id=item_id, payload=md, timeout=10)

        async def refused(item_id: str = item_id) -> bool:
            return (alice.jid, item_id) in connector.pep._bad

        await wait_until(refused, f"avatar {item_id} refused")
    huge = metadata_el({"id": sha1(b"huge"), "type": "image/png", "bytes": "100000"})
    await pubsub.publish(None, pep.NS_METADATA, id=sha1(b"huge"), payload=huge, timeout=10)
    # A good one after them still comes through; nothing before it was taken.
    third = PNG + b"third"
    await publish_avatar(alice, third)
    ev = await bridge.wait_for(lambda e: isinstance(e, RemoteProfile), start=start)
    assert isinstance(ev, RemoteProfile) and ev.avatar is not None and ev.avatar.data == third
    assert avatar_events(bridge, start) == [ev]
    assert fetches == [sha1(first), sha1(second), *items, sha1(third)]
    # She disables her avatar (empty metadata): the ghost's avatar is removed.
    start = len(bridge.events)
    await alice.xmpp.plugin["xep_0084"].stop(timeout=10)
    ev = await bridge.wait_for(lambda e: isinstance(e, RemoteProfile), start=start)
    assert isinstance(ev, RemoteProfile) and ev.avatar_removed and ev.sender.remote_id == alice.jid
    # The connector is alive and well: messages still flow.
    alice.xmpp.send_message(mto=puppet, mbody="still there", mtype="chat")
    await bridge.wait_for(
        lambda e: getattr(getattr(e, "content", None), "text", "") == "still there"
    )


async def test_presence_only_avatar_needs_a_subscription_and_vcard_is_the_fallback(
    connector: XMPPConnector, bridge: FakeBridge, prosody: Any, xclients: Any
) -> None:
    erin = bridge.user("@erin:example.org", "Erin")
    puppet = f"erin\\40example.org@{COMPONENT}"
    bob = await xclients("bob", ("xep_0084",))
    # bob's avatar has the default access model ("presence"), and he has a vCard picture.
    pep_picture, vcard_picture = PNG + b"pep", PNG + b"vcard"
    await publish_avatar(bob, pep_picture)
    vcards = bob.xmpp.plugin["xep_0054"]
    card = vcards.make_vcard()
    card["PHOTO"]["TYPE"] = "image/png"
    card["PHOTO"]["BINVAL"] = vcard_picture
    await vcards.publish_vcard(card, timeout=10)
    # Erin's puppet may not read bob's PEP nodes (forbidden): his presence's XEP-0153 hash
    # leads to the vCard. (Opening the DM makes the puppet ask for his presence; he does not
    # answer yet.)
    bob.xmpp.auto_authorize = None
    await connector.open_dm(erin, "xmpp", bob.jid)
    pres = bob.xmpp.make_presence(pto=JID(puppet))
    update = ET.SubElement(pres.xml, "{vcard-temp:x:update}x")
    ET.SubElement(update, "{vcard-temp:x:update}photo").text = sha1(vcard_picture)
    pres.send()
    ev = await bridge.wait_for(lambda e: isinstance(e, RemoteProfile) and e.avatar is not None)
    assert isinstance(ev, RemoteProfile) and ev.avatar is not None
    assert ev.avatar.data == vcard_picture
    # With a mutual subscription, Prosody sends the puppet the last published item: the PEP
    # avatar, which wins over the vCard. bob approves the puppet's request and asks back.
    start = len(bridge.events)
    bob.xmpp.auto_authorize = True
    bob.xmpp.send_presence(pto=JID(puppet), ptype="subscribed")
    await subscribe_both_ways(bob, puppet)
    ev = await bridge.wait_for(lambda e: isinstance(e, RemoteProfile), start=start)
    assert isinstance(ev, RemoteProfile) and ev.avatar is not None
    assert ev.avatar.data == pep_picture


async def test_puppet_avatar_nodes_for_a_matrix_user(
    connector: XMPPConnector, bridge: FakeBridge, prosody: Any, xclients: Any
) -> None:
    from slixmpp.exceptions import IqError

    from bridge.connector import Attachment, MatrixProfile, MatrixSender

    erin = bridge.user("@erin:example.org", "Erin")
    puppet = f"erin\\40example.org@{COMPONENT}"
    alice = await xclients("alice", ("xep_0084",))
    pubsub = alice.xmpp.plugin["xep_0060"]
    # No avatar: empty metadata (disabled), and no data item.
    res = await pubsub.get_items(JID(puppet), pep.NS_METADATA, timeout=10)
    (md,) = res.xml.findall(f".//{MD}metadata")
    assert len(md) == 0
    with pytest.raises(IqError) as err:
        await alice.xmpp.plugin["xep_0084"].retrieve_avatar(JID(puppet), sha1(PNG), timeout=10)
    assert err.value.iq["error"]["condition"] == "item-not-found"
    # Erin sets an avatar; her subscribed contact is notified, and the nodes serve it.
    await subscribe_both_ways(alice, puppet)
    portal = await connector.open_dm(erin, "xmpp", alice.jid)
    seen = len(alice.messages)
    await connector.profiles.handle_profile(
        connector.identity_for(erin.user_id),
        MatrixProfile(
            portal=portal,
            sender=MatrixSender(erin.user_id, "Erin"),
            event_id="$avatar",
            avatar=Attachment("a.png", "image/png", data=PNG, size=len(PNG)),
        ),
    )
    note = await alice.wait_message(
        lambda m: alice.messages.index(m) >= seen and m.xml.find(f".//{MD}info") is not None
    )
    assert note["type"] == "headline" and JID(str(note["from"])) == JID(puppet)
    assert note.xml.find(f".//{MD}info").get("id") == sha1(PNG)
    got = await alice.xmpp.plugin["xep_0084"].retrieve_avatar(JID(puppet), sha1(PNG), timeout=10)
    assert got["pubsub"]["items"]["item"]["avatar_data"]["value"] == PNG
    # Unknown users, other nodes, writes: refused.
    for jid, node, cond in (
        (f"nobody\\40example.org@{COMPONENT}", pep.NS_METADATA, "item-not-found"),
        (puppet, "urn:xmpp:microblog:0", "item-not-found"),
    ):
        with pytest.raises(IqError) as err:
            await pubsub.get_items(JID(jid), node, timeout=10)
        assert err.value.iq["error"]["condition"] == cond
    with pytest.raises(IqError) as err:
        await pubsub.publish(JID(puppet), pep.NS_METADATA, payload=metadata_el(), timeout=10)
    assert err.value.iq["error"]["condition"] == "forbidden"


async def test_occupant_with_a_visible_real_jid_gets_its_pep_avatar(
    connector: XMPPConnector, bridge: FakeBridge, prosody: Any, xclients: Any
) -> None:
    from bridge.connector import PortalKey

    from .conftest import unique

    # alice's room shows occupants' real JIDs to everyone (non-anonymous).
    room = f"{unique('room')}@{prosody.muc_domain}"
    alice = await xclients("alice")
    await alice.join(room, "alice")
    muc = alice.xmpp.plugin["xep_0045"]
    form = await muc.get_room_config(JID(room), timeout=10)
    form.set_values({"muc#roomconfig_whois": "anyone"})
    form["type"] = "submit"
    await muc.set_room_config(JID(room), form, timeout=10)
    portal = PortalKey("xmpp", room)
    assert await connector.resolve_portal(portal, None) is not None
    erin = bridge.user("@erin:example.org", "Erin")
    bridge.portal_list.append(portal)
    bridge.members[portal] = [erin]
    await connector.portal_opened(portal)
    await alice.wait_presence(lambda p: str(p["from"]) == f"{room}/Erin")
    # carol, with a public PEP avatar and no XEP-0153 hash in her presence, comes in: her
    # ghost (named by her real JID) gets the avatar from her PEP node.
    carol = await xclients("carol", ("xep_0084",))
    picture = PNG + b"carol"
    await publish_avatar(carol, picture, public=True)
    start = len(bridge.events)
    await carol.join(room, "carol")
    ev = await bridge.wait_for(
        lambda e: isinstance(e, RemoteProfile) and e.avatar is not None, start=start
    )
    assert isinstance(ev, RemoteProfile) and ev.avatar is not None
    assert ev.sender.remote_id == carol.jid and ev.avatar.data == picture
    assert ev.portal == portal


async def test_hostile_pubsub_requests_and_events_are_answered_or_ignored() -> None:
    """Stanzas fed straight into the connector: pubsub requests get errors or results, odd
    events are dropped; nothing raises and nothing reaches Matrix."""
    from slixmpp.stanza import Iq, Message

    from bridge.connector import PortalKey

    from .test_units import CONFIG

    bridge = FakeBridge()
    bridge.user("@u:example.org", "U")
    conn = XMPPConnector(bridge, CONFIG)
    sent: list[Any] = []
    conn.component.ready.set()
    conn.component.send = sent.append  # type: ignore[method-assign]
    u = "u\\40example.org@matrix.example.org"
    ns = "xmlns='jabber:component:accept'"
    ps = f"xmlns='{pep.NS_PUBSUB}'"
    requests = {
        f"<iq {ns} type='set' id='1' from='a@b/c' to='{u}'><pubsub {ps}><publish"
        f" node='{pep.NS_METADATA}'/></pubsub></iq>": "forbidden",
        f"<iq {ns} type='get' id='2' from='a@b/c' to='{u}'><pubsub {ps}/></iq>": (
            "feature-not-implemented"
        ),
        f"<iq {ns} type='get' id='3' from='a@b/c' to='{u}'><pubsub {ps}><items"
        f" node='{pep.NS_METADATA}'/><items node='{pep.NS_DATA}'/></pubsub></iq>": (
            "feature-not-implemented"
        ),
        f"<iq {ns} type='get' id='4' from='a@b/c' to='{u}'><pubsub {ps}><items/></pubsub>"
        "</iq>": "feature-not-implemented",
        f"<iq {ns} type='get' id='5' from='a@b/c' to='matrix.example.org'><pubsub {ps}><items"
        f" node='{pep.NS_METADATA}'/></pubsub></iq>": "item-not-found",
        f"<iq {ns} type='get' id='6' from='a@b/c' to='bad\\zz@matrix.example.org'><pubsub"
        f" {ps}><items node='{pep.NS_METADATA}'/></pubsub></iq>": "item-not-found",
        f"<iq {ns} type='get' id='7' from='a@b/c' to='{u}'><pubsub {ps}><items"
        f" node='{pep.NS_DATA}'><item id='{sha1(PNG)}'/></items></pubsub></iq>": "item-not-found",
        f"<iq {ns} type='get' id='8' from='a@b/c' to='{u}'><pubsub {ps}><items"
        f" node='{pep.NS_METADATA}'><item id='{sha1(PNG)}'/></items></pubsub></iq>": (
            "item-not-found"
        ),
        f"<iq {ns} type='get' id='9' from='a@b/c' to='{u}'><pubsub {ps}><items"
        f" node='{pep.NS_METADATA}'/></pubsub></iq>": "result",
    }
    for xml in requests:
        await conn.pep.answer(Iq(conn.component_xmpp, ET.fromstring(xml)))
    got = {}
    for s in sent:
        got[s["id"]] = "result" if s["type"] == "result" else s.xml.find("{*}error")[0].tag
    assert got == {
        str(i): (c if c == "result" else f"{{urn:ietf:params:xml:ns:xmpp-stanzas}}{c}")
        for i, c in enumerate(requests.values(), 1)
    }
    # The user has no avatar: the metadata is empty.
    (result,) = [s for s in sent if s["type"] == "result"]
    assert len(result.xml.find(f".//{MD}metadata")) == 0
    # Events: from a full JID, from the bridge's own domain, from nobody the bridge knows,
    # about other nodes, with garbage in them: nothing happens.
    conn.known_dms.add(PortalKey("xmpp", "a@b", receiver="@u:example.org"))
    ev = f"xmlns='{pep.NS_PUBSUB_EVENT}'"
    events = [
        f"<message {ns} from='a@b/c' to='{u}'><event {ev}><items node='{pep.NS_METADATA}'>"
        "<item id='x'/></items></event></message>",
        f"<message {ns} from='x@matrix.example.org' to='{u}'><event {ev}><purge"
        f" node='{pep.NS_METADATA}'/></event></message>",
        f"<message {ns} from='stranger@b' to='{u}'><event {ev}><purge"
        f" node='{pep.NS_METADATA}'/></event></message>",
        f"<message {ns} from='a@b' to='{u}'><event {ev}><items node='urn:x'><item id='1'>"
        "<x xmlns='urn:x'/></item></items></event></message>",
        f"<message {ns} from='a@b' to='{u}'><event {ev}><items node='{pep.NS_METADATA}'><item"
        f" id='1'><metadata xmlns='{pep.NS_METADATA}'><info id='zz' bytes='-1'/><info"
        " bytes='x'/></metadata></item></items></event></message>",
        f"<message {ns} from='a@b' to='{u}'><event {ev}/></message>",
        f"<message {ns} from='a@b' to='nobody@elsewhere'><event {ev}><purge"
        f" node='{pep.NS_METADATA}'/></event></message>",
    ]
    for xml in events:
        msg = Message(conn.component_xmpp, ET.fromstring(xml))
        await conn.messages_in.on_message(conn.component, msg)
    assert bridge.events == []
    assert len(sent) == len(requests)  # no request went out
    assert "a@b" not in conn.profiles.ghost_photos  # garbage metadata did not count as "no avatar"
