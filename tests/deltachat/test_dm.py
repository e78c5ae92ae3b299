"""Delta Chat direct chats through the bridge's own account (relay) and through a puppet, end to
end: real Delta Chat cores over postfix + dovecot, real Synapse."""

from __future__ import annotations

from typing import Any

from bridge.connector import PortalKey
from tests.deltachat.conftest import DCBridge, Peer
from tests.harness.synapse import MatrixClient, SynapseServer
from tests.helpers import command, management_room, new_user, until


def body(e: dict[str, Any]) -> str:
    return str(e.get("content", {}).get("body", ""))


def ghost(addr: str) -> str:
    return "@deltachat_" + addr.replace("@", "=40") + ":localhost"


async def dm_room(dcbridge: DCBridge, user: MatrixClient, addr: str) -> str:
    """The DM portal of ``user`` with ``addr``, joined."""
    assert dcbridge.bridge is not None
    store = dcbridge.bridge.portal_store
    key = PortalKey("deltachat", addr, receiver=user.user_id)
    portal = await until(lambda: store.get(key), 45, f"a DM with {addr}")
    await user.join(portal.room_id)
    return str(portal.room_id)


async def contact_link(user: MatrixClient, mgmt: str) -> str:
    reply = await command(user, mgmt, "deltachat invite", "invite link")
    return reply.rsplit(" ", 1)[-1]


async def test_dm_both_ways_through_the_relay(
    dcbridge: DCBridge, synapse: SynapseServer, alice: Peer
) -> None:
    ann = new_user(synapse)
    await dcbridge.start(policy={"dm_receiver": ann.user_id})
    mgmt = await management_room(ann)
    link = await contact_link(ann, mgmt)
    chat = await alice.join(link)
    # Delta Chat -> Matrix: a new chat with the bridge's address reaches the policy's receiver.
    first = await alice.send(chat, "hello from delta chat")
    room = await dm_room(dcbridge, ann, alice.addr)
    hello = await ann.wait_for_event(room, lambda e: body(e) == "hello from delta chat", 30)
    assert hello["sender"] == ghost(alice.addr)
    info = await ann.get_state(room, "m.bridge", f"mimi-bridge/deltachat/{alice.addr}")
    assert info and info["com.github.mimi-bridge.decrypted_at_bridge"] is True
    # Matrix -> Delta Chat: relayed with the display name, as a quoted reply.
    since = alice.mark()
    await ann.reply(room, hello["event_id"], "hi alice")
    got = await alice.wait_message(lambda m: "hi alice" in m["text"], since)
    assert got["text"].endswith("> hi alice") and got["text"].startswith("<")
    assert got["quote"] and got["quote"]["text"] == "hello from delta chat"
    assert got["showPadlock"]  # end-to-end encrypted between the cores
    # A formatted message keeps the relay's name prefix and is rendered as light markdown.
    prefix = got["text"].removesuffix("hi alice")
    since = alice.mark()
    await ann.send_event(
        room,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "plain body",
            "format": "org.matrix.custom.html",
            "formatted_body": '<strong>hi</strong> <a href="https://example.org/">there</a>',
        },
    )
    fmt = await alice.wait_message(lambda m: "**hi**" in m["text"], since)
    assert fmt["text"] == f"{prefix}**hi** [there](https://example.org/)"
    # Reactions both ways.
    since = alice.mark()
    await ann.react(room, hello["event_id"], "👍")
    await alice.wait_event(lambda e: e["kind"] == "ReactionsChanged", since)
    reactions = await alice.call("get_message_reactions", first)
    assert [r["emoji"] for r in reactions["reactions"]] == ["👍"]
    mine = await ann.wait_for_event(room, lambda e: body(e) == got["text"] or "hi alice" in body(e))
    await alice.call("send_reaction", got["id"], ["🎉"])
    await ann.wait_for_event(
        room,
        lambda e: (
            e["type"] == "m.reaction"
            and e["content"]["m.relates_to"]["key"] == "🎉"
            and e["content"]["m.relates_to"]["event_id"] == mine["event_id"]
        ),
    )
    # Edits both ways.
    await alice.call("send_edit_request", first, "hello, edited")
    await ann.wait_for_event(
        room,
        lambda e: (
            e["content"].get("m.new_content", {}).get("body") == "hello, edited"
            and e["content"]["m.relates_to"]["event_id"] == hello["event_id"]
        ),
    )
    since = alice.mark()
    await ann.edit(room, mine["event_id"], "hi alice (edited)")
    await alice.wait_event(
        lambda e: e["kind"] == "MsgsChanged" and e.get("msgId") == got["id"], since
    )
    await until(
        lambda: _text_is(alice, got["id"], "hi alice (edited)"), 20, "edit reached Delta Chat"
    )
    # Delete for everyone, both ways.
    await ann.redact(room, mine["event_id"])
    await until(lambda: _gone(alice, got["id"]), 30, "deletion reached Delta Chat")
    await alice.call("delete_messages_for_all", [first])
    await ann.wait_for_event(
        room,
        lambda e: e["event_id"] == hello["event_id"] and not e["content"],
        30,
    )
    await ann.close()


async def _text_is(peer: Peer, msg_id: int, text: str) -> bool:
    """The message's text is ``text`` (or ends with it, after a relay's name prefix)."""
    return bool(str((await peer.call("get_message", msg_id))["text"]).endswith(text))


async def _gone(peer: Peer, msg_id: int) -> bool:
    return not await peer.call("get_existing_msg_ids", [msg_id])


