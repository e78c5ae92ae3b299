"""End to end through a real Synapse and a real ngircd: a Matrix user's puppet loses its
connection (the server dies and stays down through several reconnect attempts, then an
operator KILLs it) and the management room hears exactly once that it was lost and once that
it is back; ``list`` shows the state and since when."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tests.conftest import BridgeFactory
from tests.harness.ircd import IrcServer
from tests.helpers import ask, notices

from .conftest import wait_for
from .test_e2e_synapse import (  # noqa: F401 (fixtures)
    IrcUsers,
    _crash,
    management_room,
    own_ngircd,
    portal_with_users,
    said,
)


async def test_a_dropped_puppet_is_told_once_lost_and_once_back(
    make_bridge: BridgeFactory,
    own_ngircd: IrcServer,  # noqa: F811 (the fixture)
    irc: IrcUsers,
    matrix: Callable[..., Any],
) -> None:
    bridge, _chan, carol, ann, room, puppet = await portal_with_users(
        make_bridge, own_ngircd, irc, matrix, reconnect={"min_delay": 0.5, "max_delay": 1.0}
    )
    await ann.send_text(room, "before")
    await carol.expect(said(puppet, "before"))
    mgmt = await management_room(ann)
    listed = await ask(ann, mgmt, "list", "Logins:")
    assert f"- irc_test {puppet}: connected since " in listed and " UTC (" in listed

    net: Any = bridge.connectors["irc"].networks["test"]  # type: ignore[attr-defined]
    conn = net.pool.get(ann.user_id).conn
    await asyncio.to_thread(_crash, own_ngircd)
    await carol.close()
    await ann.wait_for_event(mgmt, lambda e: "was lost" in e["content"].get("body", ""), timeout=60)

    # Several reconnect attempts fail while the server is down (the bot's: the puppets wait
    # for it to be back): no notice for any of them.
    def attempts() -> int:
        return int(conn._attempt + net.bot._attempt)

    failed = attempts()
    await wait_for(lambda: attempts() >= failed + 3, 60, "three failed reconnects")
    down = await ask(ann, mgmt, "list", f"- irc_test {puppet}: ")
    assert "disconnected since " in down or "reconnecting since " in down, down
    await asyncio.to_thread(own_ngircd.restart)
    await ann.wait_for_event(
        mgmt, lambda e: "is back (after " in e["content"].get("body", ""), timeout=90
    )
    listed = await ask(ann, mgmt, "list", f"- irc_test {puppet}: connected since ")
    lost = await notices(ann, mgmt, "was lost")
    assert len(lost) == 1, lost
    assert lost[0].startswith(f"Your connection to IRC: test (127.0.0.1) as {puppet} was lost")
    assert len(await notices(ann, mgmt, "is back (after ")) == 1

    # An operator KILLs the puppet: one more drop, told once, and its recovery once.
    oper = await irc(own_ngircd, "oper")
    oper.send("OPER oper operpass")
    await oper.expect(lambda ln: ln.command == "381", what="oper")
    oper.send(f"KILL {puppet} :connection status test")
    await until_count(ann, mgmt, "was lost", 2)
    await until_count(ann, mgmt, "is back (after ", 2)
    await ask(ann, mgmt, "ping", "Pong")  # a marker: the notices before it have arrived
    assert len(await notices(ann, mgmt, "was lost")) == 2
    assert len(await notices(ann, mgmt, "is back (after ")) == 2
    assert "connected since" in await ask(ann, mgmt, "ping", f"irc_test/test/{ann.user_id}: ")


async def until_count(user: Any, room: str, text: str, count: int) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + 90
    while len(await notices(user, room, text)) < count:
        assert loop.time() < end, f"fewer than {count} notices saying {text!r}"
        await asyncio.sleep(0.3)
