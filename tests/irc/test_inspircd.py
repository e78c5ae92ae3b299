"""IRCv3 against a real InspIRCd 3 (server-time, message-tags/msgid, echo-message,
multi-prefix, away-notify, account-tag, batch, cap-notify)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.connector import MatrixUser, PortalKey, RemoteMessage, RemotePresence
from tests.harness.ircd import IrcServer, start_inspircd

from .conftest import RawIRC, wait_for
from .helpers import NET, message, start_connector, unique


@pytest.fixture(scope="module")
def inspircd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IrcServer]:
    server = start_inspircd(Path(tmp_path_factory.mktemp("inspircd")))
    yield server
    server.stop()


async def test_ircv3_caps_tags_echo_away(bridge, inspircd) -> None:
    chan = "#" + unique("v3")
    alice = await RawIRC(inspircd.host, inspircd.port, unique("alice")).connect()
    await alice.join(chan)
    conn = await start_connector(bridge, inspircd)
    try:
        net = conn.networks["test"]
        want = {"server-time", "message-tags", "echo-message", "multi-prefix", "away-notify",
                "account-tag", "batch", "cap-notify"}  # fmt: skip
        assert want <= net.bot.caps
        portal = PortalKey(NET, chan)
        await conn.resolve_portal(portal, None)
        bob = MatrixUser("@bob:example.org", "Bob", "user")
        client = await conn.client_for(bob, portal)
        await client.handle_matrix_message(message(portal, bob.user_id, "from matrix"))
        await alice.expect(lambda ln: ln.param(1) == "from matrix")
        puppet = net.pool.get(bob.user_id)
        assert puppet is not None and "echo-message" in puppet.conn.caps
        alice.send(f"PRIVMSG {chan} :tagged hello")
        msgs = await wait_for(lambda: bridge.of_type(RemoteMessage))
        await asyncio.sleep(0.3)
        msgs = bridge.of_type(RemoteMessage)
        assert len(msgs) == 1  # the puppet's echo and the listener's copy are not bridged
        assert msgs[0].content.text == "tagged hello"
        assert not re.fullmatch(r"\d+\.\d+", msgs[0].id)  # the server's msgid, not ours
        alice.send("AWAY :lunch")
        pres = await wait_for(lambda: bridge.of_type(RemotePresence))
        assert pres[0].presence == "unavailable" and pres[0].status == "lunch"
    finally:
        await conn.stop()
        await alice.close()
