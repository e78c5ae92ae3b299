"""Scale-out mode, IRC on ngircd, one core and two workers (in this process) through real NATS,
PostgreSQL and Synapse: ``join <network> <channel> <key>`` opens a +k channel as in one
process (the key crosses the bus to the workers before the join), a wrong key is refused with
the server's reason, a key an operator changes is kept by the core, and the worker that takes
the bot over rejoins with that key (and so does the user's puppet, when it moved)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.connector import PortalKey
from bridge.testing.postgres import PostgresServer
from tests.harness.ircd import IrcServer
from tests.harness.nats import NatsServer
from tests.harness.synapse import SynapseServer
from tests.helpers import command, management_room, until
from tests.irc.conftest import (
    matrix_user,
    ngircd,  # noqa: F401 (a fixture)
)
from tests.irc.test_e2e_synapse import (
    NET,
    IrcUsers,
    body_is,
    irc_connectors,
    joined,
    said,
    uniq,
)
from tests.scale.scale_setup import Deployment, new_database, scale_config


@pytest.fixture
async def irc() -> AsyncIterator[IrcUsers]:
    users = IrcUsers()
    yield users
    await users.close()


async def test_keyed_channel_join_in_scale_out_mode(
    tmp_path: Path,
    synapse: SynapseServer,
    as_port: int,
    postgres: PostgresServer,
    nats_server: NatsServer,
    ngircd: IrcServer,  # noqa: F811
    irc: IrcUsers,
) -> None:
    chan = "#" + uniq("keyed")
    carol = await irc(ngircd, "carol")
    await carol.join(chan)
    carol.send(f"MODE {chan} +k s3cret")
    await carol.expect(lambda ln: ln.command == "MODE" and ln.param(1) == "+k")
    connectors = irc_connectors(ngircd)
    bot_nick = connectors["irc"]["networks"]["test"]["bot"]["nick"]
    config = scale_config(
        tmp_path / "config.yaml",
        synapse,
        as_port,
        new_database(postgres),
        nats_server,
        connectors,
        request_timeout_s=15,
    )
    d = Deployment(config)
    kim = await matrix_user(synapse, uniq("Kim"))
    try:
        core = await d.start_core()
        await d.start_worker("w1")
        await d.start_worker("w2")
        await until(lambda: d.holder("irc"), 60, "a worker runs irc")
        mgmt = await management_room(kim)
        # Without the key, or with a wrong one: refused with the server's reason.
        reply = await command(kim, mgmt, f"join irc_test {chan}", "join failed")
        assert chan in reply and "take no key" not in reply
        reply = await command(kim, mgmt, f"join irc test {chan} wrong", "join failed")
        assert chan in reply and "take no key" not in reply, reply
        reply = await command(kim, mgmt, f"join irc test {chan} s3cret", "Invited you")
        room = reply.rsplit("(", 1)[1].rstrip(").")
        await kim.join(room)
        await carol.expect(joined(bot_nick, chan), timeout=60, what="the bot's JOIN")
        puppet = f"{(await kim.get_profile(kim.user_id))['displayname']}[m]"
        await kim.send_text(room, "through the key")
        await carol.expect(said(puppet, "through the key"), timeout=60)
        # Stored sealed, like login credentials, by the core.
        portal = await core.portal_store.get(PortalKey(NET, chan))
        assert portal is not None and "room_key" in portal.metadata
        assert "s3cret" not in str(portal.metadata)
        # An operator changes the key: the worker asks the core to keep the new one.
        mark = len(carol.lines)
        carol.send(f"MODE {chan} -k s3cret", f"MODE {chan} +k n3wkey")
        await carol.expect(
            lambda ln: ln in carol.lines[mark:] and ln.command == "MODE" and ln.param(1) == "+k",
            what="the new key",
        )

        async def kept() -> bool:
            portal = await core.portal_store.get(PortalKey(NET, chan))
            return portal is not None and core.commands.actions.room_key_of(portal) == "n3wkey"

        await until(kept, 30, "the core keeps the new key")

        # The worker running the bot goes away: the other one takes the bot over and rejoins
        # the keyed channel with the (new) key; kim's puppet rejoins with it too when it was
        # on the worker that went (IRC runs split: it may have been on the other one).
        holder = d.holder("irc")
        assert holder is not None
        name = next(n for n, w in d.workers.items() if w is holder)
        moves = d.user_holder("irc", NET, kim.user_id) is holder
        mark = len(carol.lines)
        await d.stop_worker(name)

        def rejoined(nick: str) -> Callable[[Any], bool]:
            return lambda ln: ln in carol.lines[mark:] and joined(nick, chan)(ln)

        await carol.expect(rejoined(bot_nick), timeout=90, what="the bot's rejoin")
        mark_said = len(carol.lines)
        await kim.send_text(room, "still keyed")
        if moves:
            await carol.expect(rejoined(puppet), timeout=90, what="the puppet's rejoin")
        await carol.expect(
            lambda ln: ln in carol.lines[mark_said:] and said(puppet, "still keyed")(ln),
            timeout=60,
        )
        quits = [ln for ln in carol.lines[mark:] if ln.command == "QUIT" and ln.nick == puppet]
        assert len(quits) == (1 if moves else 0), quits
        carol.send(f"PRIVMSG {chan} :after the move")
        await kim.wait_for_event(room, body_is("after the move"), timeout=60)
    finally:
        await d.close()
        await kim.close()
