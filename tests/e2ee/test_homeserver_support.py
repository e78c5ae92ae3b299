"""The bridge says at start-up, in one line, when the homeserver does not deliver what
encryption needs (its two experimental features off), and that it does when it does."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from bridge.bridge import Bridge
from bridge.config import load as load_config
from tests.conftest import AS_TOKEN, HS_TOKEN, BridgeFactory, write_config
from tests.harness.ports import free_port
from tests.harness.synapse import SynapseServer, start_synapse

MISSING = "encrypted rooms will not work"


async def _line(caplog: pytest.LogCaptureFixture, text: str, limit_s: float = 20.0) -> list[str]:
    for _ in range(int(limit_s * 10)):
        found = [r.getMessage() for r in caplog.records if text in r.getMessage()]
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"no log line with {text!r} within {limit_s} s")


def _registration(path: Path, port: int) -> Path:
    with path.open("w") as f:
        YAML().dump(
            {
                "id": "mimi-bridge",
                "url": f"http://127.0.0.1:{port}",
                "as_token": AS_TOKEN,
                "hs_token": HS_TOKEN,
                "sender_localpart": "mimibot",
                "rate_limited": False,
                "receive_ephemeral": True,
                "org.matrix.msc3202": True,
                "io.element.msc4190": True,
                "namespaces": {
                    "users": [{"exclusive": True, "regex": "@testnet_.*:localhost"}],
                    "aliases": [],
                    "rooms": [],
                },
            },
            f,
        )
    return path


def _bridge(tmp_path: Path, synapse: SynapseServer, port: int) -> Bridge:
    cfg = write_config(
        tmp_path / "config.yaml",
        synapse,
        port,
        f"sqlite://{tmp_path / 'bridge.db'}",
        {"testnet": {}},
        encryption={"allow": True},
    )
    return Bridge(load_config(cfg))


async def test_homeserver_without_the_features_is_told(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bridge.crypto.olm.PROBE_TIMEOUT_S", 5.0)
    caplog.set_level(logging.INFO, logger="mimi")
    port = free_port()
    reg = _registration(tmp_path / "registration.yaml", port)
    off = {
        "experimental_features": {
            "msc2409_to_device_messages_enabled": False,
            "msc3202_transaction_extensions": False,
        }
    }
    synapse = start_synapse(tmp_path / "synapse", [reg], extra_config=off)
    bridge = None
    try:
        bridge = _bridge(tmp_path, synapse, port)
        await bridge.start()
        lines = await _line(caplog, MISSING)
        assert len(lines) == 1
        assert "msc2409_to_device_messages_enabled" in lines[0]
        assert "msc3202_transaction_extensions" in lines[0]
        assert "experimental_features" in lines[0]
    finally:
        if bridge is not None:
            await bridge.stop()
        synapse.stop()


async def test_homeserver_with_the_features_is_fine(
    make_bridge: BridgeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mimi")
    await make_bridge(encryption={"allow": True})
    await _line(caplog, "the homeserver delivers to-device messages")
    assert not [r for r in caplog.records if MISSING in r.getMessage()]
