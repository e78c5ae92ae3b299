"""bridge/memory.py: freed start-up memory handed back to the system."""

from __future__ import annotations

import platform
from pathlib import Path

from bridge.memory import release_freed_memory
from tests.helpers import run_python


def test_freed_memory_is_released_on_glibc() -> None:
    # Debian's libc is glibc: the trim must be found and called, not skipped.
    assert platform.libc_ver()[0] == "glibc"
    assert release_freed_memory() is True


def test_what_the_bridge_does_not_load_unless_asked(tmp_path: Path) -> None:
    """Idle memory: a bridge with metrics off (the default) and no encryption loads neither
    prometheus_client nor mautrix's client API (a few MiB between them), nor the installed
    distributions' metadata, asyncpg (SQLite database) or aiodns (bridge/deferred.py); with
    metrics on it loads prometheus_client."""
    from tests.conftest import AS_TOKEN, HS_TOKEN

    script = """
import sys
from bridge.bridge import Bridge
from pathlib import Path
from bridge.config import load
bridge = Bridge(load(Path(sys.argv[1])))
print(",".join(sorted(m for m in ("prometheus_client", "mautrix.api", "mautrix.types",
    "mautrix.appservice", "mautrix.crypto", "importlib.metadata", "logging.config",
    "asyncpg.protocol", "aiodns") if m in sys.modules)))
"""
    loaded = {}
    for metrics in (False, True):
        config = tmp_path / f"config-{metrics}.yaml"
        config.write_text(
            "homeserver: {address: 'http://127.0.0.1:1', domain: localhost}\n"
            "appservice: {address: 'http://127.0.0.1:2', port: 29331,"
            f" as_token: {AS_TOKEN}, hs_token: {HS_TOKEN},"
            f" database: 'sqlite:{tmp_path / 'b.db'}'}}\n"
            "bridge: {credentials_key: key-for-tests}\n"
            f"metrics: {{enabled: {str(metrics).lower()}, listen: '127.0.0.1:29332'}}\n"
            "connectors: {irc: {networks: {net: {host: 127.0.0.1}}}}\n"
        )
        loaded[metrics] = run_python(script, str(config))
    assert loaded[False] == ""
    assert loaded[True] == "prometheus_client"
