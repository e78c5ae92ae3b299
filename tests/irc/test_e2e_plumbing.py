"""End to end, real Synapse and ngircd: bridging an IRC channel safely. A ``link`` needs the
channel's consent (the user's own connection is an operator, or an operator answers the bot
on IRC); ``exclude`` keeps channels from being bridged (never, or by admins only); channels
with a key (+k) are joined with it, and rejoined with it after a restart, with the new one
when an operator changed it; secret, private and keyed channels stay out of the room directory
(InspIRCd for +p, which ngircd lacks)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.connector import PortalKey
from tests.conftest import BridgeFactory
from tests.harness.ircd import IrcServer, start_inspircd
from tests.harness.synapse import MatrixClient

from .test_e2e_synapse import (
    BOT,
    NET,
    IrcUsers,
    _levels_with,
    alias,
    body_is,
    command,
    ghost,
    give_power,
    in_room,
    irc_connectors,
    joined,
    management_room,
    portal_with_users,
    said,
    uniq,
    until,
)

USERS = {"*": "relay", "localhost": "user"}


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
    asked = await gus.wait_for_event(room, bot_said("asked its operators"), timeout=60)
    assert carol.nick in asked["content"]["body"]
    request = await carol.expect(bot_notice(bot_nick, chan), what="the bot's request", timeout=60)
    assert request.param(0) == carol.nick and gus.user_id in request.param(1)
    carol.send(f"PRIVMSG {bot_nick} :no {chan}")
    refused = await gus.wait_for_event(room, bot_said("said no"), timeout=60)
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
    request = await carol.expect(bot_notice(bot_nick, chan), what="the bot's request", timeout=60)
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
    await jon.wait_for_event(jon_room, bot_said("asked its operators"), timeout=60)
    await carol.expect(bot_notice(bot_nick, chan), what="the request for Jon", timeout=60)
    carol.send(f"PRIVMSG {bot_nick} :no")
    await jon.wait_for_event(jon_room, bot_said("said no"), timeout=60)
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
    await ivy.wait_for_event(room, bot_said("may not be bridged"), timeout=60)
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


async def _names(user: Any, channel: str) -> set[str]:
    """The nicks in a channel, by NAMES (without their prefixes)."""
    mark = len(user.lines)
    user.send(f"NAMES {channel}")

    async def answered() -> bool:
        return any(ln.command == "366" for ln in user.lines[mark:])

    await until(answered)
    return {
        nick.lstrip("~&@%+")
        for ln in user.lines[mark:]
        if ln.command == "353" and ln.params[-2].lower() == channel.lower()
        for nick in ln.params[-1].split()
    }


async def test_keyed_channel_key_changed_by_an_operator_is_followed(
    make_bridge: BridgeFactory, ngircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    chan = "#" + uniq("rekeyed")
    carol = await irc(ngircd, "carol")
    await carol.join(chan)
    carol.send(f"MODE {chan} +k s3cret")
    await carol.expect(lambda ln: ln.command == "MODE" and ln.param(1) == "+k")
    cfg = irc_connectors(ngircd)
    bot_nick = cfg["irc"]["networks"]["test"]["bot"]["nick"]
    bridge = await make_bridge(connectors=cfg)
    kim = await matrix("Kim")
    mgmt = await management_room(kim)
    reply = await command(kim, mgmt, f"join irc_test {chan} s3cret", "Invited you")
    room = reply.rsplit("(", 1)[1].rstrip(").")
    await kim.join(room)
    await carol.expect(joined(bot_nick, chan), what="the bot's JOIN")
    puppet = f"{(await kim.get_profile(kim.user_id))['displayname']}[m]"
    await kim.send_text(room, "through the old key")
    await carol.expect(said(puppet, "through the old key"))
    # An operator takes the key off and sets another: the bridge keeps the new one.
    mark = len(carol.lines)
    carol.send(f"MODE {chan} -k s3cret", f"MODE {chan} +k n3wkey")
    await carol.expect(
        lambda ln: ln in carol.lines[mark:] and ln.command == "MODE" and ln.param(1) == "+k",
        what="the new key",
    )
    key = PortalKey(NET, chan)

    async def kept() -> bool:
        portal = await bridge.portal_store.get(key)
        return portal is not None and bridge.commands.actions.room_key_of(portal) == "n3wkey"

    await until(kept)
    portal = await bridge.portal_store.get(key)
    assert portal is not None and "n3wkey" not in str(portal.metadata)  # sealed
    # After a restart, the bot and the puppet come back in with the new key.
    await bridge.stop()
    await carol.expect(lambda ln: ln.command == "QUIT" and ln.nick == puppet, what="QUIT")
    mark = len(carol.lines)
    await make_bridge(connectors=cfg)

    def rejoined(nick: str) -> Callable[[Any], bool]:
        return lambda ln: ln in carol.lines[mark:] and joined(nick, chan)(ln)

    await carol.expect(rejoined(bot_nick), timeout=60, what="the bot's rejoin")
    await carol.expect(rejoined(puppet), timeout=60, what="the puppet's rejoin")
    assert {bot_nick, puppet} <= await _names(carol, chan)
    mark = len(carol.lines)
    carol.send(f"MODE {chan}")

    async def mode_reply() -> Any:
        return next((ln for ln in carol.lines[mark:] if ln.command == "324"), None)

    modes = await until(mode_reply)
    assert "k" in modes.param(2) and "n3wkey" in modes.params[3:]
    carol.send(f"PRIVMSG {chan} :after the new key")
    await kim.wait_for_event(room, body_is("after the new key"), timeout=60)


# --- channel modes in Matrix -------------------------------------------------------------------


async def _visibility(user: MatrixClient, room: str) -> str:
    status, body = await user.request("GET", f"/_matrix/client/v3/directory/list/room/{room}")
    assert status == 200, body
    return str(body.get("visibility"))


async def _listed(user: MatrixClient, room: str) -> bool:
    status, body = await user.request("GET", "/_matrix/client/v3/publicRooms")
    assert status == 200, body
    return room in [r["room_id"] for r in body.get("chunk", [])]


async def _lookup(user: MatrixClient, channel: str) -> list[Any]:
    status, body = await user.request(
        "GET",
        "/_matrix/client/v3/thirdparty/location/irc",
        params={"network": NET, "room": channel},
    )
    assert status == 200, body
    return list(body)


async def test_secret_private_and_keyed_channels_are_never_listed(
    make_bridge: BridgeFactory, ngircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    """With ``publish``, portals are in the room directory, but never those of +s, +p or +k
    channels; +s and +p channels are not found by third-party lookups either."""
    shown, secret = "#" + uniq("shown"), "#" + uniq("secret")
    carol = await irc(ngircd, "carol")
    await carol.join(shown)
    await carol.join(secret)
    carol.send(f"MODE {secret} +s")
    await carol.expect(lambda ln: ln.command == "MODE" and ln.param(1) == "+s")
    bridge = await make_bridge(connectors=irc_connectors(ngircd, publish=True))
    ann = await matrix("Ann")
    shown_room = await ann.join(alias(shown))
    secret_room = await ann.join(alias(secret))

    async def listed_as(key: str, value: bool) -> bool:
        portal = await bridge.portal_store.get(PortalKey(NET, key))
        return portal is not None and portal.metadata.get("listed") is value

    await until(lambda: listed_as(shown, True), 30)
    await until(lambda: listed_as(secret, False), 30)
    assert await _visibility(ann, shown_room) == "public"
    assert await _visibility(ann, secret_room) == "private"
    assert await _listed(ann, shown_room) and not await _listed(ann, secret_room)
    found = await _lookup(ann, shown)
    assert [f["alias"] for f in found] == [alias(shown)]
    assert await _lookup(ann, secret) == []
    # A channel turning secret leaves the directory and the lookups; +k the directory. (ngircd
    # has no +p, which counts as +s.)
    for mode in ("+s", "+k key1"):
        carol.send(f"MODE {shown} {mode}")

        async def hidden() -> bool:
            return await _visibility(ann, shown_room) == "private"

        await until(hidden, 30)
        if mode != "+k key1":
            assert await _lookup(ann, shown) == []
        carol.send(f"MODE {shown} -{mode[1:].split()[0]}" + (" key1" if "k" in mode else ""))

        async def shown_again() -> bool:
            return await _visibility(ann, shown_room) == "public"

        await until(shown_again, 30)
        assert [f["alias"] for f in await _lookup(ann, shown)] == [alias(shown)]


@pytest.fixture(scope="module")
def inspircd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IrcServer]:
    """InspIRCd, which has +p (private) where ngircd has only +s; a channel's creator is its
    operator (to set +p)."""
    # A missing InspIRCd raises IrcdMissing, which says what to install: the test fails.
    server = start_inspircd(Path(tmp_path_factory.mktemp("inspircd-private")), creator_op=True)
    yield server
    server.stop()


async def test_private_channels_are_never_listed(
    make_bridge: BridgeFactory, inspircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    """On InspIRCd, whose +p is a mode of its own: with ``publish``, the portal of a private
    channel (+p from the start, or set later) is neither in the room directory (Synapse's
    publicRooms) nor found by the third-party location lookup, while a plain channel's is in
    both; -p lists it again."""
    shown, private = "#" + uniq("shown"), "#" + uniq("private")
    carol = await irc(inspircd, "carol")
    await carol.join(shown)
    await carol.join(private)
    carol.send(f"MODE {private} +p")
    await carol.expect(lambda ln: ln.command == "MODE" and ln.param(1) == "+p", what="+p")
    bridge = await make_bridge(connectors=irc_connectors(inspircd, publish=True))
    ann = await matrix("Ann")
    shown_room = await ann.join(alias(shown))
    private_room = await ann.join(alias(private))

    async def listed_as(key: str, value: bool) -> bool:
        portal = await bridge.portal_store.get(PortalKey(NET, key))
        return portal is not None and portal.metadata.get("listed") is value

    # Both portals' modes are known (the plain one listed): the private one was not left out
    # merely because the bot had not heard its modes yet.
    await until(lambda: listed_as(shown, True), 30)
    await until(lambda: listed_as(private, False), 30)
    assert await _visibility(ann, shown_room) == "public"
    assert await _visibility(ann, private_room) == "private"
    assert await _listed(ann, shown_room)
    assert not await _listed(ann, private_room)
    assert [f["alias"] for f in await _lookup(ann, shown)] == [alias(shown)]
    assert await _lookup(ann, private) == []

    # The plain channel turning private leaves both; back to -p it is in both again.
    carol.send(f"MODE {shown} +p")

    async def visibility_is(room: str, value: str) -> bool:
        return await _visibility(ann, room) == value

    await until(lambda: visibility_is(shown_room, "private"), 30)
    assert not await _listed(ann, shown_room)
    assert await _lookup(ann, shown) == []
    carol.send(f"MODE {shown} -p")
    await until(lambda: visibility_is(shown_room, "public"), 30)
    assert await _listed(ann, shown_room)
    assert [f["alias"] for f in await _lookup(ann, shown)] == [alias(shown)]
    # The private one stayed out all along.
    assert not await _listed(ann, private_room)
    assert await _lookup(ann, private) == []


async def test_invite_only_and_moderated_both_ways(
    make_bridge: BridgeFactory, ngircd: IrcServer, irc: IrcUsers, matrix: Callable[..., Any]
) -> None:
    """+i is the invite join rule, +m raises the level posting needs to voice's; a room
    admin's join rule change is +i / -i from their puppet when it is an operator, and told in
    the room when neither it nor the bot is one."""
    bridge, chan, carol, ann, room, puppet = await portal_with_users(
        make_bridge, ngircd, irc, matrix
    )

    async def join_rule() -> str:
        return str((await ann.get_state(room, "m.room.join_rules") or {}).get("join_rule"))

    async def posting_level() -> int:
        levels = await ann.get_state(room, "m.room.power_levels") or {}
        return int(levels.get("events_default") or 0)

    async def rule_is(rule: str) -> bool:
        return await join_rule() == rule

    async def posting_is(level: int) -> bool:
        return await posting_level() == level

    assert await join_rule() == "public"
    carol.send(f"MODE {chan} +i")
    await until(lambda: rule_is("invite"), 30)
    carol.send(f"MODE {chan} +m")
    await until(lambda: posting_is(10), 30)
    dave = await irc(ngircd, "dave")
    carol.send(f"INVITE {dave.nick} {chan}")
    await dave.expect(lambda ln: ln.command == "INVITE", what="the invite")
    await dave.join(chan)
    carol.send(f"MODE {chan} +v {dave.nick}")
    levels = await until(lambda: _levels_with(ann, room, ghost(dave.nick)), 30)
    assert levels["users"][ghost(dave.nick)] == 10 == levels["events_default"]
    carol.send(f"MODE {chan} -m-i")
    await until(lambda: posting_is(0), 30)
    await until(lambda: rule_is("public"), 30)

    # From Matrix: Ann has power in the room and her puppet is a channel operator.
    await give_power(bridge, room, ann.user_id, 100)
    carol.send(f"MODE {chan} +o {puppet}")
    await carol.expect(lambda ln: ln.command == "MODE" and ln.param(-1) == puppet)
    dave.send(f"PRIVMSG {chan} :opped")
    await ann.wait_for_event(room, body_is("opped"))
    mark = len(carol.lines)
    await ann.send_state(room, "m.room.join_rules", "", {"join_rule": "invite"})
    plus_i = await carol.expect(
        lambda ln: ln in carol.lines[mark:] and ln.command == "MODE" and ln.params[1:] == ["+i"],
        what="+i",
        timeout=30,
    )
    assert plus_i.nick == puppet
    # Not an operator any more: the room hears that the channel stays invite-only.
    carol.send(f"MODE {chan} -o {puppet}")
    await carol.expect(lambda ln: ln.command == "MODE" and ln.params[1:] == ["-o", puppet])
    dave.send(f"PRIVMSG {chan} :deopped")
    await ann.wait_for_event(room, body_is("deopped"))
    await ann.send_state(room, "m.room.join_rules", "", {"join_rule": "public"})
    notice = await ann.wait_for_event(room, bot_said("stays invite-only"), timeout=30)
    assert notice["content"]["body"] == (
        f"Your join rule change was not bridged: {chan} stays invite-only on IRC: neither "
        "your IRC connection nor the bridge's bot is a channel operator there, so the bridge "
        "cannot set -i"
    )
    assert not [ln for ln in carol.lines[mark:] if ln.command == "MODE" and ln.params[1:] == ["-i"]]
