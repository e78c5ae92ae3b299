"""Real services for the tests: a throwaway PostgreSQL cluster and a Synapse homeserver.

Everything binds to 127.0.0.1 on free ports. These are plain functions and classes; pytest
fixtures wrapping them live in the test modules and ``tests/conftest.py``.
"""

from .ports import free_port, port_is_open, wait_for_port
from .postgres import PostgresServer, find_postgres_bin, start_postgres
from .synapse import (
    MatrixClient,
    MatrixRequestError,
    SynapseServer,
    default_config,
    start_synapse,
)

__all__ = [
    "MatrixClient",
    "MatrixRequestError",
    "PostgresServer",
    "SynapseServer",
    "default_config",
    "find_postgres_bin",
    "free_port",
    "port_is_open",
    "start_postgres",
    "start_synapse",
    "wait_for_port",
]
