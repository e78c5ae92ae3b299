"""End to end: a real Synapse, a real ngircd and the bridge core with the IRC connector.

Matrix users are :class:`MatrixClient`\\ s talking to Synapse; IRC users are plain asyncio IRC
clients (:class:`RawIRC`, not the connector's client). Each test checks what both sides see:
joining portals (alias and ``join`` command), text, formatting, emotes, notices, mentions,
long messages, the edit/reply/reaction/redaction policies, IRC membership, topic and modes
mirrored in Matrix, Matrix kicks and bans becoming IRC ones, DMs both ways, ``irc nick``,
``login irc``, injection attempts, and restarts of ngircd and of the bridge.

ngircd comes from Debian (``apt-get install ngircd``); a missing server fails the tests with
that hint, it never skips them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.bridge import Bridge
from bridge.connector import PortalKey, escape_localpart
from connectors.irc.protocol import casefold
from tests.conftest import BridgeFactory
from tests.harness.ircd import IrcServer, start_ngircd
from tests.harness.synapse import MatrixClient

# IrcUsers, matrix_user and uniq are imported from here by other test modules too.
from .conftest import IrcUsers, RawIRC, uniq, wait_for

BOT = "@mimibot:localhost"
NET = "irc_test"

Event = dict[str, Any]


# --- helpers -----------------------------------------------------------------------------------


def irc_connectors(
    server: IrcServer, channels: list[str] | None = None, **over: Any
) -> dict[str, Any]:
    """The bridge's ``connectors`` section: one IRC network ``test`` on ``server``."""
    net: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "bot": {"nick": uniq("mimibot")},
        "flood": {"burst": 50, "rate": 50},
        "reconnect": {"min_delay": 0.2, "max_delay": 1.0},
        "connects_per_second": 200,
        "register_timeout": 5,
        "channels": channels or [],
    }
    net.update(over)
    return {"irc": {"networks": {"test": net}}}


def alias(channel: str) -> str:
    return f"#irc_test_{channel}:localhost"


def ghost(nick: str) -> str:
    """The ghost of an IRC nick: its localpart is the nick folded with rfc1459 (the default
    ``casemapping``), escaped."""
    return f"@irc_test_{escape_localpart(casefold(nick, 'rfc1459'))}:localhost"


def body_is(text: str, msgtype: str | None = None) -> Callable[[Event], bool]:
    def pred(e: Event) -> bool:
        c = e["content"]
        return (
            e["type"] == "m.room.message"
            and c.get("body") == text
            and (msgtype is None or c.get("msgtype") == msgtype)
        )

    return pred


def notice_has(text: str) -> Callable[[Event], bool]:
    return lambda e: (
        e["type"] == "m.room.message"
        and e["content"].get("msgtype") == "m.notice"
        and text in e["content"].get("body", "")
    )


def member_event(user_id: str, membership: str) -> Callable[[Event], bool]:
    return lambda e: (
        e["type"] == "m.room.member"
        and e.get("state_key") == user_id
        and e["content"].get("membership") == membership
    )


def said(nick: str, text: str, command: str = "PRIVMSG") -> Callable[[Any], bool]:
    return lambda ln: ln.command == command and ln.nick == nick and ln.param(1) == text


def joined(nick: str, channel: str) -> Callable[[Any], bool]:
    return lambda ln: (
        ln.command == "JOIN" and ln.nick == nick and ln.param(0).lower() == channel.lower()
    )


async def until(pred: Callable[[], Any], timeout: float = 15.0) -> Any:  # noqa: ASYNC109
    """Poll an async predicate until it returns something true."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = await pred()
        if value:
            return value
        if loop.time() > end:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.1)


async def management_room(user: MatrixClient) -> str:
    room = await user.create_room(invite=[BOT], is_direct=True)
    await user.wait_for_event(room, lambda e: "management room" in e["content"].get("body", ""))
    return room


async def command(user: MatrixClient, room: str, text: str, expect: str) -> str:
    await user.send_text(room, text)
    evt = await user.wait_for_event(
        room, lambda e: e["sender"] == BOT and expect in e["content"].get("body", "")
    )
    return str(evt["content"]["body"])


async def in_room(user: MatrixClient, room: str, member: str) -> bool:
    return member in await user.joined_members(room)


async def portal_with_users(
    make_bridge: BridgeFactory,
    server: IrcServer,
    irc: IrcUsers,
    matrix: Callable[..., Any],
    **over: Any,
) -> tuple[Bridge, str, RawIRC, MatrixClient, str, str]:
    """An IRC user (``carol``, channel operator) in a new channel, a bridge, and a Matrix user
    joined to the channel's portal through its alias; returns (bridge, channel, carol, the
    Matrix user, the portal room, the Matrix user's puppet nick)."""
    chan = "#" + uniq("chan")
    carol = await irc(server, "carol")
    await carol.join(chan)
    bridge = await make_bridge(connectors=irc_connectors(server, **over))
    ann = await matrix("Ann")
    room = await ann.join(alias(chan))
    display = (await ann.get_profile(ann.user_id))["displayname"]
    puppet = f"{display}[m]"
    await carol.expect(joined(puppet, chan), what="the puppet's JOIN")
    return bridge, chan, carol, ann, room, puppet


# --- portals, text, identities -----------------------------------------------------------------


