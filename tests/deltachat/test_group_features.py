"""Delta Chat groups through the bridge, one portal for many features: quoted replies, reactions
(relayed users' merged, removals both ways), the room's avatar and topic as the group's image
and description, ghosts invited and kicked from Matrix, and contacts' avatars and names."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from bridge.connector import escape_localpart
from tests.deltachat.conftest import DCBridge, Peer, png
from tests.deltachat.test_dm import body, ghost
from tests.harness.synapse import MatrixClient, SynapseServer
from tests.helpers import command, management_room, new_user, until
from tests.test_e2e_rooms import _upload

NOTE = "decrypted at the bridge"


async def join_group_portal(
    dcbridge: DCBridge, user: MatrixClient, peer: Peer, name: str
) -> tuple[int, str, str, str]:
    """``peer`` creates a group, ``user`` joins it from Matrix with its invite link: the
    group's chat id (``peer``'s), its invite link, the portal room (``user`` holds power 100
    there) and ``user``'s management room."""
    mgmt = await management_room(user)
    group = int(await peer.call("create_group_chat", name, False))
    link = str(await peer.call("get_chat_securejoin_qr_code", group))
    grpid = re.search(r"[&#]x=([^&]+)", link)
    assert grpid
    await command(user, mgmt, f"join deltachat {link}", "Invited you")
    room = await user.join(f"#deltachat_{escape_localpart('g.' + grpid.group(1))}:localhost")
    hs: Any = dcbridge.bridge.hs if dcbridge.bridge else None
    levels = await hs.get_state(room, "m.room.power_levels") or {}
    levels.setdefault("users", {})[user.user_id] = 100
    await hs.send_state(room, "m.room.power_levels", levels)
    return group, link, room, mgmt


async def _bridge_reactions(peer: Peer, msg_id: int, bridge_addr: str) -> list[str]:
    """The emoji the bridge's account reacted with to ``peer``'s message."""
    contact = await peer.call("lookup_contact_id_by_addr", bridge_addr)
    reactions = await peer.call("get_message_reactions", msg_id) or {}
    return sorted((reactions.get("reactionsByContact") or {}).get(str(contact)) or [])


async def _members(peer: Peer, chat: int) -> set[str]:
    chat_info = await peer.call("get_full_chat_by_id", chat)
    out = set()
    for cid in chat_info["contactIds"]:
        out.add(str((await peer.call("get_contact", cid))["address"]).lower())
    return out


def _reaction_to(event_id: str, key: str, sender: str) -> Any:
    def match(e: dict[str, Any]) -> bool:
        rel = e["content"].get("m.relates_to") or {}
        return bool(
            e["type"] == "m.reaction"
            and e["sender"] == sender
            and rel.get("event_id") == event_id
            and rel.get("key") == key
        )

    return match


