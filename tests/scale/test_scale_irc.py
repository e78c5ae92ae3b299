"""Scale-out mode with the IRC connector on ngircd, one core and two workers as processes,
through real NATS, PostgreSQL and Synapse (IRC runs split: both workers hold part of the
puppets, one the bot): the usual scenario, then faults with numbered messages flowing both
ways, each counted (lost, duplicated, reordered: all 0):

- core SIGTERM and restart (and no IRC connection dropped: no QUIT seen on IRC),
- core SIGKILL and restart,
- SIGKILL of the worker holding the bot (it moves; time to reconnect printed),
- nats-server restart,
- PostgreSQL restart."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.testing.synapse import MatrixClient
from tests.bridge_process import BridgeProcess
from tests.harness.ircd import IrcServer
from tests.harness.nats import NatsServer
from tests.harness.postgres import PostgresServer, start_postgres
from tests.harness.synapse import SynapseServer
from tests.helpers import until
from tests.irc.conftest import RawIRC, matrix_user, ngircd  # noqa: F401 (a fixture)
from tests.irc.test_e2e_synapse import (
    alias,
    body_is,
    irc_connectors,
    joined,
    said,
    uniq,
)
from tests.scale.processes import Counts, Traffic, WorkerProcess, core_process, shared_out
from tests.scale.scale_setup import scale_config

NETWORK = "irc_test"


@dataclass
class Stack:
    config: Path
    core: BridgeProcess
    workers: list[WorkerProcess]
    nats: NatsServer
    ann: MatrixClient
    carol: RawIRC
    channel: str
    room: str
    puppet: str
    bot: str

    def irc_worker(self) -> WorkerProcess | None:
        """The worker holding the network's main shard: the bot."""
        return next((w for w in self.workers if w.holds_main(NETWORK)), None)

    def quits(self) -> list[str]:
        return [
            str(ln.nick)
            for ln in self.carol.lines
            if ln.command == "QUIT" and ln.nick in (self.puppet, self.bot)
        ]

    def joins(self, nick: str) -> int:
        return sum(1 for ln in self.carol.lines if joined(nick, self.channel)(ln))

    def traffic(self) -> Traffic:
        t = Traffic(self.ann, self.room, self.carol, self.channel, self.puppet)
        t.start()
        return t


async def make_stack(
    tmp_path: Path, synapse: SynapseServer, as_port: int, ircd: IrcServer, nats: NatsServer, db: str
) -> Stack:
    channel = "#" + uniq("scale")
    connectors = irc_connectors(ircd, [channel])
    bot = connectors["irc"]["networks"]["test"]["bot"]["nick"]
    config = scale_config(tmp_path / "config.yaml", synapse, as_port, db, nats, connectors)
    carol = await RawIRC(ircd.host, ircd.port, uniq("carol")).connect()
    await carol.join(channel)
    core = await core_process(config, as_port)
    workers = [WorkerProcess(config, "a"), WorkerProcess(config, "b")]
    ann: MatrixClient | None = None
    try:
        for w in workers:
            await w.start()
        # Balanced before the first puppet: none moves later for the balance.
        await until(lambda: shared_out(workers, NETWORK), 90, "the shards shared out")
        await carol.expect(joined(bot, channel), timeout=60, what="the bot's JOIN")
        # A name no other module's counter makes (users stay on the shared homeserver).
        ann = await matrix_user(synapse, f"Ann{uuid.uuid4().hex[:6]}")
        room = await ann.join(alias(channel))
        puppet = f"{(await ann.get_profile(ann.user_id))['displayname']}[m]"
        await ann.send_text(room, "first")
        await carol.expect(said(puppet, "first"), timeout=60, what="the puppet's first message")
    except BaseException:
        # A set-up that fails must not leave the core holding the appservice port for the
        # tests after it.
        await core.stop()
        for w in workers:
            await w.stop()
        if ann is not None:
            await ann.close()
        await carol.close()
        raise
    return Stack(config, core, workers, nats, ann, carol, channel, room, puppet, bot)


async def close_stack(stack: Stack) -> None:
    await stack.core.stop()
    for w in stack.workers:
        await w.stop()
    await stack.ann.close()
    await stack.carol.close()


@pytest.fixture
async def stack(
    tmp_path: Path,
    synapse: SynapseServer,
    as_port: int,
    ngircd: IrcServer,  # noqa: F811
    nats_server: NatsServer,
    postgres: PostgresServer,
) -> AsyncIterator[Stack]:
    s = await make_stack(
        tmp_path, synapse, as_port, ngircd, nats_server, postgres.create_database(uniq("scaleirc"))
    )
    try:
        yield s
    finally:
        await close_stack(s)


def check(what: str, to_irc: Counts, to_matrix: Counts, stack: Stack | None = None) -> None:
    print(f"{what}: Matrix->IRC {to_irc}; IRC->Matrix {to_matrix}")
    logs = ""
    if stack is not None:
        alive = stack.core.proc is not None and stack.core.proc.returncode is None
        logs = f"\ncore running: {alive}\ncore log:\n{_info(stack.core.tail(200_000))}"
        for w in stack.workers:
            logs += f"\nworker {w.name} log:\n{_info(w.tail(200_000))}"
    for direction, c in (("Matrix->IRC", to_irc), ("IRC->Matrix", to_matrix)):
        assert (c.lost, c.duplicated, c.reordered) == (0, 0, 0), f"{what}, {direction}: {c}{logs}"
        assert c.sent > 0, f"{what}, {direction}: nothing was sent"


