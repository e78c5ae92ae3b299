"""End to end through Synapse on servers with different case mappings: ngircd announces
``CASEMAPPING=ascii``, InspIRCd ``rfc1459``. With the default config (no ``casemapping`` key)
and the default nick template (``{displayname}[m]``), nicks holding ``[]\\^{}|`` fold
differently under the two mappings; the bridge compares them with what the server announced and
names them in Matrix in one fixed form, so:

* a Matrix message shows once in Matrix (no ghost of the sender's own puppet joins or speaks)
  and once on IRC;
* an IRC user whose nick holds those characters is one ghost, with the same Matrix id on both
  servers, also after a nick change the server counts as the same nick;
* mentions of such nicks work both ways.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.connector import escape_localpart
from connectors.irc.protocol import casefold
from tests.conftest import BridgeFactory
from tests.harness.ircd import IrcServer, start_inspircd
from tests.harness.synapse import MatrixClient, SynapseServer

from .conftest import RawIRC
from .test_e2e_synapse import (
    BOT,
    alias,
    body_is,
    command,
    joined,
    management_room,
    said,
    uniq,
)

Event = dict[str, Any]


@pytest.fixture(scope="module")
def inspircd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IrcServer]:
    server = start_inspircd(Path(tmp_path_factory.mktemp("inspircd-casemap")))
    yield server
    server.stop()


# (server, the ``casemapping`` key): the default on both servers, and id forms that differ
# from what the server announces the other way round.
CASES = [
    ("ngircd", None),
    ("inspircd", None),
    ("inspircd", "ascii"),
    ("ngircd", "strict-rfc1459"),
]


@pytest.fixture
async def closing() -> AsyncIterator[list[Any]]:
    """IRC and Matrix clients closed at the end of the test."""
    made: list[Any] = []
    yield made
    for c in made:
        await c.close()


def connectors(server: IrcServer, id_form: str | None) -> dict[str, Any]:
    """The default ``nick_template``; ``casemapping`` only when the case sets one."""
    net: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "bot": {"nick": uniq("mimibot")},
        "flood": {"burst": 50, "rate": 50},
        "reconnect": {"min_delay": 0.2, "max_delay": 1.0},
        "connects_per_second": 200,
        "register_timeout": 5,
    }
    if id_form is not None:
        net["casemapping"] = id_form
    return {"irc": {"networks": {"test": net}}}


def ghost_id(nick: str, id_form: str | None) -> str:
    """The documented Matrix form of an IRC nick: folded with ``casemapping`` (rfc1459 when
    unset) whatever the server announces."""
    return f"@irc_test_{escape_localpart(casefold(nick, id_form or 'rfc1459'))}:localhost"


async def rename(user: RawIRC, nick: str) -> None:
    user.send(f"NICK {nick}")
    await user.expect(lambda ln: ln.command == "NICK" and ln.param(0) == nick, what="NICK")
    user.nick = nick


def irc_ghosts(members: dict[str, Any]) -> set[str]:
    return {m for m in members if m.startswith("@irc_test_") and m != BOT}


@pytest.mark.parametrize(("server_name", "id_form"), CASES)
async def test_bracket_nicks_one_copy_one_ghost_mentions(
    request: pytest.FixtureRequest,
    make_bridge: BridgeFactory,
    synapse: SynapseServer,
    closing: list[Any],
    server_name: str,
    id_form: str | None,
) -> None:
    server: IrcServer = request.getfixturevalue(server_name)
    n = uniq("")
    chan = f"#Case{n}"
    nick = f"Da[n]\\^{{x}}|{n}"  # Da[n]\^{x}|7
    carol = await RawIRC(server.host, server.port, f"carol{n}").connect()
    closing.append(carol)
    await rename(carol, nick)  # USER would refuse these characters in the user name
    await carol.join(chan)
    await make_bridge(connectors=connectors(server, id_form))
    ann: MatrixClient = synapse.new_client(f"ann{n}")
    closing.append(ann)
    await ann.set_displayname(f"A\\l|ce^{{y}}{n}")
    puppet = f"A\\l|ce^{{y}}{n}[m]"  # the default template
    room = await ann.join(alias(chan.lower()))
    await carol.expect(joined(puppet, chan), what="the puppet's JOIN")

    # The IRC user already in the channel is one ghost, named in the id form whatever the
    # server (by default rfc1459, while ngircd itself would tell "Da[n]" from "Da{n}").
    carol_ghost = ghost_id(nick, id_form)

    async def ghosts() -> set[str]:
        return irc_ghosts(await ann.joined_members(room))

    for _ in range(100):
        if await ghosts():
            break
        await asyncio.sleep(0.1)
    assert await ghosts() == {carol_ghost}

    # A Matrix message: once on IRC, once in Matrix, and only from the Matrix user.
    await ann.send_text(room, "hello")
    await carol.expect(said(puppet, "hello"), what="the PRIVMSG")
    carol.send(f"PRIVMSG {chan} :marker")
    await ann.wait_for_event(room, body_is("marker"))
    await asyncio.sleep(1.0)  # a second copy would come with or soon after the marker
    carol.send(f"PRIVMSG {chan} :marker2")
    await ann.wait_for_event(room, body_is("marker2"))
    events = await ann.messages(room, 100)
    hellos = [e for e in events if body_is("hello")(e)]
    assert [e["sender"] for e in hellos] == [ann.user_id]
    puppet_ghost = ghost_id(puppet, id_form)
    assert not [e for e in events if e["sender"] == puppet_ghost]
    assert not [e for e in events if e.get("state_key") == puppet_ghost]
    assert await ghosts() == {carol_ghost}
    assert [ln.param(1) for ln in carol.messages(chan)].count("hello") == 1
    marker = next(e for e in events if body_is("marker")(e))
    assert marker["sender"] == carol_ghost

    # Mentions, IRC -> Matrix: the puppet's nick, as spelled and in another case, is a pill of
    # the Matrix user.
    carol.send(f"PRIVMSG {chan} :{puppet}: you there?")
    evt = await ann.wait_for_event(room, body_is(f"{puppet}: you there?"))
    assert evt["content"]["m.mentions"] == {"user_ids": [ann.user_id]}
    assert f"https://matrix.to/#/{ann.user_id}" in evt["content"]["formatted_body"]
    carol.send(f"PRIVMSG {chan} :ok {puppet.upper()}")
    evt = await ann.wait_for_event(room, body_is(f"ok {puppet.upper()}"))
    assert evt["content"]["m.mentions"] == {"user_ids": [ann.user_id]}

    # Mentions, Matrix -> IRC: a pill of the ghost becomes the nick as IRC spells it.
    await ann.send_event(
        room,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "Dan: look",
            "format": "org.matrix.custom.html",
            "formatted_body": f'<a href="https://matrix.to/#/{carol_ghost}">Dan</a>: look',
            "m.mentions": {"user_ids": [carol_ghost]},
        },
    )
    await carol.expect(said(puppet, f"{nick}: look"), what="the mention")

    # A nick change in case and [ ] \ against { } |: the same ghost, renamed, when the id
    # form counts them as one (rfc1459); else the ghost of the new nick takes the place of
    # the old one. Never two.
    renamed = f"DA{{N}}|^[X]\\{n}"
    await rename(carol, renamed)
    carol_ghost = ghost_id(renamed, id_form)
    if id_form is None:
        assert carol_ghost == ghost_id(nick, id_form)
    carol.send(f"PRIVMSG {chan} :after the rename")
    evt = await ann.wait_for_event(room, body_is("after the rename"))
    assert evt["sender"] == carol_ghost
    for _ in range(50):
        if await ghosts() == {carol_ghost}:
            break
        await asyncio.sleep(0.1)
    assert await ghosts() == {carol_ghost}
    await ann.send_event(
        room,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "Dan: again",
            "format": "org.matrix.custom.html",
            "formatted_body": f'<a href="https://matrix.to/#/{carol_ghost}">Dan</a>: again',
        },
    )
    await carol.expect(said(puppet, f"{renamed}: again"), what="the mention after the rename")
    # Still one copy of each Matrix message on IRC.
    assert [ln.param(1) for ln in carol.messages(chan)].count("hello") == 1


@pytest.mark.parametrize("server_name", ["ngircd", "inspircd"])
async def test_bracket_channel_from_config_both_ways_and_after_a_restart(
    request: pytest.FixtureRequest,
    make_bridge: BridgeFactory,
    synapse: SynapseServer,
    closing: list[Any],
    server_name: str,
) -> None:
    """A channel whose name folds differently under the server's mapping and the ids' form
    (``#B[r]\\k`` is ``#b{r}|k`` in Matrix, ngircd tells them apart): listed in ``channels``,
    its portal is the IRC channel so spelled, both ways, before and after a bridge restart.
    (Opened with ``join``; test_e2e_aliases.py opens channels with braces by alias.)"""
    server: IrcServer = request.getfixturevalue(server_name)
    n = uniq("")
    chan = f"#B[r]\\k{n}"
    carol = await RawIRC(server.host, server.port, f"carol{n}").connect()
    closing.append(carol)
    await carol.join(chan)
    cfg = connectors(server, None)
    cfg["irc"]["networks"]["test"]["channels"] = [chan]
    bridge = await make_bridge(connectors=cfg)
    ann: MatrixClient = synapse.new_client(f"ann{n}")
    closing.append(ann)
    await ann.set_displayname(f"Ann{n}")
    puppet = f"Ann{n}[m]"
    portal_id = casefold(chan, "rfc1459")
    mgmt = await management_room(ann)
    reply = await command(ann, mgmt, f"join irc_test {portal_id}", "Invited you")
    assert f"#irc_test_{portal_id}:localhost" in reply
    room = await ann.join(reply.rsplit("(", 1)[1].rstrip(")."))
    await carol.expect(joined(puppet, chan), what="the puppet's JOIN")
    await ann.send_text(room, "into the channel")
    line = await carol.expect(said(puppet, "into the channel"), what="the PRIVMSG")
    assert line.param(0).lower() == chan.lower()
    carol.send(f"PRIVMSG {chan} :out of it")
    await ann.wait_for_event(room, body_is("out of it"))

    await bridge.stop()
    await carol.expect(lambda ln: ln.command == "QUIT" and ln.nick == puppet, what="QUIT")
    mark = len(carol.lines)
    await make_bridge(connectors=cfg)
    await carol.expect(
        lambda ln: ln in carol.lines[mark:] and joined(puppet, chan)(ln), what="the rejoin"
    )
    carol.send(f"PRIVMSG {chan} :after the restart")
    await ann.wait_for_event(room, body_is("after the restart"))
    await ann.send_text(room, "hello again")
    line = await carol.expect(said(puppet, "hello again"), what="the PRIVMSG after the restart")
    assert line.param(0).lower() == chan.lower()
