"""End to end, real Synapse and ngircd: bridging an IRC channel safely. A ``link`` needs the
channel's consent (the user's own connection is an operator, or an operator answers the bot
on IRC); ``exclude`` keeps channels from being bridged (never, or by admins only); channels
with a key (+k) are joined with it, and rejoined with it after a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from bridge.connector import PortalKey
from tests.conftest import BridgeFactory
from tests.harness.ircd import IrcServer
from tests.harness.synapse import MatrixClient, SynapseServer

from .test_e2e_synapse import (
    BOT,
    NET,
    IrcUsers,
    alias,
    body_is,
    command,
    ghost,
    in_room,
    irc_connectors,
    joined,
    management_room,
    matrix_user,
    said,
    uniq,
    until,
)

USERS = {"*": "relay", "localhost": "user"}


@pytest.fixture
async def irc() -> AsyncIterator[IrcUsers]:
    users = IrcUsers()
    yield users
    await users.close()


@pytest.fixture
async def matrix(synapse: SynapseServer) -> AsyncIterator[Callable[..., Any]]:
    made: list[MatrixClient] = []

    async def make(prefix: str) -> MatrixClient:
        client = await matrix_user(synapse, uniq(prefix))
        made.append(client)
        return client

    yield make
    for c in made:
        await c.close()


def bot_notice(bot_nick: str, channel: str) -> Callable[[Any], bool]:
    """The bot's private request to an operator, naming the channel."""
    return lambda ln: ln.command == "NOTICE" and ln.nick == bot_nick and channel in ln.param(1)


async def own_room(user: MatrixClient, name: str) -> str:
    """A Matrix room of the user's, with the bridge's bot in it."""
    room = await user.create_room(name=name, invite=[BOT])
    await until(lambda: in_room(user, room, BOT))
    return room


