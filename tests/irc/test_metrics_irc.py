"""The IRC connector's connections in the bridge's metrics, against a real ngircd and Synapse:
the bot's and a puppet's connection count as connected, fall to not connected when the server
dies, and come back after it restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.harness.ircd import start_ngircd
from tests.harness.ports import free_port
from tests.harness.synapse import SynapseServer
from tests.helpers import metrics_bridge, scrape, until

from .conftest import RawIRC, matrix_user
from .test_e2e_synapse import _crash, alias, irc_connectors, joined, said, uniq


def connections(samples: dict[Any, float], state: str) -> float:
    return samples.get(
        ("mimi_remote_connections", (("network", "irc_test"), ("state", state))), -1.0
    )


async def test_irc_connections_by_state(
    tmp_path: Path, synapse: SynapseServer, as_port: int
) -> None:
    server = await asyncio.to_thread(start_ngircd, tmp_path / "ngircd")
    metrics_port = free_port()
    bridge = await metrics_bridge(
        tmp_path,
        synapse,
        as_port,
        metrics_port,
        irc_connectors(server, reconnect={"min_delay": 0.5, "max_delay": 1.0}),
    )
    carol: RawIRC | None = None
    ann = None
    try:
        await bridge.start()
        chan = "#" + uniq("metrics")
        carol = await RawIRC(server.host, server.port, uniq("carol")).connect()
        await carol.join(chan)
        ann = await matrix_user(synapse, uniq("Ann"))
        room = await ann.join(alias(chan))
        puppet = (await ann.get_profile(ann.user_id))["displayname"] + "[m]"
        await carol.expect(joined(puppet, chan), what="the puppet's JOIN")
        await ann.send_text(room, "counted")
        await carol.expect(said(puppet, "counted"))

        # The bot and ann's puppet.
        samples = await scrape(metrics_port)
        assert connections(samples, "connected") == 2, samples
        assert connections(samples, "failed") == 0

        await asyncio.to_thread(_crash, server)
        await carol.close()
        carol = None

        async def down() -> bool:
            s = await scrape(metrics_port)
            return connections(s, "connected") == 0 and (
                connections(s, "connecting") + connections(s, "disconnected") == 2
            )

        await until(down, 20, "both connections counted as not connected")
        await asyncio.to_thread(server.restart)

        async def back() -> bool:
            return connections(await scrape(metrics_port), "connected") == 2

        await until(back, 30, "both connections connected again")
    finally:
        if carol is not None:
            await carol.close()
        if ann is not None:
            await ann.close()
        await bridge.stop()
        await asyncio.to_thread(server.stop)