async def test_group_replies_reactions_meta_members_profiles(
    dcbridge: DCBridge, synapse: SynapseServer, alice: Peer, bob: Peer
) -> None:
    dan = new_user(synapse)
    eve = new_user(synapse)
    await dcbridge.start()
    group, link, room, _ = await join_group_portal(dcbridge, dan, alice, "Features")
    await eve.join(room)

    # --- quoted replies from Delta Chat: m.in_reply_to the quoted message's event ---------
    question = await alice.send(group, "question from alice")
    q_evt = await dan.wait_for_event(room, lambda e: body(e) == "question from alice", 30)
    since = alice.mark()
    said = await dan.send_text(room, "matrix says hi")
    said_dc = await alice.wait_message(lambda m: m["text"].endswith("> matrix says hi"), since)
    await alice.send(group, "quoting matrix", quotedMessageId=said_dc["id"])
    await alice.send(group, "quoting myself", quotedMessageId=question)
    for text, target in (("quoting matrix", said), ("quoting myself", q_evt["event_id"])):
        got = await dan.wait_for_event(room, lambda e, t=text: body(e) == t, 30)  # type: ignore[misc]
        assert got["sender"] == ghost(alice.addr)
        assert got["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == target

    # --- reactions: Delta Chat keeps one per account; relayed users share the bridge's ------
    thumbs = await dan.react(room, q_evt["event_id"], "👍")

    async def bridge_reacted(want: list[str]) -> bool:
        return await _bridge_reactions(alice, question, dcbridge.address) == want

    await until(lambda: bridge_reacted(["👍"]), 30, "dan's relayed reaction")
    heart = await eve.react(room, q_evt["event_id"], "❤️")
    await until(lambda: bridge_reacted(["❤️"]), 30, "eve's relayed reaction")
    # Eve's replaced dan's on Delta Chat: the room is told.
    notice = await dan.wait_for_event(room, lambda e: "one reaction per account" in body(e), 30)
    assert "❤️" in body(notice) and "👍" in body(notice) and dan.user_id in body(notice)
    # Removing eve's brings dan's back; removing dan's leaves none.
    await eve.redact(room, heart)
    await until(lambda: bridge_reacted(["👍"]), 30, "dan's reaction back")
    await dan.redact(room, thumbs)
    await until(lambda: bridge_reacted([]), 30, "all relayed reactions removed")
    # A Delta Chat reaction and its removal.
    await alice.call("send_reaction", said_dc["id"], ["🎉"])
    party = await dan.wait_for_event(room, _reaction_to(said, "🎉", ghost(alice.addr)), 30)
    await alice.call("send_reaction", said_dc["id"], [])
    await dan.wait_for_event(
        room, lambda e: e["event_id"] == party["event_id"] and not e["content"], 30
    )

    # --- the room's avatar and topic become the group's image and description -----------
    assert (await alice.call("get_full_chat_by_id", group)).get("profileImage") is None
    mxc = await _upload(dan, png(48, 48, (20, 160, 20)), "image/png", "room.png")
    await dan.send_state(room, "m.room.avatar", "", {"url": mxc, "info": {"mimetype": "image/png"}})
    await until(
        lambda: _chat_field(alice, group, "profileImage"), 30, "group image from the room avatar"
    )
    await dan.send_state(room, "m.room.topic", "", {"topic": "Cakes and tea"})
    await until(lambda: _description(alice, group, "Cakes and tea"), 30, "group description")
    # The bridge's note is kept in the room's topic.
    await until(lambda: _topic_is(dan, room, "Cakes and tea\n"), 30, "topic with the note")
    await alice.call("set_chat_description", group, "Only tea")
    await until(lambda: _topic_is(dan, room, "Only tea\n"), 30, "room topic from Delta Chat")

    # --- ghosts kicked and invited from Matrix leave and join the group ----------------
    await bob.join(link)
    await until(lambda: _joined(dan, room, ghost(bob.addr)), 30, "bob's ghost joined")
    await dan.kick(room, ghost(bob.addr), "not today")
    await until(lambda: _no_member(alice, group, bob.addr), 30, "bob removed from the group")
    await dan.invite(room, ghost(bob.addr))
    await until(lambda: _member(alice, group, bob.addr), 30, "bob added to the group again")
    await until(lambda: _joined(dan, room, ghost(bob.addr)), 30, "bob's ghost joined again")

    # --- a contact's avatar and name become their ghost's --------------------------------
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "me.png"
        path.write_bytes(png(40, 40, (0, 0, 200)))
        await alice.call("set_config", "selfavatar", str(path))
    await alice.call("set_config", "displayname", "Alice Liddell")
    await alice.send(group, "new look")
    await dan.wait_for_event(room, lambda e: body(e) == "new look", 30)

    async def profile() -> bool:
        p = await dan.get_profile(ghost(alice.addr))
        return bool(p.get("avatar_url") and p.get("displayname") == "Alice Liddell")

    await until(profile, 30, "alice's ghost with her avatar and name")
    await dan.close()
    await eve.close()


async def test_puppet_follows_its_user_into_a_group(
    dcbridge: DCBridge, synapse: SynapseServer, alice: Peer
) -> None:
    fay = new_user(synapse)
    await dcbridge.start()
    group, link, room, mgmt = await join_group_portal(dcbridge, fay, alice, "Puppets")
    puppet = dcbridge.stack.add_user("puppet-" + fay.user_id[1:].split(":")[0], "fay-pw")
    await command(fay, mgmt, f"login deltachat {puppet} fay-pw", "Logged in")
    # Fay is in the portal: the bridge's account adds her own account to the group, and the
    # relay speaks for her meanwhile.
    since = alice.mark()
    await fay.send_text(room, "first, relayed")
    await alice.wait_message(
        lambda m: m["text"] == "<" + fay.user_id[1:].split(":")[0] + "> first, relayed", since
    )
    await until(lambda: _member(alice, group, puppet), 60, "fay's own account in the group")
    conn: Any = dcbridge.connector
    account = conn.accounts.account_of_user[fay.user_id]
    grpid = re.search(r"[&#]x=([^&]+)", link)
    assert grpid

    async def puppet_can_send() -> bool:
        chat = await conn.chats.chat_of_group(account, grpid.group(1))
        if chat is None:
            return False
        info = await conn.rpc.call("get_full_chat_by_id", account, chat)
        return bool(info["canSend"] and not info["isContactRequest"])

    await until(puppet_can_send, 60, "fay's account accepted the group")
    since = alice.mark()
    await fay.send_text(room, "second, as myself")
    got = await alice.wait_message(lambda m: m["text"] == "second, as myself", since)
    assert got["chatId"] == group
    assert (await alice.call("get_contact", got["fromId"]))["address"].lower() == puppet
    # Alice's messages reach the room once (not again through fay's account).
    await alice.send(group, "hi fay")
    await alice.send(group, "bye fay")
    await fay.wait_for_event(room, lambda e: body(e) == "bye fay", 30)
    await fay.wait_for_event(room, lambda e: body(e) == "hi fay", 30)
    bodies = [body(e) for e in await fay.messages(room, 100)]
    assert bodies.count("hi fay") == 1 and bodies.count("second, as myself") == 1
    # Fay leaves the room: her account leaves the group.
    await fay.leave(room)
    await until(lambda: _no_member(alice, group, puppet), 60, "fay's account left the group")
    await fay.close()


async def _chat_field(peer: Peer, chat: int, field: str) -> Any:
    return (await peer.call("get_full_chat_by_id", chat)).get(field)


async def _description(peer: Peer, chat: int, text: str) -> bool:
    return bool(await peer.call("get_chat_description", chat) == text)


async def _topic_is(user: MatrixClient, room: str, prefix: str) -> bool:
    topic = str((await user.get_state(room, "m.room.topic") or {}).get("topic", ""))
    return topic.startswith(prefix) and NOTE in topic


async def _joined(user: MatrixClient, room: str, who: str) -> bool:
    return who in await user.joined_members(room)


async def _member(peer: Peer, chat: int, addr: str) -> bool:
    return addr in await _members(peer, chat)


async def _no_member(peer: Peer, chat: int, addr: str) -> bool:
    return addr not in await _members(peer, chat)
