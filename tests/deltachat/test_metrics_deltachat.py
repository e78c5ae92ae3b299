"""The Delta Chat connector's accounts in the bridge's metrics, against the real Delta Chat
core and a real postfix and dovecot: the bridge's account counts as connected, as not
connected while the mail server is down, and as connected again after."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

from tests.deltachat.conftest import dc_config
from tests.harness.mailstack import MailStack
from tests.harness.ports import free_port
from tests.harness.synapse import SynapseServer
from tests.helpers import metrics_bridge, scrape, until

_n = itertools.count(1)


def connections(samples: dict[Any, float], state: str) -> float:
    key = ("mimi_remote_connections", (("network", "deltachat"), ("state", state)))
    return samples.get(key, -1.0)


async def test_deltachat_connections_by_state(
    tmp_path: Path, synapse: SynapseServer, as_port: int, mailstack: MailStack
) -> None:
    local = f"metrics{next(_n)}"
    address = await asyncio.to_thread(mailstack.add_user, local, f"{local}-pw")
    metrics_port = free_port()
    bridge = await metrics_bridge(
        tmp_path,
        synapse,
        as_port,
        metrics_port,
        {"deltachat": dc_config(mailstack, tmp_path, address, f"{local}-pw")},
    )
    try:
        await bridge.start()

        async def up() -> bool:
            return connections(await scrape(metrics_port), "connected") == 1

        await until(up, 60, "the bridge's account connected")

        # The mail server stays down until the core has noticed: how soon it notices a dropped
        # IMAP connection depends on the machine's load, so a fixed outage would race it.
        await asyncio.to_thread(mailstack.stop)
        try:

            async def down() -> bool:
                s = await scrape(metrics_port)
                return connections(s, "connected") == 0 and (
                    connections(s, "connecting") + connections(s, "disconnected") == 1
                )

            await until(down, 90, "the account counted as not connected")
        finally:
            await asyncio.to_thread(mailstack.start)
        await until(up, 90, "the account connected again")
    finally:
        await bridge.stop()