async def test_alias_join_text_both_ways(
    make_bridge: BridgeFactory, ngircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    bridge, chan, carol, ann, room, puppet = await portal_with_users(
        make_bridge, ngircd, irc, matrix
    )
    # The portal carries the bridge state and the alias points at it.
    assert await ann.resolve_alias(alias(chan)) == room
    state = await ann.get_state(room, "m.bridge", f"mimi-bridge/{NET}/{chan}")
    assert state and state["protocol"]["id"] == "irc" and state["channel"]["id"] == chan
    # Matrix text: a PRIVMSG from the user's own puppet.
    await ann.send_text(room, "hello irc")
    await carol.expect(said(puppet, "hello irc"), what="the PRIVMSG")
    # IRC text: a message from the IRC user's ghost, whose display name is the nick.
    carol.send(f"PRIVMSG {chan} :hello matrix")
    evt = await ann.wait_for_event(room, body_is("hello matrix", "m.text"))
    assert evt["sender"] == ghost(carol.nick)
    assert (await ann.get_profile(ghost(carol.nick)))["displayname"] == carol.nick
    # Both directions keep their order.
    for i in range(5):
        await ann.send_text(room, f"m{i}")
    for i in range(5):
        carol.send(f"PRIVMSG {chan} :i{i}")
    await carol.expect(said(puppet, "m4"))
    got = [ln.param(1) for ln in carol.messages(chan) if ln.nick == puppet]
    assert got[-5:] == [f"m{i}" for i in range(5)]
    await ann.wait_for_event(room, body_is("i4"))
    bodies = [e["content"].get("body") for e in await ann.messages(room, 30)]
    seen = [b for b in bodies if b in {f"i{i}" for i in range(5)}]
    assert seen == [f"i{i}" for i in range(5)]
    assert bridge.connectors["irc"]


async def test_join_command_in_management_room(
    make_bridge: BridgeFactory, ngircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    chan = "#" + uniq("cmd")
    carol = await irc(ngircd, "carol")
    await carol.join(chan)
    await make_bridge(connectors=irc_connectors(ngircd))
    bea = await matrix("Bea")
    mgmt = await management_room(bea)
    reply = await command(bea, mgmt, f"join irc_test {chan}", "Invited you")
    assert alias(chan) in reply
    room = reply.rsplit("(", 1)[1].rstrip(").")
    assert room.startswith("!")
    assert await bea.join(room) == room
    puppet = f"{(await bea.get_profile(bea.user_id))['displayname']}[m]"
    await carol.expect(joined(puppet, chan), what="the puppet's JOIN")
    # The IRC user already in the channel has a ghost in the room.
    await until(lambda: in_room(bea, room, ghost(carol.nick)))
    await bea.send_text(room, "joined by command")
    await carol.expect(said(puppet, "joined by command"))
    # An unknown network and a name that is not a channel are refused with a reason.
    await command(bea, mgmt, "join irc_nowhere #x", "unknown network")
    await command(bea, mgmt, "join irc_test notachannel", "was not found")


async def test_channels_from_config_are_bridged_at_start(
    make_bridge: BridgeFactory, ngircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    chan = "#" + uniq("cfg")
    cfg = irc_connectors(ngircd, channels=[chan])
    bot_nick = cfg["irc"]["networks"]["test"]["bot"]["nick"]
    carol = await irc(ngircd, "carol")
    await carol.join(chan)
    await make_bridge(connectors=cfg)
    await carol.expect(joined(bot_nick, chan), what="the bot's JOIN")
    carol.send(f"PRIVMSG {chan} :anyone on matrix?")
    cleo = await matrix("Cleo")
    room = await cleo.join(alias(chan))
    await cleo.send_text(room, "yes")
    puppet = f"{(await cleo.get_profile(cleo.user_id))['displayname']}[m]"
    await carol.expect(said(puppet, "yes"))


# --- formatting, emotes, notices, mentions -----------------------------------------------------


async def test_formatting_emote_notice_mentions_both_ways(
    make_bridge: BridgeFactory, ngircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    _, chan, carol, ann, room, puppet = await portal_with_users(make_bridge, ngircd, irc, matrix)
    # Matrix HTML -> mIRC codes.
    await ann.send_event(
        room,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "**bold** and _it_",
            "format": "org.matrix.custom.html",
            "formatted_body": "<strong>bold</strong> and <em>it</em> and <u>u</u>",
        },
    )
    line = await carol.expect(lambda ln: ln.command == "PRIVMSG" and "\x02" in ln.param(1))
    assert line.param(1) == "\x02bold\x02 and \x1dit\x1d and \x1fu\x1f"
    # mIRC codes -> Matrix HTML.
    carol.send(f"PRIVMSG {chan} :\x02bold\x02 plain \x1ditalic\x1d \x0304red\x03")
    evt = await ann.wait_for_event(room, body_is("bold plain italic red"))
    html = evt["content"]["formatted_body"]
    assert evt["content"]["format"] == "org.matrix.custom.html"
    assert "bold</strong>" in html or "bold</b>" in html
    assert "italic</em>" in html or "italic</i>" in html
    assert "red</font>" in html or "red</span>" in html
    # m.emote <-> CTCP ACTION.
    await ann.send_event(room, "m.room.message", {"msgtype": "m.emote", "body": "waves"})
    await carol.expect(said(puppet, "\x01ACTION waves\x01"), what="ACTION")
    carol.send(f"PRIVMSG {chan} :\x01ACTION nods\x01")
    evt = await ann.wait_for_event(room, body_is("nods", "m.emote"))
    assert evt["sender"] == ghost(carol.nick)
    # m.notice <-> NOTICE.
    await ann.send_event(room, "m.room.message", {"msgtype": "m.notice", "body": "fyi"})
    await carol.expect(said(puppet, "fyi", "NOTICE"), what="NOTICE")
    carol.send(f"NOTICE {chan} :heads up")
    await ann.wait_for_event(room, body_is("heads up", "m.notice"))
    # Mentions: a pill of a ghost becomes its nick; an IRC "nick: " of a puppet becomes a pill.
    await ann.send_event(
        room,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": f"{carol.nick}: look",
            "format": "org.matrix.custom.html",
            "formatted_body": f'<a href="https://matrix.to/#/{ghost(carol.nick)}">{carol.nick}</a>'
            ": look",
            "m.mentions": {"user_ids": [ghost(carol.nick)]},
        },
    )
    await carol.expect(said(puppet, f"{carol.nick}: look"), what="mention")
    carol.send(f"PRIVMSG {chan} :{puppet}: you there?")
    evt = await ann.wait_for_event(room, body_is(f"{puppet}: you there?"))
    assert evt["content"]["m.mentions"] == {"user_ids": [ann.user_id]}
    assert f"https://matrix.to/#/{ann.user_id}" in evt["content"]["formatted_body"]
    # Mid-text, both ways: a pill labelled with anything is the nick; a nick (any case) of
    # a channel member is a pill, of the Matrix user behind a puppet or of an IRC user's ghost.
    await ann.send_event(
        room,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "ask Carol later",
            "format": "org.matrix.custom.html",
            "formatted_body": f'ask <a href="https://matrix.to/#/{ghost(carol.nick)}">Carol</a>'
            " later",
        },
    )
    await carol.expect(said(puppet, f"ask {carol.nick} later"), what="mid-text pill")
    carol.send(f"PRIVMSG {chan} :thanks {puppet.upper()} and {carol.nick}, bye")
    evt = await ann.wait_for_event(room, body_is(f"thanks {puppet.upper()} and {carol.nick}, bye"))
    assert evt["content"]["m.mentions"] == {"user_ids": [ann.user_id, ghost(carol.nick)]}
    html = evt["content"]["formatted_body"]
    assert f'<a href="https://matrix.to/#/{ann.user_id}">{puppet.upper()}</a>' in html
    assert f'<a href="https://matrix.to/#/{ghost(carol.nick)}">{carol.nick}</a>' in html


# --- long messages -----------------------------------------------------------------------------


async def test_long_and_multiline_messages(
    make_bridge: BridgeFactory, ngircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    _, chan, carol, ann, room, puppet = await portal_with_users(make_bridge, ngircd, irc, matrix)
    # Two lines: two PRIVMSGs.
    await ann.send_text(room, "first line\nsecond line")
    await carol.expect(said(puppet, "second line"))
    assert [ln.param(1) for ln in carol.messages(chan)][-2:] == ["first line", "second line"]
    # One line of 1200 bytes without spaces: split on UTF-8 boundaries, every line as relayed
    # by the server (prefix included) within 512 bytes.
    long = "ü" * 600
    before = len(carol.raw)
    await ann.send_text(room, long)
    await wait_for(
        lambda: (
            "".join(ln.param(1) for ln in carol.messages(chan) if set(ln.param(1)) == {"ü"}) == long
        ),
        what="the split line",
    )
    raws = [raw for _, raw in carol.raw[before:] if b" PRIVMSG " in raw]
    assert len(raws) == 3
    for raw in raws:
        assert len(raw) <= 512
        raw.decode("utf-8")  # every piece is valid UTF-8 on its own
    # Above the line limit (3): one line with a link to the full text, which the link serves.
    text = "\n".join(f"paste line {i}" for i in range(10))
    await ann.send_text(room, text)
    line = await carol.expect(
        lambda ln: ln.command == "PRIVMSG" and "full message:" in ln.param(1), what="the link"
    )
    assert line.param(1).startswith("paste line 0")
    assert not any(ln.param(1) == "paste line 5" for ln in carol.messages(chan))
    url = line.param(1).rsplit("full message: ", 1)[1].rstrip(")")
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200, f"{url} -> {resp.status}"
        assert (await resp.text()) == text


# --- edits, replies, reactions, redactions -----------------------------------------------------


async def test_edit_reply_reaction_redaction_policies(
    make_bridge: BridgeFactory, ngircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    _, chan, carol, ann, room, puppet = await portal_with_users(make_bridge, ngircd, irc, matrix)
    carol.send(f"PRIVMSG {chan} :what time is it?")
    question = await ann.wait_for_event(room, body_is("what time is it?"))
    # A reply names the IRC user: "carol: ...".
    await ann.reply(room, question["event_id"], "noon")
    await carol.expect(said(puppet, f"{carol.nick}: noon"), what="the reply")
    # An edit goes out as "* corrected text".
    mine = await ann.send_text(room, "it is nine")
    await carol.expect(said(puppet, "it is nine"))
    await ann.edit(room, mine, "it is ten")
    await carol.expect(said(puppet, "* it is ten"), what="the edit")
    # A reaction goes out as an ACTION quoting the message.
    reaction = await ann.react(room, question["event_id"], "👍")
    await carol.expect(
        said(puppet, '\x01ACTION reacted 👍 to "what time is it?"\x01'), what="the reaction"
    )
    # What IRC cannot carry is told in the room: taking a reaction back, deleting a message.
    await ann.redact(room, reaction)
    await ann.wait_for_event(room, notice_has("cannot take back a reaction"))
    await ann.redact(room, mine)
    await ann.wait_for_event(room, notice_has("IRC cannot delete messages"))
    assert not any("it is ten" in ln.param(1) and ln.command != "PRIVMSG" for ln in carol.lines)


async def test_policies_off_are_told(
    make_bridge: BridgeFactory, ngircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    _, chan, carol, ann, room, puppet = await portal_with_users(
        make_bridge, ngircd, irc, matrix, edits="off", reactions="off", replies="off"
    )
    carol.send(f"PRIVMSG {chan} :ping")
    ping = await ann.wait_for_event(room, body_is("ping"))
    await ann.reply(room, ping["event_id"], "pong")
    await carol.expect(said(puppet, "pong"), what="a reply without the nick")
    mine = await ann.send_text(room, "typo")
    await carol.expect(said(puppet, "typo"))
    await ann.edit(room, mine, "fixed")
    await ann.wait_for_event(room, notice_has("Edits are not sent to IRC"))
    await ann.react(room, ping["event_id"], "🎉")
    await ann.wait_for_event(room, notice_has("Reactions are not sent to IRC"))
    await asyncio.sleep(0.5)
    assert not [ln for ln in carol.messages(chan) if "fixed" in ln.param(1) or "🎉" in ln.param(1)]


# --- membership, topic, modes ------------------------------------------------------------------


async def test_irc_membership_topic_modes_mirrored(
    make_bridge: BridgeFactory, ngircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    _, chan, carol, ann, room, puppet = await portal_with_users(make_bridge, ngircd, irc, matrix)
    # carol created the channel: an operator, power level 50 in Matrix.
    levels = await until(
        lambda: _levels_with(ann, room, ghost(carol.nick)),
    )
    assert levels["users"][ghost(carol.nick)] == 50
    # JOIN: the ghost joins.
    dave = await irc(ngircd, "dave")
    await dave.join(chan)
    await until(lambda: in_room(ann, room, ghost(dave.nick)))
    assert (await ann.get_profile(ghost(dave.nick)))["displayname"] == dave.nick
    # MODE +v: power level 10.
    carol.send(f"MODE {chan} +v {dave.nick}")
    levels = await until(lambda: _levels_with(ann, room, ghost(dave.nick)))
    assert levels["users"][ghost(dave.nick)] == 10
    # NICK: the old ghost leaves, the new one (named after the new nick) joins.
    new = uniq("Dan")
    dave.send(f"NICK {new}")
    await until(lambda: in_room(ann, room, ghost(new)))
    await until(lambda: _not_in_room(ann, room, ghost(dave.nick)))
    assert (await ann.get_profile(ghost(new)))["displayname"] == new
    dave.nick = new
    # TOPIC: the room topic.
    carol.send(f"TOPIC {chan} :bridged topic")
    await until(lambda: _topic_is(ann, room, "bridged topic"))
    # PART with a reason: the ghost leaves with it.
    dave.send(f"PART {chan} :see you")
    left = await ann.wait_for_event(room, member_event(ghost(new), "leave"))
    assert "see you" in left["content"].get("reason", "")
    # KICK: the ghost is kicked, the reason names the IRC operator.
    erin = await irc(ngircd, "erin")
    await erin.join(chan)
    await until(lambda: in_room(ann, room, ghost(erin.nick)))
    carol.send(f"KICK {chan} {erin.nick} :behave")
    kicked = await ann.wait_for_event(room, member_event(ghost(erin.nick), "leave"))
    assert kicked["sender"] != ghost(erin.nick)
    assert carol.nick in kicked["content"]["reason"] and "behave" in kicked["content"]["reason"]
    # QUIT: the ghost leaves.
    fred = await irc(ngircd, "fred")
    await fred.join(chan)
    await until(lambda: in_room(ann, room, ghost(fred.nick)))
    fred.send("QUIT :gone fishing")
    await until(lambda: _not_in_room(ann, room, ghost(fred.nick)))
    # KICK of the Matrix user's puppet: the Matrix user is kicked from the room, and told why.
    carol.send(f"KICK {chan} {puppet} :not you either")
    kicked = await ann.wait_for_event(room, member_event(ann.user_id, "leave"))
    assert carol.nick in kicked["content"]["reason"]
    assert "not you either" in kicked["content"]["reason"]


async def _levels_with(client: MatrixClient, room: str, user: str) -> dict[str, Any] | None:
    levels = await client.get_state(room, "m.room.power_levels")
    return levels if levels and user in levels.get("users", {}) else None


async def _not_in_room(client: MatrixClient, room: str, user: str) -> bool:
    return not await in_room(client, room, user)


async def _topic_is(client: MatrixClient, room: str, topic: str) -> bool:
    state = await client.get_state(room, "m.room.topic")
    return bool(state and state.get("topic") == topic)


async def test_matrix_kick_and_ban_need_ops(
    make_bridge: BridgeFactory,
    ngircd: IrcServer,
    irc: IrcUsers,
    matrix: Callable[..., Any],
) -> None:
    """A Matrix user administers a room of their own, plumbed with ``link`` (the channel's
    operator agrees on IRC); their puppet
    gets +o from the channel's IRC operator; then a Matrix kick or ban is an IRC KICK / +b."""
    chan = "#" + uniq("ops")
    carol = await irc(ngircd, "carol")
    await carol.join(chan)
    dave = await irc(ngircd, "dave")
    await dave.join(chan)
    cfg = irc_connectors(ngircd)
    await make_bridge(connectors=cfg)
    gus = await matrix("Gus")
    room = await gus.create_room(name="my room", invite=[BOT])
    await until(lambda: in_room(gus, room, BOT))
    # carol, the channel's operator, agrees to the link when the bot asks her.
    await gus.send_text(room, f"!mimi link irc_test {chan}")
    bot_nick = cfg["irc"]["networks"]["test"]["bot"]["nick"]
    await carol.expect(lambda ln: ln.command == "NOTICE" and ln.nick == bot_nick, timeout=60)
    carol.send(f"PRIVMSG {bot_nick} :yes")
    await gus.wait_for_event(
        room, lambda e: e["sender"] == BOT and "Linked" in e["content"].get("body", ""), 60
    )
    await gus.send_text(room, "hi all")
    puppet = f"{(await gus.get_profile(gus.user_id))['displayname']}[m]"
    await carol.expect(said(puppet, "hi all"))
    await until(lambda: in_room(gus, room, ghost(dave.nick)))
    # Not an operator yet: the kick stays on Matrix, and Gus is told.
    await gus.kick(room, ghost(dave.nick), "spam")
    await gus.wait_for_event(room, notice_has("not a channel operator"))
    assert not [ln for ln in carol.lines if ln.command == "KICK"]
    # carol (the channel's creator) makes the puppet an operator.
    carol.send(f"MODE {chan} +o {puppet}")
    await carol.expect(lambda ln: ln.command == "MODE" and ln.param(-1) == puppet)
    dave.send(f"PRIVMSG {chan} :still here")
    await gus.wait_for_event(room, body_is("still here"))
    await gus.kick(room, ghost(dave.nick), "spam again")
    kick = await carol.expect(lambda ln: ln.command == "KICK", what="KICK")
    assert kick.nick == puppet and kick.params == [chan, dave.nick, "spam again"]
    # A topic set in Matrix becomes the channel topic.
    await gus.send_state(room, "m.room.topic", "", {"topic": "set from matrix"})
    topic = await carol.expect(lambda ln: ln.command == "TOPIC", what="TOPIC")
    assert topic.nick == puppet and topic.params == [chan, "set from matrix"]
    # A ban: MODE +b and KICK.
    erin = await irc(ngircd, "erin")
    await erin.join(chan)
    await until(lambda: in_room(gus, room, ghost(erin.nick)))
    await gus.ban(room, ghost(erin.nick), "go away")
    await carol.expect(
        lambda ln: ln.command == "MODE" and ln.param(1) == "+b" and erin.nick in ln.param(2),
        what="+b",
    )
    await carol.expect(
        lambda ln: ln.command == "KICK" and ln.param(1) == erin.nick, what="ban KICK"
    )
    # The kick did not come back to Matrix as a second one.
    await asyncio.sleep(0.5)
    events = await gus.messages(room, 60)
    kicks = [e for e in events if member_event(ghost(dave.nick), "leave")(e)]
    assert len(kicks) == 2  # the refused one and the carried one


async def give_power(bridge: Bridge, room: str, user_id: str, level: int) -> None:
    """The bot created the portal: it gives a Matrix user power there (a change by the bot is
    never bridged). Written once the bridge has nothing queued that writes levels too."""
    net: Any = bridge.connectors["irc"]
    await net.networks["test"].drain()
    await bridge.queues.drain()
    levels = await bridge.hs.get_state(room, "m.room.power_levels") or {}
    levels.setdefault("users", {})[user_id] = level
    await bridge.hs.send_state(room, "m.room.power_levels", levels)


async def test_matrix_power_levels_become_channel_modes(
    make_bridge: BridgeFactory, ngircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    """Ann has power in the portal and her puppet is a channel operator: power 50 for an IRC
    user's ghost is +o from her puppet, 0 is -o, 20 is +v (and the Matrix level stays 20: the
    mode coming back does not turn it into voice's 10), 100 for Hal is +o for his puppet. Hal
    has power in Matrix but his puppet is no operator (carol took it back): IRC refuses his
    change, and the room says why."""
    bridge, chan, carol, ann, room, puppet = await portal_with_users(
        make_bridge, ngircd, irc, matrix
    )
    dave = await irc(ngircd, "dave")
    await dave.join(chan)
    await until(lambda: in_room(ann, room, ghost(dave.nick)))
    await give_power(bridge, room, ann.user_id, 100)
    carol.send(f"MODE {chan} +o {puppet}")
    await carol.expect(lambda ln: ln.command == "MODE" and ln.param(-1) == puppet)

    async def set_level(user: MatrixClient, user_id: str, level: int) -> str:
        levels = await user.get_state(room, "m.room.power_levels") or {}
        levels.setdefault("users", {})[user_id] = level
        return await user.send_state(room, "m.room.power_levels", "", levels)

    def mode_by(nick: str, modes: str, target: str) -> Callable[[Any], bool]:
        return lambda ln: (
            ln.command == "MODE" and ln.nick == nick and ln.params[1:] == [modes, target]
        )

    async def settled(marker: str) -> None:
        """The bridge has handled what dave's IRC client saw before it says ``marker``."""
        dave.send(f"PRIVMSG {chan} :{marker}")
        await ann.wait_for_event(room, body_is(marker))

    async def level_of(user_id: str) -> int:
        levels = await ann.get_state(room, "m.room.power_levels") or {}
        return int(levels.get("users", {}).get(user_id, levels.get("users_default", 0)))

    await settled("ready")
    assert await level_of(ann.user_id) == 100  # +o (50) does not lower what the bot gave
    # 50: +o from Ann's puppet, and dave's ghost has 50.
    first = await set_level(ann, ghost(dave.nick), 50)
    await dave.expect(mode_by(puppet, "+o", dave.nick), what="+o")
    await settled("opped")
    assert await level_of(ghost(dave.nick)) == 50
    # 0: -o.
    await set_level(ann, ghost(dave.nick), 0)
    await dave.expect(mode_by(puppet, "-o", dave.nick), what="-o")
    await settled("deopped")
    assert await level_of(ghost(dave.nick)) == 0
    # 20: +v, and the level stays 20.
    await set_level(ann, ghost(dave.nick), 20)
    await dave.expect(mode_by(puppet, "+v", dave.nick), what="+v")
    await settled("voiced")
    assert await level_of(ghost(dave.nick)) == 20
    # Only Ann's three changes: the bridge did not answer any of them with levels of its own.
    events = await ann.messages(room, 100)
    after = events[next(i for i, e in enumerate(events) if e.get("event_id") == first) :]
    setters = [e["sender"] for e in after if e["type"] == "m.room.power_levels"]
    assert setters == [ann.user_id] * 3, setters

    # Hal joins; Ann gives him power 100, which makes his puppet an operator too...
    hal = await matrix("Hal")
    await hal.join(alias(chan))
    hal_puppet = f"{(await hal.get_profile(hal.user_id))['displayname']}[m]"
    await carol.expect(joined(hal_puppet, chan), what="Hal's puppet's JOIN")
    await set_level(ann, hal.user_id, 100)
    await carol.expect(mode_by(puppet, "+o", hal_puppet), what="+o for Hal's puppet")
    # ...until carol takes it back on IRC: Hal keeps his power in Matrix, not on IRC.
    carol.send(f"MODE {chan} -o {hal_puppet}")
    await carol.expect(mode_by(carol.nick, "-o", hal_puppet))
    await settled("hal deopped")
    assert await level_of(hal.user_id) == 100
    await set_level(hal, ghost(dave.nick), 50)
    notice = await hal.wait_for_event(room, notice_has("not a channel operator"))
    assert notice["sender"] == BOT
    assert notice["content"]["body"] == (
        "Your power level change was not delivered: "
        f"you are not a channel operator in {chan} on IRC"
    )
    await settled("still here")
    assert not [ln for ln in dave.lines if ln.command == "MODE" and ln.nick == hal_puppet]


# --- direct messages ---------------------------------------------------------------------------


async def test_direct_messages_both_ways(
    make_bridge: BridgeFactory, ngircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    bridge, _, carol, ann, _, puppet = await portal_with_users(make_bridge, ngircd, irc, matrix)
    # Matrix -> IRC: inviting a ghost opens a DM with that IRC user.
    dave = await irc(ngircd, "dave")
    dm = await ann.create_room(invite=[ghost(dave.nick)], is_direct=True)
    await until(lambda: in_room(ann, dm, ghost(dave.nick)))
    await ann.send_text(dm, "psst dave")
    line = await dave.expect(said(puppet, "psst dave"), what="the private message")
    assert line.param(0) == dave.nick
    dave.send(f"PRIVMSG {puppet} :hi ann")
    evt = await ann.wait_for_event(dm, body_is("hi ann"))
    assert evt["sender"] == ghost(dave.nick)
    # IRC -> Matrix: a private message to the puppet opens a DM room, the user is invited.
    carol.send(f"PRIVMSG {puppet} :private hello")
    key = PortalKey(NET, carol.nick.lower(), ann.user_id)
    portal = await until(lambda: bridge.portal_store.get(key))
    assert portal.room_id and portal.is_direct
    await ann.join(portal.room_id)
    evt = await ann.wait_for_event(portal.room_id, body_is("private hello"))
    assert evt["sender"] == ghost(carol.nick)
    await ann.send_text(portal.room_id, "private answer")
    line = await carol.expect(said(puppet, "private answer"))
    assert line.param(0) == carol.nick


# --- commands: nick, login -----------------------------------------------------------------------


async def test_irc_nick_command(
    make_bridge: BridgeFactory, ngircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    _, _, carol, ann, room, puppet = await portal_with_users(make_bridge, ngircd, irc, matrix)
    mgmt = await management_room(ann)
    new = uniq("Annie")
    reply = await command(ann, mgmt, f"irc nick {new}", "You are now")
    assert new in reply
    await carol.expect(lambda ln: ln.command == "NICK" and ln.nick == puppet and ln.param(0) == new)
    await ann.send_text(room, "new name")
    await carol.expect(said(new, "new name"))
    # The IRC side's view of the nick change does not make a ghost of the Matrix user.
    await asyncio.sleep(0.3)
    assert ghost(new) not in await ann.joined_members(room)
    await command(ann, mgmt, "irc nick 1bad", "not a valid IRC nick")


async def test_display_name_change_renames_the_puppet(
    make_bridge: BridgeFactory, ngircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    _, _, carol, ann, room, puppet = await portal_with_users(make_bridge, ngircd, irc, matrix)
    # A second portal: the core reports the change once per portal, IRC sees one NICK.
    chan2 = "#" + uniq("second")
    await carol.join(chan2)
    room2 = await ann.join(alias(chan2))
    await carol.expect(joined(puppet, chan2), what="the puppet's second JOIN")
    new = uniq("Anabel")
    await ann.set_displayname(new)
    await carol.expect(
        lambda ln: ln.command == "NICK" and ln.nick == puppet and ln.param(0) == f"{new}[m]",
        what="the NICK",
    )
    await ann.send_text(room2, "renamed")
    await carol.expect(said(f"{new}[m]", "renamed"))
    assert len([ln for ln in carol.lines if ln.command == "NICK" and ln.nick == puppet]) == 1
    # The IRC side's view of the rename does not make a ghost of the Matrix user.
    assert ghost(f"{new}[m]") not in await ann.joined_members(room)
    # A name whose nick an IRC user holds: the next free alternative, as at connect.
    taken = uniq("Zed")
    squatter = await irc(ngircd, "x")
    squatter.send(f"NICK {taken}[m]")
    await squatter.expect(lambda ln: ln.command == "NICK" and ln.param(0) == f"{taken}[m]")
    await ann.set_displayname(taken)
    renamed = await carol.expect(
        lambda ln: ln.command == "NICK" and ln.nick == f"{new}[m]", what="the second NICK"
    )
    assert renamed.param(0) == f"{taken}[m]1"
    await ann.send_text(room, "still me")
    await carol.expect(said(f"{taken}[m]1", "still me"))
    # A nick chosen with `irc nick` wins over later display names.
    mgmt = await management_room(ann)
    chosen = uniq("Chosen")
    await command(ann, mgmt, f"irc nick {chosen}", "You are now")
    await ann.set_displayname(uniq("Ignored"))
    await ann.send_text(room, "chosen stays")
    await carol.expect(said(chosen, "chosen stays"))
    assert not [ln for ln in carol.lines if ln.command == "NICK" and ln.nick == chosen]


@pytest.fixture
async def ngircd_with_password(tmp_path: Path) -> AsyncIterator[IrcServer]:
    """An ngircd that wants the server password ``serverpw`` from every connection."""
    workdir = tmp_path / "ngircd-pw"
    (workdir / "conf.d").mkdir(parents=True)
    (workdir / "conf.d" / "password.conf").write_text("[Global]\n\tPassword = serverpw\n")
    server = start_ngircd(workdir)
    yield server
    server.stop()


async def test_login_stores_credentials_encrypted(
    make_bridge: BridgeFactory,
    ngircd_with_password: IrcServer,
    matrix: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    bridge = await make_bridge(connectors=irc_connectors(ngircd_with_password, password="serverpw"))
    hal = await matrix("Hal")
    mgmt = await management_room(hal)
    # A wrong password: refused at once with the server's reason, nothing stored.
    wrong = "wrong-" + uniq("pw")
    reply = await command(hal, mgmt, f"login irc test password {wrong}", "failed")
    assert "refused the password" in reply
    assert not [r for r in await bridge.users.logins(network="irc") if r.user_id == hal.user_id]
    # The right one: connected, stored encrypted.
    reply = await command(hal, mgmt, "login irc test password serverpw", "Connected to test as")
    assert f"{(await hal.get_profile(hal.user_id))['displayname']}[m]" in reply
    rows = [r for r in await bridge.users.logins(network="irc") if r.user_id == hal.user_id]
    assert len(rows) == 1 and "serverpw" not in rows[0].credentials
    assert bridge.credentials.open(rows[0].credentials) == {
        "network": "test",
        "password": "serverpw",
    }
    # ngircd offers no SASL: the user is told, the stored login stays as it was.
    await command(hal, mgmt, "login irc test sasl acct sasl-" + wrong, "does not offer SASL")
    rows = [r for r in await bridge.users.logins(network="irc") if r.user_id == hal.user_id]
    assert [bridge.credentials.open(r.credentials) for r in rows] == [
        {"network": "test", "password": "serverpw"}
    ]
    await command(hal, mgmt, "ping", "irc/test/")
    # The bridge's own log lines never carry the passwords.
    leaks = [
        r
        for r in caplog.records
        if r.name.startswith("mimi") and (wrong in r.getMessage() or "serverpw" in r.getMessage())
    ]
    assert not leaks, leaks[0].getMessage()


async def test_raw_irc_commands_only_for_admins(
    make_bridge: BridgeFactory, ngircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    chan = "#" + uniq("raw")
    carol = await irc(ngircd, "carol")
    await carol.join(chan)
    ivy = await matrix("Ivy")
    jon = await matrix("Jon")
    await make_bridge(
        connectors=irc_connectors(ngircd),
        permissions={"*": "relay", "localhost": "user", ivy.user_id: "admin"},
    )
    mgmt = await management_room(jon)
    await command(jon, mgmt, f"irc raw JOIN {chan}", "needs the `admin` permission")
    mgmt = await management_room(ivy)
    await command(ivy, mgmt, f"irc raw JOIN {chan}", "Sent")
    puppet = f"{(await ivy.get_profile(ivy.user_id))['displayname']}[m]"
    await carol.expect(joined(puppet, chan), what="the raw JOIN")
    # One command per line, whatever the message holds.
    await command(ivy, mgmt, f"irc raw PRIVMSG {chan} :raw hello\nQUIT :nope", "Sent")
    line = await carol.expect(lambda ln: ln.command == "PRIVMSG" and ln.nick == puppet)
    assert line.params == [chan, "raw hello QUIT :nope"]
    await asyncio.sleep(0.3)
    assert not [ln for ln in carol.lines if ln.command == "QUIT" and ln.nick == puppet]


# --- injection ---------------------------------------------------------------------------------


async def test_injection_attempts_stay_text(
    make_bridge: BridgeFactory, ngircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    _, chan, carol, ann, room, puppet = await portal_with_users(make_bridge, ngircd, irc, matrix)
    other = "#" + uniq("other")
    await carol.join(other)
    await ann.send_text(room, f"innocent\r\nQUIT :pwned\r\nPRIVMSG {other} :injected")
    await carol.expect(said(puppet, f"PRIVMSG {other} :injected"), what="the last piece")
    texts = [ln.param(1) for ln in carol.messages(chan) if ln.nick == puppet]
    assert texts[-3:] == ["innocent", "QUIT :pwned", f"PRIVMSG {other} :injected"]
    # NUL, lone CR and CTCP bytes inside a line: one line, the controls dropped.
    await ann.send_text(room, "a\x00b\x01VERSION\x01 c\rQUIT")
    await carol.expect(lambda ln: ln.nick == puppet and ln.param(1).startswith("ab"))
    await ann.send_text(room, "still connected")
    await carol.expect(said(puppet, "still connected"))
    assert not [ln for ln in carol.lines if ln.command == "QUIT" and ln.nick == puppet]
    assert not carol.messages(other)
    # The HTML body cannot inject either.
    await ann.send_event(
        room,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "x",
            "format": "org.matrix.custom.html",
            "formatted_body": "<b>x&#13;&#10;QUIT :html</b>",
        },
    )
    await carol.expect(lambda ln: ln.nick == puppet and "QUIT :html" in ln.param(1))
    await ann.send_text(room, "after html")
    await carol.expect(said(puppet, "after html"))
    assert not [ln for ln in carol.lines if ln.command == "QUIT" and ln.nick == puppet]


# --- restarts ----------------------------------------------------------------------------------


@pytest.fixture
async def own_ngircd(tmp_path: Path) -> AsyncIterator[IrcServer]:
    """An ngircd of this test alone (it gets restarted)."""
    server = start_ngircd(tmp_path / "ngircd")
    yield server
    server.stop()


def _crash(server: IrcServer) -> None:
    """SIGKILL the server this test started (its process object only)."""
    proc, server.proc = server.proc, None
    assert proc is not None
    proc.kill()
    proc.wait(5)


async def test_ngircd_restart(
    make_bridge: BridgeFactory, own_ngircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    bridge, chan, carol, ann, room, puppet = await portal_with_users(
        make_bridge,
        own_ngircd,
        irc,
        matrix,
        reconnect={"min_delay": 1.0, "max_delay": 2.0},
    )
    await ann.send_text(room, "before")
    await carol.expect(said(puppet, "before"))
    net: Any = bridge.connectors["irc"].networks["test"]  # type: ignore[attr-defined]
    await until(lambda: in_room(ann, room, ghost(carol.nick)))
    # The server dies without a word (no QUIT of anyone reaches the bridge).
    await asyncio.to_thread(_crash, own_ngircd)
    await carol.close()
    await wait_for(lambda: not net.bot.registered, what="the bot noticing")
    # Sent while the server is down: queued, delivered after the reconnect.
    await ann.send_text(room, "during the outage")
    await asyncio.to_thread(own_ngircd.restart)
    carol2 = await irc(own_ngircd, "carol")
    await carol2.join(chan)
    await carol2.expect(joined(puppet, chan), timeout=20, what="the puppet's rejoin")
    await carol2.expect(said(puppet, "during the outage"), timeout=20, what="the queued line")
    await wait_for(lambda: net.bot.registered and chan in net.bot.joined, 20, "bot rejoin")
    # carol's first connection died with the server, unseen: NAMES after the rejoin no
    # longer lists her, so her ghost leaves the room; her new connection's ghost is there.
    left = await ann.wait_for_event(room, member_event(ghost(carol.nick), "leave"), timeout=20)
    # (told by the connector's rejoin, or by the core's member snapshot, whichever is first)
    assert "no longer in the" in left["content"].get("reason", "")
    await until(lambda: in_room(ann, room, ghost(carol2.nick)))
    carol2.send(f"PRIVMSG {chan} :after the restart")
    evt = await ann.wait_for_event(room, body_is("after the restart"))
    assert evt["sender"] == ghost(carol2.nick)
    await ann.send_text(room, "and back")
    await carol2.expect(said(puppet, "and back"))


_LINK = """[Global]
\tName = {me}
\tConnectRetry = 60
[Server]
\tName = {peer}
\tHost = 127.0.0.1
{port}\tMyPassword = linkpw
\tPeerPassword = linkpw
"""


@pytest.fixture
async def linked_ngircds(tmp_path: Path) -> AsyncIterator[tuple[IrcServer, IrcServer]]:
    """Two ngircd servers of one network: ``hub`` (the bridge's) links to ``leaf``."""
    from tests.harness.ports import free_port

    hub_port, leaf_port = free_port(), free_port()
    names = {"hub": "hub.test.local", "leaf": "leaf.test.local"}
    for me, peer, port in (("hub", "leaf", f"\tPort = {leaf_port}\n"), ("leaf", "hub", "")):
        confd = tmp_path / me / "conf.d"
        confd.mkdir(parents=True)
        (confd / "link.conf").write_text(_LINK.format(me=names[me], peer=names[peer], port=port))
    leaf = start_ngircd(tmp_path / "leaf", leaf_port)
    hub = start_ngircd(tmp_path / "hub", hub_port)
    yield hub, leaf
    hub.stop()
    leaf.stop()


async def test_netsplit_heals_without_membership_storm(
    make_bridge: BridgeFactory,
    linked_ngircds: tuple[IrcServer, IrcServer],
    irc: IrcUsers,
    matrix: Callable[..., Any],
) -> None:
    """A real netsplit (an operator's SQUIT between two linked ngircd) and its heal: the ghosts
    of the users behind the split stay; only one who did not come back leaves, once the
    netsplit window is over."""
    hub, leaf = linked_ngircds
    chan = "#" + uniq("split")
    oper = await irc(hub, "oper")
    await oper.join(chan)
    far = [await irc(leaf, "far") for _ in range(3)]
    for user in far:  # on the other server: wait until the link carries their JOINs
        await user.join(chan)
        await oper.expect(joined(user.nick, chan), what="the link")
    bridge = await make_bridge(connectors=irc_connectors(hub, netsplit_window=3))
    ann = await matrix("Ann")
    room = await ann.join(alias(chan))
    for user in far:
        await until(lambda u=user: in_room(ann, room, ghost(u.nick)))
    net: Any = bridge.connectors["irc"].networks["test"]  # type: ignore[attr-defined]
    oper.send("OPER oper operpass")
    await oper.expect(lambda ln: ln.command == "381", what="oper")

    async def split() -> None:
        mark = len(oper.lines)
        oper.send("SQUIT leaf.test.local :test split")
        for user in far:
            await oper.expect(
                lambda ln, u=user: (
                    ln in oper.lines[mark:] and ln.command == "QUIT" and ln.nick == u.nick
                ),
                what="the netsplit QUIT",
            )
        await wait_for(lambda: len(net.translator.splits) == len(far), what="QUITs held")

    async def heal() -> None:
        mark = len(oper.lines)
        oper.send("CONNECT leaf.test.local")
        for user in far:
            await oper.expect(
                lambda ln, u=user: ln in oper.lines[mark:] and joined(u.nick, chan)(ln),
                what="the netjoin",
            )

    await split()
    await heal()
    await wait_for(lambda: not net.translator.splits, what="the held QUITs dropped")
    far[0].send(f"PRIVMSG {chan} :back from the split")
    await ann.wait_for_event(room, body_is("back from the split"))
    # Split again; one user leaves while their server is cut off and never comes back.
    await split()
    gone = far.pop()
    await gone.close()
    far[0].send(f"ISON {gone.nick}")
    await far[0].expect(lambda ln: ln.command == "303" and not ln.param(-1), what="ISON")
    await heal()
    left = await ann.wait_for_event(room, member_event(ghost(gone.nick), "leave"), timeout=20)
    assert "netsplit" in left["content"].get("reason", "")
    # Nobody else left Matrix, at any point.
    events = await ann.messages(room, 100)
    leaves = [
        e for e in events if e["type"] == "m.room.member" and e["content"]["membership"] == "leave"
    ]
    assert [e["state_key"] for e in leaves] == [ghost(gone.nick)]
    for user in far:
        assert await in_room(ann, room, ghost(user.nick))


async def test_bridge_restart_keeps_portal_and_mapping(
    make_bridge: BridgeFactory, ngircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    chan = "#" + uniq("restart")
    carol = await irc(ngircd, "carol")
    await carol.join(chan)
    cfg = irc_connectors(ngircd)
    bridge = await make_bridge(connectors=cfg)
    ann = await matrix("Ann")
    room = await ann.join(alias(chan))
    puppet = f"{(await ann.get_profile(ann.user_id))['displayname']}[m]"
    await carol.expect(joined(puppet, chan))
    carol.send(f"PRIVMSG {chan} :before the restart")
    before = await ann.wait_for_event(room, body_is("before the restart"))
    await bridge.stop()
    await carol.expect(lambda ln: ln.command == "QUIT" and ln.nick == puppet, what="QUIT")
    mark = len(carol.lines)
    bridge2 = await make_bridge(connectors=cfg)
    # The puppet of the portal's member comes back by itself, once.
    await carol.expect(
        lambda ln: ln in carol.lines[mark:] and joined(puppet, chan)(ln), what="rejoin"
    )
    # Same portal, same room.
    assert await ann.resolve_alias(alias(chan)) == room
    portal = await bridge2.portal_store.get(PortalKey(NET, chan))
    assert portal is not None and portal.room_id == room
    carol.send(f"PRIVMSG {chan} :after the restart")
    evt = await ann.wait_for_event(room, body_is("after the restart"))
    assert evt["sender"] == ghost(carol.nick)
    await ann.send_text(room, "hello again")
    await carol.expect(said(puppet, "hello again"))
    # The mapping survived: a reply to a message from before the restart names its sender.
    await ann.reply(room, before["event_id"], "old one")
    await carol.expect(said(puppet, f"{carol.nick}: old one"))
    await asyncio.sleep(0.5)
    rejoins = [ln for ln in carol.lines[mark:] if joined(puppet, chan)(ln)]
    assert len(rejoins) == 1
