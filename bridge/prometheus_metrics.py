"""The bridge's Prometheus metrics (``metrics.enabled: true``): one registry per bridge, the
:class:`bridge.metrics.Metrics` calls counted and timed, and the ``/metrics`` endpoint on a
port of its own (``metrics.listen``).

Counters and histograms are updated where things happen, through label children bound once
per (network, direction): a bridged message costs two dict lookups and an observation.
Gauges that describe a state (queues, pending events, connections, logins) are computed when
Prometheus scrapes, so nothing is maintained for them per event. The series are listed in
``bridge.metrics.SERIES``; the Grafana dashboard in ``contrib/grafana/`` uses exactly these.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .connector import ConnectionState, RemoteConnection
from .metrics import MATRIX_TO_REMOTE, REMOTE_TO_MATRIX, Metrics

# Seconds: sub-millisecond database queries up to a homeserver or network that hangs.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_QUERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)


class BridgeMetrics(Metrics):
    def __init__(self, log: logging.Logger | None = None) -> None:
        super().__init__()
        self.log = log or logging.getLogger("mimi.metrics")
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._bridged = Counter(
            "mimi_messages_bridged",
            "Messages bridged (sent to the remote network, or posted to Matrix)",
            ("network", "direction"),
            registry=r,
        )
        self._failed = Counter(
            "mimi_messages_failed",
            "Messages that could not be bridged, by reason (the sender was told)",
            ("network", "direction", "reason"),
            registry=r,
        )
        self._latency = Histogram(
            "mimi_message_latency_seconds",
            "From the bridge receiving a message to the other side accepting it",
            ("network", "direction"),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._queue_depth = Gauge(
            "mimi_queue_depth",
            "Jobs waiting or running in the ordered queues",
            ("network", "direction"),
            registry=r,
        )
        self._queue_age = Gauge(
            "mimi_queue_oldest_age_seconds",
            "Age of the oldest unfinished job in the ordered queues",
            ("network", "direction"),
            registry=r,
        )
        self._pending = Gauge(
            "mimi_pending_events",
            "Matrix events recorded from transactions and not processed yet",
            registry=r,
        )
        self._txn_received = Counter(
            "mimi_transactions_received", "Appservice transactions received", registry=r
        )
        self._txn_replayed = Counter(
            "mimi_transactions_replayed",
            "Transactions the homeserver sent again after they were recorded (ignored)",
            registry=r,
        )
        self._connections = Gauge(
            "mimi_remote_connections",
            "Connections to remote networks, by state",
            ("network", "state"),
            registry=r,
        )
        self._logins = Gauge(
            "mimi_logins", "Stored logins, by state", ("network", "state"), registry=r
        )
        self._hs_latency = Histogram(
            "mimi_homeserver_request_duration_seconds",
            "Requests to the homeserver (client-server API)",
            ("method",),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._hs_errors = Counter(
            "mimi_homeserver_errors",
            "Homeserver requests that failed, by Matrix errcode (or connection_error)",
            ("method", "errcode"),
            registry=r,
        )
        self._db_latency = Histogram(
            "mimi_database_query_duration_seconds",
            "Database queries",
            ("operation",),
            buckets=_QUERY_BUCKETS,
            registry=r,
        )
        # Pre-bound children: the hot path never builds a label set.
        self._bridged_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._hs_children: dict[str, Any] = {}
        self._db_children: dict[str, Any] = {}
        # When each in-flight message reached the bridge (for the latency histogram).
        self._matrix_received: dict[str, float] = {}
        self._remote_received: dict[int, float] = {}
        self._runner: web.AppRunner | None = None

    # --- hot path -----------------------------------------------------------------------

    def _children(self, network: str, direction: str) -> tuple[Any, Any]:
        key = (network, direction)
        pair = self._bridged_children.get(key)
        if pair is None:
            pair = self._bridged_children[key] = (
                self._bridged.labels(network, direction),
                self._latency.labels(network, direction),
            )
        return pair

    def matrix_received(self, event_id: str) -> None:
        self._matrix_received[event_id] = time.monotonic()

    def matrix_finished(self, event_id: str) -> None:
        self._matrix_received.pop(event_id, None)

    def remote_received(self, event: object) -> None:
        # Keyed by identity: the queue holds the event until remote_finished, so the id
        # cannot be reused meanwhile.
        self._remote_received[id(event)] = time.monotonic()

    def remote_finished(self, event: object) -> None:
        self._remote_received.pop(id(event), None)

    def bridged_from_matrix(self, network: str, event_id: str) -> None:
        """A Matrix message was accepted by the remote network."""
        counter, latency = self._children(network, MATRIX_TO_REMOTE)
        counter.inc()
        t0 = self._matrix_received.get(event_id)
        if t0 is not None:
            latency.observe(time.monotonic() - t0)

    def bridged_to_matrix(self, network: str, event: object) -> None:
        """A remote message was posted to Matrix."""
        counter, latency = self._children(network, REMOTE_TO_MATRIX)
        counter.inc()
        t0 = self._remote_received.get(id(event))
        if t0 is not None:
            latency.observe(time.monotonic() - t0)

    def failed(self, network: str, direction: str, reason: str) -> None:
        self._failed.labels(network, direction, reason).inc()

    def transaction(self, replayed: bool = False) -> None:
        self._txn_received.inc()
        if replayed:
            self._txn_replayed.inc()

    def homeserver_request(self, method: str, seconds: float, errcode: str | None) -> None:
        child = self._hs_children.get(method)
        if child is None:
            child = self._hs_children[method] = self._hs_latency.labels(method)
        child.observe(seconds)
        if errcode is not None:
            self._hs_errors.labels(method, errcode).inc()

    def database_query(self, operation: str, seconds: float) -> None:
        child = self._db_children.get(operation)
        if child is None:
            child = self._db_children[operation] = self._db_latency.labels(operation)
        child.observe(seconds)

    def instrument_database(self, db: Any) -> None:
        """Time the query methods of a ``mautrix.util.async_db.Database`` (the ones every
        store calls), by wrapping them on this instance only."""
        for name in ("execute", "executemany", "fetch", "fetchrow", "fetchval"):
            original = getattr(db, name, None)
            if original is not None:
                setattr(db, name, self._timed(name, original))

    def _timed(self, name: str, original: Callable[..., Awaitable[Any]]) -> Any:
        child = self._db_latency.labels(name)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.monotonic()
            try:
                return await original(*args, **kwargs)
            finally:
                child.observe(time.monotonic() - t0)

        return timed

    # --- scrape time --------------------------------------------------------------------

    async def collect(self) -> None:
        """Bring the state gauges up to date (before each scrape)."""
        now = time.monotonic()
        depth = {
            (net, d): 0
            for net in self.sources.networks()
            for d in (MATRIX_TO_REMOTE, REMOTE_TO_MATRIX)
        }
        oldest: dict[tuple[str, str], float] = {}
        for key, (n, since) in self.sources.queues().items():
            labels = self.sources.queue_labels(key)
            depth[labels] = depth.get(labels, 0) + n
            if since is not None:
                oldest[labels] = min(oldest.get(labels, now), since)
        self._queue_depth.clear()
        self._queue_age.clear()
        for labels, n in depth.items():
            self._queue_depth.labels(*labels).set(n)
            self._queue_age.labels(*labels).set(now - oldest.get(labels, now))
        # Recorded and handed to the queues, not finished: the pending_event rows.
        self._pending.set(len(self._matrix_received))

        connections: list[RemoteConnection] = []
        for source in self.sources.connections:
            try:
                connections.extend(await source())
            except Exception:
                self.log.exception("collecting connection states failed")
        self._set_counts(self._connections, _count(connections), _zero_states(connections))

        if self.sources.logins is not None:
            try:
                logins = await self.sources.logins()
            except Exception as e:  # the database is down: the readiness check says so
                self.log.warning("counting logins failed: %s", e)
            else:
                counts: dict[tuple[str, str], int] = {}
                for pair in logins:
                    counts[pair] = counts.get(pair, 0) + 1
                self._set_counts(self._logins, counts, {})

    @staticmethod
    def _set_counts(
        gauge: Gauge, counts: dict[tuple[str, str], int], zeros: dict[tuple[str, str], int]
    ) -> None:
        gauge.clear()
        for labels, n in {**zeros, **counts}.items():
            gauge.labels(*labels).set(n)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # --- the /metrics endpoint ----------------------------------------------------------

    async def serve(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.log.info("metrics on http://%s:%d/metrics", host, port)

    async def _handle(self, request: web.Request) -> web.Response:
        await self.collect()
        # CONTENT_TYPE_LATEST carries its charset; aiohttp wants it in the header as is.
        return web.Response(body=self.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _count(connections: Iterable[RemoteConnection]) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for c in connections:
        key = (c.network, str(c.state))
        counts[key] = counts.get(key, 0) + 1
    return counts


def _zero_states(connections: Iterable[RemoteConnection]) -> dict[tuple[str, str], int]:
    """Every state of every network that reported, at 0: a dropped connection shows as the
    connected count falling to 0, not as the series vanishing."""
    networks = {c.network for c in connections}
    return {(n, str(s)): 0 for n in networks for s in ConnectionState}
