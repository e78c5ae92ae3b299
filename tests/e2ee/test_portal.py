"""An encrypted portal: text, formatting, replies, edits and reactions cross both ways
between a real E2EE client and the test network, and everything the bridge posts (for its
ghosts too) is encrypted by the bot's device."""

from __future__ import annotations

from typing import Any

import pytest
from mautrix.crypto import InboundGroupSession
from mimi_testnet import TestNetClient as NetClient
from nio import Event
from nio.crypto.attachments import decrypt_attachment

from bridge.connector import Attachment
from tests.conftest import BridgeFactory
from tests.e2ee.conftest import NioFactory
from tests.e2ee.helpers import (
    command,
    encrypted_management_room,
    encrypted_portal,
    portal_alias,
    was_encrypted,
)
from tests.helpers import sent, until

# Each test a room of its own: portal aliases outlive the bridges of other tests in the session.
BOTH_WAYS, MEMBERS, FILES = "#e2ee-both-ways", "#e2ee-members", "#e2ee-files"
ONCE = "#e2ee-decrypt-once"
BOB = "@testnet_bob:localhost"


def _content(e: Event) -> dict[str, Any]:
    c = e.source.get("content", {})
    return c if isinstance(c, dict) else {}


async def test_encrypted_portal_both_ways(make_bridge: BridgeFactory, nio_user: NioFactory) -> None:
    bridge = await make_bridge(encryption={"allow": True, "default": True})
    alice = await nio_user()
    mgmt = await encrypted_management_room(alice)
    await command(alice, mgmt, "login testnet alice-remote", "Logged in")
    await command(alice, mgmt, f"join testnet {BOTH_WAYS}", "Invited you")
    room = await alice.join(portal_alias(BOTH_WAYS))
    assert alice.raw is not None
    assert await alice.raw.get_state(room, "m.room.encryption", "")

    # Matrix -> remote: her encrypted text and formatted text, decrypted by the bridge.
    mine = await alice.send_text(room, "hello remote")
    assert await was_encrypted(alice, room, mine)
    plain = await until(sent(bridge, "message", text="hello remote"), 45)
    assert plain["as_"] == "alice-remote"
    await alice.send(
        room,
        {
            "msgtype": "m.text",
            "body": "**bold**",
            "format": "org.matrix.custom.html",
            "formatted_body": "<strong>bold</strong>",
        },
    )
    fmt = await until(sent(bridge, "message", text="**bold**"), 45)
    assert "<strong>bold</strong>" in fmt["html"]

    # Remote -> Matrix: a ghost's message, encrypted by the bot's device, readable by her.
    tn: Any = bridge.connectors["testnet"]
    bob_msg = await tn.remote_message(BOTH_WAYS, "bob", "hi from bob", html="<em>hi</em>")
    bob_evt = await alice.wait_for_body(room, "hi from bob", sender=BOB)
    assert await was_encrypted(alice, room, bob_evt.event_id)
    assert "<em>hi</em>" in _content(bob_evt)["formatted_body"]

    # Replies both ways.
    await alice.send_text(
        room,
        "replying to bob",
        **{"m.relates_to": {"m.in_reply_to": {"event_id": bob_evt.event_id}}},
    )
    rep = await until(sent(bridge, "message", text="replying to bob"), 45)
    assert rep["reply_to"] == bob_msg
    await tn.remote_message(BOTH_WAYS, "bob", "bob answers", reply_to=plain["id"])
    answer = await alice.wait_for_body(room, "bob answers", sender=BOB)
    assert _content(answer)["m.relates_to"]["m.in_reply_to"]["event_id"] == mine

    # Edits both ways.
    await alice.send(
        room,
        {
            "msgtype": "m.text",
            "body": "* hello remote (edited)",
            "m.new_content": {"msgtype": "m.text", "body": "hello remote (edited)"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": mine},
        },
    )
    edit = await until(sent(bridge, "edit", target=plain["id"]), 45)
    assert edit["text"] == "hello remote (edited)"
    await tn.remote_edit(BOTH_WAYS, "bob", bob_msg, "hi from bob, corrected")
    bob_edit = await alice.wait_for(
        room,
        lambda e: _content(e).get("m.new_content", {}).get("body") == "hi from bob, corrected",
        what="bob's edit",
    )
    assert await was_encrypted(alice, room, bob_edit.event_id)
    assert _content(bob_edit)["m.relates_to"] == {
        "rel_type": "m.replace",
        "event_id": bob_evt.event_id,
    }

    # Reactions both ways, encrypted.
    reaction = {
        "m.relates_to": {"rel_type": "m.annotation", "event_id": bob_evt.event_id, "key": "👍"}
    }
    mine_react = await alice.send_encrypted_raw(room, "m.reaction", reaction)
    assert await was_encrypted(alice, room, mine_react)
    await until(sent(bridge, "reaction", target=bob_msg, key="👍"), 45)
    await tn.remote_reaction(BOTH_WAYS, "bob", plain["id"], "🎉")
    bob_react = await alice.wait_for(
        room,
        lambda e: _content(e).get("m.relates_to", {}).get("key") == "🎉",
        what="bob's reaction",
    )
    assert _content(bob_react)["m.relates_to"]["event_id"] == mine
    assert await was_encrypted(alice, room, bob_react.event_id)

    # Redactions both ways (they are never encrypted): her reaction, her message, bob's.
    await alice.client.room_redact(room, mine_react)
    await until(sent(bridge, "unreact", target=bob_msg, key="👍"), 45)
    await alice.client.room_redact(room, mine)
    await until(sent(bridge, "redaction", target=plain["id"]), 45)
    await tn.remote_redaction(BOTH_WAYS, "bob", bob_msg)
    await alice.wait_for(
        room,
        lambda e: (
            e.source.get("type") == "m.room.redaction"
            and e.source.get("redacts", _content(e).get("redacts")) == bob_evt.event_id
        ),
        what="the redaction of bob's message",
    )


async def test_group_session_follows_the_members(
    make_bridge: BridgeFactory, nio_user: NioFactory
) -> None:
    """A Matrix user who leaves cannot read what follows (a new session, not shared with her);
    one who joins gets the key of what follows. Ghosts coming and going change nothing."""
    bridge = await make_bridge(encryption={"allow": True, "default": True})
    tn: Any = bridge.connectors["testnet"]
    alice = await nio_user()
    room = await encrypted_portal(alice, MEMBERS)
    carol = await nio_user()
    await carol.join(portal_alias(MEMBERS))
    await alice.wait_member(room, carol.user_id)

    async def bob_says(text: str, *readers: Any) -> str:
        await tn.remote_message(MEMBERS, "bob", text)
        evt = None
        for reader in readers:
            evt = await reader.wait_for_body(room, text, sender=BOB)
        assert evt is not None and alice.raw is not None
        return str((await alice.raw.get_event(room, evt.event_id))["content"]["session_id"])

    first = await bob_says("one", alice, carol)
    # A ghost joining is no reason for a new session.
    await tn.remote_message(MEMBERS, "dave", "dave is here")
    await alice.wait_for_body(room, "dave is here")
    assert await bob_says("still one", alice) == first

    await carol.client.room_leave(room)
    await alice.wait_for(
        room,
        lambda e: (
            e.source.get("type") == "m.room.member"
            and e.source.get("state_key") == carol.user_id
            and _content(e).get("membership") == "leave"
        ),
        what="carol leaving",
    )
    second = await bob_says("two", alice)
    assert second != first

    erin = await nio_user()
    await erin.join(portal_alias(MEMBERS))
    await alice.wait_member(room, erin.user_id)
    third = await bob_says("three", alice, erin)
    assert third not in (first, second)


async def test_encrypted_portal_files_both_ways(
    make_bridge: BridgeFactory, nio_user: NioFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    bridge = await make_bridge(encryption={"allow": True, "default": True})
    tn: Any = bridge.connectors["testnet"]
    received: list[bytes] = []
    original = NetClient.handle_matrix_message

    async def spy(self: Any, msg: Any) -> Any:
        received.extend(a.data for a in msg.content.attachments)
        return await original(self, msg)

    # A spy on the test network: what reaches it, byte for byte.
    monkeypatch.setattr(NetClient, "handle_matrix_message", spy)
    alice = await nio_user()
    room = await encrypted_portal(alice, FILES)

    # Matrix -> remote: her encrypted file reaches the network decrypted.
    notes = b"minutes of the meeting\n" * 50
    file = await alice.upload_encrypted(notes, "text/plain", "notes.txt")
    assert await alice.download(file["url"]) != notes  # the media repo holds ciphertext
    await alice.send(room, {"msgtype": "m.file", "body": "notes.txt", "file": file})
    await until(sent(bridge, "message", files=[("notes.txt", len(notes))]), 45)
    assert received == [notes]

    # Remote -> Matrix: a ghost's file arrives as an encrypted attachment she can open.
    picture = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    await tn.remote_message(
        FILES,
        "bob",
        "",
        attachments=[Attachment("pic.png", "image/png", data=picture, size=len(picture))],
    )
    evt = await alice.wait_for(
        room, lambda e: _content(e).get("msgtype") == "m.image", what="bob's picture"
    )
    content = _content(evt)
    assert await was_encrypted(alice, room, evt.event_id)
    assert "url" not in content and content["info"]["mimetype"] == "image/png"
    cipher = await alice.download(content["file"]["url"])
    assert cipher != picture
    f = content["file"]
    assert decrypt_attachment(cipher, f["key"]["k"], f["hashes"]["sha256"], f["iv"]) == picture


async def test_each_encrypted_message_is_decrypted_once(
    make_bridge: BridgeFactory, nio_user: NioFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bridge's Megolm decryptions, counted by ciphertext: one per message, formatted
    text and edits arriving whole all the same."""
    bridge = await make_bridge(encryption={"allow": True, "default": True})
    decrypted: list[str] = []
    original = InboundGroupSession.decrypt

    def counting(self: Any, ciphertext: str, *args: Any) -> Any:
        decrypted.append(ciphertext)
        return original(self, ciphertext, *args)

    # Only the bridge's sessions are mautrix's (the client's are nio's).
    monkeypatch.setattr(InboundGroupSession, "decrypt", counting)
    alice = await nio_user()
    room = await encrypted_portal(alice, ONCE)
    assert alice.raw is not None
    html = {"format": "org.matrix.custom.html", "formatted_body": "<em>once</em>"}
    first = await alice.send(room, {"msgtype": "m.text", "body": "once", **html})
    plain = await until(sent(bridge, "message", text="once"), 45)
    assert "<em>once</em>" in plain["html"]
    new = {"msgtype": "m.text", "body": "once more", "format": html["format"]}
    new["formatted_body"] = "<em>once more</em>"
    edit = await alice.send(
        room,
        {
            "msgtype": "m.text",
            "body": "* once more",
            "m.new_content": new,
            "m.relates_to": {"rel_type": "m.replace", "event_id": first},
        },
    )
    edited = await until(sent(bridge, "edit", target=plain["id"]), 45)
    assert edited["text"] == "once more"
    for event_id in (first, edit):
        ciphertext = (await alice.raw.get_event(room, event_id))["content"]["ciphertext"]
        assert decrypted.count(ciphertext) == 1, event_id
