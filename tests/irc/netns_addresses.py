"""``bind_prefix`` end to end, inside a network namespace of its own.

Not collected by itself (the name does not start with ``test_``): ``test_e2e_addresses.py``
runs this file with pytest under ``unshare --net --mount``, after bringing ``lo`` up there,
routing ``2001:db8:1::/64`` to it (``ip -6 route add local ... dev lo``) and giving the name
``ircd.test`` both ``127.0.0.1`` and ``::1`` (a private ``/etc/hosts``). Synapse, PostgreSQL,
ngircd and the bridge all run in the namespace: ngircd listens on both addresses, the bot
connects over IPv4 from its ``bind_address`` and every puppet over IPv6 from its user's own
address, and ngircd's WHOIS shows each of them; a bridge restart keeps the addresses.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from connectors.irc.addresses import parse_prefix, user_address
from tests.conftest import BridgeFactory
from tests.harness.ircd import IrcServer, start_ngircd
from tests.harness.synapse import MatrixClient, SynapseServer

from .conftest import RawIRC, matrix_user
from .test_e2e_synapse import alias, joined, uniq

PREFIX = "2001:db8:1::/64"
BOT_ADDRESS = "127.0.0.2"
HOSTNAME = "ircd.test"


@pytest.fixture(scope="session", autouse=True)
def in_namespace() -> None:
    if os.environ.get("MIMI_IRC_NETNS") != "1":
        pytest.fail("run through tests/irc/test_e2e_addresses.py (it makes the namespace)")


@pytest.fixture
async def dual_ngircd(tmp_path: Path) -> AsyncIterator[IrcServer]:
    server = start_ngircd(tmp_path / "ngircd", listen="127.0.0.1,::1")
    yield server
    server.stop()


async def whois_host(observer: RawIRC, nick: str) -> str:
    mark = len(observer.lines)
    observer.send(f"WHOIS {nick}")
    line = await observer.expect(
        lambda ln: ln in observer.lines[mark:] and ln.command == "311" and ln.param(1) == nick,
        what=f"WHOIS {nick}",
    )
    host = line.param(3)
    # ngircd shows an IPv6 host in brackets ([2001:db8:1::5]) so that it never starts with ':'.
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


async def test_each_puppet_connects_from_its_users_address(
    make_bridge: BridgeFactory, dual_ngircd: IrcServer, synapse: SynapseServer
) -> None:
    chan = "#" + uniq("addr")
    observer = await RawIRC("127.0.0.1", dual_ngircd.port, uniq("watcher")).connect()
    await observer.join(chan)
    bot_nick = uniq("mimibot")
    cfg: dict[str, Any] = {
        "irc": {
            "networks": {
                "test": {
                    "host": HOSTNAME,
                    "port": dual_ngircd.port,
                    "bot": {"nick": bot_nick},
                    "reconnect": {"min_delay": 0.2, "max_delay": 1.0},
                    "connects_per_second": 50,
                    "register_timeout": 10,
                    "bind_address": BOT_ADDRESS,
                    "bind_prefix": PREFIX,
                    "channels": [chan],
                }
            }
        }
    }
    users: list[MatrixClient] = []
    try:
        bridge = await make_bridge(connectors=cfg)
        await observer.expect(joined(bot_nick, chan), timeout=30, what="the bot's JOIN")
        assert await whois_host(observer, bot_nick) == BOT_ADDRESS
        nicks = {}
        for name in ("Ann", "Bob", "Cid"):
            user = await matrix_user(synapse, uniq(name))
            users.append(user)
            await user.join(alias(chan))
            display = (await user.get_profile(user.user_id))["displayname"]
            nicks[user.user_id] = f"{display}[m]"
        prefix = parse_prefix(PREFIX)
        seen = {}
        for user_id, nick in nicks.items():
            await observer.expect(joined(nick, chan), timeout=30, what=f"{nick}'s JOIN")
            seen[user_id] = await whois_host(observer, nick)
            assert seen[user_id] == user_address(prefix, user_id)
            assert ipaddress.IPv6Address(seen[user_id]) in prefix
        assert len(set(seen.values())) == len(seen)  # one address per Matrix user
        # A restart: every puppet comes back from the same address.
        await bridge.stop()
        mark = len(observer.lines)
        await make_bridge(connectors=cfg)
        for user_id, nick in nicks.items():
            await observer.expect(
                lambda ln, nick=nick: ln in observer.lines[mark:] and joined(nick, chan)(ln),
                timeout=60,
                what=f"{nick}'s JOIN after the restart",
            )
            assert await whois_host(observer, nick) == seen[user_id]
        assert await whois_host(observer, bot_nick) == BOT_ADDRESS
    finally:
        for user in users:
            await user.close()
        await observer.close()
