"""Real services for the tests: a throwaway PostgreSQL cluster and a Synapse homeserver.

Everything binds to 127.0.0.1 on free ports. These are plain functions and classes; pytest
fixtures wrapping them live in the test modules and ``tests/conftest.py``.

Synapse, PostgreSQL and the port helpers live in ``bridge.testing`` (the connector test kit
ships them to connector authors); ``tests.harness.synapse`` and the other old paths name the
same modules.
"""

import sys

from bridge.testing import ports, postgres, synapse

for _name, _module in (("ports", ports), ("postgres", postgres), ("synapse", synapse)):
    sys.modules[f"{__name__}.{_name}"] = _module

from bridge.testing.ports import free_port, port_is_open, wait_for_port  # noqa: E402
from bridge.testing.postgres import PostgresServer, find_postgres_bin, start_postgres  # noqa: E402
from bridge.testing.synapse import (  # noqa: E402
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
