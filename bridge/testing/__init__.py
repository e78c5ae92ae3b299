"""The connector test kit: a pytest plugin (``pytest -p bridge.testing``) that runs the
standard scenarios against a real Synapse and the bridge with your connector.

Write a :class:`Driver` for your network, then in a test module::

    import pytest
    from bridge.testing import ConnectorScenarios

    @pytest.fixture(scope="module")
    def mimi_driver():
        return MyNetDriver()

    class TestMyNet(ConnectorScenarios, driver=MyNetDriver):
        pass

The plugin provides the ``kit`` fixture (a running bridge and a Matrix user, see
:class:`Kit`) and ``mimi_env`` (one Synapse per module, with a registration for the driver's
namespace). Synapse must be importable (``pip install matrix-synapse``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from .driver import CAPABILITIES, Driver
from .kit import ContractError, Kit, KitEnv
from .scenarios import ConnectorScenarios

__all__ = [
    "CAPABILITIES",
    "ConnectorScenarios",
    "ContractError",
    "Driver",
    "Kit",
    "KitEnv",
]


@pytest.fixture(scope="module")
def mimi_driver() -> Driver:
    raise pytest.UsageError(
        "the connector kit needs a module-scoped `mimi_driver` fixture returning your Driver"
    )


@pytest.fixture(scope="module")
def mimi_env(tmp_path_factory: pytest.TempPathFactory, mimi_driver: Driver) -> Iterator[KitEnv]:
    unknown = set(mimi_driver.capabilities) - CAPABILITIES
    if unknown:
        raise pytest.UsageError(
            f"unknown capabilities {sorted(unknown)}; known: {sorted(CAPABILITIES)}"
        )
    env = KitEnv.start(tmp_path_factory.mktemp("mimi-kit"), mimi_driver)
    yield env
    env.synapse.stop()


@pytest.fixture
async def kit(mimi_env: KitEnv, mimi_driver: Driver, tmp_path: Path) -> AsyncIterator[Kit]:
    k = Kit(mimi_env, mimi_driver, tmp_path)
    await mimi_driver.start(k)
    try:
        await k.start_bridge()
        yield k
    finally:
        await k.close()
        await mimi_driver.stop()
