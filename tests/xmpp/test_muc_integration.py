"""The connector against a real Prosody: MUC portals with real slixmpp users."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bridge.connector import (
    ConnectorError,
    GhostKey,
    MatrixMessage,
    MatrixPowerLevel,
    MatrixSender,
    Membership,
    MessageContent,
    PortalKey,
    RemoteChatInfo,
    RemoteMembership,
    RemoteMessage,
)
from connectors.xmpp import XMPPConnector
from tests.helpers import until

from .conftest import FakeBridge, Moderated, moderated, unique


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
    # Matrix -> XMPP: the returned remote id is the message's origin-id (XEP-0359), known
    # without waiting for the room's reflection; the room's stanza-id is mapped to it later.
    client = await connector.client_for(bob, portal)
    assert client is not None
    sent = await client.handle_matrix_message(
        matrix_message(portal, bob, "hi", html="<b>hi</b> there")
    )
    got = await alice.wait_message(lambda m: m["body"] == "*hi* there")
    assert str(got["from"]) == f"{room}/Bob"
    assert sent.remote_id == got["origin_id"]["id"]
    # The reflection of the puppet's own message is not emitted back.
    await asyncio.sleep(0.3)
    assert not [e for e in bridge.events if isinstance(e, RemoteMessage) and "hi" == e.content.text]


def ref(remote_id: str, sender: str | None = None, text: str | None = None) -> Any:
    from bridge.connector import MessageRef

    return MessageRef(remote_id=remote_id, sender_remote_id=sender, text=text)


async def test_corrections_reactions_retractions_replies_both_ways(
    connector: XMPPConnector, bridge: FakeBridge, prosody: Any, xclients: Any
) -> None:
    from bridge.connector import (
        MatrixEdit,
        MatrixReaction,
        MatrixReactionRemove,
        MatrixRedaction,
        RemoteEdit,
        RemoteReaction,
        RemoteReactionRemove,
        RemoteRedaction,
    )

    portal, alice, (bob,) = await open_room(connector, bridge, prosody, xclients, "Bob")
    room = portal.remote_id
    client: Any = await connector.client_for(bob, portal)
    sender = MatrixSender(bob.user_id, bob.display_name)

    # XMPP message, then its correction (XEP-0308 refers to the sender's id).
    msg = alice.xmpp.make_message(mto=room, mbody="helo", mtype="groupchat")
    msg["id"] = "alice-1"
    msg["origin_id"]["id"] = "alice-1"
    msg.send()
    original = await bridge.wait_for(
        lambda e: isinstance(e, RemoteMessage) and e.content.text == "helo"
    )
    fix = alice.xmpp.make_message(mto=room, mbody="hello", mtype="groupchat")
    fix["replace"]["id"] = "alice-1"
    fix.send()
    edit = await bridge.wait_for(lambda e: isinstance(e, RemoteEdit))
    assert edit.target_id == original.id and edit.content.text == "hello"

    # XEP-0444 reaction sets -> add and remove events.
    react = alice.xmpp.make_message(mto=room, mtype="groupchat")
    react["reactions"]["id"] = original.id
    react["reactions"]["values"] = ["👍", "🎉"]
    react.send()
    keys = set()
    for _ in range(2):
        ev = await bridge.wait_for(lambda e: isinstance(e, RemoteReaction) and e.key not in keys)
        keys.add(ev.key)
        assert ev.target_id == original.id
    assert keys == {"👍", "🎉"}
    react2 = alice.xmpp.make_message(mto=room, mtype="groupchat")
    react2["reactions"]["id"] = original.id
    react2["reactions"]["values"] = ["🎉"]
    react2.send()
    removed = await bridge.wait_for(lambda e: isinstance(e, RemoteReactionRemove))
    assert removed.key == "👍" and removed.target_id == original.id

    # XEP-0461 reply from XMPP; fallback stripped.
    reply = alice.xmpp.make_message(mto=room, mbody="yes", mtype="groupchat")
    reply["reply"]["id"] = original.id
    reply["reply"]["to"] = f"{room}/alice"
    reply["reply"].add_quoted_fallback("hello", "alice")
    reply.send()
    ev = await bridge.wait_for(lambda e: isinstance(e, RemoteMessage) and e.reply_to is not None)
    assert ev.content.text == "yes" and ev.reply_to == original.id

    # Matrix reply: XEP-0461 with the stanza-id and a quote fallback; no Matrix ids in body.
    sent = await client.handle_matrix_message(
        MatrixMessage(
            portal=portal,
            sender=sender,
            event_id="$r1",
            content=MessageContent(
                text="> <@alice:x> hello\n\nagreed",
                html="<mx-reply><blockquote>@alice:x hello</blockquote></mx-reply>agreed",
            ),
            reply_to=ref(original.id, edit.sender.remote_id, "hello"),
        )
    )
    got = await alice.wait_message(
        lambda m: (
            m.xml.find("{urn:xmpp:reply:0}reply") is not None and str(m["from"]).endswith("/Bob")
        )
    )
    assert got["reply"]["id"] == original.id
    assert got["reply"]["to"] == f"{room}/alice"
    assert "@" not in got["body"] and got["body"].endswith("agreed")
    assert got["reply"].strip_fallback_content() == "agreed"

    # Matrix edit -> XEP-0308 with the origin id of the puppet's message.
    await client.handle_matrix_edit(
        MatrixEdit(
            portal=portal,
            sender=sender,
            event_id="$e1",
            target=ref(sent.remote_id),
            content=MessageContent(text="agreed!"),
        )
    )
    corr = await alice.wait_message(lambda m: m["body"] == "agreed!")
    assert corr["replace"]["id"] == got["origin_id"]["id"]

    # Matrix reaction -> XEP-0444 full set; removal sends the remaining set.
    r = await client.handle_matrix_reaction(
        MatrixReaction(
            portal=portal, sender=sender, event_id="$x1", target=ref(original.id), key="❤️"
        )
    )
    got_r = await alice.wait_message(
        lambda m: (
            m.xml.find("{urn:xmpp:reactions:0}reactions") is not None
            and str(m["from"]).endswith("/Bob")
        )
    )
    assert got_r["reactions"]["id"] == original.id
    assert got_r["reactions"].get_values(all_chars=True) == {"❤️"}
    n = len(alice.messages)
    await client.handle_matrix_reaction_remove(
        MatrixReactionRemove(
            portal=portal,
            sender=sender,
            event_id="$x2",
            target=ref(original.id),
            key="❤️",
            reaction_remote_id=r.remote_id,
        )
    )
    got_r2 = await alice.wait_message(
        lambda m: (
            m.xml.find("{urn:xmpp:reactions:0}reactions") is not None
            and m is not got_r
            and alice.messages.index(m) >= n
        )
    )
    assert got_r2["reactions"].get_values(all_chars=True) == set()

    # Matrix redaction of own message -> XEP-0424 retraction of the room's stanza-id (the
    # message's remote id is its origin-id; the stanza-id came with the reflection).
    await client.handle_matrix_redaction(
        MatrixRedaction(portal=portal, sender=sender, event_id="$d1", target=ref(sent.remote_id))
    )
    retr = await alice.wait_message(
        lambda m: m.xml.find("{urn:xmpp:message-retract:1}retract") is not None
    )
    assert retr.xml.find("{urn:xmpp:message-retract:1}retract").attrib["id"] == stanza_id(got)

    # XMPP retraction -> redaction of the original.
    rt = alice.xmpp.make_message(mto=room, mtype="groupchat", mbody="retracted")
    rt["retract"]["id"] = original.id
    rt.send()
    red = await bridge.wait_for(lambda e: isinstance(e, RemoteRedaction))
    assert red.target_id == original.id


async def test_chat_states_and_markers_both_ways(
    connector: XMPPConnector, bridge: FakeBridge, prosody: Any, xclients: Any
) -> None:
    from bridge.connector import MatrixReceipt, MatrixTyping, RemoteReceipt, RemoteTyping

    portal, alice, (bob,) = await open_room(connector, bridge, prosody, xclients, "Bob")
    room = portal.remote_id
    client: Any = await connector.client_for(bob, portal)
    sender = MatrixSender(bob.user_id, bob.display_name)
    typing = alice.xmpp.make_message(mto=room, mtype="groupchat")
    typing["chat_state"] = "composing"
    typing.send()
    ev = await bridge.wait_for(lambda e: isinstance(e, RemoteTyping))
    assert ev.typing is True
    await client.handle_matrix_typing(
        MatrixTyping(portal=portal, sender=sender, event_id="", typing=True)
    )
    st = await alice.wait_message(
        lambda m: str(m["from"]).endswith("/Bob") and m["chat_state"] == "composing"
    )
    assert st["type"] == "groupchat"
    # Markers: Matrix read receipt -> displayed(stanza-id); XMPP displayed -> receipt.
    alice.xmpp.send_message(mto=room, mbody="read me", mtype="groupchat")
    msg = await bridge.wait_for(lambda e: isinstance(e, RemoteMessage))
    await client.handle_matrix_receipt(
        MatrixReceipt(portal=portal, sender=sender, event_id="", target=ref(msg.id))
    )
    shown = await alice.wait_message(
        lambda m: m.xml.find("{urn:xmpp:chat-markers:0}displayed") is not None
    )
    assert shown.xml.find("{urn:xmpp:chat-markers:0}displayed").attrib["id"] == msg.id
    sent = await client.handle_matrix_message(matrix_message(portal, bob, "did you see?"))
    mark = alice.xmpp.make_message(mto=room, mtype="groupchat")
    mark["displayed"]["id"] = sent.remote_id
    mark.send()
    rr = await bridge.wait_for(lambda e: isinstance(e, RemoteReceipt))
    assert rr.target_id == sent.remote_id


async def test_nick_conflict_kick_and_leave(
    connector: XMPPConnector, bridge: FakeBridge, prosody: Any, xclients: Any
) -> None:
    from bridge.connector import MatrixMembership, Membership

    room = f"{unique('room')}@{prosody.muc_domain}"
    alice = await xclients("alice")
    await alice.join(room, "Carol")  # owner (created the room), takes the nick "Carol"
    portal = PortalKey("xmpp", room)
    carol = bridge.user("@carol:example.org", "Carol")
    bridge.portal_list.append(portal)
    bridge.members[portal] = [carol]
    await connector.resolve_portal(portal, None)
    await connector.portal_opened(portal)
    # The puppet gets the nick with the conflict suffix.
    await alice.wait_presence(lambda p: str(p["from"]) == f"{room}/Carol [m]")
    occ = connector.rooms[room].ours[carol.user_id]
    # The bridge reads its own join from the same broadcast alice just got: wait for it.
    await until(lambda: occ.state == "joined", 15, "the bridge's occupant joined")
    assert occ.nick == "Carol [m]"
    # Kicked on XMPP -> the Matrix user is told and a kick is emitted.
    await alice.xmpp.plugin["xep_0045"].set_role(room, "Carol [m]", "none", reason="spam")
    kick = await bridge.wait_for(
        lambda e: isinstance(e, RemoteMembership) and e.membership == Membership.KICK
    )
    assert kick.target is not None and kick.target.matrix_user == carol.user_id
    assert kick.reason == "spam"
    await bridge.wait_notice(lambda t: "removed from" in t and "spam" in t)
    # Rejoin through a Matrix join, then leave through a Matrix leave.
    client: Any = await connector.client_for(carol, portal)
    await client.handle_matrix_membership(
        MatrixMembership(
            portal=portal,
            sender=MatrixSender(carol.user_id, "Carol"),
            event_id="$j",
            membership=Membership.JOIN,
        )
    )
    assert connector.rooms[room].ours[carol.user_id].state == "joined"
    n = len(alice.presences)
    await client.handle_matrix_membership(
        MatrixMembership(
            portal=portal,
            sender=MatrixSender(carol.user_id, "Carol"),
            event_id="$l",
            membership=Membership.LEAVE,
        )
    )
    await alice.wait_presence(
        lambda p: (
            alice.presences.index(p) >= n
            and p["type"] == "unavailable"
            and str(p["from"]).startswith(f"{room}/Carol [m]")
        )
    )


async def test_ghost_kick_from_matrix(
    connector: XMPPConnector, bridge: FakeBridge, prosody: Any, xclients: Any
) -> None:
    from bridge.connector import GhostKey, MatrixMembership, Membership

    room = f"{unique('room')}@{prosody.muc_domain}"
    # The Matrix user's puppet creates the room (owner); then an XMPP user joins.
    portal = PortalKey("xmpp", room)
    dave = bridge.user("@dave:example.org", "Dave")
    client: Any = await connector.client_for(dave, portal)
    await connector.joins.join(connector.room_for(__import__("slixmpp").JID(room)), client.identity)
    alice = await xclients("alice")
    await alice.join(room, "alice")
    join = await bridge.wait_for(
        lambda e: isinstance(e, RemoteMembership) and e.sender.display_name == "alice"
    )
    # The owner sees real JIDs: the ghost is keyed by alice's bare JID.
    assert join.sender.remote_id == alice.jid
    await client.handle_matrix_membership(
        MatrixMembership(
            portal=portal,
            sender=MatrixSender(dave.user_id, "Dave"),
            event_id="$k",
            membership=Membership.KICK,
            target=GhostKey("xmpp", alice.jid),
            reason="bye",
        )
    )
    await alice.wait_presence(
        lambda p: p["type"] == "unavailable" and 307 in p["muc"]["status_codes"]
    )


async def test_own_messages_get_their_stanza_id_and_refusals_are_told(
    connector: XMPPConnector, bridge: FakeBridge, prosody: Any, xclients: Any
) -> None:
    from bridge.connector import MatrixReaction

    portal, alice, (bob,) = await open_room(connector, bridge, prosody, xclients, "Bob")
    room = portal.remote_id
    client: Any = await connector.client_for(bob, portal)
    sender = MatrixSender(bob.user_id, bob.display_name)
    # A message and, at once, a reaction to it: the reaction waits for the reflection and
    # refers to the room's stanza-id (XEP-0444 in a MUC that advertises XEP-0359).
    sent = await client.handle_matrix_message(matrix_message(portal, bob, "react to me"))
    await client.handle_matrix_reaction(
        MatrixReaction(
            portal=portal, sender=sender, event_id="$r", target=ref(sent.remote_id), key="👍"
        )
    )
    got = await alice.wait_message(lambda m: m["body"] == "react to me")
    assert sent.remote_id == got["origin_id"]["id"]
    reaction = await alice.wait_message(
        lambda m: m.xml.find("{urn:xmpp:reactions:0}reactions") is not None
    )
    assert reaction["reactions"]["id"] == stanza_id(got)
    # The room refuses a message of a visitor: the Matrix user is told, not left guessing.
    await alice.xmpp.plugin["xep_0045"].set_role(room, "Bob", "visitor")
    await alice.wait_presence(
        lambda p: str(p["from"]) == f"{room}/Bob" and p["muc"]["role"] == "visitor"
    )
    await client.handle_matrix_message(matrix_message(portal, bob, "may I speak?"))
    await bridge.wait_notice(lambda t: "may I speak?" in t and "not delivered" in t)


async def test_self_ping_round_retries_a_failed_rejoin(
    connector: XMPPConnector, bridge: FakeBridge, prosody: Any, xclients: Any
) -> None:
    portal, alice, (bob,) = await open_room(connector, bridge, prosody, xclients, "Bob")
    room = portal.remote_id
    # Bob's occupant left the room and the rejoin after it failed (the room did not answer):
    # the next self-ping round tries again.
    occ = connector.rooms[room].ours[bob.user_id]
    connector.joins.send_leave(occ, "testing")
    await alice.wait_presence(
        lambda p: str(p["from"]) == f"{room}/Bob" and p["type"] == "unavailable"
    )
    assert occ.state == "left" and occ.wanted
    seen = len(alice.presences)
    assert await connector.joins.self_ping_all() == 1
    assert occ.state == "joined"
    await alice.wait_presence(
        lambda p: (
            alice.presences.index(p) >= seen
            and str(p["from"]) == f"{room}/Bob"
            and p["type"] != "unavailable"
        )
    )


async def test_removal_when_a_room_becomes_members_only(
    connector: XMPPConnector, bridge: FakeBridge, prosody: Any, xclients: Any
) -> None:
    """Status 322 (the room became members-only) and 321 (membership revoked in a
    members-only room): the Matrix user is told why, and the removal reaches Matrix."""
    portal, alice, (carol, dave) = await open_room(
        connector, bridge, prosody, xclients, "Carol", "Dave"
    )
    room = portal.remote_id
    muc = alice.xmpp.plugin["xep_0045"]
    await muc.set_affiliation(room, "member", jid=connector.puppet_jid(carol.user_id).bare)
    form = await muc.get_room_config(room)
    form.set_values({"muc#roomconfig_membersonly": True})
    await muc.set_room_config(room, form)
    # Dave is not a member: removed with status 322.
    kick = await bridge.wait_for(
        lambda e: (
            isinstance(e, RemoteMembership)
            and e.membership == Membership.KICK
            and e.target is not None
            and e.target.matrix_user == dave.user_id
        )
    )
    assert kick.portal == portal
    await bridge.wait_notice(
        lambda t: "removed from" in t and "members-only and you are not a member" in t
    )
    assert dave.user_id not in connector.rooms[room].ours
    assert connector.rooms[room].ours[carol.user_id].state == "joined"
    # Carol's membership is revoked: removed with status 321.
    await muc.set_affiliation(room, "none", jid=connector.puppet_jid(carol.user_id).bare)
    await bridge.wait_for(
        lambda e: (
            isinstance(e, RemoteMembership)
            and e.membership == Membership.KICK
            and e.target is not None
            and e.target.matrix_user == carol.user_id
        )
    )
    await bridge.wait_notice(lambda t: "no longer a member of this members-only room" in t)
    assert carol.user_id not in connector.rooms[room].ours


async def test_moderation_both_ways(
    connector: XMPPConnector, bridge: FakeBridge, prosody: Any, xclients: Any
) -> None:
    from bridge.connector import ConnectorError, MatrixRedaction, RemoteRedaction

    portal, alice, (bob,) = await open_room(connector, bridge, prosody, xclients, "Bob")
    room = portal.remote_id
    carl = await xclients("carl")
    await carl.join(room, "carl")
    client: Any = await connector.client_for(bob, portal)
    sender = MatrixSender(bob.user_id, bob.display_name)
    # The room offers XEP-0425 in the form of Prosody's mod_muc_moderation.
    info = await alice.xmpp.plugin["xep_0030"].get_info(jid=room, timeout=10)
    assert "urn:xmpp:message-moderate:0" in info["disco_info"]["features"]

    # XMPP -> Matrix: alice, the room's owner, moderates a message of Bob's puppet and one of
    # carl's; the room's announcements become redactions by alice's ghost, with the reason.
    sent = await client.handle_matrix_message(matrix_message(portal, bob, "from matrix"))
    bobs = await alice.wait_message(lambda m: m["body"] == "from matrix")
    carl.xmpp.send_message(mto=room, mbody="from carl", mtype="groupchat")
    carls = await alice.wait_message(lambda m: m["body"] == "from carl")
    carl_msg = await bridge.wait_for(
        lambda e: isinstance(e, RemoteMessage) and e.content.text == "from carl"
    )
    await alice.moderate(room, stanza_id(bobs), "rude")
    await alice.moderate(room, stanza_id(carls))
    first = await bridge.wait_for(lambda e: isinstance(e, RemoteRedaction))
    second = await bridge.wait_for(
        lambda e: isinstance(e, RemoteRedaction) and e is not first,
        start=bridge.events.index(first) + 1,
    )
    assert (first.target_id, first.reason) == (sent.remote_id, "rude")
    assert (second.target_id, second.reason) == (carl_msg.id, None)
    for red in (first, second):
        assert red.portal == portal
        assert red.sender.remote_id == f"{room}/alice" and red.sender.display_name == "alice"

    # Matrix -> XMPP: Bob's occupant is a participant, so the room refuses his deletion of
    # alice's message; the error says why (the core tells him in the Matrix room).
    alice.xmpp.send_message(mto=room, mbody="from alice", mtype="groupchat")
    alices = await alice.wait_message(lambda m: m["body"] == "from alice")
    original = await bridge.wait_for(
        lambda e: isinstance(e, RemoteMessage) and e.content.text == "from alice"
    )
    redaction = MatrixRedaction(
        portal=portal,
        sender=sender,
        event_id="$m1",
        target=ref(original.id, original.sender.remote_id),
        reason="off topic",
    )
    with pytest.raises(ConnectorError, match="only its moderators") as refused:
        await client.handle_matrix_redaction(redaction)
    assert "forbidden" in str(refused.value) and "Matrix only" in str(refused.value)

    def retracts_hers(m: Any) -> bool:
        mod = moderated(m)
        return mod is not None and mod.target == stanza_id(alices)

    assert not [m for m in alice.messages if retracts_hers(m)]

    # Once alice makes him a moderator, his deletion retracts her message for everyone in
    # the room, moderated by his occupant, with the reason.
    await alice.xmpp.plugin["xep_0045"].set_role(room, "Bob", "moderator")
    await alice.wait_presence(
        lambda p: str(p["from"]) == f"{room}/Bob" and p["muc"]["role"] == "moderator"
    )
    n = len(bridge.events)
    await client.handle_matrix_redaction(redaction)
    for xmpp_user in (alice, carl):
        got = await xmpp_user.wait_message(retracts_hers)
        assert str(got["from"]) == room
        assert moderated(got) == Moderated(stanza_id(alices), f"{room}/Bob", "off topic")
    # The room's announcement of Bob's moderation is not bridged back to Matrix: the next
    # message comes through, with no redaction before it.
    alice.xmpp.send_message(mto=room, mbody="after", mtype="groupchat")
    await bridge.wait_for(
        lambda e: isinstance(e, RemoteMessage) and e.content.text == "after", start=n
    )
    assert not [e for e in bridge.events[n:] if isinstance(e, RemoteRedaction)]


async def test_power_level_changes_the_room_refuses_are_told(
    connector: XMPPConnector, bridge: FakeBridge, prosody: Any, xclients: Any
) -> None:
    """Carol's occupant is a participant: the room refuses to make anyone a moderator for
    her, and she gets the room's answer; once she is a moderator it works."""
    portal, alice, (carol,) = await open_room(connector, bridge, prosody, xclients, "Carol")
    room = portal.remote_id
    bob = await xclients("bob")
    await bob.join(room, "bob")
    await bridge.wait_for(
        lambda e: (
            isinstance(e, RemoteMembership)
            and e.sender.display_name == "bob"
            and e.membership == Membership.JOIN
        )
    )
    bob_ghost = connector.rooms[room].remote["bob"].ghost_id
    client: Any = await connector.client_for(carol, portal)

    def change(level: int, previous: int) -> MatrixPowerLevel:
        return MatrixPowerLevel(
            portal=portal,
            sender=MatrixSender(carol.user_id, "Carol"),
            event_id=f"$pl{unique('e')}",
            level=level,
            previous=previous,
            target=GhostKey("xmpp", bob_ghost),
        )

    with pytest.raises(ConnectorError, match="refused"):
        await client.handle_matrix_power_level(change(50, 0))
    # alice makes Carol an admin of the room (XEP-0045 lets admins, not moderators, make
    # moderators): Carol's power in the portal follows (a member list with her puppet at
    # 50), and her change now goes through.
    carol_jid = connector.puppet_jid(carol.user_id).bare
    await alice.xmpp.plugin["xep_0045"].set_affiliation(room, "admin", jid=carol_jid)

    def carol_at_50(e: Any) -> bool:
        return (
            isinstance(e, RemoteChatInfo)
            and e.members is not None
            and any(
                m.sender.matrix_user == carol.user_id and m.power_level == 50 for m in e.members
            )
        )

    info = await bridge.wait_for(carol_at_50)
    assert any(m.sender.display_name == "bob" for m in info.members or [])
    n = len(alice.presences)
    await client.handle_matrix_power_level(change(50, 0))
    await alice.wait_presence(
        lambda p: (
            alice.presences.index(p) >= n
            and str(p["from"]) == f"{room}/bob"
            and p["muc"]["role"] == "moderator"
        )
    )