async def test_dm_opened_from_matrix_and_puppet_login(
    dcbridge: DCBridge, synapse: SynapseServer, alice: Peer
) -> None:
    ben = new_user(synapse)
    await dcbridge.start(policy={"dm_receiver": "@nobody:localhost"})
    mgmt = await management_room(ben)
    # The bridge's account meets alice (so that it knows her key).
    link = await contact_link(ben, mgmt)
    await alice.join(link)
    # Logging in makes ben a Delta Chat user of his own.
    puppet_addr = dcbridge.stack.add_user("puppet-" + ben.user_id[1:].split(":")[0], "ben-pw")
    await command(ben, mgmt, "login deltachat nobody@example.test wrong", "failed")
    await command(ben, mgmt, f"login deltachat {puppet_addr} ben-pw", "Logged in")
    # Inviting alice's ghost opens a DM from ben's own address.
    room = await ben.create_room(invite=[ghost(alice.addr)], is_direct=True)
    await until(lambda: _member(ben, room, ghost(alice.addr)), 20, "ghost joined")
    since = alice.mark()
    await ben.send_text(room, "from my own address")
    got = await alice.wait_message(lambda m: m["text"] == "from my own address", since)
    sender = await alice.call("get_contact", got["fromId"])
    assert sender["address"] == puppet_addr
    # Alice answers in that chat; it reaches the same room.
    await alice.call("accept_chat", got["chatId"])
    await alice.send(got["chatId"], "answer to ben")
    await ben.wait_for_event(
        room, lambda e: body(e) == "answer to ben" and e["sender"] == ghost(alice.addr), 30
    )
    # Edits by the puppet are the author's own edits on Delta Chat.
    mine = await ben.wait_for_event(room, lambda e: body(e) == "from my own address")
    since = alice.mark()
    await ben.edit(room, mine["event_id"], "from my own address!")
    await until(lambda: _text_is(alice, got["id"], "from my own address!"), 20, "edit")
    await command(ben, mgmt, "logout deltachat", "Logged out")
    await ben.close()


async def _member(user: MatrixClient, room: str, who: str) -> bool:
    return who in await user.joined_members(room)


async def test_unknown_senders_and_rate_limit(
    dcbridge: DCBridge, synapse: SynapseServer, alice: Peer, bob: Peer
) -> None:
    cat = new_user(synapse)
    await dcbridge.start(
        policy={"dm_receiver": cat.user_id, "allowed_senders": [alice.addr]},
        rate_limit={"messages": 3, "per_seconds": 600},
    )
    mgmt = await management_room(cat)
    link = await contact_link(cat, mgmt)
    # Bob is not allowed by the policy: his chat stays a request and nothing reaches Matrix.
    bob_chat = await bob.join(link)
    await bob.send(bob_chat, "let me in")
    chat = await alice.join(link)
    for i in range(6):
        await alice.send(chat, f"flood {i}")
    room = await dm_room(dcbridge, cat, alice.addr)

    # Told in the chat's room, or in the management room when the drop came before the room.
    async def told() -> bool:
        for r in (room, mgmt):
            if any("sends too many messages" in body(e) for e in await cat.messages(r)):
                return True
        return False

    await until(told, 60, "rate-limit notice")
    await _settle(dcbridge)
    bodies = [body(e) for e in await cat.messages(room) if e["type"] == "m.room.message"]
    # Three pass (the mail server may deliver them in any order), the rest are dropped, and the
    # Matrix user is told.
    floods = [b for b in bodies if b.startswith("flood")]
    assert len(floods) == 3 and len(set(floods)) == 3, bodies
    for r in await cat.joined_rooms():
        assert ghost(bob.addr) not in await cat.joined_members(r)
    await cat.close()


async def _settle(dcbridge: DCBridge) -> None:
    import asyncio

    await asyncio.sleep(3)
    assert dcbridge.bridge is not None
    await dcbridge.bridge.queues.drain()


async def test_backfill_of_an_existing_chat(
    dcbridge: DCBridge, synapse: SynapseServer, alice: Peer
) -> None:
    gus = new_user(synapse)
    # No policy.dm_receiver: a chat with the bridge's address reaches no one yet.
    await dcbridge.start()
    mgmt = await management_room(gus)
    chat = await alice.join(await contact_link(gus, mgmt))
    early = [await alice.send(chat, f"early {i}") for i in range(3)]
    conn: Any = dcbridge.connector
    for msg_id in early:
        mid = await alice.mid(msg_id)
        await until(
            lambda mid=mid: conn.store.by_mid(conn.accounts.bridge_account, mid),
            30,
            "the bridge's core has the message",
        )
    assert dcbridge.bridge is not None
    await dcbridge.bridge.stop()
    # Now such chats are gus's: the next message opens the room, and the chat's earlier
    # messages fill it.
    await dcbridge.start(policy={"dm_receiver": gus.user_id})
    await alice.send(chat, "now bridged")
    room = await dm_room(dcbridge, gus, alice.addr)
    for text in ("now bridged", "early 0", "early 1", "early 2"):
        evt = await gus.wait_for_event(room, lambda e, t=text: body(e) == t, 30)  # type: ignore[misc]
        assert evt["sender"] == ghost(alice.addr)
    bodies = [body(e) for e in await gus.messages(room, 100)]
    assert all(bodies.count(t) == 1 for t in ("early 0", "early 1", "early 2", "now bridged"))
    await gus.close()
