"""Matrix events that arrive while the connectors are still starting (the homeserver pushes
them as soon as the bridge listens) wait for their connector; if the bridge stops before it
has started, they stay recorded and are bridged at the next start, once."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from bridge.bridge import Bridge
from bridge.config import load as load_config
from tests.conftest import write_config
from tests.harness.synapse import SynapseServer
from tests.helpers import new_user, sent, until


def _pending(db: Path, text: str) -> bool:
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT event FROM pending_event").fetchall()
    return any(text in r[0] for r in rows)


async def test_events_wait_for_the_connector_and_survive_a_stop_before_it_started(
    tmp_path: Path, synapse: SynapseServer, as_port: int
) -> None:
    db = tmp_path / "bridge.db"
    config = write_config(tmp_path / "c.yaml", synapse, as_port, f"sqlite://{db}", {"testnet": {}})
    first = Bridge(load_config(config))
    await first.start()
    hal = new_user(synapse)
    await hal.set_displayname("Hal")
    room = await hal.join("#testnet_=23gate:localhost")
    await first.stop()

    # A connector that does not finish starting: the bridge listens, the event comes in.
    second = Bridge(load_config(config))
    second.load_connectors()
    tn: Any = second.connectors["testnet"]
    entered = asyncio.Event()

    async def stuck_start() -> None:
        entered.set()
        await asyncio.Event().wait()

    tn.start = stuck_start
    starting = asyncio.create_task(second.start())
    try:
        await asyncio.wait_for(entered.wait(), 60)
        await hal.send_text(room, "while starting")
        await until(lambda: tn.sent or _pending(db, "while starting"), 30, "the event in")
        await asyncio.sleep(1)
        assert not tn.sent, "bridged before its connector had started"
        assert _pending(db, "while starting")
    finally:
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await second.stop()
    assert _pending(db, "while starting"), "a stop lost the waiting event"

    third = Bridge(load_config(config))
    await third.start()
    try:
        await until(sent(third, "message", text="<Hal> while starting"), 30)
        await until(lambda: not _pending(db, "while starting"), 30, "the event marked done")
        await third.queues.drain()
        assert [x["text"] for x in third.connectors["testnet"].sent] == ["<Hal> while starting"]  # type: ignore[attr-defined]
    finally:
        await third.stop()
        await hal.close()
