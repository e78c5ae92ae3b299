"""``/_matrix/mau/live`` and ``/_matrix/mau/ready`` on the appservice port, against a real
Synapse and a real PostgreSQL: 503 naming what is not ready (a connector still starting, the
database stopped), 200 when everything is."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from bridge.bridge import Bridge
from bridge.config import load as load_config
from tests.conftest import write_config
from tests.harness.postgres import start_postgres
from tests.harness.synapse import SynapseServer
from tests.helpers import until


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_ready_names_what_is_not_ready(
    tmp_path: Path, synapse: SynapseServer, as_port: int
) -> None:
    pg = await asyncio.to_thread(start_postgres, tmp_path / "pg")
    try:
        db = await asyncio.to_thread(pg.create_database, "health")
        cfg = load_config(write_config(tmp_path / "c.yaml", synapse, as_port, db, {"testnet": {}}))
        bridge = Bridge(cfg)
        bridge.load_connectors()
        # Hold the connector's start until the test has seen the bridge not ready.
        release = asyncio.Event()
        connector: Any = bridge.connectors["testnet"]
        real_start = connector.start

        async def slow_start() -> None:
            await release.wait()
            await real_start()

        connector.start = slow_start
        base = f"http://127.0.0.1:{as_port}/_matrix/mau"
        starting = asyncio.create_task(bridge.start())
        try:

            async def connector_pending() -> Any:
                try:
                    status, body = await get(base + "/ready")
                except aiohttp.ClientError:
                    return None  # not listening yet
                return body if status == 503 and "homeserver" not in body["not_ready"] else None

            body = await until(connector_pending, 60, "ready waiting only for the connector")
            assert body == {
                "ready": False,
                "not_ready": ["connector:testnet"],
                "problems": {"connector:testnet": "starting"},
            }
            assert (await get(base + "/live"))[0] == 200  # up, though not ready
            release.set()
            await asyncio.wait_for(starting, 60)
            assert await get(base + "/ready") == (200, {"ready": True})

            # The database goes away: ready says so, live still answers.
            await asyncio.to_thread(pg.stop)
            status, body = await get(base + "/ready")
            assert status == 503 and body["not_ready"] == ["database"], body
            assert body["problems"]["database"].startswith("unreachable")
            assert (await get(base + "/live"))[0] == 200
        finally:
            release.set()
            if not starting.done():
                starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            await asyncio.wait_for(bridge.stop(), 60)
    finally:
        await asyncio.to_thread(pg.stop)
