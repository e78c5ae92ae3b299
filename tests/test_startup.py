"""Start-up against the homeserver: a wrong token or URL is reported in one clear log line
and stops the bridge; an unreachable homeserver is retried until it answers."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import write_config
from tests.harness.ports import free_port
from tests.harness.synapse import SynapseServer


def _start(config: Path) -> tuple[subprocess.Popen[str], Path]:
    log = config.with_suffix(".log")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "-c", str(config)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, log


def _config(tmp_path: Path, synapse: SynapseServer, as_port: int, **edits: str) -> Path:
    path = write_config(
        tmp_path / "config.yaml", synapse, as_port, f"sqlite://{tmp_path / 'b.db'}", {"testnet": {}}
    )
    text = path.read_text()
    for old, new in edits.items():
        text = text.replace(old, new)
    path.write_text(text)
    return path


def test_wrong_as_token_stops_with_one_line(
    tmp_path: Path, synapse: SynapseServer, as_port: int
) -> None:
    cfg = _config(tmp_path, synapse, as_port, **{"as-token-for-tests": "not-the-as-token"})
    proc, log = _start(cfg)
    assert proc.wait(timeout=30) == 1
    errors = [line for line in log.read_text().splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "refused the as_token" in errors[0], log.read_text()
    assert "Traceback" not in log.read_text()


def test_wrong_hs_token_stops_with_one_line(
    tmp_path: Path, synapse: SynapseServer, as_port: int
) -> None:
    cfg = _config(tmp_path, synapse, as_port, **{"hs-token-for-tests": "not-the-hs-token"})
    proc, log = _start(cfg)
    assert proc.wait(timeout=30) == 1
    errors = [line for line in log.read_text().splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "M_BAD_STATUS" in errors[0], log.read_text()


async def test_unreachable_homeserver_is_retried(
    tmp_path: Path, synapse: SynapseServer, as_port: int
) -> None:
    cfg = _config(tmp_path, synapse, as_port, **{synapse.url: f"http://127.0.0.1:{free_port()}"})
    proc, log = _start(cfg)
    try:
        for _ in range(100):
            if log.read_text().count("not reachable") >= 2:
                break
            await asyncio.sleep(0.1)
        assert log.read_text().count("retrying in") >= 2, log.read_text()
        assert proc.poll() is None  # still waiting, not crashed
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()
