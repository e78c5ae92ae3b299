"""Names on the bus: subjects, the event stream, its consumer, the buckets."""

from __future__ import annotations

import hashlib

OPS_PREFIX = "mimi.op"
EVENTS_STREAM = "MIMI_EVENTS"
EVENTS_PREFIX = "mimi.events"
CORE_CONSUMER = "mimi-core"
OPS_BUCKET = "mimi_ops"
# What workers ask of the core: BridgeAPI calls that are Matrix logic (linking a room) or
# write the core's records (a portal's key).
CORE_API = "mimi.core.api"
SHARDS_BUCKET = "mimi_shards"
# A portal's new key, for every instance of a connector run split (each may hold a puppet
# that joins the room): published by the core before it asks the main shard.
KEYS_PREFIX = "mimi.keys"
# A portal closed, for every instance of a connector run split (each parts its own puppets):
# published by the core before it asks the main shard.
CLOSED_PREFIX = "mimi.closed"
# The connections of a connector run split: every instance answers with its own and the
# shards it holds (the core's metrics add them up).
STATES_PREFIX = "mimi.states"


def op_subject(shard: str) -> str:
    """Where operations of a shard (``<network>.<n>`` or ``<network>.main``) are asked."""
    return f"{OPS_PREFIX}.{shard}"


def network_ops(network: str) -> str:
    """Every shard of a network: what the worker running the network's connector answers."""
    return f"{OPS_PREFIX}.{network}.*"


def keys_subject(network: str) -> str:
    return f"{KEYS_PREFIX}.{network}"


def closed_subject(network: str) -> str:
    return f"{CLOSED_PREFIX}.{network}"


def states_subject(network: str) -> str:
    return f"{STATES_PREFIX}.{network}"


def events_subject(network: str) -> str:
    return f"{EVENTS_PREFIX}.{network}"


def main_shard(network: str) -> str:
    return f"{network}.main"


def event_op_id(method: str, event_id: str) -> str:
    """The operation id of a Matrix event's operation: the same for every retry and replay."""
    return hashlib.sha256(f"{method}\0{event_id}".encode()).hexdigest()[:40]
