"""An encrypted IRC portal end to end: a Matrix user with a real E2EE client (matrix-nio), a
real Synapse and a real ngircd. Everything the bridge posts in the portal is encrypted by the
bot's device; what she sends encrypted reaches IRC in clear, as IRC carries it."""

from __future__ import annotations

import aiohttp

from tests.conftest import BridgeFactory
from tests.e2ee.conftest import NioFactory, nio_user  # noqa: F401 (a fixture)
from tests.e2ee.helpers import BOT, was_encrypted
from tests.harness.ircd import IrcServer

from .test_e2e_synapse import (
    IrcUsers,
    alias,
    ghost,
    irc_connectors,
    joined,
    said,
    uniq,
)

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


async def test_encrypted_irc_portal(
    make_bridge: BridgeFactory,
    ngircd: IrcServer,
    irc: IrcUsers,
    nio_user: NioFactory,  # noqa: F811
) -> None:
    chan = "#" + uniq("crypt")
    carol = await irc(ngircd, "carol")
    await carol.join(chan)
    await make_bridge(
        connectors=irc_connectors(ngircd), encryption={"allow": True, "default": True}
    )
    ann = await nio_user()
    assert ann.raw is not None
    room = await ann.join(alias(chan))
    assert await ann.raw.get_state(room, "m.room.encryption", "")
    await ann.wait_member(room, BOT)
    display = (await ann.raw.get_profile(ann.user_id))["displayname"]
    puppet = f"{display}[m]"
    await carol.expect(joined(puppet, chan), what="the puppet's JOIN")

    # Text both ways.
    mine = await ann.send_text(room, "hello irc")
    assert await was_encrypted(ann, room, mine)
    await carol.expect(said(puppet, "hello irc"), timeout=45, what="her text")
    carol.send(f"PRIVMSG {chan} :what time is it?")
    question = await ann.wait_for_body(room, "what time is it?", sender=ghost(carol.nick))
    assert await was_encrypted(ann, room, question.event_id)

    # A reply names the IRC user; an edit goes out as "* text".
    await ann.send_text(
        room, "noon", **{"m.relates_to": {"m.in_reply_to": {"event_id": question.event_id}}}
    )
    await carol.expect(said(puppet, f"{carol.nick}: noon"), timeout=45, what="the reply")
    await ann.send(
        room,
        {
            "msgtype": "m.text",
            "body": "* hello irc!",
            "m.new_content": {"msgtype": "m.text", "body": "hello irc!"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": mine},
        },
    )
    await carol.expect(said(puppet, "* hello irc!"), timeout=45, what="the edit")

    # An encrypted reaction becomes an ACTION quoting the message.
    reaction = {
        "m.relates_to": {"rel_type": "m.annotation", "event_id": question.event_id, "key": "👍"}
    }
    await ann.send_encrypted_raw(room, "m.reaction", reaction)
    await carol.expect(
        said(puppet, '\x01ACTION reacted 👍 to "what time is it?"\x01'),
        timeout=45,
        what="the reaction",
    )

    # A redaction IRC cannot carry is told, encrypted.
    await ann.client.room_redact(room, mine)
    told = await ann.wait_for_body(room, "IRC cannot delete messages", sender=BOT)
    assert await was_encrypted(ann, room, told.event_id)

    # Her encrypted image: IRC gets a link that serves it decrypted.
    file = await ann.upload_encrypted(PNG, "image/png", "dot.png")
    await ann.send(
        room,
        {"msgtype": "m.image", "body": "dot.png", "file": file, "info": {"mimetype": "image/png"}},
    )
    line = await carol.expect(
        lambda ln: ln.command == "PRIVMSG" and ln.nick == puppet and "http" in ln.param(1),
        timeout=45,
        what="the image's link",
    )
    url = line.param(1).split()[-1]
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200 and await r.read() == PNG

    # IRC carries no files: a link an IRC user posts stays a link, encrypted.
    carol.send(f"PRIVMSG {chan} :see http://example.invalid/pic.png")
    link = await ann.wait_for_body(room, "http://example.invalid/pic.png", sender=ghost(carol.nick))
    assert await was_encrypted(ann, room, link.event_id)
