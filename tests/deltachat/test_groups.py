"""Delta Chat groups through the bridge: joining with an invite link, creating a group for a
Matrix room with ``link``, member/name/avatar sync both ways, files both ways."""

from __future__ import annotations

import asyncio
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


async def _members(user: MatrixClient, room: str) -> set[str]:
    return set(await user.joined_members(room))


async def test_group_join_link_members_name_avatar_files(
    dcbridge: DCBridge, synapse: SynapseServer, alice: Peer, bob: Peer
) -> None:
    dan = new_user(synapse)
    await dcbridge.start()
    mgmt = await management_room(dan)
    group = int(await alice.call("create_group_chat", "Tea room", False))
    link = str(await alice.call("get_chat_securejoin_qr_code", group))
    grpid = re.search(r"[&#]x=([^&]+)", link)
    assert grpid
    reply = await command(dan, mgmt, f"join deltachat {link}", "Invited you")
    alias = f"#deltachat_{escape_localpart('g.' + grpid.group(1))}:localhost"
    assert alias in reply
    room = await dan.join(alias)
    topic = await dan.get_state(room, "m.room.topic") or {}
    assert "decrypted at the bridge" in topic["topic"]
    assert (await dan.get_state(room, "m.room.name") or {})["name"] == "Tea room"
    assert ghost(alice.addr) in await _members(dan, room)
    # Messages both ways.
    await alice.send(group, "hi matrix")
    await dan.wait_for_event(room, lambda e: body(e) == "hi matrix", 30)
    since = alice.mark()
    await dan.send_text(room, "hi delta")
    got = await alice.wait_message(lambda m: m["text"].endswith("> hi delta"), since)
    assert got["chatId"] == group
    # A new member on Delta Chat appears as a ghost; a removed one leaves.
    await bob.join(link)
    await until(lambda: _has(dan, room, ghost(bob.addr)), 30, "bob's ghost joined")
    # Names both ways.
    await alice.call("set_chat_name", group, "Tea and cake")
    await until(lambda: _name_is(dan, room, "Tea and cake"), 30, "room renamed")
    hs: Any = dcbridge.bridge.hs if dcbridge.bridge else None
    levels = await hs.get_state(room, "m.room.power_levels") or {}
    levels.setdefault("users", {})[dan.user_id] = 100
    await hs.send_state(room, "m.room.power_levels", levels)
    await dan.send_state(room, "m.room.name", "", {"name": "Cake room"})
    await until(lambda: _chat_name(alice, group, "Cake room"), 30, "group renamed")
    # The group's avatar reaches the room.
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "avatar.png"
        path.write_bytes(png(64, 64))
        await alice.call("set_chat_profile_image", group, str(path))
    await until(lambda: _avatar(dan, room), 30, "room avatar")
    # Files: an image from Delta Chat, a file from Matrix.
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "photo.png"
        path.write_bytes(png(32, 16))
        await alice.send(group, "", file=str(path), filename="photo.png", viewtype="Image")
    image = await dan.wait_for_event(room, lambda e: e["content"].get("msgtype") == "m.image", 30)
    assert image["sender"] == ghost(alice.addr)
    data = b"binary \x00\x01\x02 payload" * 100
    mxc = await _upload(dan, data, "application/octet-stream", "notes.bin")
    since = alice.mark()
    await dan.send_event(
        room,
        "m.room.message",
        {"msgtype": "m.file", "body": "notes.bin", "url": mxc, "info": {"size": len(data)}},
    )
    got = await alice.wait_message(lambda m: m.get("fileName") == "notes.bin", since)
    assert await asyncio.to_thread(Path(got["file"]).read_bytes) == data
    # Bob is removed on Delta Chat: his ghost leaves.
    bob_contact = await alice.call("lookup_contact_id_by_addr", bob.addr)
    await alice.call("remove_contact_from_chat", group, bob_contact)
    await until(lambda: _has(dan, room, ghost(bob.addr), False), 30, "bob's ghost left")
    await dan.close()


async def _has(user: MatrixClient, room: str, who: str, present: bool = True) -> bool:
    return (who in await user.joined_members(room)) == present


async def _name_is(user: MatrixClient, room: str, name: str) -> bool:
    return bool((await user.get_state(room, "m.room.name") or {}).get("name") == name)


async def _chat_name(peer: Peer, chat: int, name: str) -> bool:
    return bool((await peer.call("get_basic_chat_info", chat))["name"] == name)


async def _avatar(user: MatrixClient, room: str) -> bool:
    state: Any = await user.get_state(room, "m.room.avatar")
    return bool(state and state.get("url"))


async def test_link_creates_a_group_for_a_room(
    dcbridge: DCBridge, synapse: SynapseServer, bob: Peer
) -> None:
    await dcbridge.start()
    eve = new_user(synapse)
    room = await eve.create_room(name="Lounge", invite=["@mimibot:localhost"])
    await until(lambda: _has(eve, room, "@mimibot:localhost"), 20, "bot joined")
    await eve.send_text(room, "!mimi link deltachat Lounge")
    await eve.wait_for_event(room, lambda e: "Linked" in body(e))
    notice = await eve.wait_for_event(room, lambda e: "invite link" in body(e), 30)
    link = body(notice).rsplit(" ", 1)[-1]
    chat = await bob.join(link)
    since = bob.mark()
    await eve.send_text(room, "welcome bob")
    got = await bob.wait_message(lambda m: m["text"].endswith("> welcome bob"), since, 60)
    assert got["chatId"] == chat
    await bob.send(chat, "thanks eve")
    await eve.wait_for_event(
        room, lambda e: body(e) == "thanks eve" and e["sender"] == ghost(bob.addr), 30
    )
    # A logged-in Matrix user speaks as themselves once their account is in the group.
    await eve.close()
