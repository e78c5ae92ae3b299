"""IRC run split across two scale-out workers (the connector is a ``ShardedConnector``), on
ngircd, through real NATS, PostgreSQL and Synapse: each worker holds part of the Matrix
users' puppets, one of them the listening bot. Every Matrix user's line reaches IRC once,
from their own nick, and never comes back into Matrix as an IRC user's (the bot tells the
other worker's puppets by the nicks they share in the database); an IRC line reaches every
Matrix user once; a private message reaches the user through the worker holding their
puppet; a nick change of a puppet on the other worker is followed. Then the worker without
the bot crashes (its leases are left to expire): the other worker's puppets stay connected,
and the crashed worker's users' puppets come back on the survivor, their messages flowing
again, none twice."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from bridge.connector import ConnectionState, PortalKey
from bridge.connector.capabilities import ConnectionReporting
from bridge.scale.worker import Worker
from bridge.testing.postgres import PostgresServer
from bridge.testing.synapse import MatrixClient
from tests.harness.ircd import IrcServer
from tests.harness.nats import NatsServer
from tests.harness.synapse import SynapseServer
from tests.helpers import command, management_room, until
from tests.irc.conftest import RawIRC, matrix_user, ngircd  # noqa: F401 (a fixture)
from tests.irc.test_e2e_synapse import alias, body_is, ghost, irc_connectors, joined, said, uniq
from tests.scale.scale_setup import Deployment, new_database, scale_config

NETWORK = "irc_test"
TTL = 6.0


@dataclass
class Split:
    d: Deployment
    carol: RawIRC
    channel: str
    bot: str


@pytest.fixture
async def split(
    tmp_path: Path,
    synapse: SynapseServer,
    as_port: int,
    postgres: PostgresServer,
    nats_server: NatsServer,
    ngircd: IrcServer,  # noqa: F811
) -> AsyncIterator[Split]:
    channel = "#" + uniq("split")
    connectors = irc_connectors(ngircd, [channel])
    bot = connectors["irc"]["networks"]["test"]["bot"]["nick"]
    config = scale_config(
        tmp_path / "config.yaml",
        synapse,
        as_port,
        new_database(postgres),
        nats_server,
        connectors,
        lease_ttl_s=TTL,
        lease_renew_s=1,
    )
    carol = await RawIRC(ngircd.host, ngircd.port, uniq("carol")).connect()
    await carol.join(channel)
    d = Deployment(config)
    try:
        yield Split(d, carol, channel, bot)
    finally:
        await d.close()
        await carol.close()


def _owned(worker: Worker) -> frozenset[str]:
    assert worker.leases is not None
    return worker.leases.owned()


def _holder(d: Deployment, user_id: str) -> str | None:
    return d.split_holder("irc", NETWORK, user_id)


class User:
    def __init__(self, client: MatrixClient, display: str) -> None:
        self.client = client
        self.nick = f"{display}[m]"
        self.room = ""


async def _count(client: MatrixClient, room: str, body: str) -> int:
    return [e["content"].get("body") for e in await client.messages(room, limit=200)].count(body)


async def test_irc_split_across_two_workers(split: Split, synapse: SynapseServer) -> None:
    d, carol, chan = split.d, split.carol, split.channel
    admin = await matrix_user(synapse, f"Ad{uuid.uuid4().hex[:6]}")
    _make_admin(d.config, admin.user_id)
    await d.start_core()
    await d.start_worker("w1")
    await d.start_worker("w2")
    await until(lambda: d.shared_out(NETWORK), 60, "the shards shared out")
    # Both workers run an IRC instance; one of them the bot.
    assert all("irc" in w.running for w in d.workers.values())
    main = next(n for n, w in d.workers.items() if f"{NETWORK}.main" in _owned(w))
    other = next(n for n in d.workers if n != main)
    await carol.expect(joined(split.bot, chan), timeout=60, what="the bot's JOIN")

    users: list[User] = []
    while min(sum(_holder(d, u.client.user_id) == w for u in users) for w in d.workers) < 1:
        assert len(users) < 16, "the user ids do not spread"
        display = f"Sp{uuid.uuid4().hex[:6]}"
        users.append(User(await matrix_user(synapse, display), display))
    placed = {u.client.user_id: _holder(d, u.client.user_id) for u in users}
    print("puppets per worker:", placed)

    for u in users:
        u.room = await u.client.join(alias(chan))
        await u.client.send_text(u.room, f"hello from {u.nick}")
    for u in users:
        await carol.expect(said(u.nick, f"hello from {u.nick}"), timeout=60, what=u.nick)
    carol.send(f"PRIVMSG {chan} :hello matrix")
    for u in users:
        evt = await u.client.wait_for_event(u.room, body_is("hello matrix"), timeout=60)
        assert evt["sender"] == ghost(carol.nick)
    # The bot saw every puppet's line before carol's: none came back as an IRC user's.
    room = users[0].room
    for u in users:
        assert await _count(users[0].client, room, f"hello from {u.nick}") == 1, u.nick
        assert ghost(u.nick) not in await users[0].client.joined_members(room), u.nick
        assert len([ln for ln in carol.lines if said(u.nick, f"hello from {u.nick}")(ln)]) == 1

    # The core's metrics count every instance's connections: the bot and both workers'
    # puppets (each instance answers with its own).
    assert d.core is not None
    irc = d.core.connectors["irc"]
    assert isinstance(irc, ConnectionReporting)
    states = await irc.connection_states()
    assert [c.state for c in states] == [ConnectionState.CONNECTED] * (len(users) + 1)

    # A private message reaches the user through the worker holding their puppet.
    far = next(u for u in users if placed[u.client.user_id] == other)
    carol.send(f"PRIVMSG {far.nick} :private hello")
    key = PortalKey(NETWORK, carol.nick.lower(), far.client.user_id)
    core = d.core
    portal = await until(lambda: core.portal_store.get(key), 60, "the DM portal")
    await far.client.join(portal.room_id)
    evt = await far.client.wait_for_event(portal.room_id, body_is("private hello"), timeout=60)
    assert evt["sender"] == ghost(carol.nick)
    await far.client.send_text(portal.room_id, "private answer")
    line = await carol.expect(said(far.nick, "private answer"), timeout=60)
    assert line.param(0) == carol.nick

    # A nick change of the other worker's puppet: the bot carries over who it is.
    mgmt = await management_room(far.client)
    new = uniq("Renamed")
    await command(far.client, mgmt, f"irc nick {new}", "You are now")
    await carol.expect(
        lambda ln: ln.command == "NICK" and ln.nick == far.nick and ln.param(0) == new,
        timeout=30,
        what="NICK",
    )
    far.nick = new
    await far.client.send_text(far.room, "under a new name")
    await carol.expect(said(new, "under a new name"), timeout=30)
    carol.send(f"PRIVMSG {chan} :seen it")
    await far.client.wait_for_event(far.room, body_is("seen it"), timeout=60)
    assert await _count(far.client, far.room, "under a new name") == 1
    assert ghost(new) not in await far.client.joined_members(far.room)

    # A second channel is unlinked by an admin: every puppet leaves it, those of the worker
    # without the bot too (the closing is told to every instance).
    chan2 = "#" + uniq("split2")
    await carol.join(chan2)
    room2 = await admin.join(alias(chan2))
    for u in users:
        await u.client.join(alias(chan2))
    for u in users:
        await carol.expect(joined(u.nick, chan2), timeout=60, what=f"{u.nick} in {chan2}")
    await admin.send_text(room2, "!mimi unlink")
    await admin.wait_for_event(room2, lambda e: "Unlinked" in e["content"].get("body", ""))
    for u in users:
        await carol.expect(
            lambda ln, u=u: (
                ln.command == "PART" and ln.nick == u.nick and ln.param(0).lower() == chan2
            ),
            timeout=30,
            what=f"{u.nick} leaving {chan2} ({placed[u.client.user_id]})",
        )
    # The linked channel is untouched.
    await far.client.send_text(far.room, "still here")
    await carol.expect(said(far.nick, "still here"), timeout=30)

    # The worker without the bot crashes: its leases are left to expire.
    kept = d.workers[main]
    instance = kept.running["irc"].connector
    theirs = [u for u in users if placed[u.client.user_id] == other]
    ours = [u for u in users if placed[u.client.user_id] == main]
    quits_before = {u.nick: _quits(carol, u.nick) for u in users}
    began = time.monotonic()
    await d.stop_worker(other, release=False)
    for u in theirs:
        await carol.expect(
            lambda ln, u=u: ln.command == "QUIT" and ln.nick == u.nick, 30, "the crash's QUIT"
        )
    # The survivor's puppets were not touched; the crashed worker's come back on it.
    for u in ours:
        await u.client.send_text(u.room, f"during from {u.nick}")
        await carol.expect(said(u.nick, f"during from {u.nick}"), timeout=30)
    for u in theirs:
        await u.client.send_text(u.room, f"after from {u.client.user_id}")
    for u in theirs:
        line = await carol.expect(
            lambda ln, u=u: (
                ln.command == "PRIVMSG" and ln.param(1) == f"after from {u.client.user_id}"
            ),
            timeout=90,
            what="a moved puppet's message",
        )
        u.nick = str(line.nick)
    print(f"the crashed worker's users' messages on IRC {time.monotonic() - began:.1f} s after")
    assert kept.running["irc"].connector is instance
    for u in theirs:
        assert _holder(d, u.client.user_id) == main
    for u in ours:
        assert _quits(carol, u.nick) == quits_before[u.nick], f"{u.nick} was reconnected"
    carol.send(f"PRIVMSG {chan} :all back")
    for u in users:
        await u.client.wait_for_event(u.room, body_is("all back"), timeout=60)
    for u in theirs:
        body = f"after from {u.client.user_id}"
        assert await _count(u.client, u.room, body) == 1
        assert ghost(u.nick) not in await u.client.joined_members(u.room)
        assert (
            len([ln for ln in carol.lines if ln.command == "PRIVMSG" and ln.param(1) == body]) == 1
        )


def _make_admin(config: Path, user_id: str) -> None:
    yaml = YAML()
    cfg = yaml.load(config.read_text())
    cfg["bridge"]["permissions"][user_id] = "admin"
    with config.open("w") as f:
        yaml.dump(cfg, f)


def _quits(carol: RawIRC, nick: str) -> int:
    return sum(1 for ln in carol.lines if ln.command == "QUIT" and ln.nick == nick)


def _text(line: Any) -> str | None:
    return str(line.param(1)) if line.command == "PRIVMSG" else None
