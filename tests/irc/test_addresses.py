"""Per-user source addresses (``bind_prefix``) and the connect pacer's order."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from bridge.connector import ConfigError
from connectors.irc.addresses import parse_prefix, user_address
from connectors.irc.client import ConnectPacer
from connectors.irc.config import parse_network

from .conftest import wait_for
from .helpers import start_connector

PREFIX = parse_prefix("2001:db8:1::/64")


def test_user_address_is_pinned() -> None:
    # Fixed values: an address is part of a user's identity on the network (bans, allow
    # lists), so a change of the hash would be a breaking change.
    assert user_address(PREFIX, "@alice:example.org") == "2001:db8:1:0:86aa:d78a:7de4:16e2"
    assert user_address(PREFIX, "@bob:example.org") == "2001:db8:1:0:8004:1b23:7fd7:3973"
    assert user_address(PREFIX, "@alice:example.org", "s3cret") == (
        "2001:db8:1:0:bf9e:ee43:4322:9c6a"
    )
    small = parse_prefix("2001:db8:1:2:3:4:5:0/112")
    assert user_address(small, "@alice:example.org") == "2001:db8:1:2:3:4:5:16e2"


def test_user_addresses_differ_and_stay_in_the_prefix() -> None:
    addresses = {user_address(PREFIX, f"@user{i}:example.org") for i in range(2000)}
    assert len(addresses) == 2000
    assert all(ipaddress.IPv6Address(a) in PREFIX for a in addresses)
    long_key = "k" * 200  # longer than a BLAKE2b key: hashed first
    assert user_address(PREFIX, "@a:b", long_key) != user_address(PREFIX, "@a:b")


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("2001:db8:1::1/64", "host bits set; the prefix is 2001:db8:1::/64"),
        ("10.0.0.0/8", "is IPv4"),
        ("2001:db8::", "no prefix length"),
        ("2001:db8::/124", "at most /120"),
        ("nonsense", "not an IPv6 prefix"),
    ],
)
def test_bad_prefix_is_a_config_error(value: str, error: str) -> None:
    with pytest.raises(ConfigError, match="bind_prefix") as info:
        parse_network("a", {"host": "h", "bind_prefix": value})
    assert error in str(info.value)


def test_prefix_config() -> None:
    cfg = parse_network(
        "a", {"host": "h", "bind_prefix": "2001:db8:1::/64", "bind_address": "192.0.2.1"}
    )
    assert cfg.bind_prefix == PREFIX and cfg.bind_address == "192.0.2.1" and cfg.bind_key == ""
    assert parse_network("a", {"host": "h"}).bind_prefix is None
    with pytest.raises(ConfigError, match="bind_address"):
        parse_network("a", {"host": "h", "bind_address": "not-an-ip"})


async def test_pacer_grants_by_rank_gated_after_the_gate() -> None:
    gate_open = False
    pacer = ConnectPacer(50, gate=lambda: gate_open)
    order: list[str] = []
    loop = asyncio.get_running_loop()

    async def one(name: str, rank: float, gated: bool) -> None:
        await pacer.wait(rank, gated)
        order.append(name)

    tasks = [loop.create_task(one(f"p{i}", -i, True)) for i in range(5)]
    await asyncio.sleep(0.1)
    assert order == []  # gated: nothing before the gate opens
    tasks.append(loop.create_task(one("bot", float("-inf"), False)))
    await wait_for(lambda: order, what="the bot's turn")
    assert order == ["bot"]
    gate_open = True
    pacer.poke()
    await asyncio.gather(*tasks)
    assert order == ["bot", "p4", "p3", "p2", "p1", "p0"]


async def test_pacer_lets_puppets_go_when_the_bot_stays_away() -> None:
    pacer = ConnectPacer(50, gate=lambda: False, gate_timeout=1.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(pacer.wait(0.0, gated=True), 10)
    assert loop.time() - started >= 1.5  # held while the gate's time ran
    pacer.close()


async def test_pacer_skips_cancelled_waiters() -> None:
    pacer = ConnectPacer(20)
    order: list[int] = []

    async def one(i: int) -> None:
        await pacer.wait(i)
        order.append(i)

    first = asyncio.get_running_loop().create_task(one(0))
    await first
    tasks = [asyncio.get_running_loop().create_task(one(i)) for i in (3, 1, 2)]
    await asyncio.sleep(0)
    tasks[1].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert order == [0, 2, 3]


async def test_a_puppet_never_leaves_from_another_address(bridge, ngircd) -> None:
    # ngircd listens on 127.0.0.1 only: a puppet of a bind_prefix has no way there and
    # says so, instead of connecting from the host's default address.
    conn = await start_connector(
        bridge, ngircd, bind_prefix="2001:db8:1::/64", reconnect={"min_delay": 5, "max_delay": 5}
    )
    try:
        puppet = conn.networks["test"].pool.obtain("@bob:example.org", "Bob")
        assert puppet is not None
        await wait_for(lambda: puppet.conn.stats.last_error, 15, "the failed attempt")
        assert puppet.conn.stats.last_error == (
            f"{ngircd.host} has no IPv6 address to reach from "
            f"{user_address(PREFIX, '@bob:example.org')}"
        )
        assert not puppet.conn.registered
    finally:
        await conn.stop()
