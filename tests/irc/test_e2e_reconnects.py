"""Reconnects at scale, small: 20 puppets on a network paced at 5 connections a second,
through Synapse, ngircd and the bridge. After a bridge restart and after an ngircd crash the
bot connects first, then the puppets, the Matrix users who sent a message most recently
first (the bridge database keeps when), and the pace is kept: ngircd's own log gives the
order of registrations and when it accepted each connection, the bridge's log when it
opened each one."""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.conftest import BridgeFactory
from tests.harness.ircd import IrcServer, start_ngircd
from tests.harness.synapse import MatrixClient, SynapseServer

from .conftest import RawIRC, matrix_user, wait_for
from .test_e2e_synapse import _crash, alias, irc_connectors, joined, said, uniq

USERS = 20
RATE = 5
REGISTERED = re.compile(r'^\[\d+:\d+\s+\d+\] User "([^!"]+)!.*" registered \(connection (\d+)\)')
ACCEPTED = re.compile(r"^\[\d+:\d+\s+(\d+)\] Accepted connection (\d+) ")


@pytest.fixture
def ircd(tmp_path: Path) -> Iterator[IrcServer]:
    server = start_ngircd(tmp_path / "ngircd")
    yield server
    server.stop()


class Connects(logging.Handler):
    """When the bridge opened each IRC connection (its ``connecting`` debug line)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.times: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().split(": ", 1)[-1].startswith("connecting (attempt"):
            self.times.append(record.created)


@pytest.fixture
def connects() -> Iterator[Connects]:
    handler = Connects()
    logger = logging.getLogger("mimi.irc.client")
    old = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


@pytest.fixture
async def users(synapse: SynapseServer) -> AsyncIterator[list[MatrixClient]]:
    made: list[MatrixClient] = []
    yield made
    for user in made:
        await user.close()


def log_text(server: IrcServer) -> str:
    return (server.workdir / "ngircd.log").read_text(errors="replace")


class Seen:
    """What ngircd's log says after an offset: the nicks in the order their connections were
    accepted (the bridge's order; registrations may finish out of it when the server is
    busy), the nicks in the order they registered, and the second of each accept."""

    def __init__(self, text: str) -> None:
        self.accepted: list[str] = []
        self.registered: list[str] = []
        self.seconds: list[int] = []
        conns: list[str] = []  # connection numbers in accept order, then their nicks
        for line in text.splitlines():
            if m := ACCEPTED.match(line):
                self.seconds.append(int(m.group(1)))
                conns.append(m.group(2))
            elif m := REGISTERED.match(line):
                self.registered.append(m.group(1))
                i = len(conns) - 1 - conns[::-1].index(m.group(2))  # its latest accept
                conns[i] = "=" + m.group(1)
        self.accepted = [c[1:] for c in conns if c.startswith("=")]


async def registrations(server: IrcServer, mark: int, count: int) -> Seen:
    """ngircd's log after offset ``mark``, once ``count`` users have registered."""

    def parse() -> Seen | None:
        seen = Seen(log_text(server)[mark:])
        return seen if len(seen.registered) >= count else None

    found: Seen = await wait_for(parse, 90, f"{count} registrations")
    return found


def check_pace(accepted: list[int], times: list[float], count: int) -> None:
    # ngircd stamps whole seconds: a second holds RATE connections (one more when a
    # connection is a little late into the next one); unpaced, the 21 would share one.
    per_second = max(accepted.count(s) for s in set(accepted))
    assert per_second <= RATE + 1, f"{per_second} connections in one second: {accepted}"
    assert accepted[-1] - accepted[0] >= (count - 1) / RATE - 1
    # The bridge's own clock: never more than RATE (+1 for a late log line) in any second.
    times = sorted(times)
    window = max(sum(1 for t in times if s <= t < s + 1.0) for s in times)
    assert window <= RATE + 1, f"{window} connects within one second"


async def test_reconnects_bot_first_then_most_recently_active(
    make_bridge: BridgeFactory,
    ircd: IrcServer,
    synapse: SynapseServer,
    users: list[MatrixClient],
    connects: Connects,
) -> None:
    chan = "#" + uniq("scale")
    cfg = irc_connectors(
        ircd,
        channels=[chan],
        connects_per_second=RATE,
        reconnect={"min_delay": 0.5, "max_delay": 2.0},
        register_timeout=20,
    )
    bot = cfg["irc"]["networks"]["test"]["bot"]["nick"]
    observer = await RawIRC(ircd.host, ircd.port, uniq("watcher")).connect()
    try:
        await observer.join(chan)
        bridge = await make_bridge(connectors=cfg)
        nicks: dict[str, str] = {}
        for _ in range(USERS):
            user = await matrix_user(synapse, uniq("R"))
            users.append(user)
            await user.join(alias(chan))
            nicks[user.user_id] = (await user.get_profile(user.user_id))["displayname"] + "[m]"
        for nick in nicks.values():
            await observer.expect(joined(nick, chan), timeout=60, what=f"{nick}'s JOIN")
        # Each user speaks once, in an order unlike the joins: the last to speak comes
        # back first.
        speakers = list(users)
        random.Random(15).shuffle(speakers)
        rooms = {u.user_id: await u.resolve_alias(alias(chan)) for u in speakers}
        for user in speakers:
            text = f"hello from {user.user_id}"
            await user.send_text(rooms[user.user_id], text)
            await observer.expect(said(nicks[user.user_id], text), timeout=30, what=text)
        expected = [bot] + [nicks[u.user_id] for u in reversed(speakers)]

        # A bridge restart: the order comes from the database.
        await bridge.stop()
        puppets = set(expected[1:])
        await wait_for(
            lambda: puppets <= {ln.nick for ln in observer.lines if ln.command == "QUIT"},
            30,
            "every puppet's QUIT",
        )
        mark = len(log_text(ircd))
        connects.times.clear()
        bridge = await make_bridge(connectors=cfg)
        seen = await registrations(ircd, mark, len(expected))
        assert seen.accepted == expected
        assert seen.registered[0] == bot
        check_pace(seen.seconds, connects.times, len(expected))

        # The server crashes and comes back: the bot first again, then the same order.
        net = bridge.connectors["irc"].networks["test"]  # type: ignore[attr-defined]
        await wait_for(lambda: all(p.conn.registered for p in net.pool.puppets.values()), 60)
        await observer.close()
        await asyncio.to_thread(_crash, ircd)
        await wait_for(lambda: not net.bot.registered, 30, "the bot noticing")
        mark = len(log_text(ircd))
        connects.times.clear()
        await asyncio.to_thread(ircd.restart)
        seen = await registrations(ircd, mark, len(expected))
        assert seen.accepted == expected
        assert seen.registered[0] == bot
        check_pace(seen.seconds, connects.times, len(expected))
    finally:
        await observer.close()
