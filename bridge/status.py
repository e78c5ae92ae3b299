"""What the bridge says about itself: readiness (``/_matrix/mau/ready`` on the appservice
port, next to ``/_matrix/mau/live``) and where the metrics' state gauges come from.

Ready means: the database answers a query, the homeserver reached the bridge back at
start-up, and every connector's ``start()`` returned. Otherwise the answer is 503 with a JSON
body naming each part that is not ready and why, for a load balancer or an admin's curl."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from mautrix.util.async_db import Database

from .connector import ConnectionReporting, PortalKey
from .metrics import MATRIX_TO_REMOTE, REMOTE_TO_MATRIX, Sources

if TYPE_CHECKING:
    from .bridge import Bridge

DB_CHECK_TIMEOUT = 5.0


class Status:
    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.homeserver_reached = False
        self.connectors_started: set[str] = set()

    def reset(self) -> None:
        """At each start: nothing is ready until this run has reached it again."""
        self.homeserver_reached = False
        self.connectors_started.clear()

    # --- readiness ----------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/_matrix/mau/ready", self.ready)

    async def problems(self) -> dict[str, str]:
        """Part -> why it is not ready; empty when ready."""
        out: dict[str, str] = {}
        db = self.bridge._db
        if db is None:
            out["database"] = "not opened"
        else:
            try:
                await asyncio.wait_for(_probe(db), DB_CHECK_TIMEOUT)
            except TimeoutError:
                out["database"] = f"no answer within {DB_CHECK_TIMEOUT:.0f} s"
            except Exception as e:
                out["database"] = f"unreachable: {type(e).__name__}: {e}".rstrip(": ")
        if not self.homeserver_reached:
            out["homeserver"] = "not reached yet"
        for name in self.bridge.connectors:
            if name not in self.connectors_started:
                out[f"connector:{name}"] = "starting"
        return out

    async def ready(self, request: web.Request) -> web.Response:
        problems = await self.problems()
        if problems:
            return web.json_response(
                {"ready": False, "not_ready": sorted(problems), "problems": problems}, status=503
            )
        return web.json_response({"ready": True})

    # --- metrics sources ----------------------------------------------------------------

    def metric_sources(self) -> Sources:
        return Sources(
            queues=self.bridge.queues.stats,
            queue_labels=self._queue_labels,
            networks=lambda: list(self.bridge.networks),
            connections=[
                c.connection_states
                for c in self.bridge.connectors.values()
                if isinstance(c, ConnectionReporting)
            ],
            logins=self._logins,
        )

    def _queue_labels(self, key: Hashable) -> tuple[str, str]:
        kind = key[0] if isinstance(key, tuple) and key else key
        target = key[1] if isinstance(key, tuple) and len(key) > 1 else None
        if isinstance(target, PortalKey):
            return target.network, REMOTE_TO_MATRIX
        if kind in ("matrix", "ephemeral") and isinstance(target, str):
            # A room's portal, when it is in memory (no query at scrape time).
            network = self.bridge.portal_store.known_network(target) if self.bridge._db else None
            return network or "", MATRIX_TO_REMOTE
        return "", "internal"  # the core's own queues (message rows written behind)

    async def _logins(self) -> list[tuple[str, str]]:
        if self.bridge._db is None:
            return []
        return [(row.network, row.state) for row in await self.bridge.users.logins()]


async def _probe(db: Database) -> None:
    """One query, tried once: on a connection of its own, because queries outside one wait
    for PostgreSQL through an outage (bridge/db/resilient.py), and readiness must say so."""
    conn: Any
    async with db.acquire() as conn:
        await conn.fetchval("SELECT 1")
