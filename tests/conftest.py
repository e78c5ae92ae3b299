"""Shared fixtures: one real Synapse and one real PostgreSQL per test session, a bridge
config matching the session's appservice registration, and a factory for running bridges."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from bridge.bridge import Bridge
from bridge.config import load as load_config
from tests.harness.nats import NatsServer, start_nats
from tests.harness.ports import free_port
from tests.harness.postgres import PostgresServer, start_postgres
from tests.harness.synapse import SynapseServer, start_synapse

# The connector kit (its scenarios run in tests/kit/ against the built-in connectors).
pytest_plugins = ["bridge.testing"]

AS_TOKEN = "as-token-for-tests-0123456789"
HS_TOKEN = "hs-token-for-tests-0123456789"
# The second registration's token (double puppeting of local users): tests that want it pass
# double_puppet={"as_token": DOUBLE_PUPPET_TOKEN} to make_bridge.
DOUBLE_PUPPET_TOKEN = "double-puppet-token-for-tests-0123456789"
PLUGIN_DIR = Path(__file__).parent / "plugins" / "testnet"
# Namespaces of every connector the tests run, so one Synapse serves them all.
PREFIXES = ["testnet_", "irc_", "xmpp_", "deltachat_", "webhook_"]


def pytest_configure(config: pytest.Config) -> None:
    _install_plugin()


def _install_plugin() -> None:
    """The test plugin is a separate distribution, installed like any third-party connector."""
    names = {ep.name for ep in importlib.metadata.entry_points(group="mimi_bridge.connectors")}
    if "testnet" in names:
        return
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", str(PLUGIN_DIR)],
        check=True,
    )
    importlib.invalidate_caches()


@pytest.fixture(scope="session")
def as_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def registration_file(tmp_path_factory: pytest.TempPathFactory, as_port: int) -> Path:
    path = tmp_path_factory.mktemp("registration") / "registration.yaml"
    users = [{"exclusive": True, "regex": "@mimibot:localhost"}]
    users += [{"exclusive": True, "regex": f"@{p}.*:localhost"} for p in PREFIXES]
    aliases = [{"exclusive": True, "regex": f"#{p}.*:localhost"} for p in PREFIXES]
    reg = {
        "id": "mimi-bridge",
        "url": f"http://127.0.0.1:{as_port}",
        "as_token": AS_TOKEN,
        "hs_token": HS_TOKEN,
        "sender_localpart": "mimibot",
        "rate_limited": False,
        "receive_ephemeral": True,
        # End-to-bridge encryption (what mimi-bridge -g writes).
        "org.matrix.msc3202": True,
        "io.element.msc4190": True,
        "protocols": ["testnet", "irc", "xmpp", "deltachat", "webhooks"],
        "namespaces": {"users": users, "aliases": aliases, "rooms": []},
    }
    with path.open("w") as f:
        YAML().dump(reg, f)
    return path


@pytest.fixture(scope="session")
def double_puppet_registration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What mimi-bridge -g writes with bridge.double_puppet.as_token set."""
    path = tmp_path_factory.mktemp("registration") / "registration-double-puppet.yaml"
    reg = {
        "id": "mimi-bridge-double-puppet",
        "url": None,
        "as_token": DOUBLE_PUPPET_TOKEN,
        "hs_token": "double-puppet-hs-token-for-tests-0123456789",
        "sender_localpart": "mimibot-double-puppet",
        "rate_limited": False,
        "namespaces": {
            "users": [{"exclusive": False, "regex": "@.*:localhost"}],
            "aliases": [],
            "rooms": [],
        },
    }
    with path.open("w") as f:
        YAML().dump(reg, f)
    return path


@pytest.fixture(scope="session")
def synapse(
    tmp_path_factory: pytest.TempPathFactory,
    registration_file: Path,
    double_puppet_registration: Path,
) -> Iterator[SynapseServer]:
    server = start_synapse(
        tmp_path_factory.mktemp("synapse"), [registration_file, double_puppet_registration]
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = start_postgres(tmp_path_factory.mktemp("postgres"))
    yield server
    server.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A JetStream nats-server of the test's own (it starts in well under a second), so a
    test may restart or kill it."""
    server = start_nats(tmp_path / "nats")
    yield server
    server.stop()


_db_counter = iter(range(1_000_000))


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, postgres: PostgresServer) -> str:
    """Every database test runs on both backends."""
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'bridge.db'}"
    return postgres.create_database(f"bridge_{next(_db_counter)}")


def write_config(
    path: Path,
    synapse: SynapseServer,
    as_port: int,
    database: str,
    connectors: dict[str, Any],
    **bridge_extra: Any,
) -> Path:
    cfg = {
        "homeserver": {"address": synapse.url, "domain": synapse.server_name},
        "appservice": {
            "address": f"http://127.0.0.1:{as_port}",
            "hostname": "127.0.0.1",
            "port": as_port,
            "id": "mimi-bridge",
            "bot_username": "mimibot",
            "as_token": AS_TOKEN,
            "hs_token": HS_TOKEN,
            "database": database,
        },
        "bridge": {
            "permissions": {"*": "relay", "localhost": "user", "@admin:localhost": "admin"},
            "credentials_key": "credentials-key-for-tests",
            **bridge_extra,
        },
        "logging": {"level": "DEBUG"},
        "connectors": connectors,
    }
    with path.open("w") as f:
        YAML().dump(cfg, f)
    return path


BridgeFactory = Callable[..., Awaitable[Bridge]]


@pytest.fixture
async def make_bridge(
    tmp_path: Path, synapse: SynapseServer, as_port: int
) -> AsyncIterator[BridgeFactory]:
    """Start in-process bridges; each is stopped at the end of the test."""
    running: list[Bridge] = []

    async def factory(
        database: str | None = None,
        connectors: dict[str, Any] | None = None,
        metrics_port: int | None = None,
        **extra: Any,
    ) -> Bridge:
        """``extra`` goes to the config's ``bridge`` section; ``metrics_port`` turns the
        Prometheus metrics on (off by default, as in the example config)."""
        db = database or f"sqlite://{tmp_path / 'bridge.db'}"
        if not db.startswith("sqlite://") and db.startswith("sqlite:"):
            db = "sqlite://" + db.split(":", 1)[1]
        path = write_config(
            tmp_path / f"config-{len(running)}.yaml",
            synapse,
            as_port,
            db,
            connectors if connectors is not None else {"testnet": {}},
            **extra,
        )
        if metrics_port is not None:
            yaml = YAML()
            doc = yaml.load(path)
            doc["metrics"] = {"enabled": True, "listen": f"127.0.0.1:{metrics_port}"}
            yaml.dump(doc, path)
        bridge = Bridge(load_config(path))
        await bridge.start()
        running.append(bridge)
        return bridge

    yield factory
    for bridge in running:
        await bridge.stop()
