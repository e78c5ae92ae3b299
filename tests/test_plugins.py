"""Third-party connectors: a package that registers under the ``mimi_bridge.connectors``
entry points is found and loaded without any change to ``bridge/``."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import bridge
from bridge.connector import NetworkConnector
from bridge.connector.registry import ENTRY_POINT_GROUP, available, load

ROOT = Path(__file__).resolve().parent.parent


def test_test_plugin_is_an_installed_distribution() -> None:
    dist = importlib.metadata.distribution("mimi-testnet")
    eps = [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
    assert [ep.name for ep in eps] == ["testnet"]
    cls = load("testnet")
    assert issubclass(cls, NetworkConnector)
    module_file = Path(sys.modules[cls.__module__].__file__ or "")
    # Installed as its own package, not part of the bridge.
    assert Path(bridge.__file__).parent not in module_file.parents
    assert "testnet" in available() and "irc" in available() and "xmpp" in available()


def test_bridge_tree_does_not_mention_the_plugin() -> None:
    res = subprocess.run(
        ["git", "grep", "-l", "testnet", "--", "bridge", "connectors"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert res.stdout.strip() == ""