def bot_said(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["sender"] == BOT and text in e["content"].get("body", "")


async def test_link_refused_without_consent(
    make_bridge: BridgeFactory, ngircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    """Gus is no operator of carol's channel: the bot asks carol, who says no; asked again,
    nobody answers within the bound. Both times Gus hears why and the room stays unbridged."""
    chan = "#" + uniq("nolink")
    carol = await irc(ngircd, "carol")
    await carol.join(chan)
    cfg = irc_connectors(ngircd, link_request_timeout=4)
    bot_nick = cfg["irc"]["networks"]["test"]["bot"]["nick"]
    bridge = await make_bridge(connectors=cfg)
    gus = await matrix("Gus")
    room = await own_room(gus, "gus's room")
    await gus.send_text(room, f"!mimi link irc_test {chan}")
    asked = await gus.wait_for_event(room, bot_said("asked its operators"))
    assert carol.nick in asked["content"]["body"]
    request = await carol.expect(bot_notice(bot_nick, chan), what="the bot's request")
    assert request.param(0) == carol.nick and gus.user_id in request.param(1)
    carol.send(f"PRIVMSG {bot_nick} :no {chan}")
    refused = await gus.wait_for_event(room, bot_said("said no"))
    assert refused["content"]["body"] == (
        f"link failed: {carol.nick}, an operator of {chan}, said no"
    )
    await carol.expect(
        lambda ln: ln.command == "NOTICE" and "stays unbridged" in ln.param(1), what="thanks"
    )
    assert await bridge.portal_store.by_room(room) is None
    # Asked again, nobody answers: refused when the bound runs out.
    await gus.send_text(room, f"!mimi link irc_test {chan}")
    late = await gus.wait_for_event(room, bot_said("answered within"), timeout=60)
    assert late["content"]["body"] == (
        f"link failed: no operator of {chan} answered within 4 seconds, so the room stays unbridged"
    )
    assert await bridge.portal_store.by_room(room) is None
    # An answer after the bound opens nothing.
    carol.send(f"PRIVMSG {bot_nick} :yes {chan}")
    await carol.expect(
        lambda ln: ln.command == "NOTICE" and "No link request" in ln.param(1), what="no request"
    )
    assert await bridge.portal_store.by_room(room) is None
    # Nothing Gus said in the room went to the channel meanwhile.
    await gus.send_text(room, "not bridged")
    assert not [ln for ln in carol.messages(chan) if ln.param(1) == "not bridged"]


async def test_link_accepted_by_an_operator_on_irc(
    make_bridge: BridgeFactory, ngircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    chan = "#" + uniq("yeslink")
    carol = await irc(ngircd, "carol")
    await carol.join(chan)
    dave = await irc(ngircd, "dave")  # no operator: his answer does not count
    await dave.join(chan)
    cfg = irc_connectors(ngircd)
    bot_nick = cfg["irc"]["networks"]["test"]["bot"]["nick"]
    bridge = await make_bridge(connectors=cfg)
    gus = await matrix("Gus")
    room = await own_room(gus, "gus's room")
    await gus.send_text(room, f"!mimi link irc_test {chan}")
    request = await carol.expect(bot_notice(bot_nick, chan), what="the bot's request")
    assert "gus's room" in request.param(1)
    assert not [ln for ln in dave.lines if bot_notice(bot_nick, chan)(ln)]
    dave.send(f"PRIVMSG {bot_nick} :yes {chan}")
    await dave.expect(
        lambda ln: ln.command == "NOTICE" and "Only operators" in ln.param(1),
        what="not an op",
    )
    assert await bridge.portal_store.by_room(room) is None
    carol.send(f"PRIVMSG {bot_nick} :yes")
    await gus.wait_for_event(room, bot_said(f"Linked {room} with {chan}"), timeout=60)
    portal = await bridge.portal_store.by_room(room)
    assert portal is not None and portal.key == PortalKey(NET, chan) and portal.plumbed
    # Bridged both ways.
    await gus.send_text(room, "hello channel")
    puppet = f"{(await gus.get_profile(gus.user_id))['displayname']}[m]"
    await carol.expect(said(puppet, "hello channel"))
    carol.send(f"PRIVMSG {chan} :welcome")
    evt = await gus.wait_for_event(room, body_is("welcome"))
    assert evt["sender"] == ghost(carol.nick)


async def test_link_by_a_channel_operator_needs_no_answer(
    make_bridge: BridgeFactory, ngircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    """Ivy's own IRC connection is an operator of the channel: her link is the channel's
    consent, nobody is asked. Jon, no operator, is asked about (and carol says no)."""
    chan = "#" + uniq("oplink")
    carol = await irc(ngircd, "carol")
    await carol.join(chan)
    ivy = await matrix("Ivy")
    jon = await matrix("Jon")
    cfg = irc_connectors(ngircd)
    bot_nick = cfg["irc"]["networks"]["test"]["bot"]["nick"]
    bridge = await make_bridge(connectors=cfg, permissions={**USERS, ivy.user_id: "admin"})
    jon_room = await own_room(jon, "jon's room")
    await jon.send_text(jon_room, f"!mimi link irc_test {chan}")
    await jon.wait_for_event(jon_room, bot_said("asked its operators"))
    await carol.expect(bot_notice(bot_nick, chan), what="the request for Jon")
    carol.send(f"PRIVMSG {bot_nick} :no")
    await jon.wait_for_event(jon_room, bot_said("said no"))
    # Ivy's puppet is in the channel and carol makes it an operator.
    mgmt = await management_room(ivy)
    await command(ivy, mgmt, f"irc raw JOIN {chan}", "Sent")
    puppet = f"{(await ivy.get_profile(ivy.user_id))['displayname']}[m]"
    await carol.expect(joined(puppet, chan), what="Ivy's puppet's JOIN")
    carol.send(f"MODE {chan} +o {puppet}")
    await carol.expect(lambda ln: ln.command == "MODE" and ln.param(-1) == puppet)
    requests = len([ln for ln in carol.lines if bot_notice(bot_nick, chan)(ln)])
    room = await own_room(ivy, "ivy's room")
    await ivy.send_text(room, f"!mimi link irc_test {chan}")
    await ivy.wait_for_event(room, bot_said(f"Linked {room} with {chan}"), timeout=60)
    assert len([ln for ln in carol.lines if bot_notice(bot_nick, chan)(ln)]) == requests
    events = await ivy.messages(room, 30)
    assert not [e for e in events if "asked its operators" in e["content"].get("body", "")]
    await ivy.send_text(room, "mine to bridge")
    await carol.expect(said(puppet, "mine to bridge"))
    assert (await bridge.portal_store.by_room(room)) is not None


async def test_exclude_never_and_admins(
    make_bridge: BridgeFactory, ngircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    never, admins = "#" + uniq("Secret-ops"), "#" + uniq("staff")
    carol = await irc(ngircd, "carol")
    await carol.join(never)
    await carol.join(admins)
    ivy = await matrix("Ivy")
    jon = await matrix("Jon")
    cfg = irc_connectors(
        ngircd,
        exclude=[
            {"channel": "#secret-ops*", "mode": "never"},
            {"channel": admins.upper(), "mode": "admins"},
        ],
    )
    bot_nick = cfg["irc"]["networks"]["test"]["bot"]["nick"]
    await make_bridge(connectors=cfg, permissions={**USERS, ivy.user_id: "admin"})
    jmgmt = await management_room(jon)
    imgmt = await management_room(ivy)
    # never: nobody, admins included, by join, alias or link.
    excluded = f"join failed: {never.lower()} may not be bridged: the bridge's admin excluded it"
    assert await command(jon, jmgmt, f"join irc_test {never}", "join failed") == excluded
    assert await command(ivy, imgmt, f"join irc_test {never}", "join failed") == excluded
    try:
        await jon.join(alias(never.lower()))
    except Exception as e:  # the homeserver answers "no such room"
        assert "404" in str(e) or "not found" in str(e).lower(), e
    else:
        raise AssertionError("the alias of an excluded channel opened a room")
    room = await own_room(ivy, "ivy's room")
    await ivy.send_text(room, f"!mimi link irc_test {never}")
    await ivy.wait_for_event(room, bot_said("may not be bridged"))
    # admins: a bridge admin may, a user may not.
    reply = await command(jon, jmgmt, f"join irc_test {admins}", "only bridge admins")
    assert reply == f"join failed: only bridge admins may bridge {admins}"
    await command(ivy, imgmt, f"join irc_test {admins}", "Invited you")
    await carol.expect(joined(bot_nick, admins), what="the bot's JOIN")
    assert not [ln for ln in carol.lines if joined(bot_nick, never)(ln)]


async def test_keyed_channel_join_and_rejoin_after_restart(
    make_bridge: BridgeFactory, ngircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    chan = "#" + uniq("keyed")
    carol = await irc(ngircd, "carol")
    await carol.join(chan)
    carol.send(f"MODE {chan} +k s3cret")
    await carol.expect(lambda ln: ln.command == "MODE" and ln.param(1) == "+k")
    cfg = irc_connectors(ngircd)
    bot_nick = cfg["irc"]["networks"]["test"]["bot"]["nick"]
    bridge = await make_bridge(connectors=cfg)
    kim = await matrix("Kim")
    mgmt = await management_room(kim)
    # Without the key, or a wrong one: refused with the server's reason.
    reply = await command(kim, mgmt, f"join irc_test {chan}", "join failed")
    assert chan in reply
    reply = await command(kim, mgmt, f"join irc test {chan} wrong", "join failed")
    assert chan in reply
    reply = await command(kim, mgmt, f"join irc test {chan} s3cret", "Invited you")
    room = reply.rsplit("(", 1)[1].rstrip(").")
    await kim.join(room)
    await carol.expect(joined(bot_nick, chan), what="the bot's JOIN")
    puppet = f"{(await kim.get_profile(kim.user_id))['displayname']}[m]"
    await kim.send_text(room, "through the key")
    await carol.expect(said(puppet, "through the key"))
    # Stored sealed, like login credentials.
    portal = await bridge.portal_store.get(PortalKey(NET, chan))
    assert portal is not None and "room_key" in portal.metadata
    assert "s3cret" not in str(portal.metadata)
    # After a restart, the bot and the puppet come back into the keyed channel.
    await bridge.stop()
    await carol.expect(lambda ln: ln.command == "QUIT" and ln.nick == puppet, what="QUIT")
    mark = len(carol.lines)
    await make_bridge(connectors=cfg)

    def rejoined(nick: str) -> Callable[[Any], bool]:
        return lambda ln: ln in carol.lines[mark:] and joined(nick, chan)(ln)

    await carol.expect(rejoined(bot_nick), timeout=60, what="the bot's rejoin")
    await carol.expect(rejoined(puppet), timeout=60, what="the puppet's rejoin")
    carol.send(f"PRIVMSG {chan} :after the restart")
    await kim.wait_for_event(room, body_is("after the restart"), timeout=60)
    await kim.send_text(room, "still keyed")
    await carol.expect(said(puppet, "still keyed"), timeout=30)
