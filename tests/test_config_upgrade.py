"""Configs of older releases: an unknown key is a warning naming the nearest known key, a
renamed key is read under its old name with a warning, and ``--upgrade-config`` rewrites the
file in this release's layout and comments with the admin's values."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge import config as cfgmod
from bridge import config_upgrade
from bridge.connectors_loader import enabled_sections
from tests.harness.ports import free_port
from tests.test_config_cli import ROOT, example, run

# An admin's config as an older release had it: no comments, some keys left to their
# defaults, a key this release does not know, an IRC network of the admin's own.
OLD = """\
homeserver:
  address: https://matrix.example.net
  domain: example.net
appservice:
  address: http://10.0.0.2:29333
  port: 29333
  as_token: aaaa
  hs_token: bbbb
  database: sqlite:bridge.db
  colour: blue
bridge:
  permissions:
    "*": relay
    example.net: admin
  backfill_limit: 10
  credentials_key: kkkk
logging:
  level: DEBUG
connectors:
  irc:
    networks:
      oftc:
        host: irc.oftc.net
        tls: true
        channels: ["#a"]
        power_levels: {o: 100}
"""


def _meaning(path: Path) -> cfgmod.BridgeConfig:
    """What a config means: its values, and the connectors it loads (disabled sections are
    only shown)."""
    cfg = cfgmod.load(path)
    cfg.warnings = []
    cfg.connectors = enabled_sections(cfg)
    return cfg


def test_unknown_keys_warn_with_the_nearest_key_and_the_bridge_runs(tmp_path: Path) -> None:
    cfg = example(tmp_path, "  port: 29333\n", "  port: 29333\n  hostnme: 0.0.0.0\n")
    text = cfg.read_text().replace("    resource: matrix ", "    resourse: matrix ")
    text = text.replace("http://127.0.0.1:8008", f"http://127.0.0.1:{free_port()}")
    cfg.write_text(text.replace("database: sqlite:mimi-bridge.db", "database: sqlite:b.db"))
    assert run("-c", str(cfg), "-g", "-r", str(tmp_path / "reg.yaml")).returncode == 0
    log = tmp_path / "bridge.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "-c", str(cfg)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    try:
        for _ in range(300):
            if "not reachable" in log.read_text():
                break
            time.sleep(0.1)
        out = log.read_text()
        assert proc.poll() is None, out  # running (waiting for the homeserver), not stopped
        assert 'appservice.hostnme: unknown key, ignored (did you mean "hostname"?)' in out
        # In a connector's section too, though the connector is not enabled.
        assert 'connectors.xmpp.resourse: unknown key, ignored (did you mean "resource"?)' in out
        assert "Traceback" not in out
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()


def test_renamed_keys_are_read_under_their_old_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No key has been renamed yet: these two renames stand for future ones.
    monkeypatch.setitem(config_upgrade.RENAMES, "bridge.history_limit", "bridge.backfill_limit")
    monkeypatch.setitem(
        config_upgrade.RENAMES,
        "connectors.irc.networks.*.tls_check",
        "connectors.irc.networks.*.tls_verify",
    )
    path = tmp_path / "config.yaml"
    path.write_text(
        OLD.replace("backfill_limit: 10", "history_limit: 7").replace(
            "tls: true", "tls: true\n        tls_check: false"
        )
    )
    cfg = cfgmod.load(path)
    assert cfg.backfill_limit == 7
    assert cfg.connectors["irc"]["networks"]["oftc"]["tls_verify"] is False
    assert (
        "bridge.history_limit: now called bridge.backfill_limit; read under its old name"
        " (mimi-bridge --upgrade-config rewrites the file)" in cfg.warnings
    )
    assert any(
        w.startswith("connectors.irc.networks.oftc.tls_check: now called") for w in cfg.warnings
    )
    # Both names set: the new one wins, the old one is named in a warning.
    path.write_text(OLD.replace("backfill_limit: 10", "backfill_limit: 10\n  history_limit: 7"))
    cfg = cfgmod.load(path)
    assert cfg.backfill_limit == 10
    assert any(
        "history_limit: renamed bridge.backfill_limit, which is set too" in w for w in cfg.warnings
    )
    # --upgrade-config writes the new name.
    path.write_text(OLD.replace("backfill_limit: 10", "history_limit: 7"))
    config_upgrade.upgrade_file(path)
    text = path.read_text()
    assert "history_limit" not in text and "backfill_limit: 7" in text


def test_upgrade_config_keeps_the_values_and_takes_the_new_layout(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(OLD)
    before = _meaning(path)
    res = run("-c", str(path), "--upgrade-config")
    assert res.returncode == 0, res.stderr
    assert "appservice.colour: unknown key, ignored" in res.stderr
    assert (tmp_path / "config.yaml.bak").read_text() == OLD
    text = path.read_text()
    assert _meaning(path) == before  # same values, nothing new switched on
    # The example's comments, in its order.
    assert "# (required) Where the bridge reaches the homeserver's client-server API." in text
    assert "# One section per connector" in text
    assert text.index("homeserver:") < text.index("appservice:") < text.index("connectors:")
    # Keys the admin left out that change nothing are shown with their comments.
    assert "# Receive typing, receipts and presence" in text and "ephemeral_events: true" in text
    # The admin's own network, laid out (and commented) like the example's.
    assert "oftc:                         # network id" in text
    assert 'channels: ["#a"]            # joined by the bot at start' in text
    # The unknown key is kept, marked; connectors the admin did not have come disabled.
    assert f"colour: blue # {config_upgrade.UNKNOWN_NOTE}" in text
    assert "  xmpp:\n    enabled: false" in text
    # Upgrading again changes nothing.
    assert run("-c", str(path), "--upgrade-config").returncode == 0
    assert path.read_text() == text


def test_upgrade_config_refuses_a_broken_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(OLD.replace("  domain: example.net\n", ""))
    res = run("-c", str(path), "--upgrade-config")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "mimi-bridge: config error: homeserver.domain: missing"
    ]
    assert path.read_text() == OLD.replace("  domain: example.net\n", "")
    assert not (tmp_path / "config.yaml.bak").exists()


def test_the_example_has_no_unknown_key(tmp_path: Path) -> None:
    """Every key the example shows in the core's sections is one the core reads (the
    connectors' sections of the example are what their keys are checked against)."""
    path = tmp_path / "config.yaml"
    path.write_text((ROOT / "config.example.yaml").read_text())
    assert cfgmod.load(path).warnings == []
