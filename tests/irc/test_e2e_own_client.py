"""End to end with real services (InspIRCd linked with Atheme): a Matrix user's own IRC client,
identified to the same services account as their puppet, writes in a bridged channel, and the
message shows in Matrix as that Matrix user (double puppeting), not from a ghost, and is not
bridged back to IRC. The server's IRCv3 ``account`` tag is what vouches for it: another client
on the user's nick pattern without the account stays a ghost.

InspIRCd and Atheme come from Debian (``apt-get install inspircd atheme-services``); missing,
the tests fail with that hint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DOUBLE_PUPPET_TOKEN, BridgeFactory
from tests.harness.ircd import ServicesNet, start_services

from .conftest import RawIRC
from .test_e2e_synapse import (
    IrcUsers,
    alias,
    body_is,
    ghost,
    irc_connectors,
    joined,
    said,
    uniq,
)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServicesNet]:
    net = start_services(Path(tmp_path_factory.mktemp("services")))
    yield net
    net.stop()


async def _identified(client: RawIRC, account: str, password: str) -> None:
    client.send(f"PRIVMSG NickServ :IDENTIFY {account} {password}")
    await client.expect(
        lambda ln: ln.command == "NOTICE" and "identified" in ln.param(-1).lower(),
        30,
        "NickServ identifying the client",
    )


async def test_own_irc_client_speaks_as_the_matrix_user(
    make_bridge: BridgeFactory,
    services: ServicesNet,
    irc: IrcUsers,
    matrix: Callable[..., Any],
) -> None:
    account, password = uniq("annacct"), "ann-secret-1"
    services.register(account, password)
    chan = "#" + uniq("own")
    carol = await irc(services.ircd, "carol")
    await carol.join(chan)
    bridge = await make_bridge(
        connectors=irc_connectors(services.ircd, register_timeout=10),
        double_puppet={"as_token": DOUBLE_PUPPET_TOKEN},
    )
    ann = await matrix("Ann")
    mgmt = await ann.create_room(invite=["@mimibot:localhost"], is_direct=True)
    await ann.wait_for_event(mgmt, lambda e: "management room" in e["content"].get("body", ""))
    await ann.send_text(mgmt, f"login irc test sasl {account} {password}")
    await ann.wait_for_event(
        mgmt, lambda e: "Connected to test as" in e["content"].get("body", ""), 45
    )
    room = await ann.join(alias(chan))
    puppet = f"{(await ann.get_profile(ann.user_id))['displayname']}[m]"
    await carol.expect(joined(puppet, chan), 45, "the puppet's JOIN")

    # Her own IRC client (another nick), identified to her account, in the channel.
    phone = await irc(services.ircd, "annphone")
    await _identified(phone, account, password)
    await phone.join(chan)
    phone.send(f"PRIVMSG {chan} :from my own client")
    evt = await ann.wait_for_event(room, body_is("from my own client"), 45)
    assert evt["sender"] == ann.user_id, evt

    # Someone not logged into her account is an IRC user like any other.
    other = await irc(services.ircd, "annfake")
    await other.join(chan)
    other.send(f"PRIVMSG {chan} :not from ann")
    evt = await ann.wait_for_event(room, body_is("not from ann"), 45)
    assert evt["sender"] == ghost(other.nick), evt

    # Nothing of her own client's message went back to IRC through her puppet.
    await ann.send_text(room, "marker")
    await carol.expect(said(puppet, "marker"), 45, "the puppet's PRIVMSG")
    echoed = [ln for ln in carol.messages(chan) if ln.nick == puppet]
    assert [ln.param(1) for ln in echoed] == ["marker"], echoed
    assert bridge.connectors["irc"]
