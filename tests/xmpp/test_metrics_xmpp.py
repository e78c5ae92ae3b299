"""The XMPP connector's connections in the bridge's metrics, against a real Prosody and
Synapse: the component and a login's own stream count as connected, as not connected while
Prosody is down, and as connected again once it is back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.harness.ports import free_port
from tests.harness.prosody import start_prosody
from tests.harness.synapse import SynapseServer
from tests.helpers import command, management_room, metrics_bridge, new_user, scrape, until

from .conftest import COMPONENT, SECRET, connector_config, unique


def connections(samples: dict[Any, float], state: str) -> float:
    return samples.get(("mimi_remote_connections", (("network", "xmpp"), ("state", state))), -1.0)


async def test_xmpp_connections_by_state(
    tmp_path: Path, synapse: SynapseServer, as_port: int
) -> None:
    prosody = await asyncio.to_thread(start_prosody, tmp_path / "prosody", COMPONENT, SECRET)
    metrics_port = free_port()
    bridge = await metrics_bridge(
        tmp_path, synapse, as_port, metrics_port, {"xmpp": connector_config(prosody)}
    )
    jo = None
    try:
        await bridge.start()
        samples = await scrape(metrics_port)
        assert connections(samples, "connected") == 1, samples  # the component
        name = unique("jo")
        await asyncio.to_thread(prosody.register_user, name, "jo-secret")
        jo = new_user(synapse, "jo")
        mgmt = await management_room(jo)
        await command(jo, mgmt, f"login xmpp {name}@{prosody.domain} jo-secret", "Logged in as")

        async def both_up() -> bool:
            return connections(await scrape(metrics_port), "connected") == 2

        await until(both_up, 20, "the component and the login connected")

        # Prosody goes away for a while: both streams count as not connected meanwhile.
        outage = asyncio.create_task(asyncio.to_thread(prosody.kill_for, 4.0))

        async def down() -> bool:
            s = await scrape(metrics_port)
            return connections(s, "connected") == 0 and (
                connections(s, "connecting") + connections(s, "disconnected") == 2
            )

        await until(down, 10, "both streams counted as not connected")
        await outage
        await until(both_up, 30, "both streams connected again")
    finally:
        if jo is not None:
            await jo.close()
        await bridge.stop()
        await asyncio.to_thread(prosody.stop)