def _info(log: str, lines: int = 40) -> str:
    """The last lines of a log above DEBUG: what a failure report needs."""
    kept = [ln for ln in log.splitlines() if " DEBUG " not in ln]
    return "\n".join(kept[-lines:])


async def test_irc_one_core_two_workers(stack: Stack) -> None:
    ann, carol, chan, room, puppet = stack.ann, stack.carol, stack.channel, stack.room, stack.puppet
    # Both workers run an instance; one holds the bot.
    assert all(w.runs("irc") for w in stack.workers)
    assert sum(w.holds_main(NETWORK) for w in stack.workers) == 1
    # Text both ways, a reply, an edit, a reaction.
    carol.send(f"PRIVMSG {chan} :what time is it?")
    question = await ann.wait_for_event(room, body_is("what time is it?"), timeout=30)
    assert question["sender"].startswith("@irc_test_")
    await ann.reply(room, question["event_id"], "noon")
    await carol.expect(said(puppet, f"{carol.nick}: noon"), timeout=30, what="the reply")
    mine = await ann.send_text(room, "it is nine")
    await carol.expect(said(puppet, "it is nine"), timeout=30)
    await ann.edit(room, mine, "it is ten")
    await carol.expect(said(puppet, "* it is ten"), timeout=30, what="the edit")
    await ann.react(room, question["event_id"], "👍")
    await carol.expect(
        said(puppet, '\x01ACTION reacted 👍 to "what time is it?"\x01'),
        timeout=30,
        what="the reaction",
    )
    # Membership both ways: carol leaves on IRC (her ghost leaves), ann leaves on Matrix (her
    # puppet parts).
    carol.send(f"PART {chan} :bye")
    await ann.wait_for_event(
        room,
        lambda e: (
            e["type"] == "m.room.member"
            and e["content"].get("membership") == "leave"
            and str(e.get("state_key", "")).startswith("@irc_test_carol")
        ),
        timeout=30,
    )
    carol.send(f"JOIN {chan}")
    await ann.leave(room)
    await carol.expect(
        lambda ln: ln.command in ("PART", "QUIT") and ln.nick == puppet, timeout=30, what="PART"
    )


async def test_core_restarts_drop_no_connection(stack: Stack) -> None:
    traffic = stack.traffic()
    await asyncio.sleep(3)
    began = time.monotonic()
    assert await stack.core.stop() == 0
    await asyncio.sleep(3)  # events both ways meanwhile: in the homeserver and the stream
    await stack.core.start(until_started=True)
    print(f"core SIGTERM: back in {time.monotonic() - began:.1f} s")
    await asyncio.sleep(3)
    await stack.core.kill()
    await asyncio.sleep(3)
    await stack.core.start(until_started=True)
    await asyncio.sleep(3)
    to_irc, to_matrix = await traffic.settle()
    check("core SIGTERM + SIGKILL", to_irc, to_matrix, stack)
    # The workers held every connection: nobody quit, nobody joined again.
    assert stack.quits() == []
    assert stack.joins(stack.bot) == 1 and stack.joins(stack.puppet) == 1
    print("IRC connections dropped by the core restarts: 0")


async def test_worker_kill_moves_irc(stack: Stack) -> None:
    traffic = stack.traffic()
    await asyncio.sleep(3)
    holder = stack.irc_worker()
    assert holder is not None
    other = next(w for w in stack.workers if w is not holder)
    traffic.irc_paused.set()  # the bot is gone for a while: IRC says nothing to it meanwhile
    await asyncio.sleep(0.5)
    began = time.monotonic()
    await holder.kill()
    await stack.carol.expect(
        lambda ln: ln.command == "QUIT" and ln.nick == stack.bot, timeout=120, what="bot gone"
    )
    bot_joins = stack.joins(stack.bot)

    async def bot_back() -> bool:
        return other.holds_main(NETWORK) and stack.joins(stack.bot) > bot_joins

    while not await bot_back():
        assert time.monotonic() - began < 120, other.tail()
        await asyncio.sleep(0.2)
    print(f"worker SIGKILL: the bot back on IRC from the other worker after"
          f" {time.monotonic() - began:.1f} s")  # fmt: skip
    traffic.irc_paused.clear()
    await asyncio.sleep(3)
    to_irc, to_matrix = await traffic.settle()
    check("worker SIGKILL", to_irc, to_matrix, stack)


async def test_nats_restart(stack: Stack) -> None:
    traffic = stack.traffic()
    await asyncio.sleep(3)
    await asyncio.to_thread(stack.nats.restart, 2.0)
    await asyncio.sleep(5)
    to_irc, to_matrix = await traffic.settle()
    check("nats-server restart", to_irc, to_matrix, stack)


async def test_postgres_restart(
    tmp_path: Path,
    synapse: SynapseServer,
    as_port: int,
    ngircd: IrcServer,  # noqa: F811
    nats_server: NatsServer,
) -> None:
    pg = await asyncio.to_thread(start_postgres, tmp_path / "pg")
    try:
        s = await make_stack(
            tmp_path, synapse, as_port, ngircd, nats_server, pg.create_database("bridge")
        )
        try:
            traffic = s.traffic()
            await asyncio.sleep(3)
            stopped = await asyncio.to_thread(pg._pg_ctl, "-m", "fast", "-w", "stop")
            assert stopped.returncode == 0, stopped.stdout
            pg._running = False
            await asyncio.sleep(4)
            await asyncio.to_thread(pg._start)
            await asyncio.sleep(3)
            to_irc, to_matrix = await traffic.settle(180)
            check("PostgreSQL restart", to_irc, to_matrix, s)
        finally:
            await close_stack(s)
    finally:
        await asyncio.to_thread(pg.stop)
