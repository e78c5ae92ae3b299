"""An encrypted XMPP portal end to end: a Matrix user with a real E2EE client (matrix-nio), a
real Synapse and a real Prosody. Everything the bridge posts in the portal (text, edits,
reactions, replies, images) is encrypted by the bot's device; what she sends encrypted,
images included, reaches XMPP in clear, as XMPP carries it."""

from __future__ import annotations

import io
from typing import Any

from nio import Event
from nio.crypto.attachments import decrypt_attachment
from slixmpp import JID

from tests.e2ee.conftest import NioFactory, nio_user  # noqa: F401 (a fixture)
from tests.e2ee.helpers import BOT, was_encrypted
from tests.harness.prosody import ProsodyServer
from tests.helpers import until

from .test_e2e_synapse import (  # noqa: F401 (xmpp_bridge and xusers are fixtures)
    NS_REACTIONS,
    NS_REPLY,
    NS_RETRACT,
    PNG,
    _attr,
    _redacted,
    alias_of,
    fetch,
    from_nick,
    ghost_of,
    new_room,
    sid,
    unique,
    xmpp_bridge,
    xusers,
)


def _content(e: Event) -> dict[str, Any]:
    c = e.source.get("content", {})
    return c if isinstance(c, dict) else {}


async def test_encrypted_xmpp_portal(
    xmpp_bridge: Any,  # noqa: F811 (the fixture)
    prosody: ProsodyServer,
    xusers: Any,  # noqa: F811
    nio_user: NioFactory,  # noqa: F811
) -> None:
    await xmpp_bridge(encryption={"allow": True, "default": True})
    muc = new_room(prosody)
    alice = await xusers("alice")
    await alice.join(muc, "alice")
    ann = await nio_user()
    assert ann.raw is not None
    room = await ann.join(alias_of(muc))
    assert await ann.raw.get_state(room, "m.room.encryption", "")
    await ann.wait_member(room, BOT)
    nick = (await ann.raw.get_profile(ann.user_id))["displayname"]
    await alice.wait_presence(from_nick(muc, nick), timeout=45)
    ghost = ghost_of(f"{muc}/alice")

    # XMPP text and its correction -> encrypted Matrix message and edit.
    msg = alice.xmpp.make_message(mto=muc, mbody="helo", mtype="groupchat")
    msg["id"] = msg["origin_id"]["id"] = unique("a")
    msg.send()
    original = await ann.wait_for_body(room, "helo", sender=ghost)
    assert await was_encrypted(ann, room, original.event_id)
    seen = await alice.wait_message(lambda m: m["body"] == "helo")
    fix = alice.xmpp.make_message(mto=muc, mbody="hello", mtype="groupchat")
    fix["replace"]["id"] = msg["id"]
    fix.send()
    edit = await ann.wait_for(
        room,
        lambda e: _content(e).get("m.new_content", {}).get("body") == "hello",
        what="the correction",
    )
    assert await was_encrypted(ann, room, edit.event_id)
    assert _content(edit)["m.relates_to"]["event_id"] == original.event_id

    # An XMPP reaction -> an encrypted Matrix annotation.
    react = alice.xmpp.make_message(mto=muc, mtype="groupchat")
    react["reactions"]["id"] = sid(seen)
    react["reactions"]["values"] = ["👍"]
    react.send()
    reaction = await ann.wait_for(
        room, lambda e: _content(e).get("m.relates_to", {}).get("key") == "👍", what="reaction"
    )
    assert await was_encrypted(ann, room, reaction.event_id)

    # Her encrypted text, edit, reaction, reply and redaction -> XMPP.
    mine = await ann.send_text(room, "from matrix")
    assert await was_encrypted(ann, room, mine)
    first = await alice.wait_message(lambda m: m["body"] == "from matrix", timeout=45)
    await ann.send(
        room,
        {
            "msgtype": "m.text",
            "body": "* from matrix!",
            "m.new_content": {"msgtype": "m.text", "body": "from matrix!"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": mine},
        },
    )
    corr = await alice.wait_message(lambda m: m["body"] == "from matrix!", timeout=45)
    assert corr["replace"]["id"] == first["id"]
    heart = {
        "m.relates_to": {"rel_type": "m.annotation", "event_id": original.event_id, "key": "❤️"}
    }
    await ann.send_encrypted_raw(room, "m.reaction", heart)
    got_r = await alice.wait_message(
        lambda m: m.xml.find(NS_REACTIONS) is not None and from_nick(muc, nick)(m), timeout=45
    )
    assert got_r["reactions"]["id"] == sid(seen)
    assert got_r["reactions"].get_values(all_chars=True) == {"❤️"}
    await ann.send_text(
        room, "agreed", **{"m.relates_to": {"m.in_reply_to": {"event_id": original.event_id}}}
    )
    rep = await alice.wait_message(
        lambda m: m.xml.find(NS_REPLY) is not None and from_nick(muc, nick)(m), timeout=45
    )
    assert rep["reply"]["id"] == sid(seen) and "agreed" in rep["body"]
    await ann.client.room_redact(room, mine)
    retr = await alice.wait_message(lambda m: m.xml.find(NS_RETRACT) is not None, timeout=45)
    assert _attr(retr, NS_RETRACT, "id") == sid(first)

    # An XMPP retraction redacts the Matrix event.
    rt = alice.xmpp.make_message(mto=muc, mtype="groupchat", mbody="retracted")
    rt["retract"]["id"] = sid(seen)
    rt.send()
    await until(lambda: _redacted(ann.raw, room, original.event_id), 45, what="retraction")

    # Her encrypted image -> an XEP-0066 link serving it decrypted.
    file = await ann.upload_encrypted(PNG, "image/png", "dot.png")
    await ann.send(
        room,
        {"msgtype": "m.image", "body": "dot.png", "file": file, "info": {"mimetype": "image/png"}},
    )
    got = await alice.wait_message(
        lambda m: m["oob"]["url"] != "" and from_nick(muc, nick)(m), timeout=45
    )
    assert await fetch(got["oob"]["url"]) == (200, PNG)

    # An XMPP HTTP upload -> an encrypted Matrix image she decrypts.
    data = PNG + b"\0" * 64
    alice.xmpp.register_plugin("xep_0363")
    link = await alice.xmpp.plugin["xep_0363"].upload_file(
        "photo.png",
        size=len(data),
        content_type="image/png",
        input_file=io.BytesIO(data),
        domain=JID(prosody.domain),
        timeout=10,
    )
    share = alice.xmpp.make_message(mto=muc, mbody=link, mtype="groupchat")
    share["oob"]["url"] = link
    share.send()
    img = await ann.wait_for(
        room,
        lambda e: _content(e).get("msgtype") == "m.image" and e.sender == ghost,
        what="alice's picture",
    )
    assert await was_encrypted(ann, room, img.event_id)
    content = _content(img)
    assert "url" not in content and content["info"]["mimetype"] == "image/png"
    f = content["file"]
    cipher = await ann.download(f["url"])
    assert cipher != data
    assert decrypt_attachment(cipher, f["key"]["k"], f["hashes"]["sha256"], f["iv"]) == data
