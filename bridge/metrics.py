"""The bridge's metrics: the narrow interface the core calls on its hot paths (:class:`Metrics`,
which does nothing: the bridge with ``metrics.enabled: false``, the default, neither loads
prometheus_client nor counts), the series' names and the reasons of failures. The Prometheus
implementation and the ``/metrics`` endpoint are in :mod:`bridge.prometheus_metrics`.

Counters and histograms are updated where things happen, through label children bound once
per (network, direction): a bridged message costs two dict lookups and an observation.
Gauges that describe a state (queues, pending events, connections, logins) are computed when
Prometheus scrapes, so nothing is maintained for them per event. The series are listed in
``SERIES``; the Grafana dashboard in ``contrib/grafana/`` uses exactly these.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .connector import RemoteConnection

MATRIX_TO_REMOTE = "matrix_to_remote"
REMOTE_TO_MATRIX = "remote_to_matrix"

# Every exported series (the name Prometheus shows, with its labels). A test checks that the
# dashboard names only these.
SERIES: dict[str, tuple[str, ...]] = {
    "mimi_messages_bridged_total": ("network", "direction"),
    "mimi_messages_failed_total": ("network", "direction", "reason"),
    "mimi_message_latency_seconds": ("network", "direction"),
    "mimi_queue_depth": ("network", "direction"),
    "mimi_queue_oldest_age_seconds": ("network", "direction"),
    "mimi_pending_events": (),
    "mimi_transactions_received_total": (),
    "mimi_transactions_replayed_total": (),
    "mimi_remote_connections": ("network", "state"),
    "mimi_logins": ("network", "state"),
    "mimi_homeserver_request_duration_seconds": ("method",),
    "mimi_homeserver_errors_total": ("method", "errcode"),
    "mimi_database_query_duration_seconds": ("operation",),
}

# Why a message was not bridged (the ``reason`` label).
UNSUPPORTED = "unsupported"  # the content or action cannot be carried by the network
MEDIA_FAILED = "media_failed"  # an attachment could not be fetched or uploaded
NOT_ALLOWED = "not_allowed"  # no permission, or no identity to speak with
REMOTE_ERROR = "remote_error"  # the network (or connector) refused it
INTERNAL_ERROR = "internal_error"  # a bug: logged with its traceback
HOMESERVER_ERROR = "homeserver_error"  # the homeserver refused or did not answer
UNDECRYPTABLE = "undecryptable"  # an encrypted message whose room key never came


# Queue keys -> (network, direction) labels. Matrix rooms' queues are labelled with the
# network of their portal when the bridge knows it without a query.
QueueLabeller = Callable[[Hashable], tuple[str, str]]
ConnectionSource = Callable[[], Awaitable[list[RemoteConnection]]]
LoginSource = Callable[[], Awaitable[list[tuple[str, str]]]]


@dataclass(slots=True)
class Sources:
    """Where the scrape-time gauges come from (set by the bridge)."""

    # queue key -> (jobs waiting or running, time.monotonic() of the oldest of them)
    queues: Callable[[], dict[Hashable, tuple[int, float | None]]] = dict
    queue_labels: QueueLabeller = lambda key: ("", "")
    # Networks whose queue gauges read 0 when they have no queue (rather than vanishing).
    networks: Callable[[], Iterable[str]] = tuple
    connections: list[ConnectionSource] = field(default_factory=list)
    logins: LoginSource | None = None


class Metrics:
    """What the core reports as it works; this one keeps nothing (metrics are off)."""

    sources: Sources

    def __init__(self) -> None:
        self.sources = Sources()

    def matrix_received(self, event_id: str) -> None:
        """A Matrix event was recorded and queued."""

    def matrix_finished(self, event_id: str) -> None:
        """...and handled (bridged, or its failure told)."""

    def remote_received(self, event: object) -> None:
        """A remote event was queued."""

    def remote_finished(self, event: object) -> None:
        """...and handled."""

    def bridged_from_matrix(self, network: str, event_id: str) -> None:
        """A Matrix message was accepted by the remote network."""

    def bridged_to_matrix(self, network: str, event: object) -> None:
        """A remote message was posted to Matrix."""

    def failed(self, network: str, direction: str, reason: str) -> None:
        """A message could not be bridged (its sender was told), for ``reason``."""

    def transaction(self, replayed: bool = False) -> None:
        """An appservice transaction came in (``replayed``: one recorded before)."""

    def homeserver_request(self, method: str, seconds: float, errcode: str | None) -> None:
        """A client-server API request took ``seconds`` (``errcode`` when it failed)."""

    def instrument_database(self, db: Any) -> None:
        """Time the database's queries from now on."""

    async def serve(self, host: str, port: int) -> None:
        """Answer ``/metrics`` on ``host:port``."""

    async def close(self) -> None:
        """Stop answering."""


def create_metrics(enabled: bool, log: logging.Logger | None = None) -> Metrics:
    """Prometheus metrics when ``enabled`` (prometheus_client loaded only then), else none."""
    if not enabled:
        return Metrics()
    from .prometheus_metrics import BridgeMetrics

    return BridgeMetrics(log)
