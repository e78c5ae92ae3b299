"""An IRC bridge as a new admin sets it up: config.example.yaml with only the homeserver, the
appservice and the network's address changed, the registration from ``-g``, the bridge run as
``python -m bridge -c config.yaml``. Through Synapse: the example's channel joined by alias, text
both ways, a reply, an edit, a reaction, a long message as a link, a restart of the bridge, and
every message seen exactly once on each side (no copy of a Matrix message coming back from its own
puppet, what was sent while the bridge was down delivered once, no replay after the restart)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from connectors.irc import ids
from tests.harness.example_config import AdminSetup, load_example
from tests.harness.ircd import IrcServer
from tests.harness.synapse import MatrixClient

from .conftest import RawIRC

Event = dict[str, Any]
EXAMPLE = load_example()["connectors"]["irc"]
NET = next(iter(EXAMPLE["networks"]))  # the example's network id
NETWORK = EXAMPLE["networks"][NET]
CHANNEL = NETWORK["channels"][0]  # joined by the bot at start
CASEMAPPING = NETWORK["casemapping"]
BOT_NICK = NETWORK["bot"]["nick"]


def alias(channel: str) -> str:
    return f"#irc_{NET}_{ids.alias_localpart(channel, CASEMAPPING)}:localhost"


def ghost(nick: str) -> str:
    return f"@irc_{NET}_{ids.ghost_localpart(nick, CASEMAPPING)}:localhost"


def said(nick: str, text: str) -> Callable[[Any], bool]:
    return lambda ln: ln.command == "PRIVMSG" and ln.nick == nick and ln.param(1) == text


def joined(nick: str) -> Callable[[Any], bool]:
    return lambda ln: ln.command == "JOIN" and ln.nick == nick and ln.param(0) == CHANNEL


def body(e: Event) -> str:
    return str(e.get("content", {}).get("body", "")) if e["type"] == "m.room.message" else ""


async def timeline(user: MatrixClient, room: str) -> list[tuple[str, str]]:
    """(sender, body) of every message in the room, oldest first."""
    return [(e["sender"], body(e)) for e in await user.messages(room, 200) if body(e)]


@pytest.fixture
def admin(tmp_path: Path, ngircd: IrcServer) -> Iterator[AdminSetup]:
    setup = AdminSetup(tmp_path)
    net = ("irc", "networks", NET)
    try:
        setup.write(
            {
                ("irc", "enabled"): True,
                (*net, "host"): ngircd.host,
                (*net, "port"): ngircd.port,
                # The test ngircd listens without TLS (the example's comment: 6667 without).
                (*net, "tls"): False,
            }
        )
        setup.start_synapse()
        yield setup
    finally:
        setup.close()


async def test_example_config_bridges_a_channel_through_a_restart(
    admin: AdminSetup, irc_users: Callable[..., Any]
) -> None:
    assert admin.synapse is not None
    carol: RawIRC = await irc_users("carolex")
    await carol.join(CHANNEL)
    await admin.start_bridge()
    await carol.expect(joined(BOT_NICK), 60, "the bot joins the example's channel")
    ann = admin.synapse.new_client("ann")
    try:
        await _scenario(admin, carol, ann)
    finally:
        await ann.close()


async def _scenario(admin: AdminSetup, carol: RawIRC, ann: MatrixClient) -> None:
    await ann.set_displayname("Ann")
    room = await ann.join(alias(CHANNEL))
    puppet = NETWORK["nick_template"].format(displayname="Ann", localpart="ann")
    await carol.expect(joined(puppet), 30, "the puppet's JOIN")

    # Text both ways.
    await ann.send_text(room, "hello irc")
    await carol.expect(said(puppet, "hello irc"), 30, "Matrix text on IRC")
    carol.send(f"PRIVMSG {CHANNEL} :hello matrix")
    hello = await ann.wait_for_event(room, lambda e: body(e) == "hello matrix", 30)
    assert hello["sender"] == ghost(carol.nick)
    # A reply names the IRC user, an edit goes out as "* text", a reaction as an ACTION.
    await ann.reply(room, hello["event_id"], "hi carol")
    await carol.expect(said(puppet, f"{carol.nick}: hi carol"), 30, "the reply")
    nine = await ann.send_text(room, "it is nine")
    await carol.expect(said(puppet, "it is nine"), 30)
    await ann.edit(room, nine, "it is ten")
    await carol.expect(said(puppet, "* it is ten"), 30, "the edit")
    await ann.react(room, hello["event_id"], "👍")
    reacted = '\x01ACTION reacted 👍 to "hello matrix"\x01'
    await carol.expect(said(puppet, reacted), 30, "the reaction")
    # Longer than the example's line_limit: one line with a link that works for anyone
    # (public_address defaults to the appservice's address).
    long_text = "\n".join(f"line {i}" for i in range(5))
    await ann.send_text(room, long_text)
    link = await carol.expect(
        lambda ln: ln.nick == puppet and "(full message: http" in ln.param(1), 30, "the link"
    )
    url = link.param(1).rsplit("(full message: ", 1)[1].rstrip(")")
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert (r.status, await r.text()) == (200, long_text), url

    # A restart: a clean stop on SIGTERM, the puppet back once, the mapping kept.
    assert await admin.stop_bridge() == 0, admin.log_tail()
    await carol.expect(lambda ln: ln.command == "QUIT" and ln.nick == puppet, 30, "QUIT")
    mark = len(carol.lines)
    # Synapse keeps what Matrix users send while the bridge is down, and delivers it after.
    await ann.send_text(room, "while the bridge was down")
    await admin.start_bridge()
    await carol.expect(lambda ln: ln in carol.lines[mark:] and joined(puppet)(ln), 60, "rejoin")
    await carol.expect(said(puppet, "while the bridge was down"), 60, "the message sent meanwhile")
    assert await ann.resolve_alias(alias(CHANNEL)) == room
    await ann.reply(room, hello["event_id"], "still you")
    await carol.expect(said(puppet, f"{carol.nick}: still you"), 30, "a reply after the restart")
    await ann.edit(room, nine, "it is eleven")
    await carol.expect(said(puppet, "* it is eleven"), 30, "an edit after the restart")
    carol.send(f"PRIVMSG {CHANNEL} :after the restart")
    after = await ann.wait_for_event(room, lambda e: body(e) == "after the restart", 30)
    assert after["sender"] == ghost(carol.nick)
    await ann.send_text(room, "last one")
    await carol.expect(said(puppet, "last one"), 30)
    await asyncio.sleep(2)  # time for a late copy or a replay to show

    # Each message exactly once on each side.
    mine = ["hello irc", f"{carol.nick}: hi carol", "it is nine", "* it is ten", reacted]
    mine += [link.param(1)]
    mine += ["while the bridge was down", f"{carol.nick}: still you", "* it is eleven", "last one"]
    on_irc = [ln.param(1) for ln in carol.messages(CHANNEL) if ln.nick == puppet]
    assert on_irc == mine, "what IRC saw from the puppet"
    rejoins = [ln for ln in carol.lines[mark:] if joined(puppet)(ln)]
    assert len(rejoins) == 1
    assert "Traceback" not in admin.log_text(), admin.log_tail()
    # In Matrix, only the IRC user's messages come from a ghost: none of Ann's comes back
    # from her own puppet as a ghost's copy.
    seen = await timeline(ann, room)
    from_irc = [text for sender, text in seen if sender != ann.user_id]
    assert from_irc == ["hello matrix", "after the restart"], f"messages of others: {seen}"
