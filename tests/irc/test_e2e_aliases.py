"""End to end through Synapse and ngircd: channels joined by alias whatever their characters
and their case.

* An alias holding braces (``#irc_test_#x{y}``) reaches the bridge and opens the portal.
* An alias in another case than the portal's own (``#irc_test_#Case7`` while channel ids are
  folded to ``#case7``) leads to the portal, and so do every later spelling and the ``join``
  command with any case: one room, one portal, the bot in the channel once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import BridgeFactory
from tests.harness.ircd import IrcServer
from tests.harness.synapse import MatrixClient, SynapseServer

from .conftest import RawIRC
from .test_e2e_synapse import (
    NET,
    alias,
    body_is,
    command,
    irc_connectors,
    joined,
    management_room,
    said,
    uniq,
)


@pytest.fixture
async def closing() -> AsyncIterator[list[Any]]:
    """IRC and Matrix clients closed at the end of the test."""
    made: list[Any] = []
    yield made
    for c in made:
        await c.close()


async def irc_user(server: IrcServer, nick: str, closing: list[Any]) -> RawIRC:
    user = await RawIRC(server.host, server.port, nick).connect()
    closing.append(user)
    return user


async def matrix_user(synapse: SynapseServer, name: str, closing: list[Any]) -> MatrixClient:
    client = synapse.new_client(name.lower())
    closing.append(client)
    await client.set_displayname(name)
    return client


async def test_alias_with_braces_opens_the_channel(
    make_bridge: BridgeFactory, ngircd: IrcServer, synapse: SynapseServer, closing: list[Any]
) -> None:
    n = uniq("")
    chan = f"#x{{y}}{n}"
    carol = await irc_user(ngircd, f"carol{n}", closing)
    await carol.join(chan)
    await make_bridge(connectors=irc_connectors(ngircd))
    ann = await matrix_user(synapse, f"Ann{n}", closing)
    room = await ann.join(alias(chan))
    assert await ann.resolve_alias(alias(chan)) == room
    puppet = f"Ann{n}[m]"
    await carol.expect(joined(puppet, chan), what="the puppet's JOIN")
    await ann.send_text(room, "braces work")
    line = await carol.expect(said(puppet, "braces work"), what="the PRIVMSG")
    assert line.param(0) == chan
    carol.send(f"PRIVMSG {chan} :back to matrix")
    await ann.wait_for_event(room, body_is("back to matrix"))


async def test_alias_in_any_case_leads_to_one_portal(
    make_bridge: BridgeFactory, ngircd: IrcServer, synapse: SynapseServer, closing: list[Any]
) -> None:
    n = uniq("")
    chan = f"#Case{n}"
    canonical = f"#case{n}"
    carol = await irc_user(ngircd, f"carol{n}", closing)
    await carol.join(chan)
    cfg = irc_connectors(ngircd)
    bot_nick = cfg["irc"]["networks"]["test"]["bot"]["nick"]
    bridge = await make_bridge(connectors=cfg)

    # First join, by an alias that is not the portal's own spelling.
    ann = await matrix_user(synapse, f"Ann{n}", closing)
    room = await ann.join(alias(chan))
    assert await ann.resolve_alias(alias(canonical)) == room
    assert await ann.resolve_alias(alias(chan)) == room
    await carol.expect(joined(f"Ann{n}[m]", chan), what="Ann's puppet JOIN")

    # Later joins: the canonical alias, another spelling, and the join command.
    bea = await matrix_user(synapse, f"Bea{n}", closing)
    assert await bea.join(alias(canonical)) == room
    cleo = await matrix_user(synapse, f"Cleo{n}", closing)
    assert await cleo.join(alias(f"#CASE{n}")) == room
    dan = await matrix_user(synapse, f"Dan{n}", closing)
    mgmt = await management_room(dan)
    reply = await command(dan, mgmt, f"join {NET} #CASE{n}", "Invited you")
    assert alias(canonical) in reply, reply
    assert reply.rsplit("(", 1)[1].rstrip(").") == room, reply
    assert await dan.join(room) == room
    await carol.expect(joined(f"Dan{n}[m]", chan), what="Dan's puppet JOIN")

    portals = [
        p for p in await bridge.portal_store.all(NET) if p.key.remote_id.lower() == canonical
    ]
    assert [(p.key.remote_id, p.room_id) for p in portals] == [(canonical, room)]
    bot_joins = [ln for ln in carol.lines if joined(bot_nick, chan)(ln)]
    assert len(bot_joins) == 1, bot_joins

    # Messages go through the one portal both ways.
    await dan.send_text(room, "one room")
    await carol.expect(said(f"Dan{n}[m]", "one room"), what="Dan's PRIVMSG")
    carol.send(f"PRIVMSG {chan} :seen by all")
    for user in (ann, bea, cleo, dan):
        await user.wait_for_event(room, body_is("seen by all"))

    # A third-party location lookup names the same portal.
    status, found = await dan.request(
        "GET",
        "/_matrix/client/v3/thirdparty/location/irc",
        params={"network": NET, "room": f"#CASE{n}"},
    )
    assert status == 200, found
    assert [(x["alias"], x["fields"]) for x in found] == [
        (alias(canonical), {"network": NET, "room": canonical})
    ]
    status, found = await dan.request(
        "GET",
        "/_matrix/client/v3/thirdparty/location/irc",
        params={"network": NET, "room": "notachannel"},
    )
    assert (status, found) == (200, []), found  # the homeserver's answer when no bridge knows it
